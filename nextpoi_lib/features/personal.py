"""The user's own habits: what they did next after their earlier visits to the window's last category and POI.

Counted from the user's check-ins up to the window's last observed visit, so nothing at or after the target.
"""

from __future__ import annotations

import numpy as np

from ..windows import WindowSet


def personal_transition_counts(category: np.ndarray, poi: np.ndarray, user_first_rows: np.ndarray,
                               num_classes: int) -> np.ndarray:
    """[n_rows, 2C] for each check-in row r: among the same user's transitions (j -> j + 1) with j + 1 <= r,
    the category counts of the j + 1 whose j had r's category (first C columns), then r's POI (last C).
    What this user did after being here, or at this kind of place, before."""
    counts = np.zeros((len(category), 2 * num_classes), np.int32)
    user_starts = set(user_first_rows.tolist())
    after_category: dict[int, np.ndarray] = {}
    after_poi: dict[int, np.ndarray] = {}
    for row in range(len(category)):
        if row in user_starts:
            after_category, after_poi = {}, {}
        else:
            after_category.setdefault(category[row - 1], np.zeros(num_classes, np.int32))[category[row]] += 1
            after_poi.setdefault(poi[row - 1], np.zeros(num_classes, np.int32))[category[row]] += 1
        if category[row] in after_category:
            counts[row, :num_classes] = after_category[category[row]]
        if poi[row] in after_poi:
            counts[row, num_classes:] = after_poi[poi[row]]
    return counts


def personal_transitions(windows: WindowSet) -> np.ndarray:
    """[N, 2C] int32 the user's own transitions up to each window's last observed visit: category counts of the
    check-ins that followed their earlier visits to its category (first C), then to its POI. Computed once per
    window set, on first use (a Python loop over all check-ins: only runs that ask for it pay for it)."""
    return windows.derive(
        "personal_transitions",
        lambda sequence: personal_transition_counts(sequence.category, sequence.poi, sequence.user_starts,
                                                    len(windows.classes))[sequence.last_row],
        "personal_transitions needs the user's check-in sequence, which a next.parquet file does not hold. Load "
        "the check-in table (dataset.source: checkins) or set trees.personal_transitions: false.")


def personal_transition_matrix(windows: WindowSet, index: np.ndarray) -> np.ndarray:
    """What the user did next after their own earlier visits to the window's last category and to its last
    POI: the shares of each next category (2C columns) and how many such transitions they had (2)."""
    num_classes = len(windows.classes)
    counts = personal_transitions(windows)[index].astype(np.float64)
    parts = []
    for half in (counts[:, :num_classes], counts[:, num_classes:]):
        total = half.sum(axis=1, keepdims=True)
        parts += [half / np.maximum(total, 1.0), total]
    return np.hstack(parts)


class PersonalTransitionFeatures:
    """Tree feature `trees.personal_transitions`: `personal_transition_matrix` (the user's own past only)."""

    def columns(self, windows: WindowSet, index: np.ndarray, train_index: np.ndarray, fitting: bool) -> np.ndarray:
        return personal_transition_matrix(windows, index)
