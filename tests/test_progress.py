"""Progress events and the live bars of `nextpoi batch`: what the library writes to an event file (stages, counts,
throttling), how the batch folds a file into a bar, and when bars are on.

Tiny synthetic data (tests/synthetic.py: 50 users, 2 or 3 folds); the expected counts are computed from the config
(seeds x folds x epochs), not read back from the code under test.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from nextpoi_lib import progress as progress_module
from nextpoi_lib.live_bars import LiveBars, progress_bars_wanted
from nextpoi_lib.embeddings import compute_dgi_embeddings
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.progress import (EVENTS_ENVIRONMENT, EventFile, EventFollower, Progress, ProgressState,
                                  progress_step)
from nextpoi_lib.training.fitted import cross_validate_fitted
from nextpoi_lib.training.neural import cross_validate
from nextpoi_lib.trees import GradientBoostedTrees
from synthetic import synthetic_config


class Terminal(io.StringIO):
    """What tqdm draws to, standing in for a terminal."""

    def isatty(self) -> bool:
        return True


def read_events(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(autouse=True)
def no_event_file_from_outside(monkeypatch):
    monkeypatch.delenv(EVENTS_ENVIRONMENT, raising=False)


# --------------------------------------------------------------------------------------------------
# What the library writes


def test_every_epoch_of_every_seed_and_fold_is_one_train_event_and_results_do_not_change(tmp_path, capsys):
    seeds, epochs = [0, 1], 2
    config = synthetic_config(tmp_path, folds={"n_splits": 2}, training={"seeds": seeds, "epochs": epochs})
    path = tmp_path / "events.jsonl"
    recorded = Progress(False, events=EventFile(path, min_interval=0))
    prepared = prepare_data(config, recorded)
    with_events = cross_validate(config, prepared.windows, prepared.fold_manifest, recorded)
    assert capsys.readouterr().out == ""  # steps print nothing, and lines are off
    events = read_events(path)
    assert set(events[0]) == {"time", "stage", "done", "total", "detail"}

    data = [e for e in events if e["stage"] == "data"]
    assert [(e["done"], e["total"]) for e in data] == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    assert data[-1]["detail"] == f"{len(prepared.windows.target)} windows"

    folds = config.folds.n_splits
    train = [e for e in events if e["stage"] == "train"]
    plan, steps = train[0], train[1:]
    assert "job" not in plan and (plan["done"], plan["total"]) == (0, len(seeds) * folds * epochs)
    assert len(steps) == len(seeds) * folds * epochs
    expected_jobs = {f"seed {seed} fold {fold}/{folds}" for seed in seeds for fold in range(1, folds + 1)}
    assert {e["job"] for e in steps} == expected_jobs
    for job in expected_jobs:
        assert [e["done"] for e in steps if e["job"] == job] == list(range(1, epochs + 1))
    assert steps[-1]["detail"] == f"seed {seeds[-1]} fold {folds}/{folds} epoch {epochs}/{epochs}"
    state = ProgressState()
    for event in events:
        state.add(event)
    assert state.current == "train" and state.counts() == (len(seeds) * folds * epochs,) * 2

    # The same training without an event file: the very same numbers.
    without = cross_validate(config, prepared.windows, prepared.fold_manifest, Progress(False))
    for a, b in zip(with_events.fold_results, without.fold_results):
        assert (a.seed, a.fold, a.selected_epoch) == (b.seed, b.fold, b.selected_epoch)
        np.testing.assert_array_equal(a.predictions["selected"], b.predictions["selected"])
        assert pd.DataFrame(a.curves).equals(pd.DataFrame(b.curves))


def test_an_early_stop_counts_the_epochs_left_out_as_done(tmp_path):
    # A constant learning rate of 0 never improves after the first epoch: patience 1 stops at epoch 2.
    config = synthetic_config(tmp_path, folds={"n_splits": 2}, optimizer={"learning_rate": 1.0e-12},
                              training={"epochs": 6, "early_stopping_patience": 1})
    path = tmp_path / "events.jsonl"
    recorded = Progress(False, events=EventFile(path, min_interval=0))
    prepared = prepare_data(config, Progress(False))
    result = cross_validate(config, prepared.windows, prepared.fold_manifest, recorded)
    stopped = [r for r in result.fold_results if r.last_epoch < 6]
    assert stopped, "the setting was meant to stop early"
    state = ProgressState()
    for event in read_events(path):
        state.add(event)
    assert state.counts() == (config.folds.n_splits * 6,) * 2


def test_each_tree_fit_is_one_step_of_the_trees_stage(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"}, trees={"max_iter": 5},
                              training={"seeds": [0, 1]})
    prepared = prepare_data(config, Progress(False))
    path = tmp_path / "events.jsonl"
    cross_validate_fitted(config, prepared.windows, prepared.fold_manifest,
                          lambda seed: GradientBoostedTrees.from_config(config.trees, seed),
                          Progress(False, events=EventFile(path, min_interval=0)))
    events = read_events(path)
    fits = 2 * config.folds.n_splits
    assert {e["stage"] for e in events} == {"trees"}
    assert [(e["done"], e["total"]) for e in events] == [(done, fits) for done in range(fits + 1)]
    assert events[-1]["detail"] == f"seed 1 fold {config.folds.n_splits}/{config.folds.n_splits}"


def test_dgi_epochs_go_to_the_file_the_environment_names_and_change_nothing(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    pois = pd.DataFrame({"poi_id": [f"p{i:02d}" for i in range(12)], "latitude": 41.0 + rng.uniform(0, .02, 12),
                         "longitude": 2.0 + rng.uniform(0, .02, 12), "category": ["A", "B", "C"] * 4})
    quiet = compute_dgi_embeddings(pois, ["A", "B", "C"], dim=4, epochs=4)
    path = tmp_path / "kernel.progress.jsonl"
    monkeypatch.setenv(EVENTS_ENVIRONMENT, str(path))
    reported = compute_dgi_embeddings(pois, ["A", "B", "C"], dim=4, epochs=4)
    pd.testing.assert_frame_equal(quiet, reported)
    events = read_events(path)
    assert {e["stage"] for e in events} == {"embeddings"}
    # First and last are always written; the epochs between may be held back by the throttle.
    assert (events[0]["done"], events[0]["total"]) == (0, 4) and events[-1]["done"] == events[-1]["total"] == 4
    assert events[-1]["detail"] == "DGI epoch 4/4"
    done = [e["done"] for e in events]
    assert done == sorted(done) and set(done) <= {0, 1, 2, 3, 4}


def test_a_plain_callable_reports_to_the_environment_file_or_nowhere(tmp_path, monkeypatch):
    lines: list[str] = []
    progress_step(lines.append, "fit", 0, 2)  # no file named: nothing happens
    path = tmp_path / "e.jsonl"
    monkeypatch.setenv(EVENTS_ENVIRONMENT, str(path))
    progress_step(lines.append, "fit", 0, 2, "start")
    progress_step(None, "fit", 2, 2, "end")
    assert lines == [] and [(e["done"], e["detail"]) for e in read_events(path)] == [(0, "start"), (2, "end")]
    monkeypatch.setenv(EVENTS_ENVIRONMENT, "")  # empty: off
    assert progress_module.events_from_environment() is None


def test_writes_are_throttled_but_every_job_ends_complete(tmp_path, monkeypatch):
    path = tmp_path / "e.jsonl"
    events = EventFile(path, min_interval=3600)  # nothing but first/last steps passes the throttle
    events.record("train", 0, 6, "plan")
    for epoch in (1, 2, 3):
        for job in ("a", "b"):
            events.record("train", epoch, 3, f"{job} {epoch}", job=job)
    # plan (first step), then at a's last epoch everything held back (b at 2, a at 3), then b's last epoch
    assert [(e.get("job"), e["done"]) for e in read_events(path)] == [(None, 0), ("b", 2), ("a", 3), ("b", 3)]
    state = ProgressState()
    for event in read_events(path):
        state.add(event)
    assert state.counts() == (6, 6) and state.detail == "b 3"
    events.record("data", 1, 4, "held")
    assert len(read_events(path)) == 4
    events.flush()
    assert read_events(path)[-1]["detail"] == "held"


def test_follower_reads_complete_lines_only_and_skips_what_is_no_event(tmp_path):
    path = tmp_path / "e.jsonl"
    follower = EventFollower(path)
    assert follower.read_new() == []  # not there yet
    path.write_text('{"stage": "data", "done": 1, "total": 4, "detail": "x"}\n{"stage": "da')
    assert [e["done"] for e in follower.read_new()] == [1]
    with open(path, "a") as handle:
        handle.write('ta", "done": 2, "total": 4}\nnot json\n{"stage": "data"}\n')
    assert [e["done"] for e in follower.read_new()] == [2]
    assert follower.read_new() == []


# --------------------------------------------------------------------------------------------------
# The bars


def test_a_bar_shows_the_counts_of_its_event_file(tmp_path):
    path = tmp_path / "run.progress.jsonl"
    screen = Terminal()
    bars = LiveBars(screen, name_width=5)
    bars.start("key", "A", path)
    events = EventFile(path, min_interval=0)
    events.record("data", 4, 4, "done")
    events.record("train", 0, 2 * 3 * 10, "plan")
    per_job = {"seed 0 fold 1/3": 10, "seed 0 fold 2/3": 7, "seed 0 fold 3/3": 4, "seed 1 fold 1/3": 1}
    for job, epoch in per_job.items():
        events.record("train", epoch, 10, f"{job} epoch {epoch}/10", job=job)
    bars.poll()
    bar = bars._running["key"]["bar"]
    assert (bar.n, bar.total) == (10 + 7 + 4 + 1, 60)
    drawn = screen.getvalue().split("\r")[-1]
    assert drawn.startswith("A     run ") and "| train " in drawn and " 22/60 [" in drawn
    assert drawn.rstrip().endswith("seed 1 fold 1/3 epoch 1/10]")
    events.record("trees", 1, 6, "seed 0 fold 1/3")  # the next stage: its own count
    bars.finish("key")  # reads the last events, removes the line and the file
    assert " 1/6 [" in screen.getvalue().split("\r")[-3] and not path.exists() and "key" not in bars._running
    bars.close()


def test_bars_are_on_only_for_a_terminal_without_ci_unless_asked(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert progress_bars_wanted(None, Terminal()) is True
    assert progress_bars_wanted(None, io.StringIO()) is False  # not a terminal (a log file, a pipe)
    assert progress_bars_wanted(False, Terminal()) is False  # --no-progress-bars
    assert progress_bars_wanted(True, io.StringIO()) is True  # asked for explicitly (Python API)
    monkeypatch.setenv("CI", "true")
    assert progress_bars_wanted(None, Terminal()) is False
    monkeypatch.setenv("CI", "0")
    assert progress_bars_wanted(None, Terminal()) is True
