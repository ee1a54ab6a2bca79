"""nextpoi_lib.trees: the gradient-boosted trees, their class weights, their optional features and the forest."""
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier

from nextpoi_lib import trees as trees_module
from nextpoi_lib.config import TreesConfig
from nextpoi_lib.features.history import history_counts, history_feature_matrix
from nextpoi_lib.features.personal import personal_transition_matrix
from nextpoi_lib.features.tabular import window_feature_matrix
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.trees import (CLASS_WEIGHT_POWER, LOG_PROBABILITY_FLOOR, TREE_FEATURES, GradientBoostedTrees,
                               class_sample_weights)
from synthetic import synthetic_config


def trees_windows(tmp_path):
    return prepare_data(synthetic_config(tmp_path, model={"name": "gradient_boosting"})).windows


def noisy(windows, seed, share=0.3):
    """Replace a share of the labels by noise, so that models (and more training windows) make a difference."""
    rng = np.random.default_rng(seed)
    windows.target = np.where(rng.random(len(windows)) < share, rng.integers(0, len(windows.classes), len(windows)),
                              windows.target)
    return windows


def test_class_sample_weights_by_hand():
    target = np.array([0, 0, 0, 1, 2, 2])  # n = 6, 3 classes with counts 3, 1, 2
    balanced = class_sample_weights(target, power=1.0)
    np.testing.assert_allclose(balanced, [6 / 9] * 3 + [6 / 3] + [6 / 6] * 2)
    # power 1: every class carries the same total weight, like scikit-learn's class_weight="balanced".
    np.testing.assert_allclose(np.bincount(target, weights=balanced), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(class_sample_weights(target, power=0.5), np.sqrt(balanced))
    assert CLASS_WEIGHT_POWER == {"none": 0.0, "balanced": 1.0, "sqrt_balanced": 0.5}


def test_sqrt_balanced_trees_are_fitted_with_those_weights(tmp_path, monkeypatch):
    windows = trees_windows(tmp_path)
    seen = {}
    original_fit = trees_module.HistGradientBoostingClassifier.fit

    def recording_fit(self, features, target, sample_weight=None):
        seen.update(target=target, sample_weight=sample_weight, l2=self.l2_regularization,
                    class_weight=self.class_weight)
        return original_fit(self, features, target, sample_weight=sample_weight)

    monkeypatch.setattr(trees_module.HistGradientBoostingClassifier, "fit", recording_fit)
    train = np.arange(300)
    GradientBoostedTrees(max_iter=5, class_weight="sqrt_balanced", l2_regularization=0.5).fit(windows, train)
    counts = np.bincount(windows.target[train])
    present = np.count_nonzero(counts)
    expected = np.sqrt(len(train) / (present * counts[windows.target[train]]))
    np.testing.assert_allclose(seen["sample_weight"], expected)
    assert seen["class_weight"] is None and seen["l2"] == 0.5
    GradientBoostedTrees(max_iter=5, class_weight="balanced").fit(windows, train)
    assert seen["class_weight"] == "balanced" and seen["sample_weight"] is None


def test_forest_averaging_equals_the_two_models_fitted_separately(tmp_path):
    windows = noisy(trees_windows(tmp_path), seed=3)
    train, test = np.arange(0, 500), np.arange(500, len(windows))
    averaged = GradientBoostedTrees(max_iter=10, seed=7, class_weight="sqrt_balanced", forest_trees=15)
    averaged.fit(windows, train)

    boosted = GradientBoostedTrees(max_iter=10, seed=7, class_weight="sqrt_balanced").fit(windows, train)
    # The forest's input, built by hand: window features, category codes shifted past padding, NaN -> -1.
    def forest_input(index):
        features = window_feature_matrix(windows, index)
        categorical = list(range(windows.length)) + [features.shape[1] - 2]
        features[:, categorical] += 1
        return np.nan_to_num(features, nan=-1.0)
    target = windows.target[train]
    forest = RandomForestClassifier(n_estimators=15, min_samples_leaf=3, max_features=0.3, random_state=7)
    forest.fit(forest_input(train), target, sample_weight=class_sample_weights(target, power=0.5))
    forest_log = np.full((len(test), len(windows.classes)), -30.0)
    with np.errstate(divide="ignore"):
        forest_log[:, forest.classes_] = np.maximum(np.log(forest.predict_proba(forest_input(test))), -30.0)
    expected = 0.5 * (np.maximum(boosted.predict_log_probability(windows, test), -30.0) + forest_log)

    assert LOG_PROBABILITY_FLOOR == -30.0
    np.testing.assert_allclose(averaged.predict_log_probability(windows, test), expected, atol=1e-12)
    np.testing.assert_array_equal(averaged.predict(windows, test), expected.argmax(axis=1))
    # The two models disagree (otherwise this test could not tell averaging from the boosted trees alone).
    assert np.abs(forest_log - np.maximum(boosted.predict_log_probability(windows, test), -30.0)).max() > 0.1
    assert averaged.draws_random_numbers and not boosted.draws_random_numbers


def test_reused_boosted_trees_equal_a_fresh_fit_for_another_seed(tmp_path):
    windows = noisy(trees_windows(tmp_path), seed=3)  # noisy labels, so that forests of different seeds disagree
    train, test = np.arange(0, 500), np.arange(500, len(windows))
    settings = dict(max_iter=10, class_weight="sqrt_balanced", forest_trees=5)
    first = GradientBoostedTrees(seed=0, **settings).fit(windows, train)
    fresh = GradientBoostedTrees(seed=1, **settings).fit(windows, train)
    reused = GradientBoostedTrees(seed=1, **settings).fit(windows, train, boosted=first.model)
    assert reused.model is first.model
    # (to rounding: the forest adds its trees' probabilities in thread order)
    np.testing.assert_allclose(reused.predict_log_probability(windows, test),
                               fresh.predict_log_probability(windows, test), rtol=0, atol=1e-12)
    # The seed does reach the forest: seeds 0 and 1 differ, so the equality above is not trivial.
    assert np.abs(first.predict_log_probability(windows, test) - fresh.predict_log_probability(windows, test)).max() > 0


def test_trees_use_history_and_subcategory_features(tmp_path):
    """The target is set by the subcategory of the last visit; only the subcategory statistics can know it."""
    windows = trees_windows(tmp_path)
    rng = np.random.default_rng(0)
    windows.subcategory_index = np.where(windows.mask, rng.integers(0, 6, windows.mask.shape), -1)
    last = windows.subcategory_index[np.arange(len(windows)), windows.mask.sum(axis=1) - 1]
    windows.target = last % 3
    train, test = np.arange(0, 500), np.arange(500, len(windows))
    plain = GradientBoostedTrees(max_iter=30).fit(windows, train)
    with_subcategory = GradientBoostedTrees(max_iter=30, features=["subcategory_statistics"]).fit(windows, train)
    assert (with_subcategory.predict(windows, test) == windows.target[test]).mean() > 0.95
    assert (plain.predict(windows, test) == windows.target[test]).mean() < 0.7
    # History features: counts before the window, their total, shares over past + window.
    history = history_feature_matrix(windows, test)
    assert history.shape == (len(test), 2 * len(windows.classes) + 1)
    np.testing.assert_array_equal(history[:, :3], history_counts(windows)[test])
    np.testing.assert_allclose(history[:, -3:].sum(axis=1), 1.0)
    with_history = GradientBoostedTrees(max_iter=5, features=["history_features"])
    with_history.train_index = train
    np.testing.assert_array_equal(with_history._features(windows, test, fitting=False),
                                  np.hstack([window_feature_matrix(windows, test), history]))


def test_personal_transition_features_join_the_window_features(tmp_path):
    windows = trees_windows(tmp_path)
    train = np.arange(200)
    plain = GradientBoostedTrees(max_iter=5)
    plain.train_index = train
    personal = GradientBoostedTrees(max_iter=5, features=["personal_transitions"])
    personal.train_index = train
    np.testing.assert_array_equal(personal._features(windows, train, fitting=True),
                                  np.hstack([plain._features(windows, train, fitting=True),
                                             personal_transition_matrix(windows, train)]))
    windows.sequence = None  # as for a next.parquet file
    windows.derived.clear()
    with pytest.raises(ValueError, match="personal_transitions needs the user's check-in sequence"):
        personal.fit(windows, train)


def test_features_join_in_registry_order_and_unknown_ones_are_refused():
    assert list(TREE_FEATURES) == ["poi_statistics", "subcategory_statistics", "history_features",
                                   "personal_transitions"]
    asked = GradientBoostedTrees(features=["personal_transitions", "poi_statistics"])
    assert asked.features == [TREE_FEATURES["poi_statistics"], TREE_FEATURES["personal_transitions"]]
    with pytest.raises(ValueError, match=r"Unknown tree features \['poi_stats'\]"):
        GradientBoostedTrees(features=["poi_stats"])


def test_from_config_reads_every_trees_option():
    options = TreesConfig(max_iter=17, learning_rate=0.3, poi_statistics=True, history_features=True,
                          class_weight="sqrt_balanced", l2_regularization=0.25, forest_trees=4)
    model = GradientBoostedTrees.from_config(options, seed=5)
    assert (model.max_iter, model.learning_rate, model.seed, model.class_weight, model.l2_regularization,
            model.forest_trees) == (17, 0.3, 5, "sqrt_balanced", 0.25, 4)
    assert model.features == [TREE_FEATURES["poi_statistics"], TREE_FEATURES["history_features"]]
    default = GradientBoostedTrees.from_config(TreesConfig(), seed=0)
    assert (default.max_iter, default.learning_rate, default.features, default.forest_trees) == (200, 0.1, [], 0)
