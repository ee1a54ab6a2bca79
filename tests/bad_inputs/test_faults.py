"""Faults on the output side and in training: found before any work where they can be, nothing a user has is
ever lost, and no run that failed looks complete.

Every case runs `nextpoi run` in this process (tests/harness.py) on a tiny synthetic check-in table.
The tests run as root in CI, where no folder is unwritable: an unwritable folder (or a full disk) is simulated by
making the write probe of `runfolder` raise, the way the operating system would; a file in the way is real.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import synthetic_checkins
from harness import assert_refused, run_cli, tree_hashes
from nextpoi_lib import runfolder
from nextpoi_lib.runfolder import is_complete



def small_checkins():
    return synthetic_checkins(n_users=30, visits_per_user=12, n_pois=30)


@pytest.fixture
def experiment(tmp_path):
    """make(name="toy", **sections) -> a parameter file of a tiny run (GRU over categories, 2 folds, 2 epochs)."""
    checkins = tmp_path / "checkins.csv"
    small_checkins().to_csv(checkins, index=False)

    def make(name: str = "toy", **sections) -> Path:
        data = {
            "name": name, "dataset": {"source": "checkins", "path": str(checkins), "name": "toy"},
            "embeddings": {"source": "dgi", "epochs": 2, "dim": 8},
            "windows": {"length": 4, "stride": 1, "features": ["category"]},
            "folds": {"n_splits": 2},
            "model": {"name": "gru", "hidden_dim": 8, "num_layers": 1, "dropout": 0.0},
            "scheduler": {"name": "constant"},
            "optimizer": {"learning_rate": 0.02, "weight_decay": 0.0},
            "training": {"epochs": 2, "batch_size": 64, "seeds": [0], "progress": False, "device": "cpu"},
        }
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / "parameters" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return make


@pytest.fixture
def root(output_root) -> Path:
    """An output root holding a user's file (tests/harness.py)."""
    return output_root


def run(parameter_file: Path, root: Path, *extra: str):
    return run_cli("run", parameter_file, "--output-root", root, "--quiet", *extra)


def complete_runs(root: Path) -> list[Path]:
    return [p.parent for p in Path(root).rglob("manifest.json") if is_complete(p.parent)] if Path(root).is_dir() else []


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if ".partial-" in p.name or ".replaced-" in p.name) \
        if Path(folder).is_dir() else []


def earlier_run(experiment, root: Path, name: str = "toy") -> Path:
    """A complete run of `name` (the majority baseline: no training) to be kept through a failing run."""
    result = run(experiment(name, model={"name": "majority"}), root)
    assert result.code == 0, result.stderr
    return root / "toy" / name


def refuse_probe(monkeypatch, error: OSError, where=lambda folder: True):
    """The write probe raises `error` in the folders for which `where(folder)` holds."""
    original = runfolder._write_probe

    def probe(path):
        if where(Path(path).parent):
            raise error
        return original(path)

    monkeypatch.setattr(runfolder, "_write_probe", probe)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------------------------------
# Before any work: the output side can be written


def test_output_root_that_is_a_regular_file(tmp_path, experiment, work_spy):
    root = tmp_path / "outputs"
    root.write_text("not a folder")
    before = tree_hashes(root)
    assert_refused(run(experiment(), root), str(root), "regular file", "--output-root", spy=work_spy)
    assert tree_hashes(root) == before


def test_output_root_inside_a_regular_file(tmp_path, experiment, work_spy):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    root = blocker / "outputs"
    assert_refused(run(experiment(), root), str(root), str(blocker), "regular file", spy=work_spy)
    assert blocker.read_text() == "a file"


def test_dataset_folder_that_is_a_regular_file(root, experiment, work_spy):
    (root / "toy").write_text("a file where the dataset folder goes")
    before = tree_hashes(root)
    assert_refused(run(experiment(), root), "dataset folder", str(root / "toy"), "regular file", spy=work_spy)
    assert tree_hashes(root) == before and not complete_runs(root)


def test_output_root_without_write_permission(root, experiment, work_spy, monkeypatch):
    refuse_probe(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    before = tree_hashes(root)
    assert_refused(run(experiment(), root), str(root), "Permission denied", "make that folder writable",
                   "--output-root", spy=work_spy)
    assert tree_hashes(root) == before and not (root / "toy").exists()


def test_output_root_on_a_full_disk(root, experiment, work_spy, monkeypatch):
    refuse_probe(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    before = tree_hashes(root)
    assert_refused(run(experiment(), root), str(root), "No space left on device", "free some space", spy=work_spy)
    assert tree_hashes(root) == before


def test_output_root_not_created_yet_in_an_unwritable_folder(tmp_path, experiment, work_spy, monkeypatch):
    parent = tmp_path / "readonly"
    parent.mkdir()
    root = parent / "outputs"
    refuse_probe(monkeypatch, PermissionError(errno.EACCES, "Permission denied"), lambda f: f == parent)
    assert_refused(run(experiment(), root), str(root), str(parent), "Permission denied", spy=work_spy)
    assert not root.exists()


def test_dataset_folder_without_write_permission(root, experiment, work_spy, monkeypatch):
    (root / "toy").mkdir()
    refuse_probe(monkeypatch, PermissionError(errno.EACCES, "Permission denied"), lambda f: f.name == "toy")
    before = tree_hashes(root)
    assert_refused(run(experiment(), root), "dataset folder", str(root / "toy"), "Permission denied",
                   spy=work_spy)
    assert tree_hashes(root) == before


def test_embedding_cache_without_write_permission(root, experiment, work_spy, monkeypatch):
    cache = root / ".cache" / "embeddings"
    cache.mkdir(parents=True)
    refuse_probe(monkeypatch, PermissionError(errno.EACCES, "Permission denied"), lambda f: f == cache)
    before = tree_hashes(root)
    parameters = experiment(windows={"features": ["embedding", "category"]})
    assert_refused(run(parameters, root), "embedding cache folder", str(cache), "Permission denied", spy=work_spy)
    assert tree_hashes(root) == before


def test_embedding_cache_that_is_a_regular_file(root, experiment, work_spy):
    (root / ".cache").write_text("a file where the cache goes")
    before = tree_hashes(root)
    parameters = experiment(windows={"features": ["embedding", "category"]})
    assert_refused(run(parameters, root), "embedding cache folder", str(root / ".cache"), "regular file",
                   spy=work_spy)
    assert tree_hashes(root) == before


def test_embedding_cache_is_not_checked_when_the_run_computes_no_embeddings(root, experiment, monkeypatch):
    cache = root / ".cache" / "embeddings"
    cache.mkdir(parents=True)
    refuse_probe(monkeypatch, PermissionError(errno.EACCES, "Permission denied"), lambda f: f == cache)
    result = run(experiment(), root)  # features: category only
    assert result.code == 0, result.stderr
    assert complete_runs(root) == [root / "toy" / "toy"]


def test_complete_run_is_not_replaced_without_overwrite(root, experiment, work_spy):
    earlier_run(experiment, root)
    before = tree_hashes(root)
    work_spy.calls.clear()
    assert_refused(run(experiment(), root), "A complete run already exists", "--overwrite", spy=work_spy)
    assert tree_hashes(root) == before


def test_folder_of_the_users_that_is_not_a_run_is_never_deleted(root, experiment, work_spy):
    folder = root / "toy" / "toy"
    folder.mkdir(parents=True)
    (folder / "draft.md").write_text("what the user put there")
    before = tree_hashes(root)
    assert_refused(run(experiment(), root), "A folder that is not a complete run", str(folder), "--overwrite",
                   spy=work_spy)
    assert tree_hashes(root) == before


# --------------------------------------------------------------------------------------------------
# The final write fails


def failing_write(monkeypatch, code: int):
    """Writing a file of the temporary run folder raises OSError(code), as a full disk or a file-size limit does."""
    original = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if ".partial-" in str(self):
            raise OSError(code, os.strerror(code))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def test_disk_full_during_the_final_write_keeps_the_earlier_run(root, experiment, monkeypatch):
    target = earlier_run(experiment, root)
    before = tree_hashes(root)
    failing_write(monkeypatch, errno.ENOSPC)
    message = assert_refused(run(experiment(), root, "--overwrite"), str(target), "No space left on device",
                             "earlier complete run there is kept", "free some space")
    assert "Traceback" not in message
    assert tree_hashes(root) == before and is_complete(target)
    assert hidden_leftovers(target.parent) == []


def test_file_size_limit_during_the_final_write_leaves_no_folder(root, experiment, monkeypatch):
    failing_write(monkeypatch, errno.EFBIG)
    before = tree_hashes(root)
    target = root / "toy" / "toy"
    assert_refused(run(experiment(), root), str(target), "File too large", "no run folder was left", "ulimit")
    assert not target.exists() and hidden_leftovers(target.parent) == []
    assert tree_hashes(root) == before and not complete_runs(root)


def test_failure_while_swapping_in_the_new_run_puts_the_earlier_one_back(root, experiment, monkeypatch):
    target = earlier_run(experiment, root)
    before = tree_hashes(root)
    original = pathlib.Path.rename

    def rename(self, destination):
        if ".partial-" in self.name:  # the new run moving into place
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return original(self, destination)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    assert_refused(run(experiment(), root, "--overwrite"), str(target), "Input/output error",
                   "earlier complete run there is kept")
    assert tree_hashes(root) == before and is_complete(target)
    assert hidden_leftovers(target.parent) == []


# --------------------------------------------------------------------------------------------------
# Temporaries of killed runs


def test_temporary_folder_of_a_killed_run_is_removed_by_the_next_run(root, experiment):
    dataset = root / "toy"
    stale = dataset / f".toy.partial-{dead_pid()}-1700000000000"
    stale.mkdir(parents=True)
    (stale / "curves.csv").write_text("half written")
    other = dataset / f".other.partial-{dead_pid()}-1700000000000"  # another run's: not this run's business
    other.mkdir()
    result = run(experiment(), root)
    assert result.code == 0, result.stderr
    assert not stale.exists() and other.exists()
    assert is_complete(dataset / "toy") and hidden_leftovers(dataset) == [other.name]


def test_temporary_folder_of_a_live_run_is_left_alone(root, experiment):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = root / "toy" / f".toy.partial-{sleeper.pid}-1700000000000"
        live.mkdir(parents=True)
        (live / "curves.csv").write_text("being written")
        result = run(experiment(), root)
        assert result.code == 0, result.stderr
        assert (live / "curves.csv").read_text() == "being written"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_earlier_run_moved_aside_by_a_killed_run_comes_back(root, experiment, work_spy):
    target = earlier_run(experiment, root)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    aside = target.parent / f".toy.replaced-{dead_pid()}-1700000000000"
    target.rename(aside)  # killed between moving the old run aside and moving the new one in
    work_spy.calls.clear()
    # Put back before the target is checked: so without --overwrite the run is refused, the old run intact.
    assert_refused(run(experiment(), root), "A complete run already exists", spy=work_spy)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert hidden_leftovers(target.parent) == []


# --------------------------------------------------------------------------------------------------
# Training diverges


DIVERGING = {"model": {"name": "transformer", "num_heads": 2, "model_dim": 16},
             "scheduler": {"name": "onecycle", "max_lr": 1.0e6}}


def test_diverging_training_stops_the_run_as_failed(root, experiment):
    before = tree_hashes(root)
    message = assert_refused(run(experiment(**DIVERGING), root), "Training diverged", "seed 0, fold 0, epoch 1",
                             "scheduler.max_lr", "lower")
    assert "nan" in message or "inf" in message
    assert not (root / "toy" / "toy").exists() and hidden_leftovers(root / "toy") == []
    assert tree_hashes(root) == before and not complete_runs(root)


def test_diverging_training_keeps_the_earlier_complete_run(root, experiment):
    target = earlier_run(experiment, root)
    before = tree_hashes(root)
    assert_refused(run(experiment(**DIVERGING), root, "--overwrite"), "Training diverged", "scheduler.max_lr")
    assert tree_hashes(root) == before and is_complete(target)
    assert json.loads((target / "manifest.json").read_text())["model"] == "majority"
