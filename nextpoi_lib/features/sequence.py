"""The neural heads' numeric per-visit inputs: time of day and week, gap to the previous visit, coordinates.

`numeric_features` computes them for every window (0 on padding) in the order the feature set names them,
then the predicted visit's time when a run asks for it (a different task, named explicitly). The embedding
and category inputs are looked up per batch by the training loop; only these numeric ones are precomputed.
"""

from __future__ import annotations

import numpy as np

from ..windows import WindowSet

NUMERIC_FEATURE_SIZES = {"time": 5, "coordinates": 2}  # sin/cos hour, sin/cos weekday, log1p gap; lat, lon
TARGET_TIME_SIZE = 4  # sin/cos hour and weekday of the predicted visit (a different task, named explicitly)


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
