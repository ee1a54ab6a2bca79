"""Target statistics: the next categories seen after a key (the window's last POI or venue type) among the
windows of training users — fitted inside each fold, out-of-fold for the training rows themselves."""

from __future__ import annotations

import numpy as np

from ..windows import WindowSet
from .tabular import last_observed


def last_visit_keys(windows: WindowSet, key: str) -> np.ndarray:
    """Per window, the identity the transition statistics are keyed by: its last POI or last subcategory."""
    if key == "poi":
        return last_observed(windows.poi_index, windows.mask)
    if windows.subcategory_index is None:
        raise ValueError("subcategory_statistics needs a finer category per check-in: set "
                         "dataset.subcategory_column (check-in tables) or trees.subcategory_statistics: false.")
    last = last_observed(windows.subcategory_index, windows.mask)
    return np.where(last < 0, last.max() + 1, last)  # unknown subcategories share one key of their own


def transition_statistics(windows: WindowSet, keys: np.ndarray, fit_index: np.ndarray, apply_index: np.ndarray,
                          smoothing: float = 5.0) -> np.ndarray:
    """For each window in apply_index: log of the smoothed distribution of next categories seen after windows
    with the same key (e.g. the same last POI) among the fit windows, plus log(1 + how often that key was
    seen). Only fit windows' labels are used."""
    num_classes = len(windows.classes)
    prior = np.bincount(windows.target[fit_index], minlength=num_classes) / len(fit_index)
    counts = np.zeros((int(keys.max()) + 1, num_classes))
    np.add.at(counts, (keys[fit_index], windows.target[fit_index]), 1.0)
    seen = counts.sum(axis=1, keepdims=True)
    smoothed = (counts + smoothing * prior) / (seen + smoothing)
    rows = keys[apply_index]
    return np.hstack([np.log(smoothed[rows] + 1e-9), np.log1p(seen[rows])])


def owner_parts(windows: WindowSet, index: np.ndarray, parts: int, seed: int) -> np.ndarray:
    """[len(index)] a part in 0..parts-1 for each window, drawn per owner (`windows.owners`: the user, or the
    person-proxy group), so no owner's windows are split between parts."""
    owners = windows.owners[index]
    unique_owners = np.unique(owners)
    part_of_owner = dict(zip(unique_owners, np.random.default_rng(seed).integers(0, parts, len(unique_owners))))
    return np.array([part_of_owner[owner] for owner in owners])


def out_of_fold_statistics(windows: WindowSet, keys: np.ndarray, train_index: np.ndarray, parts: int = 5,
                           seed: int = 0) -> np.ndarray:
    """Transition statistics for the training windows themselves, each computed without its own user's
    windows (user-grouped parts), so the trees never see a feature built from the row's own label. With folds
    grouped by a person proxy (`windows.groups`) the parts keep each group whole: a training window's statistics
    then leave out the same person's other weeks, as a test window's do."""
    part = owner_parts(windows, train_index, parts, seed)
    statistics = np.zeros((len(train_index), len(windows.classes) + 1))
    for k in range(parts):
        statistics[part == k] = transition_statistics(windows, keys, train_index[part != k], train_index[part == k])
    return statistics


class TransitionStatisticsFeature:
    """Tree features `trees.poi_statistics` (key "poi") and `trees.subcategory_statistics` (key "subcategory"):
    out-of-fold statistics for the rows the trees are fitted on, statistics of those rows for any other."""

    def __init__(self, key: str):
        self.key = key

    def keys(self, windows: WindowSet) -> np.ndarray:
        """[N] the key of each window the statistics are grouped by (a subclass may key them otherwise)."""
        return last_visit_keys(windows, self.key)

    def columns(self, windows: WindowSet, index: np.ndarray, train_index: np.ndarray, fitting: bool) -> np.ndarray:
        keys = self.keys(windows)
        if fitting:
            return out_of_fold_statistics(windows, keys, index)
        return transition_statistics(windows, keys, train_index, index)
