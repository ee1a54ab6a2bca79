"""The cross-validation engine: train every (seed, fold), select on inner validation users, report the test fold.

Recipe per fold: set up model/loss/optimiser/scheduler -> loop over epochs (shuffled index batches gathered
from device-resident tensors) -> evaluate the inner validation users (confusion counted on the device, one
host sync per epoch) -> keep the weights of the best epoch -> at the end evaluate the test fold once with the
selected weights and once with the last ones.

Windows live on the device as POI-index tensors plus one embedding table, gathered per batch, so no
DataLoader and no host-to-device copy sit on the hot path; a dataset too large for device memory falls back
to host-resident tensors with a message.

How the (seed, fold) jobs are executed is chosen per run (`execution_plan`); every mode trains each fold with
the same function (model, loss, AdamW update, learning-rate schedule, batch order) as `train_fold`:

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
`fold_workers` ("auto" | int >= 1). On CUDA, with mixed precision on, fp32 matmuls may use TF32 while the
engine runs (restored afterwards); AdamW uses the fused CUDA kernel.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import queue as queue_module
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from .config import ExperimentConfig, check_execution_settings
from .folds import Fold, FoldManifest
from .losses import build_loss
from .metrics import confusion_counts, fit_bias_offsets, macro_f1_from_confusion
from .models import HEADS_WITH_ATTENTION, TARGET_TIME_SIZE, NUMERIC_FEATURE_SIZES, build_model
from .windows import WindowSet

# Heads whose forward and backward `torch.vmap` can batch over stacked parameters (tested for equality with
# the per-fold path in tests/test_engine_equivalence.py). RNN kernels have no batching rule.
STACKABLE_HEADS = frozenset({"transformer"})
# fold_workers="auto" on CPU only parallelises runs with at least this many training window-epochs in total
# (sum over jobs of train windows x epochs): below it, starting worker processes costs more than it saves.
AUTO_WORKERS_MIN_WINDOW_EPOCHS = 100_000
# Windows are kept on an accelerator when they need at most this share of its free memory.
DEVICE_MEMORY_SHARE = 0.5


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"training.device={name!r} but no CUDA GPU is visible. Use device: auto or cpu.")
    return device


def numeric_features(windows: WindowSet, features: list[str], target_time: bool) -> np.ndarray:
    """[N, L, K] float32 of the numeric per-visit inputs the feature set asks for (0 on padding)."""
    parts = []
    if "time" in features:
        hour_angle = 2 * np.pi * windows.hour / 24.0
        day_angle = 2 * np.pi * windows.weekday / 7.0
        parts += [np.sin(hour_angle), np.cos(hour_angle), np.sin(day_angle), np.cos(day_angle),
                  np.log1p(np.maximum(windows.gap_hours, 0.0)) / 5.0]
    if "coordinates" in features:
        # Standardised over all observed visits: an unsupervised rescaling of inputs, no labels involved.
        for values in (windows.latitude, windows.longitude):
            observed = values[windows.mask]
            parts.append((values - observed.mean()) / (observed.std() + 1e-6))
    if target_time:
        hour_angle = 2 * np.pi * windows.target_hour / 24.0
        day_angle = 2 * np.pi * windows.target_weekday / 7.0
        for value in (np.sin(hour_angle), np.cos(hour_angle), np.sin(day_angle), np.cos(day_angle)):
            parts.append(np.broadcast_to(value[:, None], windows.mask.shape))
    if not parts:
        return np.zeros((*windows.mask.shape, 0), np.float32)
    stacked = np.stack(parts, axis=-1).astype(np.float32)
    return np.where(windows.mask[..., None], stacked, 0.0).astype(np.float32)


def numeric_feature_count(features: list[str], target_time: bool) -> int:
    return sum(NUMERIC_FEATURE_SIZES.get(name, 0) for name in features) + (TARGET_TIME_SIZE if target_time else 0)


def device_free_memory(device: torch.device) -> int | None:
    """Free bytes on an accelerator; None for the host (no limit is checked there). Tests monkeypatch this."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None


def storage_device_for(needed_bytes: int, device: torch.device, free_bytes: int | None) -> tuple[torch.device, str | None]:
    """Where windows needing `needed_bytes` are kept: on `device`, or on the host (with the message to log)."""
    if free_bytes is None or needed_bytes <= DEVICE_MEMORY_SHARE * free_bytes:
        return device, None
    return torch.device("cpu"), (
        f"Windows need {needed_bytes / 2**30:.1f} GiB, more than half of the {free_bytes / 2**30:.1f} GiB free on "
        f"{device}: keeping them in host memory and copying each batch (slower, same result).")


class WindowTensors:
    """Windows as tensors on the training device (or on the host when they do not fit)."""

    def __init__(self, windows: WindowSet, config: ExperimentConfig, device: torch.device, log=print):
        numeric = numeric_features(windows, config.windows.features, config.windows.target_time_features)
        use_embedding = "embedding" in config.windows.features
        table = windows.embedding_table if use_embedding else np.zeros((1, 0), np.float32)
        host = {
            "poi_index": torch.from_numpy(windows.poi_index if use_embedding else np.zeros_like(windows.poi_index)),
            "category": torch.from_numpy(windows.category_index),
            "numeric": torch.from_numpy(numeric),
            "mask": torch.from_numpy(windows.mask),
            "target": torch.from_numpy(windows.target),
        }
        self.table = torch.from_numpy(np.ascontiguousarray(table))
        needed = sum(t.numel() * t.element_size() for t in host.values()) + self.table.numel() * 4
        self.device = device
        self.storage_device, message = storage_device_for(needed, device, device_free_memory(device))
        # True when the windows could not be kept on the training device (each batch is copied to it).
        self.host_resident = message is not None
        if message:
            log(message)
        pin = self.storage_device.type == "cpu" and device.type == "cuda"
        self.tensors = {name: (t.pin_memory() if pin else t.to(self.storage_device)) for name, t in host.items()}
        self.table = self.table.pin_memory() if pin else self.table.to(self.storage_device)
        self.numeric_dim = numeric.shape[-1]
        self.embedding_dim = self.table.shape[1]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        index = index.to(self.storage_device)
        poi_index = self.tensors["poi_index"][index]
        out = {
            "embedded": self.table[poi_index] if self.embedding_dim else
            torch.zeros((*poi_index.shape, 0), device=self.storage_device),
            "category": self.tensors["category"][index],
            "numeric": self.tensors["numeric"][index],
            "mask": self.tensors["mask"][index],
            "target": self.tensors["target"][index],
        }
        if self.storage_device != self.device:
            out = {name: t.to(self.device, non_blocking=True) for name, t in out.items()}
        return out


@dataclass
class FoldResult:
    seed: int
    fold: int
    curves: list[dict]
    selected_epoch: int
    last_epoch: int
    test_target: np.ndarray
    predictions: dict[str, np.ndarray]  # selection name -> predicted class per test window
    attention: np.ndarray | None = None  # mean pooling weight per position (selected weights)
    bias_offsets: np.ndarray | None = None
    seconds: float = 0.0  # stacked folds: the seed's wall time shared equally among its folds
    # Selected weights' log-probabilities, {"inner_val": [n_val, C], "test": [n_test, C]}: what a blend with
    # another model needs. Kept in memory only; run folders do not store them.
    log_probabilities: dict[str, np.ndarray] | None = None


@dataclass
class CrossValidationResult:
    fold_results: list[FoldResult]
    device: str
    device_name: str
    extra: dict = field(default_factory=dict)  # "engine": how the jobs were executed (see execution_plan)


def make_scheduler(config: ExperimentConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    s, epochs = config.scheduler, config.training.epochs
    if s.name == "onecycle":
        # OneCycle overrides the optimiser's lr: it starts at max_lr/div_factor (see config validation).
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=s.max_lr, epochs=epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=s.pct_start,
                                                   div_factor=s.div_factor, final_div_factor=s.final_div_factor)
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def make_optimizer(config: ExperimentConfig, parameters, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; on CUDA the fused kernel (one launch for all parameters), elsewhere PyTorch's default."""
    return torch.optim.AdamW(parameters, lr=config.optimizer.learning_rate, weight_decay=config.optimizer.weight_decay,
                             fused=True if device.type == "cuda" else None)


class Progress:
    """One line per fold and a few per fold while training; silent when switched off."""

    def __init__(self, enabled: bool, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stdout

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)


def evaluate(model, data: WindowTensors, index: torch.Tensor, criterion, num_classes: int, batch_size: int,
             autocast: bool, return_attention: bool = False, keep_log_probabilities: bool = True):
    """Logits-derived statistics over `index` without gradients: loss sum, confusion, log-probabilities.

    With keep_log_probabilities=False the third value is None (the per-epoch validation needs only the
    loss and the confusion)."""
    model.eval()
    loss_sum = torch.zeros((), device=data.device)
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.long, device=data.device)
    log_probabilities, attention_sum = [], None
    with torch.no_grad(), torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=autocast):
        for start in range(0, len(index), batch_size):
            batch = data.batch(index[start:start + batch_size])
            output = model(batch["embedded"], batch["category"], batch["numeric"], batch["mask"],
                           return_attention=return_attention)
            logits, weights = output if return_attention else (output, None)
            logits = logits.float()
            loss_sum += criterion(logits, batch["target"]) * len(batch["target"])
            confusion += confusion_counts(batch["target"], logits.argmax(dim=1), num_classes)
            if keep_log_probabilities:
                log_probabilities.append(F.log_softmax(logits, dim=1))
            if weights is not None:
                batch_sum = weights.float().sum(dim=0)
                attention_sum = batch_sum if attention_sum is None else attention_sum + batch_sum
    return (loss_sum, confusion, torch.cat(log_probabilities) if keep_log_probabilities else None, attention_sum)


def _use_autocast(config: ExperimentConfig, device: torch.device) -> bool:
    return bool(config.training.mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported())


def _epoch_order(train_index: torch.Tensor, sampling_weights: torch.Tensor | None, generator: torch.Generator,
                 storage_device: torch.device) -> torch.Tensor:
    """This epoch's sequence of training windows (a permutation, or class-balanced draws with replacement)."""
    if sampling_weights is not None:
        return train_index[torch.multinomial(sampling_weights, len(train_index), replacement=True,
                                             generator=generator)]
    return train_index[torch.randperm(len(train_index), generator=generator, device=storage_device)]


def _sampling_weights(train_targets: np.ndarray, num_classes: int, storage_device: torch.device) -> torch.Tensor:
    # Class-balanced sampling with replacement: each class is drawn equally often in expectation.
    counts = np.bincount(train_targets, minlength=num_classes)
    return torch.from_numpy(1.0 / counts[train_targets]).to(storage_device)


def _epoch_curve(seed: int, fold: int, epoch: int, stats: np.ndarray, n_train: int, n_val: int, num_classes: int,
                 learning_rate: float) -> dict:
    """stats = [train loss sum, val loss sum, confusion (C*C)] of one epoch, fetched from the device."""
    confusion = stats[2:].reshape(num_classes, num_classes)
    return {"seed": seed, "fold": fold, "epoch": epoch, "train_loss": stats[0] / n_train,
            "val_loss": stats[1] / n_val, "val_accuracy": float(np.trace(confusion) / confusion.sum()),
            "val_macro_f1": macro_f1_from_confusion(confusion), "learning_rate": learning_rate}


def _test_predictions(config: ExperimentConfig, data: WindowTensors, windows: WindowSet, fold: Fold, criterion,
                      autocast: bool, last_model, load_selected):
    """Predictions on the test fold with the last weights, then with the selected ones (+ attention, offsets,
    and the selected weights' log-probabilities on the inner validation users and the test fold)."""
    num_classes, batch_size = len(windows.classes), config.training.batch_size * 4
    test_index = torch.from_numpy(fold.test_index).to(data.storage_device)
    with_attention = config.model.name in HEADS_WITH_ATTENTION
    predictions = {}
    _, _, last_log_probabilities, _ = evaluate(last_model, data, test_index, criterion, num_classes, batch_size,
                                               autocast)
    predictions["last"] = last_log_probabilities.argmax(dim=1).cpu().numpy()
    model = load_selected()
    _, _, test_log_probabilities, attention_sum = evaluate(model, data, test_index, criterion, num_classes,
                                                           batch_size, autocast, with_attention)
    predictions["selected"] = test_log_probabilities.argmax(dim=1).cpu().numpy()
    inner_val_index = torch.from_numpy(fold.inner_val_index).to(data.storage_device)
    _, _, val_log_probabilities, _ = evaluate(model, data, inner_val_index, criterion, num_classes, batch_size,
                                              autocast)
    log_probabilities = {"inner_val": val_log_probabilities.float().cpu().numpy(),
                         "test": test_log_probabilities.float().cpu().numpy()}
    offsets = None
    if config.training.bias_calibration:
        offsets = fit_bias_offsets(log_probabilities["inner_val"], windows.target[fold.inner_val_index])
        predictions["calibrated"] = np.argmax(log_probabilities["test"] + offsets, axis=1)
    attention = None
    if attention_sum is not None:
        attention = (attention_sum / len(test_index)).cpu().numpy()
    return predictions, attention, offsets, log_probabilities


def train_fold(config: ExperimentConfig, data: WindowTensors, windows: WindowSet, fold: Fold, seed: int,
               progress: Progress, label: str) -> FoldResult:
    """Train one (seed, fold) with a plain module and torch.optim.AdamW: the reference path."""
    started = time.perf_counter()
    device, training, num_classes = data.device, config.training, len(windows.classes)
    autocast = _use_autocast(config, device)

    # --- set up
    torch.manual_seed(seed * 1009 + fold.fold)
    generator = torch.Generator(device=data.storage_device).manual_seed(seed * 1009 + fold.fold)
    model = build_model(config.model, config.windows.features, data.embedding_dim, num_classes, windows.length,
                        data.numeric_dim).to(device)
    train_targets = windows.target[fold.train_index]
    criterion = build_loss(config.loss, train_targets, num_classes).to(device)
    optimizer = make_optimizer(config, model.parameters(), device)
    steps_per_epoch = math.ceil(len(fold.train_index) / training.batch_size)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    train_index = torch.from_numpy(fold.train_index).to(data.storage_device)
    inner_val_index = torch.from_numpy(fold.inner_val_index).to(data.storage_device)
    sampling_weights = (_sampling_weights(train_targets, num_classes, data.storage_device)
                        if training.weighted_sampler else None)

    # The best epoch's weights are copied into buffers allocated once: memory does not grow with epochs.
    curves, best_score, best_state, best_epoch, epochs_without_gain = [], -1.0, None, 0, 0
    report_every = max(1, training.epochs // 5)
    # --- loop over epochs
    for epoch in range(1, training.epochs + 1):
        model.train()
        order = _epoch_order(train_index, sampling_weights, generator, data.storage_device)
        train_loss_sum = torch.zeros((), device=device)
        learning_rate = optimizer.param_groups[0]["lr"]
        # No host synchronisation inside this loop: losses are summed on the device.
        for start in range(0, len(order), training.batch_size):
            batch = data.batch(order[start:start + training.batch_size])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = model(batch["embedded"], batch["category"], batch["numeric"], batch["mask"])
            loss = criterion(logits.float(), batch["target"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            train_loss_sum += loss.detach() * len(batch["target"])

        # --- evaluate on the inner validation users (one host sync)
        val_loss_sum, confusion, _, _ = evaluate(model, data, inner_val_index, criterion, num_classes,
                                                 training.batch_size * 4, autocast, keep_log_probabilities=False)
        stats = torch.cat([train_loss_sum.view(1), val_loss_sum.view(1), confusion.view(-1).float()]).cpu().numpy()
        curves.append(_epoch_curve(seed, fold.fold, epoch, stats, len(order), len(inner_val_index), num_classes,
                                   learning_rate))
        val_macro_f1 = curves[-1]["val_macro_f1"]

        # --- select on the inner validation users only
        if val_macro_f1 > best_score:
            best_score, best_epoch, epochs_without_gain = val_macro_f1, epoch, 0
            if best_state is None:
                best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
            else:
                for name, value in model.state_dict().items():
                    best_state[name].copy_(value)
        else:
            epochs_without_gain += 1
        if epoch % report_every == 0 or epoch == training.epochs:
            progress(f"  {label} epoch {epoch:>3}/{training.epochs}  train loss {curves[-1]['train_loss']:.4f}  "
                     f"val loss {curves[-1]['val_loss']:.4f}  val macro-F1 {val_macro_f1:.4f}  (best {best_score:.4f} "
                     f"@ {best_epoch})")
        if training.early_stopping_patience and epochs_without_gain >= training.early_stopping_patience:
            progress(f"  {label} early stop at epoch {epoch}: no gain for {epochs_without_gain} epochs")
            break

    # --- report the test fold with the last and the selected weights
    def load_selected():
        model.load_state_dict(best_state)
        return model

    predictions, attention, offsets, log_probabilities = _test_predictions(config, data, windows, fold, criterion,
                                                                           autocast, model, load_selected)
    return FoldResult(seed=seed, fold=fold.fold, curves=curves, selected_epoch=best_epoch, last_epoch=epoch,
                      test_target=windows.target[fold.test_index], predictions=predictions, attention=attention,
                      bias_offsets=offsets, seconds=time.perf_counter() - started,
                      log_probabilities=log_probabilities)


# --------------------------------------------------------------------------------------------------
# Stacked folds: K models of one seed trained as one batched computation


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
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflatten(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: piece.view(shape) for name, piece, shape in zip(self.names, row.split(self.sizes), self.shapes)}


class FoldView:
    """A callable with the module interface `evaluate` uses: `template` run with the weights in `row`."""

    def __init__(self, template: torch.nn.Module, layout: ParameterLayout, row: torch.Tensor):
        self.template, self.layout, self.row = template, layout, row

    def eval(self):
        self.template.eval()
        return self

    def __call__(self, *args, **kwargs):
        return functional_call(self.template, self.layout.unflatten(self.row), args, kwargs)


class StackedAdamW:
    """AdamW over K stacked parameter vectors ([K, P]) with hyper-parameters and a step count per row.

    Each row gets exactly torch.optim.AdamW's update (decoupled weight decay, bias-corrected moments, same
    operation order) with its own learning rate and betas (OneCycle also cycles beta1); a row marked inactive
    for a step is left unchanged (no decay, no moment update), as a fold that has finished its epoch or stopped
    early. The per-row coefficients of a whole epoch are computed on the host in double precision (like
    PyTorch's scalars) and sent to the device once per epoch."""

    COLUMNS = 6  # decay, 1 - beta1, beta2, 1 - beta2, step size, sqrt(bias correction 2)

    def __init__(self, flat: torch.Tensor, weight_decay: float, eps: float = 1e-8):
        self.flat, self.weight_decay, self.eps = flat, weight_decay, eps
        self.exp_avg = torch.zeros_like(flat)
        self.exp_avg_sq = torch.zeros_like(flat)
        self.steps = [0] * flat.shape[0]

    def coefficients(self, hyper: list[tuple[float, float, float] | None]) -> list[tuple[float, ...]]:
        """Coefficient rows for one step from each row's (lr, beta1, beta2), None for an inactive row; advances
        the step counts."""
        rows = []
        for k, values in enumerate(hyper):
            if values is None:
                rows.append((1.0, 0.0, 1.0, 0.0, 0.0, 1.0))
                continue
            lr, beta1, beta2 = values
            self.steps[k] += 1
            step = self.steps[k]
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            rows.append((1 - lr * self.weight_decay, 1 - beta1, beta2, 1 - beta2, lr / bias_correction1,
                         bias_correction2 ** 0.5))
        return rows

    @torch.no_grad()
    def step(self, coefficients: torch.Tensor) -> None:
        """coefficients: [K, COLUMNS] on the device (one row of the epoch's table)."""
        decay, weight1, beta2, weight2, step_size, bias_correction2_sqrt = coefficients.unsqueeze(-1).unbind(1)
        grad = self.flat.grad
        self.flat.mul_(decay)
        self.exp_avg.lerp_(grad, weight1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad * weight2, grad)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
        self.flat.addcdiv_(self.exp_avg * -step_size, denom)


def make_stacked_forward(template: torch.nn.Module, layout: ParameterLayout):
    """(flat [K, P], embedded, category, numeric, mask each [K, B, ...]) -> logits [K, B, C]: fold k's batch
    through `template` with the weights of row k. Dropout masks differ between folds."""

    def one_fold_forward(row, embedded, category, numeric, mask):
        return functional_call(template, layout.unflatten(row), (embedded, category, numeric, mask))

    batched = vmap(one_fold_forward, randomness="different")

    def forward(flat, embedded, category, numeric, mask):
        if embedded.device.type != "cpu":
            return batched(flat, embedded, category, numeric, mask)
        # CPU's fused attention kernel has no vmap batching rule (vmap would loop over the folds); the math
        # kernel, which it decomposes into, has.
        with sdpa_kernel(SDPBackend.MATH):
            return batched(flat, embedded, category, numeric, mask)

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
    stopping and selected epoch. Per step the K folds' batches are stacked into [K, batch_size] (a fold's
    last, shorter batch is padded with windows whose outputs are discarded; a fold that has no batch left in
    this epoch is computed but not updated). Only dropout differs: its masks are drawn for all folds at once
    (`randomness="different"`), so they are not the masks `train_fold` would draw; everything else is the same
    function, which tests/test_engine_equivalence.py checks with dropout switched off.
    """
    started = time.perf_counter()
    device, training, num_classes = data.device, config.training, len(windows.classes)
    autocast = _use_autocast(config, device)
    batch_size, K = training.batch_size, len(folds)

    # --- set up: the same initial weights, criteria, generators and schedules as K calls of train_fold
    models, criteria, generators, schedules = [], [], [], []
    for fold in folds:
        torch.manual_seed(seed * 1009 + fold.fold)
        models.append(build_model(config.model, config.windows.features, data.embedding_dim, num_classes,
                                  windows.length, data.numeric_dim).to(device))
        criteria.append(build_loss(config.loss, windows.target[fold.train_index], num_classes).to(device))
        generators.append(torch.Generator(device=data.storage_device).manual_seed(seed * 1009 + fold.fold))
        # The learning rates come from the very scheduler train_fold uses, stepped on a stand-in optimiser.
        stand_in = torch.optim.AdamW([torch.zeros(1)], lr=config.optimizer.learning_rate,
                                     weight_decay=config.optimizer.weight_decay)
        schedules.append((stand_in, make_scheduler(config, stand_in,
                                                   math.ceil(len(fold.train_index) / batch_size))))
    template = models[0]
    layout = ParameterLayout(template)
    flat = torch.stack([layout.flatten(m) for m in models]).requires_grad_(True)
    del models
    optimizer = StackedAdamW(flat, config.optimizer.weight_decay, eps=schedules[0][0].defaults["eps"])
    batched_criterion = _stacked_criterion(criteria)
    # Dropout masks of all folds come from the global generator, seeded once per seed.
    torch.manual_seed(seed * 1009 + 997)

    stacked_forward = make_stacked_forward(template, layout)

    train_sizes = [len(f.train_index) for f in folds]
    steps_per_fold = [math.ceil(n / batch_size) for n in train_sizes]
    train_indices = [torch.from_numpy(f.train_index).to(data.storage_device) for f in folds]
    val_indices = [torch.from_numpy(f.inner_val_index).to(data.storage_device) for f in folds]
    weights = [(_sampling_weights(windows.target[f.train_index], num_classes, data.storage_device)
                if training.weighted_sampler else None) for f in folds]

    curves = [[] for _ in folds]
    best_score, best_epoch, without_gain = [-1.0] * K, [0] * K, [0] * K
    last_epoch, alive = [0] * K, [True] * K
    best_flat = flat.detach().clone()
    report_every = max(1, training.epochs // 5)
    views = [FoldView(template, layout, flat[k].detach()) for k in range(K)]
    for epoch in range(1, training.epochs + 1):
        # --- this epoch's batch orders (padded to [K, steps * batch_size]) and optimiser coefficients
        steps = max(steps_per_fold[k] for k in range(K) if alive[k])
        orders = torch.empty((K, steps * batch_size), dtype=torch.long, device=data.storage_device)
        for k in range(K):
            if not alive[k]:  # computed (its rows are discarded) but never updated again
                orders[k] = train_indices[k][0]
                continue
            order = _epoch_order(train_indices[k], weights[k], generators[k], data.storage_device)
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
        table = torch.tensor(table, dtype=torch.float32)  # [steps, K, COLUMNS + 1 (batch size)]
        table = (table.pin_memory() if device.type == "cuda" else table).to(device, non_blocking=True)

        # --- train (no host synchronisation inside this loop)
        template.train()
        train_loss_sums = torch.zeros(K, device=device)
        for step in range(steps):
            row_sizes = sizes[step]
            batch = data.batch(orders[:, step * batch_size:(step + 1) * batch_size].reshape(-1))
            batch = {name: t.view(K, batch_size, *t.shape[1:]) for name, t in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = stacked_forward(flat, batch["embedded"], batch["category"], batch["numeric"], batch["mask"])
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
            optimizer.step(table[step, :, :StackedAdamW.COLUMNS])
            train_loss_sums += losses.detach() * table[step, :, StackedAdamW.COLUMNS]

        # --- evaluate every fold still training on its inner validation users (one host sync for all)
        live = [k for k in range(K) if alive[k]]
        parts = [train_loss_sums]
        for k in live:
            val_loss_sum, confusion, _, _ = evaluate(views[k], data, val_indices[k], criteria[k], num_classes,
                                                     batch_size * 4, autocast, keep_log_probabilities=False)
            parts += [val_loss_sum.view(1), confusion.view(-1).float()]
        stats = torch.cat(parts).cpu().numpy()
        width = 1 + num_classes * num_classes
        improved = []
        for position, k in enumerate(live):
            fold_stats = np.concatenate([stats[k:k + 1], stats[K + position * width:K + (position + 1) * width]])
            curves[k].append(_epoch_curve(seed, folds[k].fold, epoch, fold_stats, train_sizes[k],
                                          len(val_indices[k]), num_classes, epoch_lr[k]))
            score = curves[k][-1]["val_macro_f1"]
            last_epoch[k] = epoch
            if score > best_score[k]:
                best_score[k], best_epoch[k], without_gain[k] = score, epoch, 0
                improved.append(k)
            else:
                without_gain[k] += 1
            if epoch % report_every == 0 or epoch == training.epochs:
                progress(f"  {labels[k]} epoch {epoch:>3}/{training.epochs}  train loss "
                         f"{curves[k][-1]['train_loss']:.4f}  val loss {curves[k][-1]['val_loss']:.4f}  val macro-F1 "
                         f"{score:.4f}  (best {best_score[k]:.4f} @ {best_epoch[k]})")
            if training.early_stopping_patience and without_gain[k] >= training.early_stopping_patience:
                progress(f"  {labels[k]} early stop at epoch {epoch}: no gain for {without_gain[k]} epochs")
                alive[k] = False
        with torch.no_grad():
            for k in improved:
                best_flat[k].copy_(flat[k])
        if not any(alive):
            break

    # --- report each test fold with its last and its selected weights
    results = []
    seconds = (time.perf_counter() - started) / K
    for k, fold in enumerate(folds):
        predictions, attention, offsets, log_probabilities = _test_predictions(
            config, data, windows, fold, criteria[k], autocast, views[k],
            lambda k=k: FoldView(template, layout, best_flat[k]))
        results.append(FoldResult(seed=seed, fold=fold.fold, curves=curves[k], selected_epoch=best_epoch[k],
                                  last_epoch=last_epoch[k], test_target=windows.target[fold.test_index],
                                  predictions=predictions, attention=attention, bias_offsets=offsets,
                                  seconds=seconds, log_probabilities=log_probabilities))
    return results


# --------------------------------------------------------------------------------------------------
# Execution plan and fold workers


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
    """How the (seed, fold) jobs run; see the module docstring. Raises ConfigError on an invalid setting (a
    config changed after loading)."""
    check_execution_settings(config.training)
    stack, workers = config.training.stack_folds, config.training.fold_workers
    notes = []
    n_folds, jobs = len(fold_manifest.folds), len(config.training.seeds) * len(fold_manifest.folds)
    stackable = config.model.name in STACKABLE_HEADS and n_folds >= 2
    if stack is True and not stackable:
        notes.append(f"training.stack_folds ignored for model {config.model.name!r}: torch.vmap cannot batch its "
                     f"kernels (stackable heads: {', '.join(sorted(STACKABLE_HEADS))}); training folds one by one.")
    use_stack = stackable and (stack is True or (stack == "auto" and device.type == "cuda"))
    threads = torch.get_num_threads()
    if device.type != "cpu" or use_stack:
        if workers not in ("auto", 1):
            notes.append(f"training.fold_workers={workers} ignored: fold workers are used for CPU training without "
                         f"stacked folds only.")
        return ExecutionPlan(use_stack, 1, threads, notes)
    if workers == "auto":
        work = sum(len(f.train_index) for f in fold_manifest.folds) * len(config.training.seeds) * config.training.epochs
        workers = min(threads, jobs) if work >= AUTO_WORKERS_MIN_WINDOW_EPOCHS else 1
    workers = max(1, min(workers, jobs))
    return ExecutionPlan(False, workers, max(1, threads // workers) if workers > 1 else threads, notes)


@contextlib.contextmanager
def _matmul_precision(device: torch.device, allow_tf32: bool):
    """TF32 for fp32 matmuls on CUDA while the engine runs (mixed precision on), restored afterwards."""
    if device.type != "cuda" or not allow_tf32:
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


_WORKER: dict = {}


class _QueueProgress(Progress):
    """Progress inside a fold worker: messages go to the parent, which prints them with its own Progress."""

    def __init__(self, enabled: bool, messages):
        super().__init__(enabled)
        self.messages = messages

    def __call__(self, message: str) -> None:
        if self.enabled:
            self.messages.put(message)


def _worker_start(config: ExperimentConfig, windows: WindowSet, threads: int, messages, enabled: bool) -> None:
    torch.set_num_threads(threads)
    progress = _QueueProgress(enabled, messages)
    _WORKER.update(config=config, windows=windows, progress=progress,
                   data=WindowTensors(windows, config, torch.device("cpu"), log=progress))


def _worker_train(seed: int, fold: Fold, label: str) -> FoldResult:
    w = _WORKER
    return train_fold(w["config"], w["data"], w["windows"], fold, seed, w["progress"], label)


def _relay(messages, progress: Progress) -> None:
    while True:
        try:
            progress(messages.get_nowait())
        except queue_module.Empty:
            return


def _cross_validate_in_workers(config: ExperimentConfig, windows: WindowSet, jobs: list[tuple[int, Fold, str]],
                               plan: ExecutionPlan, progress: Progress) -> list[FoldResult]:
    """train_fold for every job in `plan.fold_workers` fresh processes ("spawn": safe in notebooks and threads)."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    results: dict[int, FoldResult] = {}
    with ProcessPoolExecutor(max_workers=plan.fold_workers, mp_context=context, initializer=_worker_start,
                             initargs=(config, windows, plan.threads_per_worker, messages,
                                       getattr(progress, "enabled", True))) as pool:
        pending = {pool.submit(_worker_train, seed, fold, label): (position, label)
                   for position, (seed, fold, label) in enumerate(jobs)}
        try:
            while pending:
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _relay(messages, progress)
                for future in finished:
                    position, label = pending.pop(future)
                    results[position] = future.result()
                    _report_fold(progress, label, results[position], len(results), len(jobs))
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    _relay(messages, progress)
    return [results[position] for position in range(len(jobs))]


def _report_fold(progress: Progress, label: str, result: FoldResult, done: int, total: int) -> None:
    report = result.predictions["selected"] == result.test_target
    progress(f"{label} done in {result.seconds:.1f}s: selected epoch {result.selected_epoch}, test accuracy "
             f"{report.mean():.4f} ({done}/{total})")


def cross_validate(config: ExperimentConfig, windows: WindowSet, fold_manifest: FoldManifest,
                   progress: Progress | None = None) -> CrossValidationResult:
    """Train and evaluate every (seed, fold) of a neural head."""
    progress = progress or Progress(config.training.progress)
    device = resolve_device(config.training.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
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
        results = _cross_validate_in_workers(config, windows, jobs, plan, progress)
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
                        _report_fold(progress, label, result, len(results), len(jobs))
            else:
                for seed, fold, label in jobs:
                    results.append(train_fold(config, data, windows, fold, seed, progress, label))
                    _report_fold(progress, label, results[-1], len(results), len(jobs))
    extra = {"engine": {**plan.describe(), "seconds": round(time.perf_counter() - started, 3)}}
    return CrossValidationResult(fold_results=results, device=str(device), device_name=device_name, extra=extra)
