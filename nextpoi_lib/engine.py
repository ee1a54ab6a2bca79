"""The cross-validation engine: train every (seed, fold), select on inner validation users, report the test fold.

Recipe per fold: set up model/loss/optimiser/scheduler -> loop over epochs (shuffled index batches gathered
from device-resident tensors) -> evaluate the inner validation users (confusion counted on the device, one
host sync per epoch) -> keep the weights of the best epoch -> at the end evaluate the test fold once with the
selected weights and once with the last ones.

Windows live on the device as POI-index tensors plus one embedding table, gathered per batch, so no
DataLoader and no host-to-device copy sit on the hot path; a dataset too large for device memory falls back
to host-resident tensors with a message.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .config import ExperimentConfig
from .folds import Fold, FoldManifest
from .losses import build_loss
from .metrics import confusion_counts, fit_bias_offsets, macro_f1_from_confusion
from .models import HEADS_WITH_ATTENTION, TARGET_TIME_SIZE, NUMERIC_FEATURE_SIZES, build_model
from .windows import WindowSet


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
        self.storage_device = device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if needed > 0.5 * free:
                log(f"Windows need {needed / 2**30:.1f} GiB, more than half of the {free / 2**30:.1f} GiB free on "
                    f"{device}: keeping them in host memory and copying each batch (slower, same result).")
                self.storage_device = torch.device("cpu")
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
    seconds: float = 0.0


@dataclass
class CrossValidationResult:
    fold_results: list[FoldResult]
    device: str
    device_name: str
    extra: dict = field(default_factory=dict)


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


class Progress:
    """One line per fold and a few per fold while training; silent when switched off."""

    def __init__(self, enabled: bool, stream=None):
        self.enabled = enabled
        self.stream = stream or sys.stdout

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=self.stream, flush=True)


def evaluate(model, data: WindowTensors, index: torch.Tensor, criterion, num_classes: int, batch_size: int,
             autocast: bool, return_attention: bool = False):
    """Logits-derived statistics over `index` without gradients: loss sum, confusion, log-probabilities."""
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
            log_probabilities.append(F.log_softmax(logits, dim=1))
            if weights is not None:
                batch_sum = weights.float().sum(dim=0)
                attention_sum = batch_sum if attention_sum is None else attention_sum + batch_sum
    return loss_sum, confusion, torch.cat(log_probabilities), attention_sum


def train_fold(config: ExperimentConfig, data: WindowTensors, windows: WindowSet, fold: Fold, seed: int,
               progress: Progress, label: str) -> FoldResult:
    started = time.perf_counter()
    device, training, num_classes = data.device, config.training, len(windows.classes)
    autocast = bool(training.mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported())

    # --- set up
    torch.manual_seed(seed * 1009 + fold.fold)
    generator = torch.Generator(device=data.storage_device).manual_seed(seed * 1009 + fold.fold)
    model = build_model(config.model, config.windows.features, data.embedding_dim, num_classes, windows.length,
                        data.numeric_dim).to(device)
    train_targets = windows.target[fold.train_index]
    criterion = build_loss(config.loss, train_targets, num_classes).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optimizer.learning_rate,
                                  weight_decay=config.optimizer.weight_decay)
    steps_per_epoch = math.ceil(len(fold.train_index) / training.batch_size)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    train_index = torch.from_numpy(fold.train_index).to(data.storage_device)
    inner_val_index = torch.from_numpy(fold.inner_val_index).to(data.storage_device)
    sampling_weights = None
    if training.weighted_sampler:
        # Class-balanced sampling with replacement: each class is drawn equally often in expectation.
        counts = np.bincount(train_targets, minlength=num_classes)
        sampling_weights = torch.from_numpy(1.0 / counts[train_targets]).to(data.storage_device)

    curves, best_score, best_state, best_epoch, epochs_without_gain = [], -1.0, None, 0, 0
    report_every = max(1, training.epochs // 5)
    # --- loop over epochs
    for epoch in range(1, training.epochs + 1):
        model.train()
        if sampling_weights is not None:
            order = train_index[torch.multinomial(sampling_weights, len(train_index), replacement=True,
                                                  generator=generator)]
        else:
            order = train_index[torch.randperm(len(train_index), generator=generator, device=data.storage_device)]
        train_loss_sum = torch.zeros((), device=device)
        learning_rate = optimizer.param_groups[0]["lr"]
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
                                                 training.batch_size * 4, autocast)
        stats = torch.cat([train_loss_sum.view(1), val_loss_sum.view(1), confusion.view(-1).float()]).cpu().numpy()
        confusion_np = stats[2:].reshape(num_classes, num_classes)
        val_macro_f1 = macro_f1_from_confusion(confusion_np)
        curves.append({"seed": seed, "fold": fold.fold, "epoch": epoch,
                       "train_loss": stats[0] / len(order), "val_loss": stats[1] / len(inner_val_index),
                       "val_accuracy": float(np.trace(confusion_np) / confusion_np.sum()),
                       "val_macro_f1": val_macro_f1, "learning_rate": learning_rate})

        # --- select on the inner validation users only
        if val_macro_f1 > best_score:
            best_score, best_epoch, epochs_without_gain = val_macro_f1, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
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
    test_index = torch.from_numpy(fold.test_index).to(data.storage_device)
    with_attention = config.model.name in HEADS_WITH_ATTENTION
    predictions = {}
    _, _, last_log_probabilities, _ = evaluate(model, data, test_index, criterion, num_classes,
                                               training.batch_size * 4, autocast)
    predictions["last"] = last_log_probabilities.argmax(dim=1).cpu().numpy()
    model.load_state_dict(best_state)
    _, _, test_log_probabilities, attention_sum = evaluate(model, data, test_index, criterion, num_classes,
                                                           training.batch_size * 4, autocast, with_attention)
    predictions["selected"] = test_log_probabilities.argmax(dim=1).cpu().numpy()
    offsets = None
    if training.bias_calibration:
        _, _, val_log_probabilities, _ = evaluate(model, data, inner_val_index, criterion, num_classes,
                                                  training.batch_size * 4, autocast)
        offsets = fit_bias_offsets(val_log_probabilities.cpu().numpy(), windows.target[fold.inner_val_index])
        predictions["calibrated"] = np.argmax(test_log_probabilities.cpu().numpy() + offsets, axis=1)
    attention = None
    if attention_sum is not None:
        attention = (attention_sum / len(test_index)).cpu().numpy()
    return FoldResult(seed=seed, fold=fold.fold, curves=curves, selected_epoch=best_epoch, last_epoch=epoch,
                      test_target=windows.target[fold.test_index], predictions=predictions, attention=attention,
                      bias_offsets=offsets, seconds=time.perf_counter() - started)


def cross_validate(config: ExperimentConfig, windows: WindowSet, fold_manifest: FoldManifest,
                   progress: Progress | None = None) -> CrossValidationResult:
    """Train and evaluate every (seed, fold) of a neural head."""
    progress = progress or Progress(config.training.progress)
    device = resolve_device(config.training.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    data = WindowTensors(windows, config, device, log=progress)
    results = []
    total = len(config.training.seeds) * len(fold_manifest.folds)
    for seed in config.training.seeds:
        for fold in fold_manifest.folds:
            label = f"[seed {seed} fold {fold.fold + 1}/{len(fold_manifest.folds)}]"
            result = train_fold(config, data, windows, fold, seed, progress, label)
            results.append(result)
            report = result.predictions["selected"] == result.test_target
            progress(f"{label} done in {result.seconds:.1f}s: selected epoch {result.selected_epoch}, test accuracy "
                     f"{report.mean():.4f} ({len(results)}/{total})")
    return CrossValidationResult(fold_results=results, device=str(device), device_name=device_name)
