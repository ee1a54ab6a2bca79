"""Cross-validation folds: user-grouped outer folds, an inner validation split of training users, a manifest.

By default users are assigned to folds with scikit-learn's StratifiedGroupKFold over the check-ins
(label = category), so the assignment depends only on the data and the fold settings: every experiment on
the same check-ins — whatever its window length or stride — gets the same folds. Model selection uses
`inner_val_users`, carved from the training users; the reporting fold is never looked at before the end.
The record-level split of our users' old code (windows of one user in train and test) exists only as the
explicitly named `legacy_record_level` strategy.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, StratifiedShuffleSplit

from .config import FoldConfig
from .data import DataError


@dataclass
class Fold:
    fold: int
    train_index: np.ndarray  # window indices used for gradient steps
    inner_val_index: np.ndarray  # window indices used for model selection
    test_index: np.ndarray  # window indices reported
    test_users: list[str]
    inner_val_users: list[str]


@dataclass
class FoldManifest:
    strategy: str
    n_splits: int
    seed: int
    inner_val_fraction: float
    hash: str
    folds: list[Fold]

    def to_json(self) -> dict:
        return {
            "strategy": self.strategy, "n_splits": self.n_splits, "seed": self.seed,
            "inner_val_fraction": self.inner_val_fraction, "hash": self.hash,
            "folds": [{
                "fold": fold.fold, "n_train": int(len(fold.train_index)),
                "n_inner_val": int(len(fold.inner_val_index)), "n_test": int(len(fold.test_index)),
                "test_users": fold.test_users, "inner_val_users": fold.inner_val_users,
                **({"test_windows": fold.test_index.tolist()} if self.strategy == "legacy_record_level" else {}),
            } for fold in self.folds],
        }


def _user_folds(users: np.ndarray, labels: np.ndarray, n_splits: int, seed: int,
                too_few: str | None = None) -> dict[str, int]:
    """Map each user to one of n_splits folds, stratified by label over samples. `too_few`: the message when
    there are fewer users than parts ({n_users} is filled in); by default the outer folds' one."""
    n_users = len(np.unique(users))
    if n_users < n_splits:
        raise DataError((too_few or "Only {n_users} users, fewer than folds.n_splits=" + str(n_splits) +
                         ": user-grouped folds need at least one user per fold. Lower folds.n_splits or add "
                         "data.").format(n_users=n_users))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    assignment: dict[str, int] = {}
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(users)), labels, groups=users)):
        for user in np.unique(users[test]):
            assignment[str(user)] = fold
    return assignment


@dataclass
class UserAssignment:
    """Which users test in which outer fold, and which training users validate inside each fold."""
    outer: dict[str, int]  # user -> outer fold
    inner: list[dict[str, int]]  # per outer fold: training user -> inner part (part 0 validates)
    sample_users: np.ndarray  # the samples the assignment was stratified on
    sample_labels: np.ndarray


def assign_users(sample_users: np.ndarray, sample_labels: np.ndarray, config: FoldConfig) -> UserAssignment:
    """The user-grouped assignment of `make_fold_manifest`, from the samples alone (no windows needed): cheap,
    so a data set with too few users is refused before any expensive work."""
    sample_users = np.asarray(sample_users).astype(str)
    sample_labels = np.asarray(sample_labels)
    inner_splits = max(2, int(round(1.0 / config.inner_val_fraction)))
    outer = _user_folds(sample_users, sample_labels, config.n_splits, config.seed)
    sample_fold = np.array([outer[user] for user in sample_users])
    inner = []
    for fold in range(config.n_splits):
        training_samples = sample_fold != fold
        too_few = (f"Only {{n_users}} training users in fold {fold}, fewer than the {inner_splits} parts the inner "
                   f"validation split needs (folds.inner_val_fraction={config.inner_val_fraction}). Raise "
                   f"folds.inner_val_fraction, lower folds.n_splits, or add users.")
        inner.append(_user_folds(sample_users[training_samples], sample_labels[training_samples], inner_splits,
                                 config.seed + 1 + fold, too_few))
    return UserAssignment(outer=outer, inner=inner, sample_users=sample_users, sample_labels=sample_labels)


def make_fold_manifest(window_users: np.ndarray, window_targets: np.ndarray, config: FoldConfig, data_hash: str,
                       assignment_users: np.ndarray | None = None,
                       assignment_labels: np.ndarray | None = None,
                       assignment: UserAssignment | None = None) -> FoldManifest:
    """Build the folds for windows (users, targets).

    `assignment_users/labels` are the samples the user-to-fold assignment is stratified on (by default the
    check-ins, so folds do not depend on window settings); when absent, the windows themselves are used.
    `assignment`: that assignment already made by `assign_users` (the same folds, computed earlier).
    """
    window_users = np.asarray(window_users).astype(str)
    window_targets = np.asarray(window_targets)
    folds: list[Fold] = []
    if config.strategy == "user_grouped":
        if assignment is None:
            sample_users = window_users if assignment_users is None else np.asarray(assignment_users).astype(str)
            sample_labels = window_targets if assignment_labels is None else np.asarray(assignment_labels)
            assignment = assign_users(sample_users, sample_labels, config)
        outer = assignment.outer
        window_fold = np.array([outer.get(user, -1) for user in window_users])
        for fold in range(config.n_splits):
            inner = assignment.inner[fold]
            inner_val_users = sorted(user for user, part in inner.items() if part == 0)
            is_inner_val = np.isin(window_users, inner_val_users)
            test_index = np.flatnonzero(window_fold == fold)
            folds.append(Fold(
                fold=fold, train_index=np.flatnonzero((window_fold != fold) & ~is_inner_val),
                inner_val_index=np.flatnonzero((window_fold != fold) & is_inner_val), test_index=test_index,
                test_users=sorted(np.unique(window_users[test_index]).tolist()), inner_val_users=inner_val_users))
    else:
        splitter = StratifiedKFold(n_splits=config.n_splits, shuffle=True, random_state=config.seed)
        for fold, (train, test) in enumerate(splitter.split(np.zeros(len(window_targets)), window_targets)):
            inner = StratifiedShuffleSplit(n_splits=1, test_size=config.inner_val_fraction,
                                           random_state=config.seed + 1 + fold)
            fit_part, val_part = next(inner.split(np.zeros(len(train)), window_targets[train]))
            folds.append(Fold(fold=fold, train_index=np.sort(train[fit_part]), inner_val_index=np.sort(train[val_part]),
                              test_index=test, test_users=sorted(np.unique(window_users[test]).tolist()),
                              inner_val_users=sorted(np.unique(window_users[train[val_part]]).tolist())))
    for fold in folds:
        if len(fold.train_index) == 0 or len(fold.inner_val_index) == 0 or len(fold.test_index) == 0:
            raise DataError(f"Fold {fold.fold} has an empty training, inner validation or test part "
                            f"({len(fold.train_index)}/{len(fold.inner_val_index)}/{len(fold.test_index)} windows). "
                            f"Use more data or fewer folds.")
    digest = hashlib.sha256(json.dumps({
        "data": data_hash, "strategy": config.strategy, "n_splits": config.n_splits, "seed": config.seed,
        "inner_val_fraction": config.inner_val_fraction,
        "test": [fold.test_users if config.strategy == "user_grouped" else fold.test_index.tolist() for fold in folds],
        "inner": [fold.inner_val_users for fold in folds],
    }, sort_keys=True).encode()).hexdigest()[:16]
    return FoldManifest(strategy=config.strategy, n_splits=config.n_splits, seed=config.seed,
                        inner_val_fraction=config.inner_val_fraction, hash=digest, folds=folds)


RARE_CLASS_THRESHOLD = 5  # fewer training targets than this in a fold: that class's F1 there rests on little


def rare_class_message(manifest: FoldManifest, targets: np.ndarray, classes: list[str],
                       threshold: int = RARE_CLASS_THRESHOLD, balanced_weights: bool = False) -> str | None:
    """One paragraph naming every class with fewer than `threshold` training targets in some fold (with its
    count in every fold), or None when there is none. With `balanced_weights` (the run weighs classes by
    n / (C * count)) it also names the largest ratio between two classes' weights in a fold: the most and the
    least frequent class present, since a weight is inversely proportional to the class's count."""
    targets = np.asarray(targets)
    counts = np.stack([np.bincount(targets[fold.train_index], minlength=len(classes))[:len(classes)]
                       for fold in manifest.folds])  # [folds, classes]
    rare = [index for index in range(len(classes)) if (counts[:, index] < threshold).any()]
    if not rare:
        return None
    described = "; ".join(f"{classes[index]!r} (" + ", ".join(f"fold {fold.fold}: {int(counts[f, index])}"
                                                                   for f, fold in enumerate(manifest.folds)) + ")"
                          for index in rare)
    weight_note = ""
    if balanced_weights:
        ratios = []
        for f, fold in enumerate(manifest.folds):
            present = np.flatnonzero(counts[f] > 0)
            rarest, commonest = present[np.argmin(counts[f, present])], present[np.argmax(counts[f, present])]
            ratios.append((counts[f, commonest] / counts[f, rarest], fold.fold, rarest, commonest))
        ratio, fold_id, rarest, commonest = max(ratios, key=lambda item: item[0])
        weight_note = (f" Under balanced class weights a {classes[rarest]!r} target weighs {ratio:,.0f} times a "
                       f"{classes[commonest]!r} target in fold {fold_id} (the largest weight ratio of any fold), "
                       f"so a few windows can dominate the loss and the predictions can collapse onto that class.")
    return (f"{len(rare)} of {len(classes)} classes have fewer than {threshold} training targets in at least one "
            f"fold, so a model sees almost no example of them there and their per-class F1 (and the macro-F1) "
            f"is noisy: {described}.{weight_note} Merge or drop rare categories in the data (dataset.class_map, "
            f"dataset.min_class_checkins), add data, or use fewer folds (folds.n_splits).")


def warn_rare_classes(manifest: FoldManifest, targets: np.ndarray, classes: list[str],
                      threshold: int = RARE_CLASS_THRESHOLD, balanced_weights: bool = False) -> None:
    """`warnings.warn` (UserWarning) the paragraph of `rare_class_message`, when there is one."""
    message = rare_class_message(manifest, targets, classes, threshold, balanced_weights)
    if message:
        warnings.warn(message, UserWarning, stacklevel=2)
