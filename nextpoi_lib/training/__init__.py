"""Training of the neural heads: every (seed, fold) trained, selected on inner validation users, the test fold
reported (`cross_validate`).

Modules, bottom to top: `tensors` (windows as device tensors, gathered per batch), `tracker` (the selection
rule and progress lines of one fold), `loop` (the reference recipe `train_fold` and the blocks every mode
shares), `stacked` (K folds as one batched computation), `plan` (which mode runs), `workers` (the fold-worker
processes), `neural` (the entry point `cross_validate`).

How the (seed, fold) jobs are executed is chosen per run (`plan.execution_plan`); every mode trains each fold
with the same function (model, loss, AdamW update, learning-rate schedule, batch order) as `train_fold`:

* per fold, one after another (`train_fold`): the reference path, and the only one for RNN heads on a GPU;
* stacked folds (`train_folds_stacked`, default on CUDA for heads that `torch.vmap` can batch): the K folds of
  one seed are trained together, their parameters stacked in one [K, P] tensor, one batched forward/backward
  per step and one AdamW update for all folds. On a GPU a step of these tiny models is launch-bound, so K folds
  cost about one. Off by default on CPU, where it is slower (same arithmetic, bigger intermediate tensors);
* fold workers (default on CPU for runs large enough to amortise process start-up): W worker processes, each
  with `threads // W` intra-op threads, train whole folds in parallel. Per-step operations of these models
  scale poorly over intra-op threads and stall badly when other jobs share the cores (OpenMP barriers wait
  for a descheduled thread); folds are independent, so parallel folds use the cores without any barrier.

Settings (`config.training`, validated in `nextpoi_lib.config`): `stack_folds` ("auto" | true | false),
`fold_workers` ("auto" | int >= 1). On CUDA, with mixed precision on, fp32 matmuls may use TF32 while
training runs (restored afterwards); AdamW uses the fused CUDA kernel.
"""

from .neural import cross_validate

__all__ = ["cross_validate"]
