"""Tabular window features for the trees: what the observed visits of a window show, nothing of the target."""

from __future__ import annotations

import numpy as np

from ..windows import WindowSet


def last_observed(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Value at each window's last observed position, vectorised."""
    positions = np.where(mask, np.arange(mask.shape[1])[None, :], -1).max(axis=1)
    return values[np.arange(len(values)), np.maximum(positions, 0)]


def require_visit_details(windows: WindowSet, name: str) -> None:
    """Models that read the observed visits' categories cannot run on next.parquet windows (embeddings only)."""
    if not windows.has_visit_details:
        raise ValueError(f"Baseline {name!r} needs the categories of the observed visits, which a next.parquet file "
                         f"does not hold. Load the check-in table (dataset.source: checkins) to run it.")


def window_category_counts(windows: WindowSet, index: np.ndarray) -> np.ndarray:
    """[n, C] how often each category occurs among the observed visits of each window."""
    categories, mask = windows.category_index[index], windows.mask[index]
    counts = np.zeros((len(index), len(windows.classes)))
    for position in range(mask.shape[1]):
        observed = mask[:, position]
        counts[np.flatnonzero(observed), categories[observed, position]] += 1
    return counts


def window_feature_matrix(windows: WindowSet, index: np.ndarray) -> np.ndarray:
    """Tabular features of the observed visits: categories by position, category counts, hour/weekday,
    time gaps and last coordinates. Nothing of the predicted visit."""
    categories, mask = windows.category_index[index], windows.mask[index]
    counts = window_category_counts(windows, index)
    nan = np.float32(np.nan)
    by_position = np.where(mask, categories, -1).astype(np.float32)
    hours = np.where(mask, windows.hour[index], nan)
    weekdays = np.where(mask, windows.weekday[index], nan).astype(np.float32)
    gaps = np.where(mask, np.log1p(np.maximum(windows.gap_hours[index], 0)), nan)
    last = [last_observed(values[index], mask).reshape(-1, 1) for values in
            (windows.latitude, windows.longitude, windows.hour, windows.weekday, windows.category_index)]
    return np.hstack([by_position, counts, hours, weekdays, gaps, *last, mask.sum(axis=1, keepdims=True)])


def categorical_columns(windows: WindowSet, width: int) -> np.ndarray:
    """[width] bool: the category-valued columns of a feature matrix that starts with `window_feature_matrix`
    (every position, and the last observed category)."""
    categorical = np.zeros(width, bool)
    categorical[:windows.length] = True
    categorical[window_feature_matrix(windows, np.arange(1)).shape[1] - 2] = True
    return categorical
