"""Gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier), optionally averaged with a random
forest, over the tabular window features and the optional tree features of `nextpoi_lib.features`.

Configured from the `trees:` section by keyword (`GradientBoostedTrees.from_config`). Adding a tree feature is
one class with `columns(windows, index, train_index, fitting) -> [n, k]` in `nextpoi_lib.features`, one line in
TREE_FEATURES below (its key is the `trees:` option that switches it on) and that option in
`config.TreesConfig`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from .config import TreesConfig
from .features.history import HistoryFeatures
from .features.personal import PersonalTransitionFeatures
from .features.tabular import categorical_columns, require_visit_details, window_feature_matrix
from .features.target_statistics import TransitionStatisticsFeature
from .windows import WindowSet

# Optional tree features by their `trees:` option, in column order.
TREE_FEATURES = {
    "poi_statistics": TransitionStatisticsFeature("poi"),
    "subcategory_statistics": TransitionStatisticsFeature("subcategory"),
    "history_features": HistoryFeatures(),
    "personal_transitions": PersonalTransitionFeatures(),
}


def class_sample_weights(target: np.ndarray, power: float) -> np.ndarray:
    """Per-window weight (n / (k * count of its class)) ** power over the k classes present: power 1 is
    scikit-learn's "balanced", 0.5 its square root (minority classes up-weighted, the majority less traded)."""
    present, inverse, counts = np.unique(target, return_inverse=True, return_counts=True)
    return ((len(target) / (len(present) * counts)) ** power)[inverse]


# trees.class_weight as the power of class_sample_weights ("balanced" is passed to the boosted trees as
# scikit-learn's own class_weight, which gives the same weights).
CLASS_WEIGHT_POWER = {"none": 0.0, "balanced": 1.0, "sqrt_balanced": 0.5}
# Floor for log-probabilities: a class absent from a fold's training windows gets log(0) = -inf.
LOG_PROBABILITY_FLOOR = -30.0
# The forest averaged with the boosted trees (trees.forest_trees): chosen on the inner validation users of
# folds 1-2 among 1/3/10 windows per leaf and 15/30/50% of the features per split (docs/results.md).
FOREST_MIN_SAMPLES_LEAF = 3
FOREST_MAX_FEATURES = 0.3


class GradientBoostedTrees:
    """scikit-learn HistGradientBoostingClassifier on window features (category columns as categorical).

    Optional extra features: next-category statistics keyed by the last POI and/or the last subcategory
    (out-of-fold for the training rows), the user's history before the window, and what the user did after
    their own earlier visits to the last category and POI. Without early stopping
    or feature subsampling it draws no random numbers: one fit per fold serves every seed. With
    forest_trees > 0 a RandomForestClassifier on the same features and weights is fitted too (seeded by
    `seed`), and the prediction is the argmax of the two models' averaged log-probabilities; `fit(...,
    boosted=)` then reuses the boosted trees (`.model`) fitted for another seed on the same windows.
    """

    reads_visit_categories = True  # categories by position, counts, the user's history: class ids of visits

    def __init__(self, *, max_iter: int = 200, learning_rate: float = 0.1, seed: int = 0,
                 features: Sequence[str] = (), class_weight: str = "none", l2_regularization: float = 0.0,
                 forest_trees: int = 0):
        unknown = sorted(set(features) - set(TREE_FEATURES))
        if unknown:
            raise ValueError(f"Unknown tree features {unknown}; known: {', '.join(TREE_FEATURES)}.")
        self.max_iter, self.learning_rate, self.seed = max_iter, learning_rate, seed
        self.l2_regularization = l2_regularization
        self.forest_trees = forest_trees
        # In the registry's order, whatever the order asked in: the column order is part of the model.
        self.features = [TREE_FEATURES[name] for name in TREE_FEATURES if name in features]
        self.class_weight = class_weight

    @classmethod
    def from_config(cls, trees: TreesConfig, seed: int) -> "GradientBoostedTrees":
        """The trees of a config's `trees:` section; every option of TREE_FEATURES that is true is a feature."""
        return cls(max_iter=trees.max_iter, learning_rate=trees.learning_rate, seed=seed,
                   features=[name for name in TREE_FEATURES if getattr(trees, name)],
                   class_weight=trees.class_weight, l2_regularization=trees.l2_regularization,
                   forest_trees=trees.forest_trees)

    @property
    def draws_random_numbers(self) -> bool:
        """Only with a forest: the boosted trees alone give the same fit for every seed."""
        return self.forest_trees > 0

    def _features(self, windows: WindowSet, index: np.ndarray, fitting: bool) -> np.ndarray:
        parts = [window_feature_matrix(windows, index)]
        parts += [feature.columns(windows, index, self.train_index, fitting) for feature in self.features]
        return np.hstack(parts)

    def fit(self, windows: WindowSet, index: np.ndarray,
            boosted: HistGradientBoostingClassifier | None = None) -> "GradientBoostedTrees":
        require_visit_details(windows, "gradient_boosting")
        self.train_index = index
        features = self._features(windows, index, fitting=True)
        categorical = categorical_columns(windows, features.shape[1])
        # random_state is fixed, not the seed: without early stopping the boosted trees use it only to
        # subsample more than 200,000 windows for binning, and one fit must serve every seed.
        self.model = HistGradientBoostingClassifier(
            max_iter=self.max_iter, learning_rate=self.learning_rate, categorical_features=categorical,
            early_stopping=False, class_weight="balanced" if self.class_weight == "balanced" else None,
            l2_regularization=self.l2_regularization, random_state=0)
        # Padding (-1) is not a valid category code for the trees; shift codes by one so padding is 0.
        self._shift = categorical
        target = windows.target[index]
        power = CLASS_WEIGHT_POWER[self.class_weight]
        sample_weight = class_sample_weights(target, power) if self.class_weight == "sqrt_balanced" else None
        features = self._prepare(features)
        if boosted is None:
            self.model.fit(features, target, sample_weight=sample_weight)
        else:  # same windows, same settings: the same boosted trees, without the minutes of fitting
            self.model = boosted
        self.forest = None
        if self.forest_trees:
            self.forest = RandomForestClassifier(
                n_estimators=self.forest_trees, min_samples_leaf=FOREST_MIN_SAMPLES_LEAF,
                max_features=FOREST_MAX_FEATURES, n_jobs=-1, random_state=self.seed,
            ).fit(self._forest_input(features), target, sample_weight=class_sample_weights(target, power))
        return self

    def _prepare(self, features: np.ndarray) -> np.ndarray:
        features = features.copy()
        features[:, self._shift] += 1
        return features

    @staticmethod
    def _forest_input(features: np.ndarray) -> np.ndarray:
        # Padded positions are NaN (hours, weekdays, gaps: never negative when present); -1 puts them apart.
        return np.nan_to_num(features, nan=-1.0)

    def predict(self, windows: WindowSet, index: np.ndarray) -> np.ndarray:
        if self.forest is not None:
            return np.argmax(self.predict_log_probability(windows, index), axis=1)
        return self.model.predict(self._prepare(self._features(windows, index, fitting=False)))

    def predict_log_probability(self, windows: WindowSet, index: np.ndarray) -> np.ndarray:
        """[n, C] log-probabilities over all classes (a class absent from training gets -inf, or the floor
        when averaged with the forest)."""
        features = self._prepare(self._features(windows, index, fitting=False))
        boosted = _log_probability_over_classes(self.model, features, len(windows.classes))
        if self.forest is None:
            return boosted
        forest = _log_probability_over_classes(self.forest, self._forest_input(features), len(windows.classes))
        return 0.5 * (np.maximum(boosted, LOG_PROBABILITY_FLOOR) + np.maximum(forest, LOG_PROBABILITY_FLOOR))


def _log_probability_over_classes(model, features: np.ndarray, num_classes: int) -> np.ndarray:
    """A fitted scikit-learn classifier's log-probabilities, with a column for every class of the data."""
    full = np.zeros((len(features), num_classes))
    full[:, model.classes_] = model.predict_proba(features)
    with np.errstate(divide="ignore"):
        return np.log(full)


