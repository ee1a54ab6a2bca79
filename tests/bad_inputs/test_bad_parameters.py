"""Bad parameter files: each is refused before any work with one paragraph naming the key and the fix."""

from __future__ import annotations

import pytest

from harness import assert_refused, run_cli, tree_hashes


@pytest.fixture
def output_root(tmp_path):
    root = tmp_path / "outputs"
    (root / "earlier").mkdir(parents=True)
    (root / "earlier" / "keep.txt").write_text("a user's file")
    return root


CASES = {
    "missing file": (None, ["does not exist", "nosuch.yaml"]),
    "unknown key": ("training: {epoch: 3}\n", ["training.epoch", "Did you mean 'epochs'"]),
    "bad choice": ("loss: {name: focall}\n", ["loss.name='focall'", "'focal'"]),
    "number as text": ("optimizer: {learning_rate: 1e-3}\n", ["optimizer.learning_rate", "1.0e-3"]),
    "unknown model": ("model: {name: cnn}\n", ["model.name='cnn'", "transformer"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_parameter_file_is_refused_before_work(case, tmp_path, output_root, work_spy):
    text, named = CASES[case]
    path = tmp_path / "nosuch.yaml"
    if text is not None:
        path = tmp_path / "experiment.yaml"
        path.write_text(text)
    before = tree_hashes(output_root)
    result = run_cli("run", path, "--output-root", output_root)
    assert_refused(result, *named, spy=work_spy)
    assert tree_hashes(output_root) == before
