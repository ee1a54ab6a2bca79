"""The neural entry point: cross-validate a neural head over every (seed, fold), in the planned execution mode."""

from __future__ import annotations

import contextlib
import time

import torch

from ..config import ExperimentConfig
from ..devices import device_name, resolve_device, uses_tf32
from ..folds import FoldManifest
from ..progress import Progress
from ..results import CrossValidationResult
from ..windows import WindowSet
from .loop import report_fold, train_fold
from .plan import execution_plan
from .stacked import train_folds_stacked
from .tensors import WindowTensors
from .workers import train_in_workers


@contextlib.contextmanager
def _matmul_precision(device: torch.device, allow_tf32: bool):
    """TF32 for fp32 matmuls on CUDA while the training runs (mixed precision on), restored afterwards."""
    if not uses_tf32(device, allow_tf32):
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def cross_validate(config: ExperimentConfig, windows: WindowSet, fold_manifest: FoldManifest,
                   progress: Progress | None = None) -> CrossValidationResult:
    """Train and evaluate every (seed, fold) of a neural head."""
    progress = progress or Progress(config.training.progress)
    device = resolve_device(config.training.device)
    plan = execution_plan(config, device, fold_manifest)
    for note in plan.notes:
        progress(note)
    folds = fold_manifest.folds
    jobs = [(seed, fold, f"[seed {seed} fold {fold.fold + 1}/{len(folds)}]")
            for seed in config.training.seeds for fold in folds]
    started = time.perf_counter()
    if plan.fold_workers > 1:
        progress(f"Training {len(jobs)} folds in {plan.fold_workers} worker processes "
                 f"({plan.threads_per_worker} thread{'s' if plan.threads_per_worker > 1 else ''} each)")
        results = train_in_workers(config, windows, jobs, plan, progress)
    else:
        results = []
        with _matmul_precision(device, config.training.mixed_precision):
            data = WindowTensors(windows, config, device, log=progress)
            if plan.stack_folds:
                for seed in config.training.seeds:
                    labels = [label for job_seed, _, label in jobs if job_seed == seed]
                    for label, result in zip(labels, train_folds_stacked(config, data, windows, folds, seed,
                                                                         progress, labels)):
                        results.append(result)
                        report_fold(progress, label, result, len(results), len(jobs))
            else:
                for seed, fold, label in jobs:
                    results.append(train_fold(config, data, windows, fold, seed, progress, label))
                    report_fold(progress, label, results[-1], len(results), len(jobs))
    # The manifest key stays "engine" (run folders written before the training package read the same).
    extra = {"engine": {**plan.describe(), "seconds": round(time.perf_counter() - started, 3)}}
    return CrossValidationResult(fold_results=results, device=str(device), device_name=device_name(device),
                                 extra=extra)
