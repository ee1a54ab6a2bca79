"""Cross-validation folds: user-grouped outer folds, an inner validation split of training users, a manifest.

By default users are assigned to folds with scikit-learn's StratifiedGroupKFold over the check-ins
(label = category), so the assignment depends only on the data and the fold settings: every experiment on
the same check-ins — whatever its window length or stride — gets the same folds. Model selection uses
`inner_val_users`, carved from the training users; the reporting fold is never looked at before the end.
The record-level split of our users' old code (windows of one user in train and test) exists only as the
explicitly named `legacy_record_level` strategy.

`folds.group_by: person_proxy` groups users further: in the embedded sample a "user" is one week's
trajectory, and many weeks belong to one person, so grouping by user alone leaves most of a test person's
other weeks in training. The proxy links every two users who checked in at the same private-home POI (a
POI whose subcategory is one of `folds.person_link_subcategories`), transitively (`person_proxy_groups`),
and the outer folds and the inner validation split both keep each such group whole.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
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
    group_by: str = "user"
    # group_by person_proxy: user -> group id (the group's smallest user id), so the grouping can be audited.
    groups: dict[str, str] | None = None
    person_link_subcategories: list[str] | None = None

    def to_json(self) -> dict:
        grouping = {} if self.groups is None else {
            "person_link_subcategories": self.person_link_subcategories,
            "n_groups": len(set(self.groups.values())), "groups": self.groups}
        return {
            "strategy": self.strategy, "n_splits": self.n_splits, "seed": self.seed,
            "inner_val_fraction": self.inner_val_fraction, "hash": self.hash, "group_by": self.group_by,
            **grouping,
            "folds": [{
                "fold": fold.fold, "n_train": int(len(fold.train_index)),
                "n_inner_val": int(len(fold.inner_val_index)), "n_test": int(len(fold.test_index)),
                "test_users": fold.test_users, "inner_val_users": fold.inner_val_users,
                **({"test_windows": fold.test_index.tolist()} if self.strategy == "legacy_record_level" else {}),
            } for fold in self.folds],
        }


def _user_folds(users: np.ndarray, labels: np.ndarray, n_splits: int, seed: int,
                too_few: str | None = None, groups: np.ndarray | None = None) -> dict[str, int]:
    """Map each user to one of n_splits folds, stratified by label over samples. `groups`: the samples' group
    (default: the user itself), kept whole in one fold. `too_few`: the message when there are fewer groups than
    parts ({n_users} and {unit}, users or groups, are filled in); by default the outer folds' one."""
    unit = "users" if groups is None else "person-proxy groups of users (folds.group_by: person_proxy)"
    groups = users if groups is None else groups
    n_users = len(np.unique(groups))
    if n_users < n_splits:
        raise DataError((too_few or "Only {n_users} " + unit + ", fewer than folds.n_splits=" + str(n_splits)
                         + ": user-grouped folds need at least one user per fold. Lower folds.n_splits or add "
                         "data.").format(n_users=n_users, unit=unit))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    assignment: dict[str, int] = {}
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(users)), labels, groups=groups)):
        for user in np.unique(users[test]):
            assignment[str(user)] = fold
    return assignment


def person_proxy_groups(sample_users: np.ndarray, sample_pois: np.ndarray, sample_subcategories: np.ndarray,
                        link_subcategories: list[str] | tuple[str, ...]) -> dict[str, str]:
    """user -> person-proxy group: the connected components of the graph in which two users are joined when
    both checked in at one POI whose subcategory is in `link_subcategories` (a private home), so users who
    share a home transitively form one group. A user with no such check-in is a group of its own. A group's id
    is its smallest user id (as text), which does not depend on the order of the samples."""
    sample_users = np.asarray(sample_users).astype(str)
    parent = {user: user for user in np.unique(sample_users).tolist()}

    def root(user: str) -> str:
        while parent[user] != user:
            parent[user] = parent[parent[user]]  # path halving keeps the trees flat
            user = parent[user]
        return user

    linking = np.isin(np.asarray(sample_subcategories).astype(str), list(link_subcategories))
    pois = np.asarray(sample_pois).astype(str)[linking]
    for poi_users in pd.Series(sample_users[linking]).groupby(pois).unique():
        first = root(poi_users[0])
        for user in poi_users[1:]:
            other = root(user)
            if other != first:
                # The smaller id becomes the root, so each root is its component's smallest user id.
                first, other = min(first, other), max(first, other)
                parent[other] = first
    return {user: root(user) for user in parent}


@dataclass
class UserAssignment:
    """Which users test in which outer fold, and which training users validate inside each fold."""
    outer: dict[str, int]  # user -> outer fold
    inner: list[dict[str, int]]  # per outer fold: training user -> inner part (part 0 validates)
    sample_users: np.ndarray  # the samples the assignment was stratified on
    sample_labels: np.ndarray
    groups: dict[str, str] | None = None  # group_by person_proxy: user -> group id; None when grouped by user


def assign_users(sample_users: np.ndarray, sample_labels: np.ndarray, config: FoldConfig,
                 sample_pois: np.ndarray | None = None,
                 sample_subcategories: np.ndarray | None = None) -> UserAssignment:
    """The user-grouped assignment of `make_fold_manifest`, from the samples alone (no windows needed): cheap,
    so a data set with too few users is refused before any expensive work. With folds.group_by person_proxy,
    `sample_pois` and `sample_subcategories` (the check-ins' POI and subcategory) define the groups."""
    sample_users = np.asarray(sample_users).astype(str)
    sample_labels = np.asarray(sample_labels)
    inner_splits = max(2, int(round(1.0 / config.inner_val_fraction)))
    groups = None
    sample_groups = None  # None: each user is its own group, exactly as before group_by existed
    if config.group_by == "person_proxy":
        if sample_pois is None or sample_subcategories is None:
            raise DataError("folds.group_by='person_proxy' links users who visit the same private-home POI and "
                            "needs each check-in's POI and subcategory, which this data does not provide. Set "
                            "dataset.subcategory_column (check-in tables), or use folds.group_by: user.")
        groups = person_proxy_groups(sample_users, sample_pois, sample_subcategories,
                                     config.person_link_subcategories)
        sample_groups = np.array([groups[user] for user in sample_users])
    outer = _user_folds(sample_users, sample_labels, config.n_splits, config.seed, groups=sample_groups)
    sample_fold = np.array([outer[user] for user in sample_users])
    inner = []
    for fold in range(config.n_splits):
        training_samples = sample_fold != fold
        too_few = (f"Only {{n_users}} training {{unit}} in fold {fold}, fewer than the {inner_splits} parts the inner "
                   f"validation split needs (folds.inner_val_fraction={config.inner_val_fraction}). Raise "
                   f"folds.inner_val_fraction, lower folds.n_splits, or add users.")
        inner.append(_user_folds(sample_users[training_samples], sample_labels[training_samples], inner_splits,
                                 config.seed + 1 + fold, too_few,
                                 groups=None if sample_groups is None else sample_groups[training_samples]))
    return UserAssignment(outer=outer, inner=inner, sample_users=sample_users, sample_labels=sample_labels,
                          groups=groups)


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
    groups = assignment.groups if config.strategy == "user_grouped" and assignment is not None else None
    # The grouping enters the hash only when it is not the default, so group_by: user keeps today's hashes.
    grouping = {} if groups is None else {"group_by": config.group_by,
                                          "person_link_subcategories": list(config.person_link_subcategories),
                                          "groups": groups}
    digest = hashlib.sha256(json.dumps({
        "data": data_hash, "strategy": config.strategy, "n_splits": config.n_splits, "seed": config.seed,
        "inner_val_fraction": config.inner_val_fraction,
        "test": [fold.test_users if config.strategy == "user_grouped" else fold.test_index.tolist() for fold in folds],
        "inner": [fold.inner_val_users for fold in folds], **grouping,
    }, sort_keys=True).encode()).hexdigest()[:16]
    return FoldManifest(strategy=config.strategy, n_splits=config.n_splits, seed=config.seed,
                        inner_val_fraction=config.inner_val_fraction, hash=digest, folds=folds,
                        group_by=(config.group_by if groups is not None else
                                  "user" if config.strategy == "user_grouped" else "record"), groups=groups,
                        person_link_subcategories=None if groups is None else list(config.person_link_subcategories))


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
