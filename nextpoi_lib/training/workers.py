"""Fold workers: W processes, each with `threads // W` intra-op threads, train whole folds in parallel.

Per-step operations of these models scale poorly over intra-op threads and stall badly when other jobs share
the cores (OpenMP barriers wait for a descheduled thread); folds are independent, so parallel folds use the
cores without any barrier. Workers are started with "spawn" (safe in notebooks and threads): the functions
they run are top-level functions of this module, and each worker builds its own `WindowTensors` once.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np
import torch

from ..config import ExperimentConfig
from ..folds import Fold
from ..progress import Progress
from ..results import FoldResult
from ..windows import WindowSet
from .loop import report_fold, train_fold
from .plan import ExecutionPlan
from .tensors import WindowTensors

_WORKER: dict = {}


class _QueueProgress(Progress):
    """Progress inside a fold worker: messages go to the parent, which prints them with its own Progress."""

    def __init__(self, enabled: bool, messages):
        super().__init__(enabled)
        self.messages = messages

    def __call__(self, message: str) -> None:
        if self.enabled:
            self.messages.put(message)


def _worker_start(config: ExperimentConfig, windows: WindowSet, threads: int, messages, enabled: bool,
                  fold_tables: dict[int, np.ndarray] | None = None) -> None:
    torch.set_num_threads(threads)
    progress = _QueueProgress(enabled, messages)
    _WORKER.update(config=config, windows=windows, progress=progress, fold_tables=fold_tables,
                   data=WindowTensors(windows, config, torch.device("cpu"), log=progress))


def _worker_train(seed: int, fold: Fold, label: str) -> FoldResult:
    w = _WORKER
    if w["fold_tables"] is not None:
        # One POI table per fold (embeddings.source transition_graph): this job gathers from its fold's.
        w["data"].use_embedding_table(w["fold_tables"][fold.fold])
    return train_fold(w["config"], w["data"], w["windows"], fold, seed, w["progress"], label)


def _relay(messages, progress: Progress) -> None:
    while True:
        try:
            progress(messages.get_nowait())
        except queue_module.Empty:
            return


def train_in_workers(config: ExperimentConfig, windows: WindowSet, jobs: list[tuple[int, Fold, str]],
                     plan: ExecutionPlan, progress: Progress,
                     fold_tables: dict[int, np.ndarray] | None = None) -> list[FoldResult]:
    """train_fold for every job in `plan.fold_workers` fresh processes ("spawn": safe in notebooks and threads).
    `fold_tables`: fold -> its own POI table (embeddings.source transition_graph), swapped in per job."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    results: dict[int, FoldResult] = {}
    with ProcessPoolExecutor(max_workers=plan.fold_workers, mp_context=context, initializer=_worker_start,
                             initargs=(config, windows, plan.threads_per_worker, messages,
                                       getattr(progress, "enabled", True), fold_tables)) as pool:
        pending = {pool.submit(_worker_train, seed, fold, label): (position, label)
                   for position, (seed, fold, label) in enumerate(jobs)}
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _relay(messages, progress)
                for future in finished:
                    position, label = pending.pop(future)
                    results[position] = future.result()
                    report_fold(progress, label, results[position], len(results), len(jobs))
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    _relay(messages, progress)
    return [results[position] for position in range(len(jobs))]
