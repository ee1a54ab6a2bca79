"""`nextpoi run` from the command line: bad input explained in one paragraph, and the README's smoke run."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nextpoi_lib.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("content, message", [
    ("training: {epocs: 3}\n", "Unknown key 'training.epocs'"),
    ("training: {weighted_sampler: true}\nloss: {class_weights: balanced}\n", "stacks two re-weightings"),
    ("dataset: {source: checkins, path: missing.csv}\n", "does not exist"),
    ("model: {gbt_max_iter: 5}\ntrees: {max_iter: 6}\n", "model.gbt_max_iter and trees.max_iter are both given"),
])
def test_cli_bad_input_gives_one_paragraph_and_writes_nothing(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = run_cli("run", str(path), "--output-root", str(tmp_path / "outputs"), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("manifest.json"))


def test_smoke_run_on_the_embedded_dataset(tmp_path):
    """The README's smoke command on the real data: every file present, supports sum to the folds."""
    result = run_cli("run", str(ROOT / "parameters/smoke.yaml"), "--output-root", str(tmp_path / "o"), "--quiet",
                     cwd=ROOT)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "o" / "foursquare_nyc" / "smoke"
    manifest = json.loads((path / "manifest.json").read_text())
    assert len(manifest["classes"]) == 10 and manifest["n_folds"] == 5
    folds = json.loads((path / "fold_manifest.json").read_text())["folds"]
    users = [set(f["test_users"]) for f in folds]
    assert sum(len(u) for u in users) == len(set().union(*users)) == 3079
    for fold in folds:
        assert not set(fold["inner_val_users"]) & set(fold["test_users"])
