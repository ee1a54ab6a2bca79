"""The reference recipe: train one (seed, fold), select on the inner validation users, report the test fold.

Recipe per fold: set up model/loss/optimiser/scheduler -> loop over epochs (shuffled index batches gathered
from device-resident tensors) -> evaluate the inner validation users (confusion counted on the device, one
host sync per epoch) -> keep the weights of the best epoch -> at the end evaluate the test fold once with the
selected weights and once with the last ones.

The building blocks here (optimiser, schedule, batch order, evaluation, the test predictions) are shared by
the stacked path (`training.stacked`), so that every execution mode trains each fold with the same function.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ExperimentConfig
from ..devices import autocast_dtype, fused_adamw
from ..errors import UserError
from ..folds import Fold
from ..features.identity import IDENTITY_FEATURES, fold_vocabularies
from ..features.place_statistics import place_statistics
from ..heads import MODEL_REGISTRY, build_model, parameter_groups
from ..losses import build_loss
from ..metrics import confusion_counts, fit_bias_offsets, macro_f1_from_confusion
from ..progress import Progress
from ..results import FoldResult
from ..windows import WindowSet
from .tensors import WindowTensors
from .tracker import EpochTracker


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
                             fused=fused_adamw(device))


def forward_batch(model, batch: dict[str, torch.Tensor], return_attention: bool = False):
    """The model's output on a batch of `WindowTensors.batch`; identity codes and per-window inputs go along only
    when the feature set has them (so every other model is called exactly as before)."""
    identity = {name: batch[name] for name in IDENTITY_FEATURES if name in batch}
    extra = {"identity": identity} if identity else {}
    if "window_inputs" in batch:  # the fold's place_statistics (WindowTensors.use_fold_window_inputs)
        extra["window_inputs"] = batch["window_inputs"]
    if return_attention:
        extra["return_attention"] = True
    return model(batch["embedded"], batch["category"], batch["numeric"], batch["mask"], **extra)


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
            output = forward_batch(model, batch, return_attention)
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


def use_autocast(config: ExperimentConfig, device: torch.device) -> bool:
    # bf16 autocast (the only autocast dtype the loops use) where the device supports it: see nextpoi_lib.devices.
    return autocast_dtype(device, config.training.mixed_precision) is torch.bfloat16


def epoch_order(train_index: torch.Tensor, sampling_weights: torch.Tensor | None, generator: torch.Generator,
                storage_device: torch.device) -> torch.Tensor:
    """This epoch's sequence of training windows (a permutation, or class-balanced draws with replacement)."""
    if sampling_weights is not None:
        return train_index[torch.multinomial(sampling_weights, len(train_index), replacement=True,
                                             generator=generator)]
    return train_index[torch.randperm(len(train_index), generator=generator, device=storage_device)]


def balanced_sampling_weights(train_targets: np.ndarray, num_classes: int,
                              storage_device: torch.device) -> torch.Tensor:
    # Class-balanced sampling with replacement: each class is drawn equally often in expectation.
    counts = np.bincount(train_targets, minlength=num_classes)
    return torch.from_numpy(1.0 / counts[train_targets]).to(storage_device)


class TrainingDiverged(UserError):
    """The training loss of a (seed, fold) is not finite (NaN or infinite): the run stops as failed."""


def check_finite_losses(config: ExperimentConfig, seed: int, fold: int, epoch: int, train_loss_sum: float,
                        val_loss_sum: float, learning_rate: float | None) -> None:
    """Raise TrainingDiverged when an epoch's loss sums (already on the host) are not finite."""
    if math.isfinite(train_loss_sum) and math.isfinite(val_loss_sum):
        return
    which = "training" if not math.isfinite(train_loss_sum) else "inner-validation"
    value = train_loss_sum if which == "training" else val_loss_sum
    if config.scheduler.name == "onecycle":
        key, now = "scheduler.max_lr", config.scheduler.max_lr  # OneCycle's peak learning rate
    else:
        key, now = "optimizer.learning_rate", config.optimizer.learning_rate
    at = f" (learning rate {learning_rate:g} in that epoch)" if learning_rate is not None else ""
    raise TrainingDiverged(
        f"Training diverged: the {which} loss is {value} at seed {seed}, fold {fold}, epoch {epoch}{at} of run "
        f"{config.name!r} (model {config.model.name}). The run stopped as failed and no run folder was written. "
        f"The learning rate is too large: lower {key} (now {now:g}), e.g. to {now / 10:g}, and run it again.")


def epoch_curve(seed: int, fold: int, epoch: int, stats: np.ndarray, n_train: int, n_val: int, num_classes: int,
                learning_rate: float) -> dict:
    """stats = [train loss sum, val loss sum, confusion (C*C)] of one epoch, fetched from the device."""
    confusion = stats[2:].reshape(num_classes, num_classes)
    return {"seed": seed, "fold": fold, "epoch": epoch, "train_loss": stats[0] / n_train,
            "val_loss": stats[1] / n_val, "val_accuracy": float(np.trace(confusion) / confusion.sum()),
            "val_macro_f1": macro_f1_from_confusion(confusion), "learning_rate": learning_rate}


def use_fold_window_inputs(config: ExperimentConfig, data: WindowTensors, windows: WindowSet, fold: Fold) -> None:
    """With place_statistics in the feature set: fit the fold's statistics on its training windows (out-of-fold
    for those rows) and hand them to `data`, unless they were fitted on these very rows already."""
    if "place_statistics" not in config.windows.features:
        return
    fitted_on = fold.train_index.tobytes()
    if data.window_inputs_fitted_on != fitted_on:
        data.use_fold_window_inputs(place_statistics(windows, fold.train_index), fitted_on)


def predict_test_fold(config: ExperimentConfig, data: WindowTensors, windows: WindowSet, fold: Fold, criterion,
                      autocast: bool, last_model, load_selected):
    """Predictions on the test fold with the last weights, then with the selected ones (+ attention, offsets,
    and the selected weights' log-probabilities on the inner validation users and the test fold)."""
    num_classes, batch_size = len(windows.classes), config.training.batch_size * 4
    test_index = torch.from_numpy(fold.test_index).to(data.storage_device)
    with_attention = MODEL_REGISTRY[config.model.name].returns_attention
    use_fold_window_inputs(config, data, windows, fold)
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


@dataclass
class FittedFold:
    """One (seed, fold) after its epochs: the model with its last weights, the selected (best inner-validation)
    weights, the tracker with the curves and the selection, and what evaluating it needs."""
    model: torch.nn.Module
    best_state: dict[str, torch.Tensor]
    tracker: EpochTracker
    criterion: torch.nn.Module
    autocast: bool
    started: float

    def load_selected(self) -> torch.nn.Module:
        self.model.load_state_dict(self.best_state)
        return self.model


def fit_fold(config: ExperimentConfig, data: WindowTensors, windows: WindowSet, fold: Fold, seed: int,
             progress: Progress, label: str, on_epoch: Callable[[dict], None] | None = None) -> FittedFold:
    """Train one (seed, fold) and select its epoch on the inner validation users: reads the training and inner
    validation windows only, never the test fold. `on_epoch(curve)` is called after each epoch's selection
    step (the tuner's pruning hook; it may raise to end the fold)."""
    started = time.perf_counter()
    device, training, num_classes = data.device, config.training, len(windows.classes)
    autocast = use_autocast(config, device)

    # --- set up
    torch.manual_seed(seed * 1009 + fold.fold)
    generator = torch.Generator(device=data.storage_device).manual_seed(seed * 1009 + fold.fold)
    # Identity vocabularies (if the feature set has them) from this fold's training windows only.
    vocabularies = fold_vocabularies(windows, config.windows.features, fold.train_index,
                                     config.model.identity_min_count)
    # Per-window target statistics (if the feature set has them), fitted on this fold's training windows only.
    use_fold_window_inputs(config, data, windows, fold)
    model = build_model(config.model, config.windows.features, data.embedding_dim, num_classes, windows.length,
                        data.numeric_dim, vocabularies, data.table, data.window_input_dim).to(device)
    train_targets = windows.target[fold.train_index]
    criterion = build_loss(config.loss, train_targets, num_classes).to(device)
    optimizer = make_optimizer(config, parameter_groups(config.model, model), device)
    steps_per_epoch = math.ceil(len(fold.train_index) / training.batch_size)
    scheduler = make_scheduler(config, optimizer, steps_per_epoch)
    train_index = torch.from_numpy(fold.train_index).to(data.storage_device)
    inner_val_index = torch.from_numpy(fold.inner_val_index).to(data.storage_device)
    sampling_weights = (balanced_sampling_weights(train_targets, num_classes, data.storage_device)
                        if training.weighted_sampler else None)
    tracker = EpochTracker(label, training.epochs, training.early_stopping_patience, progress)
    # The best epoch's weights are copied into buffers allocated once: memory does not grow with epochs.
    best_state = None

    # --- loop over epochs
    for epoch in range(1, training.epochs + 1):
        model.train()
        order = epoch_order(train_index, sampling_weights, generator, data.storage_device)
        train_loss_sum = torch.zeros((), device=device)
        learning_rate = optimizer.param_groups[0]["lr"]
        # No host synchronisation inside this loop: losses are summed on the device.
        for start in range(0, len(order), training.batch_size):
            batch = data.batch(order[start:start + training.batch_size])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = forward_batch(model, batch)
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
        check_finite_losses(config, seed, fold.fold, epoch, float(stats[0]), float(stats[1]), learning_rate)
        curve = epoch_curve(seed, fold.fold, epoch, stats, len(order), len(inner_val_index), num_classes,
                            learning_rate)

        # --- select on the inner validation users only
        if tracker.update(curve):
            if best_state is None:
                best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
            else:
                for name, value in model.state_dict().items():
                    best_state[name].copy_(value)
        if on_epoch is not None:
            on_epoch(curve)
        if tracker.stopped:
            break
    return FittedFold(model=model, best_state=best_state, tracker=tracker, criterion=criterion, autocast=autocast,
                      started=started)


def train_fold(config: ExperimentConfig, data: WindowTensors, windows: WindowSet, fold: Fold, seed: int,
               progress: Progress, label: str) -> FoldResult:
    """Train one (seed, fold) with a plain module and torch.optim.AdamW (the reference path), then report the
    test fold once with the last and once with the selected weights."""
    fitted = fit_fold(config, data, windows, fold, seed, progress, label)
    tracker = fitted.tracker
    predictions, attention, offsets, log_probabilities = predict_test_fold(
        config, data, windows, fold, fitted.criterion, fitted.autocast, fitted.model, fitted.load_selected)
    return FoldResult(seed=seed, fold=fold.fold, curves=tracker.curves, selected_epoch=tracker.best_epoch,
                      last_epoch=tracker.last_epoch, test_target=windows.target[fold.test_index],
                      predictions=predictions, attention=attention, bias_offsets=offsets,
                      seconds=time.perf_counter() - fitted.started, log_probabilities=log_probabilities)


def report_fold(progress: Progress, label: str, result: FoldResult, done: int, total: int) -> None:
    """The line printed when a (seed, fold) is done, whichever execution mode trained it."""
    report = result.predictions["selected"] == result.test_target
    progress(f"{label} done in {result.seconds:.1f}s: selected epoch {result.selected_epoch}, test accuracy "
             f"{report.mean():.4f} ({done}/{total})")
