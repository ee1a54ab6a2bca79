"""Reference baselines: simple predictors that sit beside every neural run, on the same folds and metrics.

Each baseline is a class with `fit(windows, index)` and `predict(windows, index)`; they look only at the
observed visits of a window (never at the visit being predicted) and run in seconds on a CPU.
The gradient-boosted trees can be averaged with a random forest on the same features (`model.gbt_forest_trees`)
and blended with a neural head trained on the same folds (`model.gbt_blend_head`): the blend weight is chosen
on the inner validation users, like everything else.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter, defaultdict

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier

from .config import ExperimentConfig
from .folds import FoldManifest
from .metrics import fit_bias_offsets, macro_f1_from_confusion
from .windows import WindowSet


def last_observed(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Value at each window's last observed position, vectorised."""
    positions = np.where(mask, np.arange(mask.shape[1])[None, :], -1).max(axis=1)
    return values[np.arange(len(values)), np.maximum(positions, 0)]


def _require_categories(windows: WindowSet, name: str) -> None:
    if not windows.has_visit_details:
        raise ValueError(f"Baseline {name!r} needs the categories of the observed visits, which a next.parquet file "
                         f"does not hold. Load the check-in table (dataset.source: checkins) to run it.")


class MajorityClass:
    """Predicts the most frequent class of the training windows."""

    def fit(self, windows: WindowSet, index: np.ndarray) -> "MajorityClass":
        self.majority = int(np.bincount(windows.target[index], minlength=len(windows.classes)).argmax())
        return self

    def predict(self, windows: WindowSet, index: np.ndarray) -> np.ndarray:
        return np.full(len(index), self.majority)


class LastCategory:
    """Repeats the category of the last observed visit."""

    def fit(self, windows: WindowSet, index: np.ndarray) -> "LastCategory":
        _require_categories(windows, "last_category")
        return self

    def predict(self, windows: WindowSet, index: np.ndarray) -> np.ndarray:
        return last_observed(windows.category_index[index], windows.mask[index])


class MostFrequentInWindow:
    """The most frequent category among the observed visits; ties go to the most recent of them."""

    def fit(self, windows: WindowSet, index: np.ndarray) -> "MostFrequentInWindow":
        _require_categories(windows, "most_frequent_in_window")
        return self

    def predict(self, windows: WindowSet, index: np.ndarray) -> np.ndarray:
        categories, mask = windows.category_index[index], windows.mask[index]
        num_classes = len(windows.classes)
        one_hot = np.zeros((len(index), num_classes))
        length = mask.shape[1]
        for position in range(length):
            observed = mask[:, position]
            # A tiny recency bonus breaks ties towards later visits without changing any count order.
            one_hot[np.flatnonzero(observed), categories[observed, position]] += 1.0 + position * 1e-3 / length
        return one_hot.argmax(axis=1)


class MarkovChain:
    """Order-K Markov chain on categories; backs off to shorter histories, then to the majority class."""

    def __init__(self, order: int = 2):
        self.order = order

    def _histories(self, windows: WindowSet, index: np.ndarray) -> list[tuple[int, ...]]:
        categories, mask = windows.category_index[index], windows.mask[index]
        histories = []
        for row, row_mask in zip(categories, mask):
            observed = row[row_mask]
            histories.append(tuple(int(c) for c in observed[-self.order:]))
        return histories

    def fit(self, windows: WindowSet, index: np.ndarray) -> "MarkovChain":
        _require_categories(windows, "markov")
        counts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
        for history, target in zip(self._histories(windows, index), windows.target[index]):
            for k in range(0, len(history) + 1):
                counts[history[len(history) - k:]][int(target)] += 1
        # Deterministic argmax: highest count, then lowest class id.
        self.table = {key: min(counter, key=lambda c: (-counter[c], c)) for key, counter in counts.items()}
        return self

    def predict(self, windows: WindowSet, index: np.ndarray) -> np.ndarray:
        predictions = []
        for history in self._histories(windows, index):
            for k in range(len(history), -1, -1):
                key = history[len(history) - k:]
                if key in self.table:
                    predictions.append(self.table[key])
                    break
        return np.array(predictions)


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


def history_feature_matrix(windows: WindowSet, index: np.ndarray) -> np.ndarray:
    """The user's past beyond the window: category counts before its first visit, their total, and the
    category shares over all visits before the target (past + window)."""
    if windows.history_counts is None:
        raise ValueError("gbt_history_features needs the user's earlier check-ins, which a next.parquet file does "
                         "not hold. Load the check-in table (dataset.source: checkins) or set it to false.")
    before = windows.history_counts[index].astype(np.float64)
    everything = before + window_category_counts(windows, index)
    shares = everything / np.maximum(everything.sum(axis=1, keepdims=True), 1.0)
    return np.hstack([before, before.sum(axis=1, keepdims=True), shares])


def personal_transition_matrix(windows: WindowSet, index: np.ndarray) -> np.ndarray:
    """What the user did next after their own earlier visits to the window's last category and to its last
    POI: the shares of each next category (2C columns) and how many such transitions they had (2)."""
    if windows.personal_transitions is None:
        raise ValueError("gbt_personal_transitions needs the user's check-in sequence, which a next.parquet file "
                         "does not hold. Load the check-in table (dataset.source: checkins) or set it to false.")
    num_classes = len(windows.classes)
    counts = windows.personal_transitions[index].astype(np.float64)
    parts = []
    for half in (counts[:, :num_classes], counts[:, num_classes:]):
        total = half.sum(axis=1, keepdims=True)
        parts += [half / np.maximum(total, 1.0), total]
    return np.hstack(parts)


def last_visit_keys(windows: WindowSet, key: str) -> np.ndarray:
    """Per window, the identity the transition statistics are keyed by: its last POI or last subcategory."""
    if key == "poi":
        return last_observed(windows.poi_index, windows.mask)
    if windows.subcategory_index is None:
        raise ValueError("gbt_subcategory_statistics needs a finer category per check-in: set "
                         "dataset.subcategory_column (check-in tables) or gbt_subcategory_statistics: false.")
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


def out_of_fold_statistics(windows: WindowSet, keys: np.ndarray, train_index: np.ndarray, parts: int = 5,
                           seed: int = 0) -> np.ndarray:
    """Transition statistics for the training windows themselves, each computed without its own user's
    windows (user-grouped parts), so the trees never see a feature built from the row's own label."""
    users = windows.users[train_index]
    unique_users = np.unique(users)
    part_of_user = dict(zip(unique_users, np.random.default_rng(seed).integers(0, parts, len(unique_users))))
    part = np.array([part_of_user[user] for user in users])
    statistics = np.zeros((len(train_index), len(windows.classes) + 1))
    for k in range(parts):
        statistics[part == k] = transition_statistics(windows, keys, train_index[part != k], train_index[part == k])
    return statistics


def class_sample_weights(target: np.ndarray, power: float) -> np.ndarray:
    """Per-window weight (n / (k * count of its class)) ** power over the k classes present: power 1 is
    scikit-learn's "balanced", 0.5 its square root (minority classes up-weighted, the majority less traded)."""
    present, inverse, counts = np.unique(target, return_inverse=True, return_counts=True)
    return ((len(target) / (len(present) * counts)) ** power)[inverse]


# gbt_class_weight as the power of class_sample_weights ("balanced" is passed to the boosted trees as
# scikit-learn's own class_weight, which gives the same weights).
CLASS_WEIGHT_POWER = {"none": 0.0, "balanced": 1.0, "sqrt_balanced": 0.5}
# Floor for log-probabilities: a class absent from a fold's training windows gets log(0) = -inf.
LOG_PROBABILITY_FLOOR = -30.0
# The forest averaged with the boosted trees (gbt_forest_trees): chosen on the inner validation users of
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

    def __init__(self, max_iter: int = 200, learning_rate: float = 0.1, seed: int = 0, poi_statistics: bool = False,
                 subcategory_statistics: bool = False, history_features: bool = False, class_weight: str = "none",
                 l2_regularization: float = 0.0, forest_trees: int = 0, personal_transitions: bool = False):
        self.max_iter, self.learning_rate, self.seed = max_iter, learning_rate, seed
        self.l2_regularization = l2_regularization
        self.forest_trees = forest_trees
        self.statistics_keys = [key for key, wanted in (("poi", poi_statistics),
                                                        ("subcategory", subcategory_statistics)) if wanted]
        self.history_features = history_features
        self.personal_transitions = personal_transitions
        self.class_weight = class_weight

    def _features(self, windows: WindowSet, index: np.ndarray, fitting: bool) -> np.ndarray:
        parts = [window_feature_matrix(windows, index)]
        for key in self.statistics_keys:
            keys = last_visit_keys(windows, key)
            parts.append(out_of_fold_statistics(windows, keys, index) if fitting
                         else transition_statistics(windows, keys, self.train_index, index))
        if self.history_features:
            parts.append(history_feature_matrix(windows, index))
        if self.personal_transitions:
            parts.append(personal_transition_matrix(windows, index))
        return np.hstack(parts)

    def fit(self, windows: WindowSet, index: np.ndarray,
            boosted: HistGradientBoostingClassifier | None = None) -> "GradientBoostedTrees":
        _require_categories(windows, "gradient_boosting")
        length = windows.length
        self.train_index = index
        features = self._features(windows, index, fitting=True)
        # Category-valued columns: every position, and the last observed category.
        categorical = np.zeros(features.shape[1], bool)
        categorical[:length] = True
        categorical[window_feature_matrix(windows, index[:1]).shape[1] - 2] = True
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


BASELINE_REGISTRY = {
    "majority": lambda config, seed: MajorityClass(),
    "last_category": lambda config, seed: LastCategory(),
    "most_frequent_in_window": lambda config, seed: MostFrequentInWindow(),
    "markov": lambda config, seed: MarkovChain(config.model.markov_order),
    "gradient_boosting": lambda config, seed: GradientBoostedTrees(
        config.model.gbt_max_iter, config.model.gbt_learning_rate, seed, config.model.gbt_poi_statistics,
        config.model.gbt_subcategory_statistics, config.model.gbt_history_features, config.model.gbt_class_weight,
        config.model.gbt_l2_regularization, config.model.gbt_forest_trees, config.model.gbt_personal_transitions),
}


# Blend weights of the neural head's log-probabilities tried on the inner validation users.
BLEND_WEIGHTS = np.linspace(0.0, 1.0, 11)


@dataclasses.dataclass
class FittedFold:
    """What a fitted baseline says about one fold: test predictions, and log-probabilities where it has them."""
    test_predicted: np.ndarray
    inner_val_log_probability: np.ndarray | None = None
    test_log_probability: np.ndarray | None = None
    # The fitted boosted trees (GradientBoostedTrees.model), kept to serve the fold's other seeds; not the
    # forest, which differs per seed and is large. With gbt_refit_with_inner_val, also those refitted on
    # training + inner validation windows.
    boosted_trees: HistGradientBoostingClassifier | None = None
    refit_boosted_trees: HistGradientBoostingClassifier | None = None


def draws_random_numbers(config: ExperimentConfig) -> bool:
    """Whether a reference baseline's fit depends on the seed: only the trees averaged with a random forest."""
    return config.model.name == "gradient_boosting" and config.model.gbt_forest_trees > 0


def _fitted_baseline(config: ExperimentConfig, windows: WindowSet, index: np.ndarray, seed: int,
                     boosted: HistGradientBoostingClassifier | None):
    model = BASELINE_REGISTRY[config.model.name](config, seed)
    if isinstance(model, GradientBoostedTrees):
        return model.fit(windows, index, boosted=boosted)
    return model.fit(windows, index)


def fit_fold(config: ExperimentConfig, windows: WindowSet, fold, seed: int,
             earlier: FittedFold | None = None) -> FittedFold:
    """Fit on the fold's training windows; predict its test windows (and log-probabilities when needed).
    `earlier`: this fold fitted for another seed; trees averaged with a forest reuse its boosted trees.
    With gbt_refit_with_inner_val the test windows are predicted by a second fit on training + inner
    validation windows, while the inner-validation log-probabilities (what the blend weight and the
    calibration offsets are chosen on) still come from the fit that never saw those users."""
    model = _fitted_baseline(config, windows, fold.train_index, seed, earlier and earlier.boosted_trees)
    test_model = model
    if config.model.gbt_refit_with_inner_val:
        test_model = _fitted_baseline(config, windows, np.union1d(fold.train_index, fold.inner_val_index), seed,
                                      earlier and earlier.refit_boosted_trees)
    kept = {}
    if isinstance(model, GradientBoostedTrees):
        kept = {"boosted_trees": model.model,
                "refit_boosted_trees": test_model.model if test_model is not model else None}
    wanted = config.training.bias_calibration or config.model.gbt_blend_head is not None
    if not (wanted and hasattr(model, "predict_log_probability")):
        return FittedFold(np.asarray(test_model.predict(windows, fold.test_index), dtype=np.int64), **kept)
    inner_val, test = (np.maximum(fitted.predict_log_probability(windows, index), LOG_PROBABILITY_FLOOR)
                       for fitted, index in ((model, fold.inner_val_index), (test_model, fold.test_index)))
    # The trees' predict is the argmax of their probabilities: take it from the log-probabilities instead of
    # building the test features and walking the trees a second time.
    return FittedFold(np.argmax(test, axis=1), inner_val, test, **kept)


def choose_blend_weight(trees: np.ndarray, neural: np.ndarray, target: np.ndarray) -> float:
    """The weight w in BLEND_WEIGHTS for which (1 - w) * trees + w * neural log-probabilities give the highest
    macro-F1 on (inner validation) targets; ties go to the smaller weight (the trees alone at w = 0)."""
    num_classes = trees.shape[1]
    scores = []
    for weight in BLEND_WEIGHTS:
        predicted = np.argmax((1.0 - weight) * trees + weight * neural, axis=1)
        confusion = np.bincount(target * num_classes + predicted, minlength=num_classes ** 2)
        scores.append(macro_f1_from_confusion(confusion.reshape(num_classes, num_classes)))
    return float(BLEND_WEIGHTS[int(np.argmax(scores))])


def fold_predictions(config: ExperimentConfig, windows: WindowSet, fold, fitted: FittedFold,
                     neural_log_probabilities: dict[str, np.ndarray] | None = None):
    """Selected (and calibrated) test predictions of a fitted fold, blended with a neural head when given.
    Returns (predictions, bias offsets or None, blend weight or None)."""
    predictions = {"selected": fitted.test_predicted, "last": fitted.test_predicted}
    validation, test = fitted.inner_val_log_probability, fitted.test_log_probability
    if validation is None:
        return predictions, None, None
    weight = None
    inner_val_target = windows.target[fold.inner_val_index]
    if neural_log_probabilities is not None:
        weight = choose_blend_weight(validation, neural_log_probabilities["inner_val"], inner_val_target)
        validation = (1.0 - weight) * validation + weight * neural_log_probabilities["inner_val"]
        test = (1.0 - weight) * test + weight * neural_log_probabilities["test"]
        blended = np.argmax(test, axis=1)
        predictions = {"selected": blended, "last": blended}
    offsets = None
    if config.training.bias_calibration:
        # Same post-hoc offsets as for neural heads: fitted on the inner validation users only.
        offsets = fit_bias_offsets(validation, inner_val_target)
        predictions["calibrated"] = np.argmax(test + offsets, axis=1)
    return predictions, offsets, weight


def run_baseline(config: ExperimentConfig, windows: WindowSet, fold_manifest: FoldManifest, progress=print):
    """Fit on each fold's training windows, predict its test windows; same result shape as the engine.
    With model.gbt_blend_head, the neural head is cross-validated first on the same folds and seeds."""
    from .engine import CrossValidationResult, FoldResult, cross_validate

    neural_results, neural_run = {}, None
    head = config.model.gbt_blend_head
    if head is not None:
        progress(f"Blend: cross-validating the {head} head first; its inner-validation and test log-probabilities "
                 f"are blended with the trees'")
        neural_config = dataclasses.replace(config, model=dataclasses.replace(config.model, name=head))
        neural_run = cross_validate(neural_config, windows, fold_manifest, progress)
        neural_results = {(result.seed, result.fold): result for result in neural_run.fold_results}

    results, fitted, blend_weights = [], {}, []
    for seed in config.training.seeds:
        for fold in fold_manifest.folds:
            started = time.perf_counter()
            # Baselines that draw no random numbers are fitted once per fold and reused for every seed, so
            # seed-paired comparisons with neural runs still find their pairs (a blended head differs per seed).
            key = (seed if draws_random_numbers(config) else None, fold.fold)
            if key not in fitted:
                earlier = next((fit for (_, fold_number), fit in fitted.items() if fold_number == fold.fold), None)
                fitted[key] = fit_fold(config, windows, fold, seed, earlier)
            neural = neural_results.get((seed, fold.fold))
            predictions, offsets, weight = fold_predictions(
                config, windows, fold, fitted[key], None if neural is None else neural.log_probabilities)
            target = windows.target[fold.test_index]
            seconds = time.perf_counter() - started + (0.0 if neural is None else neural.seconds)
            results.append(FoldResult(seed=seed, fold=fold.fold, curves=[] if neural is None else neural.curves,
                                      selected_epoch=0 if neural is None else neural.selected_epoch,
                                      last_epoch=0 if neural is None else neural.last_epoch,
                                      test_target=target, predictions=dict(predictions), bias_offsets=offsets,
                                      seconds=seconds))
            blend = ""
            if weight is not None:
                blend_weights.append({"seed": seed, "fold": fold.fold, "neural_weight": round(weight, 3)})
                blend = f" (neural weight {weight:.1f})"
            progress(f"[seed {seed} fold {fold.fold + 1}/{len(fold_manifest.folds)}] {config.model.name}: test accuracy "
                     f"{(predictions['selected'] == target).mean():.4f}{blend}")
    if neural_run is None:
        return CrossValidationResult(fold_results=results, device="cpu", device_name="cpu")
    extra = {**neural_run.extra, "blend": {"head": head, "weights": blend_weights}}
    return CrossValidationResult(fold_results=results, device=neural_run.device, device_name=neural_run.device_name,
                                 extra=extra)
