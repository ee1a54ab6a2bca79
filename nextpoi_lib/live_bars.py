"""Live progress lines of `nextpoi batch`: one tqdm line per running experiment, drawn from the progress events
its kernel appends to its event file (`progress.EventFile`), and the rule for when they are drawn at all
(`progress_bars_wanted`: a terminal, not under CI, not switched off). They change nothing the runs compute."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from .progress import EventFollower, ProgressState


def progress_bars_wanted(requested: bool | None, stream) -> bool:
    """Whether the batch draws live progress bars: never when `requested` is False, always when True; when None
    (the default) only when `stream` is a terminal and the environment variable CI is not set (to anything but
    "", "0" or "false"), so that logs and CI output keep the plain lines only."""
    if requested is not None:
        return bool(requested)
    isatty = getattr(stream, "isatty", None)
    try:
        terminal = bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed stream
        terminal = False
    return terminal and os.environ.get("CI", "").strip().lower() in ("", "0", "false")


class LiveBars:
    """One tqdm line per running experiment, drawn from the progress events its kernel appends to its event file.

    `start` adds an experiment's line, `finish` reads its last events and removes the line (and the file);
    a thread polls every running experiment's file each `interval` seconds (`poll`), so the clock ticks even
    between events. A line reads, e.g.

        good   run 01:23 | train       45%|#########           | 9/20 [00:12<00:14, seed 0 fold 2/2 epoch 4/10]

    name, time since the experiment started, stage, the stage's done/total steps (for "train" every (seed, fold,
    epoch)), the stage's elapsed and estimated remaining time (its average speed so far), and the latest step.
    Plain lines go through `write`, which prints them above the bars."""

    BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
    WAITING_FORMAT = "{desc}starting [{elapsed}]"

    def __init__(self, stream, name_width: int = 0, interval: float = 0.5):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.stream, self.name_width, self.interval = stream, name_width, interval
        self._running: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the batch's side

    def __enter__(self) -> "LiveBars":
        self._thread = threading.Thread(target=self._follow, name="nextpoi-progress-bars", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self, key: str, name: str, events_path: str | os.PathLike) -> None:
        """A line for the experiment `key`, fed from `events_path` (a file left there earlier is removed first)."""
        Path(events_path).unlink(missing_ok=True)
        with self._lock:
            bar = self._tqdm(total=1, file=self.stream, leave=False, ncols=self._columns(), smoothing=0,
                             mininterval=0, bar_format=self.WAITING_FORMAT, desc=f"{name:<{self.name_width}} ")
            self._running[key] = {"name": name, "path": Path(events_path), "follower": EventFollower(events_path),
                                  "state": ProgressState(), "bar": bar, "stage": None, "stage_started": {},
                                  "started": bar.start_t}

    def finish(self, key: str) -> None:
        """Draw the experiment's last events, then remove its line and its event file."""
        with self._lock:
            entry = self._running.pop(key, None)
            if entry is None:
                return
            self._update(entry)
            entry["bar"].close()
        entry["path"].unlink(missing_ok=True)

    def poll(self) -> None:
        """Read the new events of every running experiment and redraw its line."""
        with self._lock:
            for entry in self._running.values():
                self._update(entry)

    def write(self, message: str) -> None:
        self._tqdm.write(message, file=self.stream)
        self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            for entry in self._running.values():
                entry["bar"].close()
            self._running.clear()

    def state(self, key: str) -> ProgressState | None:
        with self._lock:
            entry = self._running.get(key)
            return entry["state"] if entry else None

    # -- drawing

    def _columns(self) -> int | None:
        """The terminal's width (lines are cut to it; a terminal that reports 0 columns counts as 120 wide), or
        None for a stream without a terminal behind it: lines are not cut."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 120
        except (AttributeError, OSError, ValueError):
            return None

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # pragma: no cover - a drawing error must not stop the batch
                pass

    def _update(self, entry: dict[str, Any]) -> None:
        state, bar = entry["state"], entry["bar"]
        bar.ncols = self._columns()  # follows a resized terminal
        for event in entry["follower"].read_new():
            state.add(event)
        run_elapsed = self._tqdm.format_interval(bar._time() - entry["started"])
        if state.current is None:
            bar.refresh()
            return
        if state.current != entry["stage"]:
            # A new stage: its own count and clock (its remaining time comes from its own speed).
            entry["stage"] = state.current
            bar.bar_format = self.BAR_FORMAT
            bar.n = bar.last_print_n = 0
            bar.start_t = bar.last_print_t = entry["stage_started"].setdefault(state.current, bar._time())
        done, total = state.counts()
        bar.total, bar.n = max(total, done, 1), done
        bar.set_description_str(f"{entry['name']:<{self.name_width}} run {run_elapsed} | {state.current:<10} ",
                                refresh=False)
        bar.set_postfix_str(state.detail, refresh=False)
        bar.refresh()
