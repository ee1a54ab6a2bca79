"""Progress: the plain lines long work prints, and structured progress events for live progress bars.

Plain lines: `Progress(enabled)` is a callable that prints a message, silent when switched off.

Events: long work also says where it stands, as steps of a stage, with `progress_step(progress, stage, done,
total, detail, job=None)` (or `Progress.step`). A step prints nothing. When an event file is configured --
`Progress(..., events=EventFile(path))`, or the environment variable NEXTPOI_PROGRESS_EVENTS naming a file, which
`nextpoi batch` sets for each experiment's kernel when it shows progress bars -- each step appends one JSON line:

    {"time": 1764588000.123, "stage": "train", "done": 12, "total": 20,
     "detail": "seed 0 fold 2/5 epoch 12/20", "job": "seed 0 fold 2/5"}

Stages: "data" (reading the data, windows, folds), "embeddings" (DGI epochs), "train" (neural epochs), "trees"
(one per (seed, fold) fit of the trees; "fit" for the other fitted models). An event without `job` gives the
stage's progress as a whole; one with `job` gives that job's share (a (seed, fold)'s epochs: several jobs can run
at once, stacked or in fold worker processes, each writing its own events), and the stage's done is the sum over
its jobs. An event without job and with done 0 starts (or restarts) a stage and announces its total.
`ProgressState` folds events into done/total; `EventFollower` reads the new lines of a growing event file.

Writing stays cheap: at most one write every `min_interval` seconds (0.25 s), holding back the latest event of
each (stage, job) in between; the first and the last step of a stage or job (done 0, done == total) are
written at once, so a finished job is never left behind.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The file a kernel of `nextpoi batch` appends its progress events to (unset or empty: no events).
EVENTS_ENVIRONMENT = "NEXTPOI_PROGRESS_EVENTS"
MIN_WRITE_INTERVAL = 0.25


class EventFile:
    """Appends progress events to a JSON-lines file, at most one write every `min_interval` seconds.

    Each write opens the file in append mode and closes it again, so several processes (fold workers) can add to
    one file, and a file removed by its reader does no harm. An error while writing is ignored: progress must
    never stop a run."""

    def __init__(self, path: str | os.PathLike, min_interval: float = MIN_WRITE_INTERVAL):
        self.path = Path(path)
        self.min_interval = float(min_interval)
        self._pending: dict[tuple[str, str | None], dict[str, Any]] = {}
        self._last_write = float("-inf")
        self._lock = threading.Lock()

    def record(self, stage: str, done: int, total: int, detail: str = "", job: str | None = None) -> None:
        event: dict[str, Any] = {"time": round(time.time(), 3), "stage": stage, "done": int(done),
                                 "total": int(total), "detail": detail}
        if job is not None:
            event["job"] = job
        with self._lock:
            # Re-inserted at the end: the file keeps the order in which the steps happened.
            self._pending.pop((stage, job), None)
            self._pending[(stage, job)] = event
            now = time.monotonic()
            if event["done"] <= 0 or event["done"] >= event["total"] or now - self._last_write >= self.min_interval:
                self._write_pending(now)

    def flush(self) -> None:
        """Write what is held back."""
        with self._lock:
            if self._pending:
                self._write_pending(time.monotonic())

    def _write_pending(self, now: float) -> None:
        lines = "".join(json.dumps(event) + "\n" for event in self._pending.values())
        self._pending.clear()
        self._last_write = now
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(lines)
        except OSError:
            pass


_environment_files: dict[str, EventFile] = {}
_environment_lock = threading.Lock()


def events_from_environment() -> EventFile | None:
    """The event file NEXTPOI_PROGRESS_EVENTS names (one writer per file and process, so every Progress of the
    process shares its throttle), or None when the variable is unset or empty."""
    path = os.environ.get(EVENTS_ENVIRONMENT, "")
    if not path:
        return None
    with _environment_lock:
        if path not in _environment_files:
            _environment_files[path] = EventFile(path)
        return _environment_files[path]


class Progress:
    """One line per fold and a few per fold while training; silent when switched off. `step` reports structured
    progress to `events` (default: the file NEXTPOI_PROGRESS_EVENTS names, if any), whether or not lines print."""

    def __init__(self, enabled: bool, stream=None, events: EventFile | None = None):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.events = events

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)

    def step(self, stage: str, done: int, total: int, detail: str = "", job: str | None = None) -> None:
        events = self.events or events_from_environment()
        if events is not None:
            events.record(stage, done, total, detail, job)


def progress_step(progress, stage: str, done: int, total: int, detail: str = "", job: str | None = None) -> None:
    """Report a step through `progress` (its `step`), or, for a plain callable such as `print` or None, to the
    event file of the environment. Never prints."""
    step = getattr(progress, "step", None)
    if callable(step):
        step(stage, done, total, detail, job=job)
        return
    events = events_from_environment()
    if events is not None:
        events.record(stage, done, total, detail, job)


# --------------------------------------------------------------------------------------------------
# Reading events


class EventFollower:
    """The new complete lines of a growing event file, as events; a line that is not an event is skipped (a
    writer killed mid-line), a file not there yet reads as no events, a file started anew is read from its start."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell() < self.offset:  # replaced by a shorter file
                    self.offset, self._partial = 0, b""
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if (isinstance(event, dict) and isinstance(event.get("stage"), str)
                    and isinstance(event.get("done"), int) and isinstance(event.get("total"), int)):
                events.append(event)
        return events


@dataclass
class StageProgress:
    """One stage's progress folded from its events."""

    stage: str
    done: int = 0
    total: int = 0
    detail: str = ""
    jobs: dict[str, tuple[int, int]] = field(default_factory=dict)

    def counts(self) -> tuple[int, int]:
        """(done, total): the jobs' sum when the stage has jobs (total: the announced one, else the jobs' totals
        seen so far), else the stage's own last event."""
        if self.jobs:
            done = sum(job_done for job_done, _ in self.jobs.values())
            total = self.total or sum(job_total for _, job_total in self.jobs.values())
        else:
            done, total = self.done, self.total
        return min(done, max(total, 0)), total


class ProgressState:
    """The stages of one experiment, from its events; `current` is the stage of the latest event."""

    def __init__(self):
        self.stages: dict[str, StageProgress] = {}
        self.current: str | None = None

    def add(self, event: dict[str, Any]) -> None:
        stage = self.stages.setdefault(event["stage"], StageProgress(event["stage"]))
        job = event.get("job")
        if job is None:
            if event["done"] <= 0:
                stage.jobs.clear()  # the stage starts (again, e.g. another trial of a study)
            stage.done, stage.total = event["done"], event["total"]
        else:
            stage.jobs[str(job)] = (event["done"], event["total"])
        stage.detail = str(event.get("detail") or "")
        self.current = stage.stage

    def counts(self, stage: str | None = None) -> tuple[int, int]:
        """(done, total) of `stage` (default: the current one); (0, 0) before any event."""
        stage = stage or self.current
        return self.stages[stage].counts() if stage in self.stages else (0, 0)

    @property
    def detail(self) -> str:
        return self.stages[self.current].detail if self.current in self.stages else ""
