"""The neural heads' `place_statistics` input: the trees' target statistics of the window's last place.

Per window, for each of two keys — its last POI and its last venue type (subcategory) — the log of the
smoothed distribution of next categories seen after that key among the fold's TRAINING windows, plus
log(1 + how often the key was seen there): the quantities `trees.poi_statistics` and
`trees.subcategory_statistics` give the trees, computed by the same functions (`features.target_statistics`).

They are label statistics, so they are fitted per fold: the fold's training windows (`fold.train_index`) get
out-of-fold values (user-grouped parts, so no training row sees a statistic built from its own label or its
own user's), every other window (inner validation, test) the statistics of all the fold's training windows.
The result differs per fold, so it is not part of the global numeric tensor: the training loop computes it
for each fold and hands it to `WindowTensors.use_fold_window_inputs`, and the input encoder repeats it at
every observed position.

The venue-type half needs a finer category per check-in; the config refuses `place_statistics` without one
(as it refuses `venue_type`), so the width is always 2 * (C + 1).
"""

from __future__ import annotations

import numpy as np

from ..windows import WindowSet
from .target_statistics import last_visit_keys, out_of_fold_statistics, transition_statistics

# The keys, in the order their (C + 1) columns appear: the last POI's statistics, then the last venue type's.
PLACE_STATISTICS_KEYS = ("poi", "subcategory")
# The log1p count column is divided by this (as user_past's counts) so that it sits in about [0, 2]; the log
# shares are kept as the trees see them.
PLACE_STATISTICS_COUNT_SCALE = 5.0


def place_statistics_width(num_classes: int) -> int:
    """How many inputs `place_statistics` makes per window: (C log shares + 1 count) per key."""
    return len(PLACE_STATISTICS_KEYS) * (num_classes + 1)


def place_statistics(windows: WindowSet, train_index: np.ndarray) -> np.ndarray:
    """[N, 2 * (C + 1)] float32 for every window: out-of-fold statistics for the rows of `train_index` (the
    fold's training windows), statistics of all of `train_index` for every other row. Only the labels of
    `train_index` windows are read. Raises ValueError when the windows carry no venue type."""
    train_index = np.asarray(train_index)
    other_index = np.setdiff1d(np.arange(len(windows)), train_index)
    num_classes = len(windows.classes)
    parts = []
    for key in PLACE_STATISTICS_KEYS:
        keys = last_visit_keys(windows, key)
        values = np.zeros((len(windows), num_classes + 1))
        values[train_index] = out_of_fold_statistics(windows, keys, train_index)
        if len(other_index):
            values[other_index] = transition_statistics(windows, keys, train_index, other_index)
        values[:, num_classes] /= PLACE_STATISTICS_COUNT_SCALE
        parts.append(values)
    return np.hstack(parts).astype(np.float32)
