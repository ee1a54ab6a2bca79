"""How the (seed, fold) jobs of a run are executed: per fold, stacked folds, or fold workers (see the package
docstring for what each mode is and when it pays)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..config import ExperimentConfig, check_execution_settings
from ..folds import FoldManifest
from ..heads import MODEL_REGISTRY

# fold_workers="auto" on CPU only parallelises runs with at least this many training window-epochs in total
# (sum over jobs of train windows x epochs): below it, starting worker processes costs more than it saves.
AUTO_WORKERS_MIN_WINDOW_EPOCHS = 100_000


@dataclass
class ExecutionPlan:
    stack_folds: bool
    fold_workers: int
    threads_per_worker: int
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        mode = "stacked_folds" if self.stack_folds else ("fold_workers" if self.fold_workers > 1 else "per_fold")
        return {"mode": mode, "fold_workers": self.fold_workers, "threads_per_worker": self.threads_per_worker,
                "notes": list(self.notes)}


def execution_plan(config: ExperimentConfig, device: torch.device, fold_manifest: FoldManifest) -> ExecutionPlan:
    """How the (seed, fold) jobs run; see the package docstring. Raises ConfigError on an invalid setting (a
    config changed after loading)."""
    check_execution_settings(config.training)
    stack, workers = config.training.stack_folds, config.training.fold_workers
    notes = []
    n_folds, jobs = len(fold_manifest.folds), len(config.training.seeds) * len(fold_manifest.folds)
    stackable = MODEL_REGISTRY[config.model.name].stackable and n_folds >= 2
    if stack is True and not stackable:
        stackable_heads = ", ".join(sorted(name for name, head in MODEL_REGISTRY.items() if head.stackable))
        notes.append(f"training.stack_folds ignored for model {config.model.name!r}: torch.vmap cannot batch its "
                     f"kernels (stackable heads: {stackable_heads}); training folds one by one.")
    use_stack = stackable and (stack is True or (stack == "auto" and device.type == "cuda"))
    if use_stack and "place_statistics" in config.windows.features:
        # Each fold's place_statistics are fitted on its own training users, and stacked folds gather every
        # fold's batch from one set of window tensors.
        use_stack = False
        notes.append("Stacked folds off: windows.features 'place_statistics' are fitted per fold (each fold's "
                     "training users), and stacked folds share one set of window inputs; training folds one by "
                     "one.")
    threads = torch.get_num_threads()
    if device.type != "cpu" or use_stack:
        if workers not in ("auto", 1):
            notes.append(f"training.fold_workers={workers} ignored: fold workers are used for CPU training without "
                         f"stacked folds only.")
        return ExecutionPlan(use_stack, 1, threads, notes)
    if workers == "auto":
        work = (sum(len(f.train_index) for f in fold_manifest.folds) * len(config.training.seeds)
                * config.training.epochs)
        workers = min(threads, jobs) if work >= AUTO_WORKERS_MIN_WINDOW_EPOCHS else 1
    workers = max(1, min(workers, jobs))
    return ExecutionPlan(False, workers, max(1, threads // workers) if workers > 1 else threads, notes)
