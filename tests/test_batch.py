"""The batch runner: validation before training, failure isolation, resume, the summary, the executed notebook in
the run folder, `nextpoi batch` exit codes, `nextpoi report`, and the Ray backend on a local Ray instance.

Experiments are parameters/smoke.yaml shrunken further (2 folds, 1 epoch, 2 DGI epochs) in temporary output
roots that share one embedding cache.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from nextpoi_lib import batch, cli
from nextpoi_lib.notebook_parameters import experiment_config
from notebook_support import error_outputs, output_root_with_shared_cache, small_experiment, write_parameter_file


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def manifest(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "manifest.json").read_text())


@pytest.fixture(scope="module")
def first_batch(tmp_path_factory):
    """`nextpoi batch` over a good experiment, one whose folder holds an incomplete run, two invalid parameter
    files and one that fails while executing, with 2 workers and a small profile."""
    base = tmp_path_factory.mktemp("batch")
    root = output_root_with_shared_cache(base / "outputs", tmp_path_factory.getbasetemp() / "dgi-cache")
    files = base / "parameters"
    profile = write_parameter_file(files / "profiles" / "tiny.yaml", {"training": {"batch_size": 512}})
    good = small_experiment(files / "good.yaml", "good")
    resumed = small_experiment(files / "resumed.yaml", "resumed", training={"seeds": [1]})
    invalid = small_experiment(files / "invalid.yaml", "invalid", training={"epochs": "many"})
    typo = small_experiment(files / "typo.yaml", "typo", trainng={"epochs": 1})
    broken = small_experiment(files / "broken.yaml", "broken",
                              dataset={"source": "checkins", "path": str(base / "missing.csv")})
    # What a killed batch leaves: the run's temporary folder and its running notebook, owned by a dead process.
    dead = dead_pid()
    dataset = root / "foursquare_nyc"
    partial = dataset / f".resumed.partial-{dead}-1700000000000"
    partial.mkdir(parents=True)
    (partial / "curves.csv").write_text("half written")
    running = dataset / ".running" / "resumed.ipynb"
    running.parent.mkdir()
    running.write_text("{}")
    batch.owner_file(running).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))

    cwd = os.getcwd()
    code = cli.main(["batch", str(good), str(resumed), str(invalid), str(typo), str(broken), "--output-root",
                     str(root), "--profile", str(profile), "--workers", "2", "--cell-timeout", "600"])
    assert os.getcwd() == cwd
    summary = json.loads((root / "batch-summary.json").read_text())
    by_name = {Path(e["parameter_file"]).stem: e for e in summary["experiments"]}
    return {"root": root, "code": code, "summary": summary, "by_name": by_name, "files": files,
            "profile": profile, "good": good, "broken": broken}


def test_batch_exit_code_is_non_zero_when_an_experiment_failed(first_batch):
    assert first_batch["code"] == 1
    assert first_batch["summary"]["counts"] == {"done": 2, "failed": 3, "skipped": 0, "total": 5}


def test_good_experiment_is_complete_with_its_executed_notebook(first_batch):
    entry = first_batch["by_name"]["good"]
    run_dir = Path(entry["run_dir"])
    assert entry["status"] == "done" and run_dir == first_batch["root"].resolve() / "foursquare_nyc" / "good"
    assert manifest(run_dir)["status"] == "complete"
    notebook_file = run_dir / "notebook.ipynb"
    assert entry["notebook"] == str(notebook_file)
    notebook = nbformat.read(notebook_file, as_version=4)
    assert not error_outputs(notebook)
    injected = next(c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", []))
    assert str(first_batch["good"].resolve()) in injected.source
    # The profile was applied last and recorded; it did not rename the run.
    assert manifest(run_dir)["profile"] == "tiny" and manifest(run_dir)["run_name"] == "good"
    assert "batch_size: 512" in (run_dir / "config.yaml").read_text()
    assert first_batch["summary"]["profile"] == str(first_batch["profile"])
    # Nothing left behind while running.
    assert not (run_dir.parent / ".running").exists() or not any((run_dir.parent / ".running").iterdir())
    assert not list(run_dir.parent.glob(".notebook*")) and not list(run_dir.glob(".notebook*"))


def test_temporaries_of_a_killed_batch_are_cleaned_and_the_run_done(first_batch):
    entry = first_batch["by_name"]["resumed"]
    run_dir = Path(entry["run_dir"])
    assert entry["status"] == "done" and manifest(run_dir)["status"] == "complete"
    assert manifest(run_dir)["seeds"] == [1] and (run_dir / "notebook.ipynb").exists()
    assert not [p.name for p in run_dir.parent.iterdir() if ".partial-" in p.name or ".replaced-" in p.name]
    assert not (run_dir.parent / ".running").exists() or not any((run_dir.parent / ".running").iterdir())


def test_invalid_parameter_files_fail_before_training_with_their_message(first_batch):
    invalid, typo = first_batch["by_name"]["invalid"], first_batch["by_name"]["typo"]
    assert invalid["status"] == "failed" and invalid["stage"] == "validation"
    assert "training.epochs='many' must be an integer" in invalid["error"]
    assert typo["status"] == "failed" and typo["stage"] == "validation"
    assert "Unknown key 'trainng'. Did you mean 'training'?" in typo["error"]
    for entry in (invalid, typo):
        assert entry["seconds"] is None and entry["notebook"] is None  # never executed
    assert not (first_batch["root"] / "foursquare_nyc" / "invalid").exists()


def test_execution_failure_is_recorded_with_its_notebook(first_batch):
    entry = first_batch["by_name"]["broken"]
    assert entry["status"] == "failed" and entry["stage"] == "execution"
    assert "DataError" in entry["error"] and "missing.csv" in entry["error"]
    failed_notebook = Path(entry["notebook"])
    assert failed_notebook == first_batch["root"].resolve() / "missing" / ".failed" / "broken.ipynb"
    errors = error_outputs(nbformat.read(failed_notebook, as_version=4))
    assert errors and errors[0].ename == "DataError"
    assert not Path(entry["run_dir"]).exists()


def test_summary_table_is_printed(first_batch, capsys):
    summary = batch.BatchSummary(experiments=[batch.ExperimentOutcome(**e) for e in
                                              first_batch["summary"]["experiments"]],
                                 output_root=first_batch["summary"]["output_root"], profile=None, backend="local",
                                 workers=2, started_at="")
    table = summary.table()
    assert "good" in table and "[validation] training.epochs='many'" in table and "[execution] DataError" in table
    assert "2 done, 3 failed, 0 skipped of 5" in table


def test_rerun_skips_complete_runs_and_retries_failed_ones(first_batch):
    root, good_dir = first_batch["root"], Path(first_batch["by_name"]["good"]["run_dir"])
    finished_at = manifest(good_dir)["finished_at"]
    notebook_mtime = (good_dir / "notebook.ipynb").stat().st_mtime_ns
    lines: list[str] = []

    class Stream:
        def write(self, text):
            lines.append(text)

        def flush(self):
            pass

    # With live bars (asked for: the stream is no terminal), which change nothing of the above.
    summary = batch.run_batch([first_batch["good"], first_batch["broken"]], profile=first_batch["profile"],
                              output_root=root, stream=Stream(), progress_bars=True)
    statuses = {e.name: e.status for e in summary.experiments}
    assert statuses == {"good": "skipped", "broken": "failed"}
    assert manifest(good_dir)["finished_at"] == finished_at  # not re-executed
    assert (good_dir / "notebook.ipynb").stat().st_mtime_ns == notebook_mtime
    printed = "".join(lines)
    assert "skipped good" in printed and "failed broken" in printed and "0 done, 1 failed, 1 skipped" in printed
    # The kernel wrote its first progress event (data preparation starts, then fails) to the file the batch named
    # in its environment, and the batch drew it; the file is gone.
    drawn = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", part).strip() for part in printed.split("\r")]
    assert any(line.startswith("broken run ") and "| data " in line and " 0/4 [" in line
               and line.endswith("reading the checkins data]") for line in drawn), printed
    assert not list((root / "missing" / ".running").glob("*.progress.jsonl"))
    assert json.loads((root / "batch-summary.json").read_text())["counts"]["skipped"] == 1
    assert not summary.ok
    # The complete run alone: exit code 0.
    assert cli.main(["batch", str(first_batch["good"]), "--output-root", str(root), "--profile",
                     str(first_batch["profile"])]) == 0


def test_report_over_the_complete_runs_names_the_profile(first_batch, capsys):
    root = first_batch["root"]
    assert cli.main(["report", "--output-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"Report of 2 runs of foursquare_nyc -> {root / 'report.html'}" in out
    assert "profile 'tiny'" in out
    html = (root / "report.html").read_text()
    assert "tiny" in html and "good" in html and "resumed" in html
    assert cli.main(["report", str(root / "foursquare_nyc" / "good"), "--output", str(root / "one.html")]) == 0
    assert (root / "one.html").exists()
    assert cli.main(["report", "--output-root", str(root / "nothing-here")]) == 2


def test_unknown_profile_fails_before_anything_runs(tmp_path, capsys):
    good = small_experiment(tmp_path / "good.yaml", "good")
    assert cli.main(["batch", str(good), "--output-root", str(tmp_path / "out"), "--profile", "nope"]) == 2
    assert "Profile 'nope' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_ray_backend_runs_two_experiments_on_a_local_instance(tmp_path_factory):
    ray = pytest.importorskip("ray")
    base = tmp_path_factory.mktemp("ray-batch")
    root = output_root_with_shared_cache(base / "outputs", tmp_path_factory.getbasetemp() / "dgi-cache")
    first = small_experiment(base / "ray_a.yaml", "ray_a")
    second = small_experiment(base / "ray_b.yaml", "ray_b", training={"seeds": [1]})
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 1024 ** 2, log_to_driver=False)
    try:
        summary = batch.run_batch([first, second], backend="ray", output_root=root, progress=False)
    finally:
        ray.shutdown()
    assert summary.ok and summary.backend == "ray"
    assert sorted(e.status for e in summary.experiments) == ["done", "done"], summary.table()
    for name in ("ray_a", "ray_b"):
        run_dir = root / "foursquare_nyc" / name
        assert manifest(run_dir)["status"] == "complete"
        assert not error_outputs(nbformat.read(run_dir / "notebook.ipynb", as_version=4))
    assert json.loads((root / "batch-summary.json").read_text())["backend"] == "ray"


def test_ray_backend_without_ray_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match="pip install 'ray'"):
        batch.run_batch(["parameters/smoke.yaml"], backend="ray")


# --------------------------------------------------------------------------------------------------
# Faults found before anything executes (no notebook runs in these)


def test_folder_that_is_not_a_complete_run_is_refused_never_deleted(tmp_path):
    root = tmp_path / "out"
    folder = root / "foursquare_nyc" / "mine"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"status": "running"}))
    (folder / "draft.md").write_text("what the user put there")
    mine = small_experiment(tmp_path / "mine.yaml", "mine")
    summary = batch.run_batch([mine], output_root=root, progress=False)
    entry = summary.experiments[0]
    assert entry.status == "failed" and entry.stage == "validation" and entry.seconds is None
    assert "A folder that is not a complete run already exists" in entry.error and "--overwrite" in entry.error
    assert (folder / "draft.md").read_text() == "what the user put there"
    assert json.loads((folder / "manifest.json").read_text()) == {"status": "running"}
    assert cli.main(["batch", str(mine), "--output-root", str(root)]) == 1


def test_notebook_of_a_live_batch_is_left_alone(tmp_path):
    root = tmp_path / "out"
    running = root / "foursquare_nyc" / ".running" / "busy.ipynb"
    running.parent.mkdir(parents=True)
    running.write_text("{}")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        batch.owner_file(running).write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        summary = batch.run_batch([small_experiment(tmp_path / "busy.yaml", "busy")], output_root=root,
                                  progress=False)
    finally:
        sleeper.kill()
        sleeper.wait()
    entry = summary.experiments[0]
    assert entry.status == "failed" and entry.stage == "validation"
    assert f"another batch (process {sleeper.pid})" in entry.error
    assert running.read_text() == "{}" and batch.owner_file(running).exists()


def test_clear_stale_running_removes_only_what_no_live_batch_owns(tmp_path):
    running = tmp_path / ".running" / "a.ipynb"
    running.parent.mkdir()
    owner = batch.owner_file(running)
    assert batch.clear_stale_running(running) is None  # nothing there
    running.write_text("{}")  # no owner recorded (an older batch): stale
    assert batch.clear_stale_running(running) is None and not running.exists()
    running.write_text("{}")
    owner.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert batch.clear_stale_running(running) is None and not running.exists() and not owner.exists()
    for pid, host in ((os.getpid(), socket.gethostname()), (dead_pid(), "another-machine")):
        running.write_text("{}")
        owner.write_text(json.dumps({"pid": pid, "host": host}))
        assert batch.clear_stale_running(running) == pid and running.exists() and owner.exists()


def test_a_notebook_left_by_a_batch_killed_after_its_run_completed_moves_into_the_run(tmp_path):
    """Killed between renaming the run folder into place and copying the notebook: the next batch finishes that
    step (the run is complete; only its notebook.ipynb was missing), and leaves an incomplete folder alone."""
    run_dir = tmp_path / "toy" / "a"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"status": "complete"}))
    running = tmp_path / "toy" / ".running" / "a.ipynb"
    running.parent.mkdir()
    running.write_text('{"cells": ["executed"]}')
    batch.owner_file(running).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert batch.clear_stale_running(running, run_dir) is None
    assert (run_dir / "notebook.ipynb").read_text() == '{"cells": ["executed"]}' and not running.exists()
    # a folder that is not complete gets no notebook; the stale one is just removed
    other = tmp_path / "toy" / "b"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"status": "running"}))
    stale = running.parent / "b.ipynb"
    stale.write_text("{}")
    assert batch.clear_stale_running(stale, other) is None
    assert not (other / "notebook.ipynb").exists() and not stale.exists()


def test_a_complete_run_made_with_other_settings_is_not_taken_for_this_files_run(tmp_path):
    # The user edits a parameter file after its run finished: skipping it would report the old numbers as
    # the new settings'. The batch refuses it before any work, names the keys, and leaves the old run alone.
    root = tmp_path / "out"
    path = small_experiment(tmp_path / "edited.yaml", "edited")
    run_dir = root / "foursquare_nyc" / "edited"
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"status": "complete", "run_name": "edited"}))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(experiment_config([path]).to_dict()))
    # The same settings written elsewhere and with progress lines off: still this file's run, skipped.
    summary = batch.run_batch([path], output_root=root, progress=False)
    assert [e.status for e in summary.experiments] == ["skipped"]
    edited = small_experiment(tmp_path / "edited.yaml", "edited", optimizer={"learning_rate": 0.5},
                              training={"seeds": [4]})
    stored = (run_dir / "config.yaml").read_text()
    summary = batch.run_batch([edited], output_root=root, progress=False)
    [outcome] = summary.experiments
    assert (outcome.status, outcome.stage) == ("failed", "validation")
    assert "optimizer.learning_rate" in outcome.error and "-> 0.5" in outcome.error
    assert "training.seeds" in outcome.error and "--overwrite" in outcome.error
    assert (run_dir / "config.yaml").read_text() == stored and not (run_dir / "notebook.ipynb").exists()


def test_output_root_that_is_a_regular_file_stops_the_batch(tmp_path, capsys):
    root = tmp_path / "out"
    root.write_text("a file")
    good = small_experiment(tmp_path / "good.yaml", "good")
    assert cli.main(["batch", str(good), "--output-root", str(root)]) == 2
    assert "regular file" in capsys.readouterr().err and root.read_text() == "a file"


def test_run_moved_aside_by_a_killed_run_is_put_back_and_skipped(tmp_path):
    root = tmp_path / "out"
    aside = root / "foursquare_nyc" / f".kept.replaced-{dead_pid()}-1700000000000"
    aside.mkdir(parents=True)
    (aside / "manifest.json").write_text(json.dumps({"status": "complete", "run_name": "kept"}))
    kept = small_experiment(tmp_path / "kept.yaml", "kept")
    (aside / "config.yaml").write_text(yaml.safe_dump(experiment_config([kept]).to_dict()))
    summary = batch.run_batch([kept], output_root=root, progress=False)
    assert [e.status for e in summary.experiments] == ["skipped"]
    assert json.loads((root / "foursquare_nyc" / "kept" / "manifest.json").read_text())["run_name"] == "kept"
    assert not aside.exists()


# --------------------------------------------------------------------------------------------------
# Live progress bars (the notebook execution is replaced by a stand-in that writes progress events)


class Terminal:
    """An output stream that says it is a terminal, keeping what was written."""

    def __init__(self):
        self.parts: list[str] = []

    def write(self, text):
        self.parts.append(text)

    def flush(self):
        pass

    def isatty(self):
        return True

    def text(self) -> str:
        return "".join(self.parts)


STEPS = {"alpha": 3, "beta": 5}


def write_events(task) -> None:
    """What a kernel does with bars on: write its events to the file the batch named in its environment."""
    from nextpoi_lib.progress import EVENTS_ENVIRONMENT, EventFile

    assert task["env"][EVENTS_ENVIRONMENT] == task["progress_events"]
    name = Path(task["run_dir"]).name
    Path(task["running_notebook"]).parent.mkdir(parents=True, exist_ok=True)  # as execute_experiment does
    events = EventFile(task["env"][EVENTS_ENVIRONMENT], min_interval=0)
    events.record("train", 0, STEPS[name], "plan")
    for step in range(1, STEPS[name] + 1):
        events.record("train", step, STEPS[name], f"{name} step {step}")


def test_live_bars_draw_one_line_per_running_experiment(tmp_path, monkeypatch):
    import threading

    monkeypatch.delenv("CI", raising=False)
    created: list[batch.LiveBars] = []

    class RecordedBars(batch.LiveBars):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    both_running, both_written, seen = threading.Barrier(2, timeout=60), threading.Barrier(2, timeout=60), {}
    snapshot: dict = {}

    def stand_in(task):
        both_running.wait()
        write_events(task)
        both_written.wait()
        if Path(task["run_dir"]).name == "alpha":
            bars = created[0]
            bars.poll()
            snapshot.update({entry["name"]: (entry["bar"].n, entry["bar"].total)
                             for entry in bars._running.values()})
        both_running.wait()  # beta finishes only after alpha looked at both lines
        seen[Path(task["run_dir"]).name] = task
        return {"status": "done", "seconds": 0.1}

    monkeypatch.setattr(batch, "LiveBars", RecordedBars)
    monkeypatch.setattr(batch, "execute_experiment", stand_in)
    screen = Terminal()
    files = [small_experiment(tmp_path / f"{name}.yaml", name) for name in STEPS]
    summary = batch.run_batch(files, output_root=tmp_path / "out", workers=2, stream=screen)
    assert [e.status for e in summary.experiments] == ["done", "done"]
    # Both experiments had their line at the same time, each with the counts of its own event file.
    assert snapshot == {"alpha": (3, 3), "beta": (5, 5)}
    drawn = screen.text()
    lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", part).strip() for part in drawn.split("\r")]  # tqdm's cursor moves
    for name, steps in STEPS.items():
        assert any(line.startswith(f"{name:<5} run ") and "| train " in line and f" {steps}/{steps} [" in line
                   and line.endswith(f"{name} step {steps}]") for line in lines)
        # the plain lines of the batch stay
        assert f"start {name} (" in drawn and f"done {name} in " in drawn
        # the event file sat beside the running notebook, and is gone
        events = Path(seen[name]["progress_events"])
        assert events == Path(seen[name]["running_notebook"]).with_name(f"{name}.progress.jsonl")
        assert not events.exists()
    assert "2 done, 0 failed, 0 skipped of 2" in drawn


def test_no_bars_and_no_event_file_with_the_flag_in_ci_or_without_a_terminal(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(batch, "run_batch", lambda *args, **kwargs: calls.append(kwargs) or batch.BatchSummary(
        experiments=[], output_root="", profile=None, backend="local", workers=1, started_at=""))
    assert cli.main(["batch", "a.yaml", "--no-progress-bars"]) == 0 and cli.main(["batch", "a.yaml"]) == 0
    assert [c["progress_bars"] for c in calls] == [False, None]
    monkeypatch.undo()

    tasks = []

    def stand_in(task):
        tasks.append(task)
        return {"status": "done", "seconds": 0.1}

    monkeypatch.setattr(batch, "execute_experiment", stand_in)
    good = small_experiment(tmp_path / "good.yaml", "good")
    monkeypatch.setenv("CI", "true")
    screens = {"ci": Terminal(), "flag": Terminal(), "log": io.StringIO()}
    batch.run_batch([good], output_root=tmp_path / "ci", stream=screens["ci"])
    monkeypatch.delenv("CI")
    batch.run_batch([good], output_root=tmp_path / "flag", stream=screens["flag"], progress_bars=False)
    batch.run_batch([good], output_root=tmp_path / "log", stream=screens["log"])
    from nextpoi_lib.progress import EVENTS_ENVIRONMENT

    assert [(t["env"][EVENTS_ENVIRONMENT], t["progress_events"]) for t in tasks] == [("", None)] * 3
    for screen in screens.values():
        text = screen.text() if isinstance(screen, Terminal) else screen.getvalue()
        assert "start good (" in text and "done good in " in text and "\r" not in text and " run 00:" not in text


def test_ray_backend_draws_the_bar_of_each_submitted_experiment(tmp_path, monkeypatch):
    """_run_ray with a stand-in for Ray that runs each task when it is waited for."""

    class Reference:
        def __init__(self, task):
            self.task = task

    class StandInRay:
        def remote(self, function):
            class Options:
                def options(self, **_):
                    return self

                def remote(self, task):
                    return Reference(task)

            return Options()

        def wait(self, references, num_returns):
            return references[:num_returns], references[num_returns:]

        def get(self, reference):
            return batch.execute_experiment(reference.task)

    states = {}

    def stand_in(task):
        write_events(task)
        states[Path(task["run_dir"]).name] = bars.state(task["running_notebook"]) is not None
        return {"status": "done", "seconds": 0.1}

    monkeypatch.setattr(batch, "execute_experiment", stand_in)
    screen = Terminal()
    reporter = batch._Reporter(True, 2, screen)
    pending = []
    for name in STEPS:
        running = tmp_path / ".running" / f"{name}.ipynb"
        events = batch.events_file(running)
        pending.append((batch.ExperimentOutcome(parameter_file=f"{name}.yaml", status="pending", name=name),
                        {"run_dir": str(tmp_path / name), "running_notebook": str(running),
                         "progress_events": str(events), "env": {"NEXTPOI_PROGRESS_EVENTS": str(events)}}))
    running.parent.mkdir()
    recorded = []
    with batch.LiveBars(screen, name_width=5) as bars:
        reporter.bars = bars
        batch._run_ray(StandInRay(), pending, None, 0, reporter,
                       lambda outcome, result: recorded.append((outcome.name, result["status"])))
    assert states == {"alpha": True, "beta": True} and recorded == [("alpha", "done"), ("beta", "done")]
    for name, steps in STEPS.items():
        assert f" {steps}/{steps} [" in screen.text() and not batch.events_file(tmp_path / ".running" /
                                                                              f"{name}.ipynb").exists()


def test_the_event_file_of_a_killed_batch_goes_with_its_notebook(tmp_path):
    running = tmp_path / ".running" / "a.ipynb"
    running.parent.mkdir()
    running.write_text("{}")
    events = batch.events_file(running)
    assert events == tmp_path / ".running" / "a.progress.jsonl"
    events.write_text('{"stage": "train", "done": 1, "total": 2}\n')
    batch.owner_file(running).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    assert batch.clear_stale_running(running) == os.getpid() and events.exists()  # a live batch's: kept
    batch.owner_file(running).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert batch.clear_stale_running(running) is None and not events.exists() and not running.exists()


GOWALLA7 = Path(__file__).resolve().parent.parent / "parameters" / "classes" / "gowalla7.yaml"


def test_a_layer_applies_to_every_file_and_keeps_each_files_run_name(tmp_path, monkeypatch):
    """`nextpoi batch ... --layer parameters/classes/gowalla7.yaml`: every experiment resolves with the layer (the 7
    classes), after its file and before the profile; a layer never names a run, also for a file without `name:`."""
    import yaml

    from nextpoi_lib import notebook_parameters
    from notebook_support import SHRINK, SMOKE, write_parameter_file

    tasks = {}

    def stand_in(task):
        tasks[Path(task["run_dir"]).name] = task
        return {"status": "done", "seconds": 0.1}

    monkeypatch.setattr(batch, "execute_experiment", stand_in)
    named = small_experiment(tmp_path / "named.yaml", "alpha")
    # smoke.yaml's sections without its name (and no extends, which would bring that name back).
    smoke = {key: value for key, value in yaml.safe_load(SMOKE.read_text()).items() if key != "name"}
    unnamed = write_parameter_file(tmp_path / "unnamed.yaml", {**smoke, **SHRINK})
    assert "name" not in yaml.safe_load(unnamed.read_text())
    summary = batch.run_batch([named, unnamed], output_root=tmp_path / "out", progress=False, layers=[GOWALLA7])
    assert [e.status for e in summary.experiments] == ["done", "done"]
    assert sorted(tasks) == ["alpha", "unnamed"] and summary.layers == [str(GOWALLA7)]
    seven = yaml.safe_load(GOWALLA7.read_text())["dataset"]["classes"]
    for name, task in tasks.items():
        parameters = task["parameters"]
        assert parameters["parameter_files"][-1] == str(GOWALLA7) and parameters["name"] == name
        # What the notebook resolves from the injected parameters: the layer's classes under the file's name.
        config = notebook_parameters.experiment_config(parameters["parameter_files"], sections={"name": name},
                                                       output_root=parameters["output_root"])
        assert config.dataset.classes == seven and config.name == name
    # Without the layer the same files keep the data's own classes.
    plain = notebook_parameters.experiment_config([named])
    assert plain.dataset.classes != seven


def test_a_missing_layer_stops_the_batch_before_anything_runs(tmp_path, monkeypatch):
    from nextpoi_lib.config import ConfigError

    monkeypatch.setattr(batch, "execute_experiment", lambda task: pytest.fail("nothing may run"))
    with pytest.raises(ConfigError, match="nope.yaml.*--layer"):
        batch.run_batch([small_experiment(tmp_path / "a.yaml", "a")], output_root=tmp_path / "out", progress=False,
                        layers=[tmp_path / "nope.yaml"])
    assert not (tmp_path / "out" / batch.SUMMARY_FILE).exists()
