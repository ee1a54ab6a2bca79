"""The user's past beyond the window: category counts of their check-ins before the window's first visit."""

from __future__ import annotations

import numpy as np

from ..windows import WindowSet
from .tabular import window_category_counts


def counts_before(category: np.ndarray, num_classes: int, user_first_row: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[len(rows), C] counts of each category among check-ins user_first_row .. rows - 1 (one user's past)."""
    cumulative = np.zeros((len(category) + 1, num_classes), np.int32)
    np.cumsum(np.eye(num_classes, dtype=np.int32)[category], axis=0, out=cumulative[1:])
    return cumulative[rows] - cumulative[user_first_row]


def history_counts(windows: WindowSet) -> np.ndarray:
    """[N, C] int32 category counts of each window's user's check-ins before its first visit (computed once per
    window set, on first use)."""
    return windows.derive(
        "history_counts",
        lambda sequence: counts_before(sequence.category, len(windows.classes), sequence.user_first_row,
                                       sequence.first_row),
        "history_features needs the user's earlier check-ins, which a next.parquet file does not hold. Load the "
        "check-in table (dataset.source: checkins) or set trees.history_features: false.")


def history_feature_matrix(windows: WindowSet, index: np.ndarray) -> np.ndarray:
    """The user's past beyond the window: category counts before its first visit, their total, and the
    category shares over all visits before the target (past + window)."""
    before = history_counts(windows)[index].astype(np.float64)
    everything = before + window_category_counts(windows, index)
    shares = everything / np.maximum(everything.sum(axis=1, keepdims=True), 1.0)
    return np.hstack([before, before.sum(axis=1, keepdims=True), shares])


class HistoryFeatures:
    """Tree feature `trees.history_features`: `history_feature_matrix` (no labels involved)."""

    def columns(self, windows: WindowSet, index: np.ndarray, train_index: np.ndarray, fitting: bool) -> np.ndarray:
        return history_feature_matrix(windows, index)
