"""Batch runs: executing the experiment notebook once per parameter file.

`run_batch` executes `notebooks/experiment.ipynb` through papermill's Python API, one execution per parameter
file, locally (a pool of workers, one GPU each) or as Ray tasks; `nextpoi batch` (in `cli`) is its command
line. The parameters resolve as in the notebook (`notebook_parameters.experiment_config`, the layering rules of
`layers`), so the batch validates exactly the config the notebook will run.

Before anything trains, every parameter file is resolved and validated; a file with an unknown key or an
invalid value is recorded as failed with its message and the others still run. A file whose run folder is
already complete is skipped (resume) when its `config.yaml` is this file's resolved config (a complete run of the
same name made with other settings is recorded as failed, naming the keys that differ: pass `overwrite` to
replace it); a folder that exists under the run's name but is not a complete run (what
a user put there) is never deleted without `overwrite`: that file is recorded as failed with the message
`nextpoi run` gives, as is one whose notebook another live batch is executing now.

Files under `output_root` (`<dataset>` is the config's dataset folder, `<name>` the run name):

* `<dataset>/<name>/notebook.ipynb` -- the executed notebook of a successful run, copied atomically into the
  run folder (temporary name, then `os.replace`) after the notebook finished;
* `<dataset>/.running/<name>.ipynb` -- the notebook while it executes (papermill saves it after every cell and
  every 30 s within a long cell: open it to follow a run); removed when the run succeeded. Beside it
  `<name>.ipynb.owner` names the batch process (pid, host) executing it: a later batch removes both when that
  process is no longer alive (a killed batch), and leaves them alone while it is;
* `<dataset>/.failed/<name>.ipynb` -- the executed notebook of a failed experiment, traceback included (a later
  successful run of the same name removes it);
* `<dataset>/.running/<name>.progress.jsonl` -- with live progress bars only: the progress events the kernel
  writes (`progress.EventFile`; the batch names the file in the kernel's environment variable
  NEXTPOI_PROGRESS_EVENTS) and the batch reads to draw the experiment's bar; removed when the experiment ends;
* `batch-summary.json` -- one entry per parameter file (status, error message, run folder, notebook, timings),
  written atomically at the end of each batch (and after each finished experiment, so it is never stale).

Hidden folders (`.running`, `.failed`, `.cache`) are ignored by everything that lists runs.

Progress: plain lines when an experiment starts and ends (`_Reporter`), and, when the batch's output is a
terminal and the environment variable CI is not set (or `progress_bars=True`), one live tqdm line per running
experiment (`LiveBars`): its stage (data, embeddings, train, trees), done/total steps of that stage -- for
"train" every (seed, fold, epoch) -- with elapsed and remaining time and the current seed/fold/epoch.
`progress_bars=False` (`nextpoi batch --no-progress-bars`) turns the bars off; the plain lines stay.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as dt
import json
import os
import queue
import re
import shutil
import socket
import sys
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .config import ConfigError, updated
from .layers import resolve_profile, visible_gpus
from .notebook_parameters import experiment_config
from .live_bars import LiveBars, progress_bars_wanted
from .progress import EVENTS_ENVIRONMENT
from .runfolder import (RunExistsError, check_folder_writable, check_run_target, is_complete, process_alive,
                        remove_stale_temporaries, run_directory, stored_config_differences)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_PATH = PACKAGE_ROOT / "notebooks" / "experiment.ipynb"
SUMMARY_FILE = "batch-summary.json"


# --------------------------------------------------------------------------------------------------
# Kernels


def _kernel_manager_class(extra_env: dict[str, str]):
    """A kernel manager that starts the kernel with `extra_env` added to this process's environment (set before
    the kernel starts, so CUDA sees only the assigned GPU). A class per execution: thread-safe, no os.environ."""
    from jupyter_client.manager import AsyncKernelManager

    class EnvironmentKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            env = dict(kw.pop("env", None) or os.environ)
            env.update(extra_env)
            return await super().start_kernel(env=env, **kw)

    return EnvironmentKernelManager


# --------------------------------------------------------------------------------------------------
# Summary


@dataclass
class ExperimentOutcome:
    parameter_file: str
    status: str  # "done", "skipped" or "failed"
    name: str | None = None
    dataset: str | None = None
    stage: str | None = None  # for failures: "validation" or "execution"
    error: str | None = None
    run_dir: str | None = None
    notebook: str | None = None  # executed notebook: in the run folder, or under .failed/
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES of the kernel
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = None


@dataclass
class BatchSummary:
    experiments: list[ExperimentOutcome]
    output_root: str
    profile: str | None  # profile file applied to every experiment
    backend: str
    workers: int | None
    started_at: str
    finished_at: str | None = None
    duration_seconds: float | None = None
    summary_path: str | None = None
    layers: list[str] = field(default_factory=list)  # parameter layers applied after every file, before the profile

    def _count(self, status: str) -> list[ExperimentOutcome]:
        return [e for e in self.experiments if e.status == status]

    @property
    def done(self) -> list[ExperimentOutcome]:
        return self._count("done")

    @property
    def failed(self) -> list[ExperimentOutcome]:
        return self._count("failed")

    @property
    def skipped(self) -> list[ExperimentOutcome]:
        return self._count("skipped")

    @property
    def ok(self) -> bool:
        return not self.failed

    def counts(self) -> dict[str, int]:
        return {"done": len(self.done), "failed": len(self.failed), "skipped": len(self.skipped),
                "total": len(self.experiments)}

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("summary_path")
        data["counts"] = self.counts()
        return data

    def table(self, width: int = 100) -> str:
        """Plain-text table, one line per parameter file (errors shortened to their first line)."""
        rows = [("parameter file", "run", "status", "time", "run folder / error")]
        for e in self.experiments:
            detail = (e.error or "").strip().splitlines()[0] if e.status == "failed" and e.error else (e.run_dir or "")
            if e.status == "failed" and e.stage:
                detail = f"[{e.stage}] {detail}"
            if len(detail) > width:
                detail = detail[: width - 3] + "..."
            seconds = f"{e.seconds:.0f}s" if e.seconds is not None else "-"
            rows.append((e.parameter_file, e.name or "-", e.status, seconds, detail))
        widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
        lines = ["  ".join(str(value).ljust(widths[i]) for i, value in enumerate(row[:4])) + "  " + row[4]
                 for row in rows]
        lines.insert(1, "-" * min(max(len(line) for line in lines), 160))
        c = self.counts()
        lines.append(f"{c['done']} done, {c['failed']} failed, {c['skipped']} skipped of {c['total']}"
                     + (f" in {self.duration_seconds:.0f}s" if self.duration_seconds is not None else "")
                     + (f"; profile {Path(self.profile).stem}" if self.profile else "; no profile"))
        return "\n".join(lines)


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    temporary.write_text(json.dumps(data, indent=2))
    os.replace(temporary, path)


def _copy_atomic(source: Path, target: Path) -> None:
    temporary = target.parent / f".{target.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _error_message(error: BaseException) -> str:
    ename, evalue = getattr(error, "ename", None), getattr(error, "evalue", None)
    if ename:  # papermill's PapermillExecutionError: the exception raised inside the notebook
        cell = getattr(error, "exec_count", None)
        return _ANSI.sub("", f"{ename}: {evalue}" + (f" (notebook cell [{cell}])" if cell else ""))
    return _ANSI.sub("", f"{type(error).__name__}: {error}")


# --------------------------------------------------------------------------------------------------
# Notebooks of running experiments and their owner


def owner_file(running: Path) -> Path:
    """`.running/<name>.ipynb.owner`: the batch process (pid, host) executing that notebook."""
    return running.with_name(running.name + ".owner")


def events_file(running: Path) -> Path:
    """`.running/<name>.progress.jsonl`: the progress events of the experiment executing `running`."""
    return running.with_name(running.stem + ".progress.jsonl")


def _write_owner(running: Path, pid: int, host: str) -> None:
    owner = owner_file(running)
    temporary = owner.with_name(f".{owner.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    temporary.write_text(json.dumps({"pid": pid, "host": host}))
    os.replace(temporary, owner)


def running_owner(running: Path) -> int | None:
    """The pid of the live batch executing `running` on this machine (or on another host: assumed live), or None
    when no live batch owns it (no owner recorded, or its process is gone)."""
    try:
        owner = json.loads(owner_file(running).read_text())
        pid, host = int(owner["pid"]), str(owner.get("host") or "")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host and host != socket.gethostname():
        return pid  # another machine's process: it cannot be checked from here, so it is left alone
    return pid if process_alive(pid) else None


def clear_stale_running(running: Path, run_dir: Path | None = None) -> int | None:
    """Remove `running` and its owner file when no live batch owns them (left by a killed batch); returns the
    live owner's pid when one does (then nothing is touched). A batch killed after its run folder was renamed
    into place but before the executed notebook was copied into it left that notebook here: it is moved into
    the complete run folder `run_dir` (the step the killed batch did not finish) instead of being deleted."""
    if not running.exists() and not owner_file(running).exists():
        return None
    pid = running_owner(running)
    if pid is not None:
        return pid
    if run_dir is not None and running.exists() and is_complete(run_dir) and not (run_dir / "notebook.ipynb").exists():
        _copy_atomic(running, run_dir / "notebook.ipynb")
    running.unlink(missing_ok=True)
    owner_file(running).unlink(missing_ok=True)
    events_file(running).unlink(missing_ok=True)
    return None


# --------------------------------------------------------------------------------------------------
# One execution (runs in a worker thread, or in a Ray worker process)


def execute_experiment(task: dict[str, Any]) -> dict[str, Any]:
    """Execute the experiment notebook for one parameter file; never raises. `task` holds the notebook (node),
    the papermill parameters, the paths, the kernel name, the cell timeout and extra kernel environment."""
    import papermill

    started, started_at = time.perf_counter(), _now()
    running, failed = Path(task["running_notebook"]), Path(task["failed_notebook"])
    run_dir = Path(task["run_dir"])
    extra_env = dict(task.get("env") or {})
    if task.get("gpu_from_ray"):
        import ray

        gpu_ids = ray.get_gpu_ids()
        if gpu_ids:
            extra_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
    outcome = {"started_at": started_at, "gpu": extra_env.get("CUDA_VISIBLE_DEVICES")}
    cwd = task.get("cwd")
    try:
        running.parent.mkdir(parents=True, exist_ok=True)
        _write_owner(running, int(task.get("owner_pid") or os.getpid()), str(task.get("owner_host") or ""))
        papermill.execute_notebook(
            copy.deepcopy(task["notebook"]), str(running), parameters=task["parameters"],
            kernel_name=task["kernel_name"], progress_bar=False, log_output=False,
            execution_timeout=task["cell_timeout"], cwd=cwd if cwd and Path(cwd).is_dir() else None,
            kernel_manager_class=_kernel_manager_class(extra_env))
        if not is_complete(run_dir):
            raise RuntimeError(f"the notebook finished but {run_dir} is not a complete run folder")
    except Exception as error:  # failure isolation: record it, keep the executed notebook, go on
        outcome.update(status="failed", stage="execution", error=_error_message(error))
        if running.exists():
            failed.parent.mkdir(parents=True, exist_ok=True)
            os.replace(running, failed)
            outcome["notebook"] = str(failed)
    else:
        target = run_dir / "notebook.ipynb"
        _copy_atomic(running, target)
        running.unlink(missing_ok=True)
        failed.unlink(missing_ok=True)  # an earlier failure of this run is superseded
        outcome.update(status="done", notebook=str(target))
    finally:
        try:
            owner_file(running).unlink(missing_ok=True)
        except OSError:
            pass
    outcome.update(finished_at=_now(), seconds=round(time.perf_counter() - started, 2))
    return outcome


# --------------------------------------------------------------------------------------------------
# The batch


def _import_ray():
    try:
        import ray
    except ImportError as error:
        raise ImportError("backend='ray' needs Ray, an optional extra: pip install 'ray' (or pip install "
                          "'nextpoi[ray]'), or use backend='local'.") from error
    return ray


class _Reporter:
    """Plain progress lines (usable in logs): one when an experiment starts or ends, with the running counts;
    printed above the live bars when there are any."""

    def __init__(self, enabled: bool, total: int, stream=None):
        self.enabled, self.total = enabled, total
        self.stream = stream or sys.stdout
        self.counts = {"done": 0, "failed": 0, "skipped": 0}
        self.lock = threading.Lock()
        self.bars: LiveBars | None = None

    def line(self, message: str) -> None:
        if self.enabled:
            with self.lock:
                text = f"[batch {dt.datetime.now().strftime('%H:%M:%S')}] {message}"
                if self.bars is not None:
                    self.bars.write(text)
                else:
                    print(text, file=self.stream, flush=True)

    def finished(self, outcome: ExperimentOutcome) -> None:
        with self.lock:
            self.counts[outcome.status] += 1
            counts = dict(self.counts)
        pending = self.total - sum(counts.values())
        detail = outcome.run_dir if outcome.status != "failed" else f"{outcome.stage}: {outcome.error}"
        timing = f" in {outcome.seconds:.0f}s" if outcome.seconds is not None and outcome.status != "skipped" else ""
        self.line(f"{outcome.status} {outcome.name or outcome.parameter_file}{timing} ({detail}) | "
                  f"{counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped, {pending} pending")


def run_batch(parameter_files: Iterable[str | os.PathLike], profile: str | os.PathLike | None = None,
              output_root: str | os.PathLike = "outputs", workers: int | None = None, backend: str = "local",
              ray_address: str | None = None, cell_timeout: int | None = 3600, kernel_name: str = "python3",
              overwrite: bool = False, progress: bool = True, notebook: str | os.PathLike | None = None,
              stream=None, progress_bars: bool | None = None,
              layers: Iterable[str | os.PathLike] = ()) -> BatchSummary:
    """Execute the experiment notebook once per parameter file; returns the summary (also written to
    `<output_root>/batch-summary.json` and, with `progress`, printed as a table).

    `profile`: None, "auto" (parameters/profiles/gpu.yaml when a CUDA GPU is visible -- on the Ray cluster for
    backend="ray" -- else cpu.yaml), a profile name or a path, applied last to every file. `workers` (local):
    parallel executions, default the number of visible GPUs (each kernel gets one via CUDA_VISIBLE_DEVICES), or
    1 on CPU; with Ray it caps the tasks in flight (default: as many as the cluster schedules). `cell_timeout`:
    seconds one notebook cell may run (papermill's execution_timeout; None: no limit). `overwrite`: re-run and
    replace complete runs instead of skipping them. `progress_bars`: one live line per running experiment (see
    `LiveBars`); None: only when `stream` is a terminal and CI is not set (`progress_bars_wanted`); never
    without `progress`. The bars change nothing the experiments compute. `layers`: parameter files applied after
    each parameter file and before the profile (e.g. parameters/classes/gowalla7.yaml: the same classes for every
    experiment of the batch); they keep each file's run name.
    """
    if backend not in ("local", "ray"):
        raise ValueError(f"backend={backend!r} must be 'local' or 'ray'.")
    batch_started, started_at = time.perf_counter(), _now()
    stream = stream or sys.stdout
    parameter_files = [str(f) for f in parameter_files]
    layers = [str(Path(layer).resolve()) for layer in layers]
    missing_layers = [layer for layer in layers if not Path(layer).is_file()]
    if missing_layers:
        raise ConfigError(f"Parameter layer(s) {missing_layers} given with --layer do not exist. Give the path of a "
                          f"YAML file, e.g. parameters/classes/gowalla7.yaml.")
    output_root = Path(output_root).resolve()
    # The batch writes its summary there: a file in the way, or a folder that cannot be written, stops it here.
    check_folder_writable(output_root, "output root")
    reporter = _Reporter(progress, len(parameter_files), stream)
    bars_on = progress and progress_bars_wanted(progress_bars, stream)

    ray = None
    started_ray = False
    if backend == "ray":
        ray = _import_ray()
        if not ray.is_initialized():
            ray.init(address=ray_address or None)
            started_ray = True
    try:
        if backend == "ray":
            gpu_count = int(ray.cluster_resources().get("GPU", 0))
            gpus: list[str] = []
        else:
            gpus = visible_gpus()
            gpu_count = len(gpus)
        profile_path = resolve_profile(profile, gpu_visible=gpu_count > 0) if profile is not None else None
        if backend == "local" and workers is None:
            workers = max(1, gpu_count)
        reporter.line(f"{len(parameter_files)} parameter files, profile "
                      f"{profile_path if profile_path else 'none'}, backend {backend}"
                      + (f", {workers} workers" if workers else "")
                      + (f", {gpu_count} GPUs" if gpu_count else ", CPU only") + f", output {output_root}"
                      + (f", layers {', '.join(Path(layer).name for layer in layers)} after every file" if layers else ""))

        summary = BatchSummary(experiments=[], output_root=str(output_root),
                               profile=str(profile_path) if profile_path else None, backend=backend,
                               workers=workers, started_at=started_at, layers=layers)
        summary_path = output_root / SUMMARY_FILE
        summary.summary_path = str(summary_path)

        # --- validate every file before anything runs
        outcomes: list[ExperimentOutcome] = []
        pending: list[tuple[ExperimentOutcome, dict[str, Any]]] = []
        claimed: dict[Path, str] = {}
        nb_node = _read_notebook(notebook)
        for parameter_file in parameter_files:
            outcome = ExperimentOutcome(parameter_file=parameter_file, status="pending")
            outcomes.append(outcome)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    config = experiment_config([parameter_file, *layers], profile=profile_path,
                                               output_root=output_root, overwrite=overwrite)
                    # A layer never names the run (as a profile does not): a file without `name:` keeps its stem.
                    own_name = experiment_config([parameter_file]).name if layers else config.name
                    config = updated(config, name=own_name) if own_name != config.name else config
            except (ConfigError, OSError, ValueError) as error:
                outcome.status, outcome.stage, outcome.error = "failed", "validation", str(error)
                reporter.finished(outcome)
                continue
            for warning in caught:
                reporter.line(f"warning for {parameter_file}: {warning.message}")
            run_dir = run_directory(config).resolve()
            outcome.name, outcome.dataset, outcome.run_dir = config.name, config.dataset_name(), str(run_dir)
            if run_dir in claimed:
                outcome.status, outcome.stage = "failed", "validation"
                outcome.error = (f"{parameter_file} writes the same run folder {run_dir} as {claimed[run_dir]}: give "
                                 f"one of them another name (name: ...).")
                reporter.finished(outcome)
                continue
            claimed[run_dir] = parameter_file
            running = run_dir.parent / ".running" / f"{config.name}.ipynb"
            owner = clear_stale_running(running, run_dir)
            if owner is not None:
                outcome.status, outcome.stage = "failed", "validation"
                outcome.error = (f"{running} is being executed now by another batch (process {owner}): wait until "
                                 f"it has finished (then rerun: a complete run is skipped), or stop that batch.")
                reporter.finished(outcome)
                continue
            # Temporaries of a killed run of this name (an earlier run it had moved aside comes back first).
            for stale in remove_stale_temporaries(run_dir):
                reporter.line(f"{config.name}: cleaned up {stale}, left by a run that did not finish")
            if is_complete(run_dir) and not overwrite:
                differences = stored_config_differences(run_dir, config)
                if differences:
                    # Skipping would report the old run's numbers as this file's.
                    outcome.status, outcome.stage = "failed", "validation"
                    shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more"
                                                           if len(differences) > 5 else "")
                    outcome.error = (f"{run_dir} holds a complete run of {config.name!r} made with other settings "
                                     f"({shown}). Pass --overwrite to replace it with this file's run, or give the "
                                     f"experiment another name (name: ...) to keep both.")
                    reporter.finished(outcome)
                    continue
                outcome.status = "skipped"
                notebook_file = run_dir / "notebook.ipynb"
                outcome.notebook = str(notebook_file) if notebook_file.exists() else None
                reporter.finished(outcome)
                continue
            try:
                # A folder of that name that is not a complete run is never deleted without overwrite.
                check_run_target(config)
            except RunExistsError as error:
                outcome.status, outcome.stage, outcome.error = "failed", "validation", str(error)
                reporter.finished(outcome)
                continue
            pending.append((outcome, {
                "notebook": nb_node,
                "parameters": {"parameter_files": [str(Path(parameter_file).resolve()), *layers],
                               **({"name": config.name} if layers else {}),
                               "profile": str(profile_path.resolve()) if profile_path else None,
                               "output_root": str(output_root), "overwrite": bool(overwrite)},
                "running_notebook": str(running),
                "failed_notebook": str(run_dir.parent / ".failed" / f"{config.name}.ipynb"),
                "run_dir": str(run_dir), "kernel_name": kernel_name, "cell_timeout": cell_timeout,
                "cwd": os.getcwd(), "owner_pid": os.getpid(), "owner_host": socket.gethostname(),
                # The kernel's progress events (an empty value: none, also when the batch's own environment names
                # a file) and the file the bars read them from.
                "env": {EVENTS_ENVIRONMENT: str(events_file(running)) if bars_on else ""},
                "progress_events": str(events_file(running)) if bars_on else None,
            }))

        record_lock = threading.Lock()

        def record(outcome: ExperimentOutcome, result: dict[str, Any]) -> None:
            with record_lock:
                for key, value in result.items():
                    setattr(outcome, key, value)
                reporter.finished(outcome)
                _write_json_atomic(summary_path, _snapshot(summary, outcomes, batch_started))

        if pending:
            bars = (LiveBars(stream, name_width=max(len(outcome.name or "") for outcome, _ in pending))
                    if bars_on else contextlib.nullcontext())
            with bars:
                reporter.bars = bars if bars_on else None
                try:
                    if backend == "local":
                        _run_local(pending, workers or 1, gpus, reporter, record)
                    else:
                        _run_ray(ray, pending, workers, gpu_count, reporter, record)
                finally:
                    reporter.bars = None

        summary.experiments = outcomes
        summary.finished_at = _now()
        summary.duration_seconds = round(time.perf_counter() - batch_started, 2)
        _write_json_atomic(summary_path, summary.to_dict())
        if progress:
            print(summary.table(), file=stream, flush=True)
            print(f"Summary: {summary_path}", file=stream, flush=True)
        return summary
    finally:
        if started_ray:
            ray.shutdown()


def _snapshot(summary: BatchSummary, outcomes: list[ExperimentOutcome], started: float) -> dict[str, Any]:
    partial = dataclasses.replace(summary, experiments=list(outcomes),
                                  duration_seconds=round(time.perf_counter() - started, 2))
    return partial.to_dict()


def _read_notebook(path: str | os.PathLike | None):
    import nbformat

    path = Path(path) if path else NOTEBOOK_PATH
    if not path.is_file():
        raise FileNotFoundError(f"The experiment notebook {path} does not exist (generate it from "
                                f"notebooks/experiment.py with: jupytext --to ipynb notebooks/experiment.py).")
    return nbformat.read(path, as_version=4)


def _run_local(pending, workers: int, gpus: list[str], reporter: _Reporter, record: Callable) -> None:
    """A thread per worker; each execution starts its own kernel process with its GPU (or CPU threads) set."""
    slots: queue.Queue = queue.Queue()
    for index in range(workers):
        slots.put(index)
    cpu_threads = None
    if not gpus and workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        # Parallel CPU kernels would each start one thread per core; share the cores instead.
        cpu_threads = str(max(1, (os.cpu_count() or 1) // workers))

    def work(outcome: ExperimentOutcome, task: dict[str, Any]) -> None:
        slot = slots.get()
        try:
            task = dict(task, env=dict(task["env"]))
            if gpus:
                task["env"]["CUDA_VISIBLE_DEVICES"] = gpus[slot % len(gpus)]
            elif cpu_threads:
                task["env"].update(OMP_NUM_THREADS=cpu_threads, MKL_NUM_THREADS=cpu_threads)
            where = f"GPU {task['env']['CUDA_VISIBLE_DEVICES']}" if gpus else "CPU"
            reporter.line(f"start {outcome.name} ({outcome.parameter_file}) on {where}")
            bars = reporter.bars if task.get("progress_events") else None
            if bars is not None:
                bars.start(task["running_notebook"], outcome.name, task["progress_events"])
            try:
                result = execute_experiment(task)
            except Exception as error:  # pragma: no cover - execute_experiment does not raise
                result = {"status": "failed", "stage": "execution", "error": _error_message(error)}
            finally:
                if bars is not None:
                    bars.finish(task["running_notebook"])
            record(outcome, result)  # before the slot is free, so the log reads in order
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nextpoi-batch") as pool:
        futures = [pool.submit(work, outcome, task) for outcome, task in pending]
        remaining = set(futures)
        try:
            while remaining:
                finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
        except KeyboardInterrupt:
            # Ctrl-C: start nothing more (the running kernels received the interrupt too), then stop.
            for future in remaining:
                future.cancel()
            reporter.line("interrupted: no further experiments start; waiting for the running ones to stop")
            raise


def _run_ray(ray, pending, workers: int | None, gpu_count: int, reporter: _Reporter, record: Callable) -> None:
    """One Ray task per experiment (num_gpus=1 when the cluster has GPUs), writing to the shared output folder."""
    remote = ray.remote(execute_experiment).options(num_gpus=1 if gpu_count else 0, num_cpus=1, max_retries=0)
    queue_ = list(pending)
    in_flight: dict[Any, tuple[ExperimentOutcome, dict[str, Any]]] = {}
    limit = workers or len(queue_)
    while queue_ or in_flight:
        while queue_ and len(in_flight) < limit:
            outcome, task = queue_.pop(0)
            task = dict(task, gpu_from_ray=bool(gpu_count))
            reporter.line(f"submit {outcome.name} ({outcome.parameter_file}) to Ray"
                          + (" with 1 GPU" if gpu_count else " (CPU)"))
            if reporter.bars is not None and task.get("progress_events"):
                # The event file lies in the shared output folder, which the Ray tasks write to anyway.
                reporter.bars.start(task["running_notebook"], outcome.name, task["progress_events"])
            in_flight[remote.remote(task)] = (outcome, task)
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for reference in ready:
            outcome, task = in_flight.pop(reference)
            try:
                result = ray.get(reference)
            except Exception as error:  # a worker that died: record it, the others go on
                result = {"status": "failed", "stage": "execution", "error": _error_message(error)}
            if reporter.bars is not None:
                reporter.bars.finish(task["running_notebook"])
            record(outcome, result)
