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
