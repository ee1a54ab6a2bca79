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
from dataclasses import asdict, dataclass

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


def _user_folds(users: np.ndarray, labels: np.ndarray, n_splits: int, seed: int) -> dict[str, int]:
    """Map each user to one of n_splits folds, stratified by label over samples."""
    n_users = len(np.unique(users))
    if n_users < n_splits:
        raise DataError(f"Only {n_users} users, fewer than folds.n_splits={n_splits}: user-grouped folds need at "
                        f"least one user per fold. Lower folds.n_splits or add data.")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    assignment: dict[str, int] = {}
    for fold, (_, test) in enumerate(splitter.split(np.zeros(len(users)), labels, groups=users)):
        for user in np.unique(users[test]):
            assignment[str(user)] = fold
    return assignment


def make_fold_manifest(window_users: np.ndarray, window_targets: np.ndarray, config: FoldConfig, data_hash: str,
                       assignment_users: np.ndarray | None = None,
                       assignment_labels: np.ndarray | None = None) -> FoldManifest:
    """Build the folds for windows (users, targets).

    `assignment_users/labels` are the samples the user-to-fold assignment is stratified on (by default the
    check-ins, so folds do not depend on window settings); when absent, the windows themselves are used.
    """
    window_users = np.asarray(window_users).astype(str)
    window_targets = np.asarray(window_targets)
    inner_splits = max(2, int(round(1.0 / config.inner_val_fraction)))
    folds: list[Fold] = []
    if config.strategy == "user_grouped":
        sample_users = window_users if assignment_users is None else np.asarray(assignment_users).astype(str)
        sample_labels = window_targets if assignment_labels is None else np.asarray(assignment_labels)
        outer = _user_folds(sample_users, sample_labels, config.n_splits, config.seed)
        window_fold = np.array([outer.get(user, -1) for user in window_users])
        sample_fold = np.array([outer[user] for user in sample_users])
        for fold in range(config.n_splits):
            training_samples = sample_fold != fold
            inner = _user_folds(sample_users[training_samples], sample_labels[training_samples], inner_splits,
                                config.seed + 1 + fold)
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
