"""The neural entry point: cross-validate a neural head over every (seed, fold), in the planned execution mode."""

from __future__ import annotations

import contextlib
import dataclasses
import time

import numpy as np
import torch

from ..config import ConfigError, ExperimentConfig
from ..devices import device_name, resolve_device, uses_tf32
from ..folds import FoldManifest
from ..progress import Progress, progress_step
from ..results import CrossValidationResult
from ..transition_embeddings import TRANSITION_GRAPH, FoldEmbeddingTables
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


def fold_tables_in_use(config: ExperimentConfig, fold_tables: FoldEmbeddingTables | None
                       ) -> dict[int, np.ndarray] | None:
    """fold -> the [P, D] POI table its training gathers from, when the run has one table per fold
    (embeddings.source transition_graph and the heads read embeddings); None when every fold shares
    windows.embedding_table. Raises ConfigError when per-fold tables are needed but were not passed."""
    if config.embeddings.source != TRANSITION_GRAPH or "embedding" not in config.windows.features:
        return None
    if fold_tables is None:
        raise ConfigError("embeddings.source='transition_graph' gives every fold its own POI table, but "
                          "cross_validate got none (fold_tables=None), and windows.embedding_table holds only "
                          "zeros for this source. Pass fold_tables=prepared.fold_embeddings from "
                          "preparation.prepare_data, as experiment.NeuralRun does.")
    return dict(fold_tables.tables)


def cross_validate(config: ExperimentConfig, windows: WindowSet, fold_manifest: FoldManifest,
                   progress: Progress | None = None,
                   fold_tables: FoldEmbeddingTables | None = None) -> CrossValidationResult:
    """Train and evaluate every (seed, fold) of a neural head. `fold_tables`: one POI table per fold
    (PreparedData.fold_embeddings, embeddings.source transition_graph), swapped in before each fold trains."""
    progress = progress or Progress(config.training.progress)
    device = resolve_device(config.training.device)
    tables = fold_tables_in_use(config, fold_tables)
    plan = execution_plan(config, device, fold_manifest)
    if tables is not None and plan.stack_folds:
        # Stacked folds gather every fold's windows from one shared table; per-fold tables train fold by fold.
        plan = dataclasses.replace(plan, stack_folds=False, notes=[
            *plan.notes, "Stacked folds off: embeddings.source='transition_graph' gives each fold its own POI "
                         "table, and stacked folds share one; training folds one by one."])
    for note in plan.notes:
        progress(note)
    folds = fold_manifest.folds
    jobs = [(seed, fold, f"[seed {seed} fold {fold.fold + 1}/{fold_manifest.n_splits}]")
            for seed in config.training.seeds for fold in folds]
    # The stage's total for live progress bars: every (seed, fold) job's epochs (EpochTracker reports each one).
    progress_step(progress, "train", 0, len(jobs) * config.training.epochs,
                  f"{len(jobs)} folds x {config.training.epochs} epochs")
    started = time.perf_counter()
    if plan.fold_workers > 1:
        progress(f"Training {len(jobs)} folds in {plan.fold_workers} worker processes "
                 f"({plan.threads_per_worker} thread{'s' if plan.threads_per_worker > 1 else ''} each)")
        results = train_in_workers(config, windows, jobs, plan, progress, tables)
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
                    if tables is not None:
                        data.use_embedding_table(tables[fold.fold])
                    results.append(train_fold(config, data, windows, fold, seed, progress, label))
                    report_fold(progress, label, results[-1], len(results), len(jobs))
    # The manifest key stays "engine" (run folders written before the training package read the same).
    extra = {"engine": {**plan.describe(), "seconds": round(time.perf_counter() - started, 3)}}
    return CrossValidationResult(fold_results=results, device=str(device), device_name=device_name(device),
                                 extra=extra)
