"""Losses for imbalanced next-category prediction and the class statistics they use.

All take logits [B, C] and integer targets [B] and return the mean loss in float32.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from .config import LossConfig


def balanced_class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """n_samples / (n_classes * count) per class, from the training fold; absent classes get weight 0."""
    present = np.unique(targets)
    weights = np.zeros(num_classes, np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=targets)
    return weights


def class_priors(targets: np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    # A class absent from the training fold gets a tiny prior instead of log(0).
    return np.maximum(counts / counts.sum(), 1e-8)


class FocalLoss(nn.Module):
    """Lin et al. 2017: -alpha_y (1 - p_y)^gamma log p_y, averaged over the batch (alpha=None: all ones)."""

    def __init__(self, gamma: float = 2.0, alpha: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("alpha", alpha if alpha is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probability = F.log_softmax(logits.float(), dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -((1.0 - log_probability.exp()) ** self.gamma) * log_probability
        if self.alpha is not None:
            loss = loss * self.alpha[target]
        return loss.mean()


class LogitAdjustedLoss(nn.Module):
    """Menon et al. 2021: cross-entropy on logits + tau * log(prior); predict with the plain logits."""

    def __init__(self, priors: torch.Tensor, tau: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("adjustment", tau * torch.log(priors.float()))
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float() + self.adjustment, target, label_smoothing=self.label_smoothing)


class CrossEntropy(nn.Module):
    """Cross-entropy in float32 with optional class weights and label smoothing."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", weight)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, weight=self.weight, label_smoothing=self.label_smoothing)


def build_loss(config: LossConfig, train_targets: np.ndarray, num_classes: int) -> nn.Module:
    """The criterion for one training fold; class statistics come from that fold only."""
    weights = torch.from_numpy(balanced_class_weights(train_targets, num_classes))
    if config.name == "cross_entropy":
        return CrossEntropy(weights if config.class_weights == "balanced" else None, config.label_smoothing)
    if config.name == "focal":
        use_alpha = config.focal_alpha == "balanced" or config.class_weights == "balanced"
        return FocalLoss(config.focal_gamma, weights if use_alpha else None)
    priors = torch.from_numpy(class_priors(train_targets, num_classes))
    return LogitAdjustedLoss(priors, config.logit_adjustment_tau, config.label_smoothing)
