"""Stacked folds: the K folds of one seed trained as one batched computation.

Their parameters are stacked in one [K, P] tensor, with one batched forward/backward per step (`torch.vmap`)
and one AdamW update for all folds. On a GPU a step of these tiny models is launch-bound, so K folds cost
about one. Each fold is still trained with the same function as `loop.train_fold` (same seeding, criterion,
batch order, schedule, selection); tests/training/test_equivalence.py checks it with dropout switched off.
Identity tables (`windows.features` poi_identity / venue_type) have one vocabulary per fold: each fold's table
is zero-padded to the largest fold's rows (rows it never reads) and its code -> row map is passed as a
per-fold buffer; tests/features/test_identity.py checks that this trains the same function as `train_fold`.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..config import ConfigError, ExperimentConfig
from ..devices import pin_host_memory
from ..features.identity import fold_vocabularies
from ..folds import Fold
from ..heads import build_model
from ..losses import build_loss
from ..progress import Progress
from ..results import FoldResult
from ..windows import WindowSet
from .loop import (balanced_sampling_weights, check_finite_losses, epoch_curve, epoch_order, evaluate,
                   make_scheduler, predict_test_fold, use_autocast)
from .tensors import WindowTensors
from .tracker import EpochTracker


class ParameterLayout:
    """The parameters of one model laid out as one flat vector; rows of a [K, P] tensor are K models."""

    def __init__(self, model: torch.nn.Module):
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        offsets = dict(zip(self.names, np.cumsum([0] + self.sizes[:-1]).tolist()))
        # Padding rows of embeddings (e.g. the unknown-category row) never receive gradient in a plain module;
        # under vmap, PyTorch's embedding backward honours padding_idx for the first fold only, so the stacked
        # path zeroes these slices of the gradient itself.
        self.no_grad_slices = []
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
                start = offsets[f"{name}.weight" if name else "weight"] + module.padding_idx * module.embedding_dim
                self.no_grad_slices.append(slice(start, start + module.embedding_dim))

    def flatten(self, model: torch.nn.Module) -> torch.Tensor:
        """The model's parameters as one row; a parameter smaller than the template's (a fold's identity table
        over a smaller vocabulary) is padded with zero rows, which no input ever reads."""
        pieces = []
        for p, shape in zip(model.parameters(), self.shapes):
            p = p.detach()
            if tuple(p.shape) != shape:
                padded = p.new_zeros(shape)
                padded[:p.shape[0]] = p
                p = padded
            pieces.append(p.reshape(-1))
        return torch.cat(pieces)

    def identity_columns(self) -> torch.Tensor:
        """[P] bool: the columns of identity tables (their own weight decay, `heads.parameter_groups`)."""
        return torch.cat([torch.full((size,), ".identity." in f".{name}", dtype=torch.bool)
                          for name, size in zip(self.names, self.sizes)])

    def unflatten(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: piece.view(shape) for name, piece, shape in zip(self.names, row.split(self.sizes), self.shapes)}


class FoldView:
    """A callable with the module interface `evaluate` uses: `template` run with the weights in `row`."""

    def __init__(self, template: torch.nn.Module, layout: ParameterLayout, row: torch.Tensor,
                 buffers: dict[str, torch.Tensor] | None = None):
        self.template, self.layout, self.row, self.buffers = template, layout, row, buffers or {}

    def eval(self):
        self.template.eval()
        return self

    def __call__(self, *args, **kwargs):
        return functional_call(self.template, {**self.layout.unflatten(self.row), **self.buffers}, args, kwargs)


class StackedAdamW:
    """AdamW over K stacked parameter vectors ([K, P]) with hyper-parameters and a step count per row.

    Each row gets exactly torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments, same
    operation order) with its own learning rate and betas (OneCycle also cycles beta1); a row marked inactive
    for a step is left unchanged (no decay, no moment update), as a fold that has finished its epoch or stopped
    early. The per-row coefficients of a whole epoch are computed on the host in double precision (like
    PyTorch's scalars) and sent to the device once per epoch."""

    COLUMNS = 6  # decay, 1 - beta1, beta2, 1 - beta2, step size, sqrt(bias correction 2)

    def __init__(self, flat: torch.Tensor, weight_decay: float, eps: float = 1e-8,
                 second_group: tuple[torch.Tensor, float] | None = None):
        """second_group: ([P] bool columns, their weight decay), as a second torch.optim.AdamW parameter group
        (the identity tables'); its decay factor is one more coefficient column."""
        self.flat, self.weight_decay, self.eps = flat, weight_decay, eps
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = [0] * flat.shape[0]
        self.second_group = second_group
        self.columns = self.COLUMNS + (1 if second_group is not None else 0)

    def coefficients(self, hyper: list[tuple[float, float, float] | None]) -> list[tuple[float, ...]]:
        """Coefficient rows for one step from each row's (lr, beta1, beta2), None for an inactive row; advances
        the step counts."""
        rows = []
        for k, values in enumerate(hyper):
            if values is None:
                rows.append((1.0, 0.0, 1.0, 0.0, 0.0, 1.0) + ((1.0,) if self.second_group is not None else ()))
                continue
            lr, beta1, beta2 = values
            self.steps[k] += 1
            step = self.steps[k]
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            rows.append((1 - lr * self.weight_decay, 1 - beta1, beta2, 1 - beta2, lr / bias_correction1,
                         bias_correction2 ** 0.5)
                        + ((1 - lr * self.second_group[1],) if self.second_group is not None else ()))
        return rows

    @torch.no_grad()
    def step(self, coefficients: torch.Tensor) -> None:
        """coefficients: [K, columns] on the device (one row of the epoch's table)."""
        decay, weight1, beta2, weight2, step_size, bias_correction2_sqrt = (
            coefficients[:, :self.COLUMNS].unsqueeze(-1).unbind(1))
        grad = self.flat.grad
        if self.second_group is not None:
            # Each column decays with its own group's factor (exactly the per-group scalar of torch's AdamW).
            decay = torch.where(self.second_group[0], coefficients[:, self.COLUMNS:self.COLUMNS + 1], decay)
        self.flat.mul_(decay)
        self.exp_avg.lerp_(grad, weight1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad * weight2, grad)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg * -step_size, denom)


def make_stacked_forward(template: torch.nn.Module, layout: ParameterLayout,
                         buffers: dict[str, torch.Tensor] | None = None):
    """(flat [K, P], embedded, category, numeric, mask each [K, B, ...], identity {name: [K, B, L]} or None)
    -> logits [K, B, C]: fold k's batch through `template` with the weights of row k and the buffers of row k
    of `buffers` ({name: [K, ...]}: each fold's identity vocabulary). Dropout masks differ between folds."""

    def one_fold_forward(row, embedded, category, numeric, mask):
        return functional_call(template, layout.unflatten(row), (embedded, category, numeric, mask))

    def one_fold_forward_with_identity(row, fold_buffers, embedded, category, numeric, mask, identity):
        return functional_call(template, {**layout.unflatten(row), **fold_buffers},
                               (embedded, category, numeric, mask), {"identity": identity})

    batched = vmap(one_fold_forward, randomness="different")
    batched_with_identity = vmap(one_fold_forward_with_identity, randomness="different")

    def run(flat, embedded, category, numeric, mask, identity):
        if identity:
            return batched_with_identity(flat, buffers, embedded, category, numeric, mask, identity)
        return batched(flat, embedded, category, numeric, mask)

    def forward(flat, embedded, category, numeric, mask, identity=None):
        if embedded.device.type != "cpu":
            return run(flat, embedded, category, numeric, mask, identity)
        # CPU's fused attention kernel has no vmap batching rule (vmap would loop over the folds); the math
        # kernel, which it decomposes into, has.
        with sdpa_kernel(SDPBackend.MATH):
            return run(flat, embedded, category, numeric, mask, identity)

    return forward


def _stacked_criterion(criteria: list[torch.nn.Module]):
    """A function (logits [K, B, C], target [K, B]) -> [K] losses, each fold with its own criterion, or None
    when the criteria cannot be batched (then the caller loops over folds)."""
    template = criteria[0]
    names = [name for name, _ in template.named_buffers()]
    if any(type(c) is not type(template) or [name for name, _ in c.named_buffers()] != names for c in criteria):
        return None
    buffers = stack_module_state(criteria)[1]

    def one(fold_buffers, logits, target):
        return functional_call(template, fold_buffers, (logits, target))

    batched = vmap(one)
    return lambda logits, target: batched(buffers, logits, target)


def train_folds_stacked(config: ExperimentConfig, data: WindowTensors, windows: WindowSet, folds: list[Fold],
                        seed: int, progress: Progress, labels: list[str]) -> list[FoldResult]:
    """Train the folds of one seed together: same function per fold as `train_fold`, one batched step.

    Each fold keeps its own initial weights (same seeding as `train_fold`), criterion (class statistics of its
    training part), batch order (its own generator), learning-rate schedule (its own steps per epoch), early
    stopping and selected epoch (its own `EpochTracker`). Per step the K folds' batches are stacked into
    [K, batch_size] (a fold's last, shorter batch is padded with windows whose outputs are discarded; a fold
    that has no batch left in this epoch is computed but not updated). Only dropout differs: its masks are
    drawn for all folds at once (`randomness="different"`), so they are not the masks `train_fold` would draw;
    everything else is the same function, which tests/training/test_equivalence.py checks with dropout
    switched off.
    """
    if "place_statistics" in config.windows.features:
        # execution_plan never stacks these (each fold's statistics are its own input); a direct call is refused.
        raise ConfigError("Stacked folds cannot train windows.features 'place_statistics': each fold's statistics "
                          "are fitted on its own training users and are one more per-fold input. Set "
                          "training.stack_folds: false (the execution plan does so itself).")
    started = time.perf_counter()
    device, training, num_classes = data.device, config.training, len(windows.classes)
    autocast = use_autocast(config, device)
    batch_size, K = training.batch_size, len(folds)

    # --- set up: the same initial weights, criteria, generators and schedules as K calls of train_fold
    models, criteria, generators, schedules, vocabularies = [], [], [], [], []
    for fold in folds:
        torch.manual_seed(seed * 1009 + fold.fold)
        vocabularies.append(fold_vocabularies(windows, config.windows.features, fold.train_index,
                                              config.model.identity_min_count))
        models.append(build_model(config.model, config.windows.features, data.embedding_dim, num_classes,
                                  windows.length, data.numeric_dim, vocabularies[-1], data.table).to(device))
        criteria.append(build_loss(config.loss, windows.target[fold.train_index], num_classes).to(device))
        generators.append(torch.Generator(device=data.storage_device).manual_seed(seed * 1009 + fold.fold))
        # The learning rates come from the very scheduler train_fold uses, stepped on a stand-in optimiser.
        stand_in = torch.optim.AdamW([torch.zeros(1)], lr=config.optimizer.learning_rate,
                                     weight_decay=config.optimizer.weight_decay)
        schedules.append((stand_in, make_scheduler(config, stand_in,
                                                   math.ceil(len(fold.train_index) / batch_size))))
    identity_names = list(vocabularies[0])
    buffers = {f"encoder.identity.{name}.remap": torch.stack([m.encoder.identity[name].remap for m in models])
               for name in identity_names}
    # The folds' vocabularies differ in size: the template's tables get the largest fold's rows, and each fold's
    # table is padded with zero rows it never reads (its remap points into its own rows only).
    template = copy.deepcopy(models[0]) if identity_names else models[0]
    for name in identity_names:
        table = template.encoder.identity[name].table
        template.encoder.identity[name].table = torch.nn.Embedding(
            max(v[name].rows for v in vocabularies), table.embedding_dim, padding_idx=table.padding_idx,
            device=device)
    layout = ParameterLayout(template)
    flat = torch.stack([layout.flatten(m) for m in models]).requires_grad_(True)
    del models
    second_group = ((layout.identity_columns().to(device), config.model.identity_weight_decay)
                    if identity_names else None)
    optimizer = StackedAdamW(flat, config.optimizer.weight_decay, eps=schedules[0][0].defaults["eps"],
                             second_group=second_group)
    batched_criterion = _stacked_criterion(criteria)
    # Dropout masks of all folds come from the global generator, seeded once per seed.
    torch.manual_seed(seed * 1009 + 997)

    stacked_forward = make_stacked_forward(template, layout, buffers)

    def fold_buffers(k: int) -> dict[str, torch.Tensor]:
        return {name: stacked[k] for name, stacked in buffers.items()}

    train_sizes = [len(f.train_index) for f in folds]
    steps_per_fold = [math.ceil(n / batch_size) for n in train_sizes]
    train_indices = [torch.from_numpy(f.train_index).to(data.storage_device) for f in folds]
    val_indices = [torch.from_numpy(f.inner_val_index).to(data.storage_device) for f in folds]
    weights = [(balanced_sampling_weights(windows.target[f.train_index], num_classes, data.storage_device)
                if training.weighted_sampler else None) for f in folds]

    trackers = [EpochTracker(label, training.epochs, training.early_stopping_patience, progress) for label in labels]
    best_flat = flat.detach().clone()
    views = [FoldView(template, layout, flat[k].detach(), fold_buffers(k)) for k in range(K)]
    for epoch in range(1, training.epochs + 1):
        alive = [not tracker.stopped for tracker in trackers]
        # --- this epoch's batch orders (padded to [K, steps * batch_size]) and optimiser coefficients
        steps = max(steps_per_fold[k] for k in range(K) if alive[k])
        orders = torch.empty((K, steps * batch_size), dtype=torch.long, device=data.storage_device)
        for k in range(K):
            if not alive[k]:  # computed (its rows are discarded) but never updated again
                orders[k] = train_indices[k][0]
                continue
            order = epoch_order(train_indices[k], weights[k], generators[k], data.storage_device)
            orders[k, :len(order)] = order
            orders[k, len(order):] = order[0]  # padding of its last batch / steps it has no batch for
        table, sizes, epoch_lr = [], [], [None] * K
        for step in range(steps):
            rates, row_sizes = [], []
            for k in range(K):
                if alive[k] and step < steps_per_fold[k]:
                    stand_in, scheduler = schedules[k]
                    group = stand_in.param_groups[0]
                    rates.append((group["lr"], *group["betas"]))
                    stand_in.step()  # no gradient: changes nothing, keeps the scheduler's call-order check quiet
                    scheduler.step()
                    row_sizes.append(min(batch_size, train_sizes[k] - step * batch_size))
                else:
                    rates.append(None)
                    row_sizes.append(0)
            if step == 0:
                epoch_lr = [None if r is None else r[0] for r in rates]
            table.append([(*row, size) for row, size in zip(optimizer.coefficients(rates), row_sizes)])
            sizes.append(row_sizes)
        table = torch.tensor(table, dtype=torch.float32)  # [steps, K, optimizer.columns + 1 (batch size)]
        table = (table.pin_memory() if pin_host_memory(device) else table).to(device, non_blocking=True)

        # --- train (no host synchronisation inside this loop)
        template.train()
        train_loss_sums = torch.zeros(K, device=device)
        for step in range(steps):
            row_sizes = sizes[step]
            batch = data.batch(orders[:, step * batch_size:(step + 1) * batch_size].reshape(-1))
            batch = {name: t.view(K, batch_size, *t.shape[1:]) for name, t in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = stacked_forward(flat, batch["embedded"], batch["category"], batch["numeric"], batch["mask"],
                                         {name: batch[name] for name in identity_names})
            logits = logits.float()
            if batched_criterion is not None and all(size == batch_size for size in row_sizes):
                losses = batched_criterion(logits, batch["target"])
            else:
                zero = torch.zeros((), device=device)
                losses = torch.stack([criteria[k](logits[k, :size], batch["target"][k, :size]) if size else zero
                                      for k, size in enumerate(row_sizes)])
            flat.grad = None
            losses.sum().backward()
            for columns in layout.no_grad_slices:
                flat.grad[:, columns] = 0.0
            optimizer.step(table[step, :, :optimizer.columns])
            train_loss_sums += losses.detach() * table[step, :, optimizer.columns]

        # --- evaluate every fold still training on its inner validation users (one host sync for all)
        live = [k for k in range(K) if alive[k]]
        parts = [train_loss_sums]
        for k in live:
            val_loss_sum, confusion, _, _ = evaluate(views[k], data, val_indices[k], criteria[k], num_classes,
                                                     batch_size * 4, autocast, keep_log_probabilities=False)
            parts += [val_loss_sum.view(1), confusion.view(-1).float()]
        stats = torch.cat(parts).cpu().numpy()

        # --- select each fold on its inner validation users only
        width = 1 + num_classes * num_classes
        improved = []
        for position, k in enumerate(live):
            fold_stats = np.concatenate([stats[k:k + 1], stats[K + position * width:K + (position + 1) * width]])
            check_finite_losses(config, seed, folds[k].fold, epoch, float(fold_stats[0]), float(fold_stats[1]),
                                epoch_lr[k])
            curve = epoch_curve(seed, folds[k].fold, epoch, fold_stats, train_sizes[k], len(val_indices[k]),
                                num_classes, epoch_lr[k])
            if trackers[k].update(curve):
                improved.append(k)
        with torch.no_grad():
            for k in improved:
                best_flat[k].copy_(flat[k])
        if all(tracker.stopped for tracker in trackers):
            break

    # --- report each test fold with its last and its selected weights
    results = []
    seconds = (time.perf_counter() - started) / K
    for k, fold in enumerate(folds):
        predictions, attention, offsets, log_probabilities = predict_test_fold(
            config, data, windows, fold, criteria[k], autocast, views[k],
            lambda k=k: FoldView(template, layout, best_flat[k], fold_buffers(k)))
        tracker = trackers[k]
        results.append(FoldResult(seed=seed, fold=fold.fold, curves=tracker.curves, selected_epoch=tracker.best_epoch,
                                  last_epoch=tracker.last_epoch, test_target=windows.target[fold.test_index],
                                  predictions=predictions, attention=attention, bias_offsets=offsets,
                                  seconds=seconds, log_probabilities=log_probabilities))
    return results
