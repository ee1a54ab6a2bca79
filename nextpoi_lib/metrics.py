"""Metrics: scikit-learn for everything reported; a confusion-matrix macro-F1 for per-epoch curves.

Reported numbers (macro-F1, accuracy, per-class precision/recall/F1, confusion matrices) come from
scikit-learn with zero_division=0. Per-epoch validation curves and the bias-offset search need thousands of
evaluations, so they use a confusion matrix counted with `bincount` (on the device, one host sync per
epoch) and `macro_f1_from_confusion`, which is tested to equal scikit-learn's value.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

MIN_SUPPORT_FOR_SUBSET = 50  # macro_f1_min50: classes with at least this many test targets


def confusion_counts(target: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C] counts, rows = true class, on the tensors' device."""
    return torch.bincount(target * num_classes + predicted, minlength=num_classes * num_classes).view(
        num_classes, num_classes)


def macro_f1_from_confusion(confusion: np.ndarray) -> float:
    """Macro-F1 over the classes present in truth or prediction (scikit-learn's default label set)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = (support + predicted) > 0
    denominator = support + predicted
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def macro_f1(target: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Macro-F1 of class-id arrays through their confusion matrix (numpy): the fast path for the thousands of
    evaluations of a weight or offset search; equal to scikit-learn's value."""
    confusion = np.bincount(target * num_classes + predicted, minlength=num_classes ** 2)
    return macro_f1_from_confusion(confusion.reshape(num_classes, num_classes))


def fold_report(target: np.ndarray, predicted: np.ndarray, classes: list[str]) -> dict:
    """Everything written for one fold at one selection: summary metrics, per-class table, confusion."""
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        target, predicted, labels=labels, zero_division=0)
    large = [label for label in labels if support[label] >= MIN_SUPPORT_FOR_SUBSET]
    per_class = pd.DataFrame({"class": classes, "precision": precision, "recall": recall, "f1": f1,
                              "support": support.astype(int)})
    return {
        "accuracy": float(accuracy_score(target, predicted)),
        "macro_f1": float(f1_score(target, predicted, average="macro", zero_division=0)),
        "macro_f1_min50": float(f1_score(target, predicted, labels=large, average="macro", zero_division=0))
        if large else float("nan"),
        "n_test": int(len(target)),
        "per_class": per_class,
        "confusion": confusion_matrix(target, predicted, labels=labels),
    }


def fit_bias_offsets(logits: np.ndarray, target: np.ndarray, rounds: int = 3,
                     grid: np.ndarray | None = None) -> np.ndarray:
    """Per-class additive logit offsets that maximise macro-F1 on (inner validation) logits.

    Coordinate ascent over a grid, class by class; the offsets are then applied unchanged to the test fold.
    """
    num_classes = logits.shape[1]
    grid = np.linspace(-3.0, 3.0, 61) if grid is None else grid
    offsets = np.zeros(num_classes)

    def score(candidate: np.ndarray) -> float:
        return macro_f1(target, np.argmax(logits + candidate, axis=1), num_classes)

    best = score(offsets)
    for _ in range(rounds):
        improved = False
        for label in range(num_classes):
            for value in grid:
                candidate = offsets.copy()
                candidate[label] = value
                candidate_score = score(candidate)
                if candidate_score > best + 1e-12:
                    best, offsets, improved = candidate_score, candidate, True
        if not improved:
            break
    return offsets
