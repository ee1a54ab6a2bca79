"""The batch runner: validation before training, failure isolation, resume, the summary, the executed notebook in
the run folder, `nextpoi batch` exit codes, `nextpoi report`, and the Ray backend on a local Ray instance.

Experiments are parameters/smoke.yaml shrunken further (2 folds, 1 epoch, 2 DGI epochs) in temporary output
roots that share one embedding cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest

from nextpoi_lib import batch, cli
from notebook_support import error_outputs, output_root_with_shared_cache, small_experiment, write_parameter_file


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
    # A folder left by something that did not finish: not a complete run, so it is re-run in place.
    leftover = root / "foursquare_nyc" / "resumed"
    leftover.mkdir(parents=True)
    (leftover / "manifest.json").write_text(json.dumps({"status": "running"}))
    (leftover / "stale.txt").write_text("left over")

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


def test_incomplete_run_folder_is_rerun(first_batch):
    entry = first_batch["by_name"]["resumed"]
    run_dir = Path(entry["run_dir"])
    assert entry["status"] == "done" and manifest(run_dir)["status"] == "complete"
    assert manifest(run_dir)["seeds"] == [1]
    assert not (run_dir / "stale.txt").exists() and (run_dir / "notebook.ipynb").exists()


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

    summary = batch.run_batch([first_batch["good"], first_batch["broken"]], profile=first_batch["profile"],
                              output_root=root, stream=Stream())
    statuses = {e.name: e.status for e in summary.experiments}
    assert statuses == {"good": "skipped", "broken": "failed"}
    assert manifest(good_dir)["finished_at"] == finished_at  # not re-executed
    assert (good_dir / "notebook.ipynb").stat().st_mtime_ns == notebook_mtime
    printed = "".join(lines)
    assert "skipped good" in printed and "failed broken" in printed and "0 done, 1 failed, 1 skipped" in printed
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
