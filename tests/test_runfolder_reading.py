"""Reading run folders back (nextpoi_lib.runfolder): which folders count as complete runs, and which runs
are analysed together."""

from __future__ import annotations

import json

import pytest

from nextpoi_lib import runfolder
from runfixtures import make_fake_run


def test_discover_runs_lists_complete_runs_only(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="a")
    make_fake_run(root, run_name="b", status="failed")
    hidden = root / "toy" / ".c.partial-1"
    hidden.mkdir()
    (hidden / "manifest.json").write_text(json.dumps({"status": "complete"}))
    (root / "toy" / "empty").mkdir()
    d = make_fake_run(root, dataset="zeta", run_name="d")
    assert runfolder.discover_runs(root) == [a, d]
    assert runfolder.discover_runs(tmp_path / "nothing") == []


def test_select_runs_limits_to_one_dataset(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, dataset="toy", run_name="a")
    b = make_fake_run(root, dataset="toy", run_name="b")
    c = make_fake_run(root, dataset="zeta", run_name="a")
    assert runfolder.select_runs(root, dataset="toy") == [a, b]
    assert runfolder.select_runs(root, ["toy/a", "b"]) == [a, b]
    assert runfolder.select_runs(root, ["a"], dataset="zeta") == [c]
    with pytest.raises(ValueError, match="several datasets"):
        runfolder.select_runs(root, ["a"])
    with pytest.raises(ValueError, match="no complete run named 'zz'"):
        runfolder.select_runs(root, ["zz"])
    assert len({runfolder.load_run(p).dataset for p in runfolder.select_runs(root)}) == 1


def test_old_folders_get_the_collapse_check_from_confusion_csv(tmp_path):
    """Folders whose summary.json has no `collapse` (the fake runs, like folders written before it) are
    checked when read, from confusion.csv: predicted counts = column sums of the selected rows."""
    import pandas as pd

    root = tmp_path / "outputs"
    flat = make_fake_run(root, run_name="flat", seeds=(0, 1), collapse_to="C")
    fine = make_fake_run(root, run_name="fine", quality=0.7)
    for path in (flat, fine):
        assert "collapse" not in json.loads((path / "summary.json").read_text())
        confusion = pd.read_csv(path / "confusion.csv")
        selected = confusion[confusion["selection"] == "selected"]
        predicted = selected.groupby("predicted_class")["count"].sum()
        collapse = runfolder.load_run(path).collapse
        assert collapse["top_class"] == predicted.idxmax()
        assert collapse["top_share"] == pytest.approx(predicted.max() / predicted.sum())
    flat_collapse = runfolder.load_run(flat).collapse
    assert flat_collapse["flagged"] and flat_collapse["top_share"] == 1.0
    assert flat_collapse["never_predicted"] == ["A", "B"] and "'C'" in flat_collapse["reason"]
    assert not runfolder.load_run(fine).collapse["flagged"]


def test_a_stored_collapse_is_read_as_written(tmp_path):
    path = make_fake_run(tmp_path / "outputs", run_name="a", collapse_to="A")
    summary = json.loads((path / "summary.json").read_text())
    stored = {"flagged": False, "reason": "", "top_class": "B", "top_share": 0.5, "never_predicted": []}
    (path / "summary.json").write_text(json.dumps({**summary, "collapse": stored}))
    assert runfolder.load_run(path).collapse == stored
