"""nextpoi_lib.runfolder: the run folder written atomically, complete and consistent, never overwritten silently."""
import errno
import json
import os
import pathlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from nextpoi_lib import runfolder
from nextpoi_lib.config import updated
from nextpoi_lib.errors import OutputError
from nextpoi_lib.experiment import run_experiment
from nextpoi_lib.results import CrossValidationResult, FoldResult
from nextpoi_lib.runfolder import RunExistsError, check_run_target, is_complete, run_directory, write_run
from synthetic import synthetic_config

RUN_FILES = {"config.yaml", "manifest.json", "fold_manifest.json", "curves.csv", "fold_metrics.csv", "per_class.csv",
             "confusion.csv", "summary.json"}


def test_run_folder_is_complete_and_consistent(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "hybrid", "num_heads": 2},
                              training={"epochs": 3, "seeds": [0, 1], "bias_calibration": True})
    path = run_experiment(config)
    assert RUN_FILES | {"attention.csv"} <= {p.name for p in path.iterdir()}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seeds"] == [0, 1] and manifest["device"] == "cpu"
    # The hybrid head cannot be stacked and this tiny run is below the fold-worker threshold.
    assert manifest["engine"]["mode"] == "per_fold"
    folds = json.loads((path / "fold_manifest.json").read_text())
    fold_sizes = {f["fold"]: f["n_test"] for f in folds["folds"]}
    metrics = pd.read_csv(path / "fold_metrics.csv")
    assert set(metrics.selection) == {"selected", "last", "calibrated"} and len(metrics) == 2 * 3 * 3
    per_class = pd.read_csv(path / "per_class.csv")
    supports = per_class.groupby(["seed", "fold", "selection"])["support"].sum()
    for (seed, fold, selection), total in supports.items():
        assert total == fold_sizes[fold]
    confusion = pd.read_csv(path / "confusion.csv")
    assert (confusion.groupby(["seed", "fold", "selection"])["count"].sum() == supports).all()
    summary = json.loads((path / "summary.json").read_text())
    selected = metrics[metrics.selection == "selected"]
    assert summary["selected"]["macro_f1"]["mean"] == pytest.approx(selected.macro_f1.mean())
    assert summary["selected"]["macro_f1"]["std"] == pytest.approx(selected.macro_f1.std(ddof=1))
    assert summary["selected"]["macro_f1"]["n"] == 6
    curves = pd.read_csv(path / "curves.csv")
    assert len(curves) == 2 * 3 * 3 and curves.learning_rate.notna().all()
    attention = pd.read_csv(path / "attention.csv")
    np.testing.assert_allclose(attention.groupby(["seed", "fold"]).weight.sum(), 1.0, rtol=1e-4)


def hand_made_result():
    """Two folds of one seed, predictions chosen by hand."""
    folds = [FoldResult(seed=0, fold=0, curves=[], selected_epoch=0, last_epoch=0, test_target=np.array([0, 0, 1, 2]),
                        predictions={"selected": np.array([0, 1, 1, 2]), "last": np.array([0, 0, 0, 0])}),
             FoldResult(seed=0, fold=1, curves=[], selected_epoch=0, last_epoch=0, test_target=np.array([2, 1, 1]),
                        predictions={"selected": np.array([2, 1, 0]), "last": np.array([2, 1, 1])})]
    return CrossValidationResult(fold_results=folds, device="cpu", device_name="cpu")


def test_write_run_by_hand(tmp_path):
    target = tmp_path / "toy" / "hand"
    path = write_run(target, hand_made_result(), ["a", "b", "c"], "name: hand\n", {"folds": []}, {"run_name": "hand"})
    assert path == target and is_complete(target)
    assert RUN_FILES <= {p.name for p in path.iterdir()} and not (path / "attention.csv").exists()
    assert (path / "config.yaml").read_text() == "name: hand\n"
    assert json.loads((path / "fold_manifest.json").read_text()) == {"folds": []}
    assert json.loads((path / "manifest.json").read_text()) == {"status": "complete", "run_name": "hand"}
    metrics = pd.read_csv(path / "fold_metrics.csv")
    selected = metrics[metrics.selection == "selected"].set_index("fold")
    f1 = [f1_score([0, 0, 1, 2], [0, 1, 1, 2], average="macro"), f1_score([2, 1, 1], [2, 1, 0], average="macro",
                                                                         labels=[0, 1, 2], zero_division=0)]
    np.testing.assert_allclose(selected.accuracy, [3 / 4, 2 / 3])
    np.testing.assert_allclose(selected.macro_f1, f1)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["selected"]["accuracy"] == {"mean": pytest.approx((3 / 4 + 2 / 3) / 2),
                                               "std": pytest.approx(np.std([3 / 4, 2 / 3], ddof=1)), "n": 2}
    assert summary["last"]["accuracy"]["mean"] == pytest.approx((2 / 4 + 1) / 2)
    confusion = pd.read_csv(path / "confusion.csv")
    fold0 = confusion[(confusion.fold == 0) & (confusion.selection == "selected")]
    assert fold0[fold0.true_class == "a"].set_index("predicted_class")["count"].to_dict() == {"a": 1, "b": 1, "c": 0}
    assert [p.name for p in target.parent.iterdir()] == ["hand"]  # no temporary folder left behind


def test_existing_run_is_never_overwritten_silently(tmp_path):
    config = synthetic_config(tmp_path, training={"epochs": 1})
    path = run_experiment(config)
    before = (path / "manifest.json").read_text()
    with pytest.raises(RunExistsError, match="already exists.*--overwrite"):
        run_experiment(config)
    assert (path / "manifest.json").read_text() == before
    config = updated(config, output={"overwrite": True})
    run_experiment(config)
    assert json.loads((path / "manifest.json").read_text())["started_at"] >= json.loads(before)["started_at"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_a_folder_that_is_not_a_complete_run_is_refused_too(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "majority"})
    target = run_directory(config)
    assert target == tmp_path / "outputs" / "toy" / "toy"
    assert check_run_target(config) == target  # nothing there yet
    target.mkdir(parents=True)
    (target / "manifest.json").write_text('{"status": "running"}')
    assert not is_complete(target)
    with pytest.raises(RunExistsError, match="A folder that is not a complete run already exists"):
        check_run_target(config)
    config = updated(config, output={"overwrite": True})
    assert is_complete(run_experiment(config))


def test_crash_leaves_no_complete_run_and_keeps_the_old_one(tmp_path, monkeypatch):
    config = synthetic_config(tmp_path, training={"epochs": 1})
    path = run_experiment(config)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(runfolder, "summarise", broken)
    config = updated(config, output={"overwrite": True})
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(config)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


# --------------------------------------------------------------------------------------------------
# Faults on the output side (more, through the command line, in tests/bad_inputs/test_faults.py)


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "No space left on device"), (errno.EFBIG, "File too large")])
def test_write_failure_is_one_output_error_and_keeps_the_earlier_run(tmp_path, monkeypatch, code, cause):
    target = tmp_path / "toy" / "hand"
    write_run(target, hand_made_result(), ["a", "b", "c"], "name: hand\n", {"folds": []}, {"run_name": "hand"})
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    original = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if ".partial-" in str(self) and self.name == "config.yaml":
            raise OSError(code, os.strerror(code))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    with pytest.raises(OutputError, match=f"{target}.*{cause}.*earlier complete run there is kept") as raised:
        write_run(target, hand_made_result(), ["a", "b", "c"], "name: new\n", {"folds": []}, {"run_name": "hand"})
    assert isinstance(raised.value.__cause__, OSError) and "\n" not in str(raised.value)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in target.parent.iterdir()] == ["hand"]


def test_write_probe_leaves_nothing_and_names_the_cause(tmp_path, monkeypatch):
    runfolder.check_folder_writable(tmp_path, "output root")
    assert list(tmp_path.iterdir()) == []
    runfolder.check_folder_writable(tmp_path / "not" / "yet", "output root")  # probed in tmp_path
    assert list(tmp_path.iterdir()) == []

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runfolder, "_write_probe", full)
    with pytest.raises(OutputError, match="output root .*No space left on device.*free some space"):
        runfolder.check_folder_writable(tmp_path, "output root")
    assert list(tmp_path.iterdir()) == []


def test_output_checks_cover_the_embedding_cache_only_when_asked(tmp_path, monkeypatch):
    config = synthetic_config(tmp_path, model={"name": "majority"})
    probed = []
    monkeypatch.setattr(runfolder, "_write_probe", lambda path: probed.append(Path(path).parent))
    runfolder.check_output_writable(config, uses_embedding_cache=False)
    assert probed == [tmp_path]  # nothing exists yet: the folder everything would be created in
    probed.clear()
    (tmp_path / "outputs" / "toy").mkdir(parents=True)
    runfolder.check_output_writable(config, uses_embedding_cache=True)
    assert probed == [tmp_path / "outputs", tmp_path / "outputs" / "toy", tmp_path / "outputs"]


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "toy" / "run"
    target.mkdir(parents=True)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    stale = [target.parent / f".run.partial-{finished.pid}-1", target.parent / f".run.replaced-{finished.pid}-2",
             target.parent / ".run.replaced-1700000000000"]  # the older name, without a process id
    live = [target.parent / f".run.partial-{os.getpid()}-3", target.parent / f".other.partial-{finished.pid}-4"]
    for folder in stale + live:
        folder.mkdir()
    assert sorted(runfolder.remove_stale_temporaries(target)) == sorted(stale)
    assert all(folder.exists() for folder in live) and target.exists()


def test_a_run_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    target = tmp_path / "toy" / "hand"
    write_run(target, hand_made_result(), ["a", "b", "c"], "name: hand\n", {"folds": []}, {"run_name": "hand"})
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    target.rename(target.parent / f".hand.replaced-{finished.pid}-1")
    runfolder.remove_stale_temporaries(target)
    assert is_complete(target) and [p.name for p in target.parent.iterdir()] == ["hand"]


# --------------------------------------------------------------------------------------------------
# summary.json's collapse check (docs/run-folder.md): selected-epoch predictions pooled over folds × seeds


def _confusion(rows, selection="selected"):
    """Long confusion rows from {(true, predicted): count} per (seed, fold)."""
    out = []
    for (seed, fold), cells in rows.items():
        for (true, predicted), count in cells.items():
            out.append({"seed": seed, "fold": fold, "selection": selection, "true_class": true,
                        "predicted_class": predicted, "count": count})
    return pd.DataFrame(out, columns=runfolder.CONFUSION_COLUMNS)


def test_summary_collapse_of_the_hand_made_run(tmp_path):
    path = write_run(tmp_path / "toy" / "hand", hand_made_result(), ["a", "b", "c"], "name: hand\n", {"folds": []},
                     {"run_name": "hand"})
    summary = json.loads((path / "summary.json").read_text())
    assert set(summary) == {"selected", "last", "per_class", "collapse"}  # the earlier keys are unchanged
    # selected predictions by hand: [a, b, b, c] + [c, b, a] -> a 2, b 3, c 2 of 7; every class predicted
    assert summary["collapse"] == {"flagged": False, "reason": "", "top_class": "b", "top_share": pytest.approx(3 / 7),
                                   "never_predicted": []}
    assert runfolder.load_run(path).collapse == summary["collapse"]


def test_summary_collapse_flags_a_run_that_predicts_one_class(tmp_path):
    folds = [FoldResult(seed=seed, fold=fold, curves=[], selected_epoch=0, last_epoch=0,
                        test_target=np.array([0, 1, 1, 2, 2, 2]),
                        predictions={"selected": np.zeros(6, dtype=int), "last": np.array([0, 1, 1, 2, 2, 2])})
             for seed in (0, 1) for fold in (0, 1)]
    result = CrossValidationResult(fold_results=folds, device="cpu", device_name="cpu")
    path = write_run(tmp_path / "toy" / "flat", result, ["a", "b", "c"], "name: flat\n", {"folds": []},
                     {"run_name": "flat"})
    collapse = json.loads((path / "summary.json").read_text())["collapse"]
    assert collapse["flagged"] is True
    assert collapse["top_class"] == "a" and collapse["top_share"] == 1.0  # 24 of 24 predictions
    assert collapse["never_predicted"] == ["b", "c"]
    assert "'a'" in collapse["reason"] and "100.0%" in collapse["reason"] and "b, c" in collapse["reason"]
    assert "2 of the 3 classes" in collapse["reason"]


@pytest.mark.parametrize("predicted, support, flagged, never", [
    # one class at exactly 90 % is not "more than 90 %"; one of three never predicted is less than half
    ({"a": 9, "b": 1, "c": 0}, {"a": 4, "b": 3, "c": 3}, False, ["c"]),
    # 10 of 11 = 90.9 % > 90 %
    ({"a": 10, "b": 1, "c": 0}, {"a": 4, "b": 4, "c": 3}, True, ["c"]),
    # no class above 90 %, but 2 of the 4 classes with targets are never predicted: half -> flagged
    ({"a": 5, "b": 5, "c": 0, "d": 0}, {"a": 3, "b": 3, "c": 2, "d": 2}, True, ["c", "d"]),
    # a class without test targets that is never predicted does not count
    ({"a": 5, "b": 4, "c": 1, "d": 0}, {"a": 4, "b": 3, "c": 3, "d": 0}, False, []),
])
def test_collapse_rule_thresholds(predicted, support, flagged, never):
    # Spread the counts over two (seed, fold) pairs to check the pooling: true class taken round-robin from
    # the supports, predicted classes as listed; the column sums are `predicted`, the row sums `support`.
    trues = [c for c, n in support.items() for _ in range(n)]
    preds = [c for c, n in predicted.items() for _ in range(n)]
    assert len(trues) == len(preds)
    cells = [{}, {}]
    for i, (t, p) in enumerate(zip(trues, preds)):
        cells[i % 2][(t, p)] = cells[i % 2].get((t, p), 0) + 1
    confusion = _confusion({(0, 0): cells[0], (1, 0): cells[1]})
    # A "last" selection predicting only "a" must not count.
    confusion = pd.concat([confusion, _confusion({(0, 0): {("b", "a"): 100}}, selection="last")])
    result = runfolder.collapse(confusion, classes=list(predicted))
    total = sum(predicted.values())
    top = max(predicted, key=predicted.get)
    assert result["top_class"] == top and result["top_share"] == pytest.approx(predicted[top] / total)
    assert result["never_predicted"] == never
    assert result["flagged"] is flagged
    assert bool(result["reason"]) is flagged
    assert runfolder.COLLAPSE_TOP_SHARE == 0.9 and runfolder.COLLAPSE_NEVER_PREDICTED_SHARE == 0.5


def test_collapse_of_an_empty_table_is_not_flagged():
    empty = pd.DataFrame(columns=runfolder.CONFUSION_COLUMNS)
    assert runfolder.collapse(empty) == {"flagged": False, "reason": "", "top_class": None, "top_share": None,
                                         "never_predicted": []}
