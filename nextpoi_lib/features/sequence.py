"""The neural heads' numeric per-visit inputs: time of day and week, gap to the previous visit, coordinates,
and the user's past beyond the window (`user_past`).

`numeric_features` computes them for every window (0 on padding) in the order the feature set names them,
then the predicted visit's time when a run asks for it (a different task, named explicitly). The embedding,
category and identity inputs are looked up per batch by the training loop; only these numeric ones are
precomputed.

`user_past` is one vector per window, repeated at every observed position: the category counts of the
user's visits before the window (`features.history`) and what the user did after their own earlier visits
to the window's last category and last POI (`features.personal`), both counted from check-ins before the
target only. Repeating it as numeric inputs lets every head read it through the same input projection,
with no change to any head and no change to stacked folds (a classifier-side input would need a new
forward argument in every head); a recurrent head sees it at its last step, attention heads at every key.
"""

from __future__ import annotations

import numpy as np

from ..data import DataError
from ..windows import WindowSet
from .history import history_feature_matrix
from .personal import personal_transition_matrix

NUMERIC_FEATURE_SIZES = {"time": 5, "coordinates": 2}  # sin/cos hour, sin/cos weekday, log1p gap; lat, lon
TARGET_TIME_SIZE = 4  # sin/cos hour and weekday of the predicted visit (a different task, named explicitly)
# log1p counts before the window (C) and their total (1); category shares over the visits before the target
# (C); shares of what followed the user's earlier visits to the last category (C) and POI (C), with how many (2).
USER_PAST_CLASS_MULTIPLE, USER_PAST_EXTRA = 4, 3
# log1p counts are divided by this (as the gap above) so that they sit in about [0, 2] like the other inputs.
LOG_COUNT_SCALE = 5.0


def _log_count(values: np.ndarray) -> np.ndarray:
    return np.log1p(values) / LOG_COUNT_SCALE


def user_past_features(windows: WindowSet) -> np.ndarray:
    """[N, 4C + 3] float32: the user's past beyond the window, normalised (shares as they are, counts as
    log1p(count) / LOG_COUNT_SCALE). Reuses the trees' history and personal-transition columns (cached per
    window set), so both model families see the same, leak-free quantities."""
    if windows.sequence is None:
        raise ValueError("windows.features 'user_past' needs the user's check-in sequence, which a next.parquet "
                         "file does not hold. Load the check-in table (dataset.source: checkins) or remove "
                         "'user_past' from windows.features.")
    if (windows.sequence.category < 0).any():
        raise DataError("windows.features 'user_past' counts the categories of the user's visits, and "
                         "dataset.min_class_checkins left some visits with an unknown category. Merge those classes "
                         "into others with dataset.class_map instead, or remove 'user_past' from windows.features.")
    num_classes = len(windows.classes)
    index = np.arange(len(windows))
    history = history_feature_matrix(windows, index)  # counts before (C), their total (1), shares (C)
    personal = personal_transition_matrix(windows, index)  # shares (C), total (1), shares (C), total (1)
    parts = [_log_count(history[:, :num_classes + 1]), history[:, num_classes + 1:],
             personal[:, :num_classes], _log_count(personal[:, num_classes:num_classes + 1]),
             personal[:, num_classes + 1:2 * num_classes + 1], _log_count(personal[:, 2 * num_classes + 1:])]
    return np.hstack(parts).astype(np.float32)


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
    if "user_past" in features:
        past = user_past_features(windows)
        parts += [np.broadcast_to(past[:, None, k], windows.mask.shape) for k in range(past.shape[1])]
    if target_time:
        hour_angle = 2 * np.pi * windows.target_hour / 24.0
        day_angle = 2 * np.pi * windows.target_weekday / 7.0
        for value in (np.sin(hour_angle), np.cos(hour_angle), np.sin(day_angle), np.cos(day_angle)):
            parts.append(np.broadcast_to(value[:, None], windows.mask.shape))
    if not parts:
        return np.zeros((*windows.mask.shape, 0), np.float32)
    stacked = np.stack(parts, axis=-1).astype(np.float32)
    return np.where(windows.mask[..., None], stacked, 0.0).astype(np.float32)


def numeric_feature_count(features: list[str], target_time: bool, num_classes: int = 0) -> int:
    """How many numeric inputs `numeric_features` makes (`num_classes` sizes `user_past`)."""
    past = USER_PAST_CLASS_MULTIPLE * num_classes + USER_PAST_EXTRA if "user_past" in features else 0
    return (sum(NUMERIC_FEATURE_SIZES.get(name, 0) for name in features) + past
            + (TARGET_TIME_SIZE if target_time else 0))
