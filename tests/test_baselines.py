"""Reference baselines and the trees' options: class weights, the averaged forest, the blend with a neural head."""
import dataclasses
import json

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.metrics import f1_score

from nextpoi_lib import baselines
from nextpoi_lib.baselines import (BLEND_WEIGHTS, GradientBoostedTrees, choose_blend_weight, class_sample_weights,
                                   run_baseline, window_feature_matrix)
from nextpoi_lib.engine import cross_validate
from nextpoi_lib.runs import prepare_data, run_experiment
from test_engine import synthetic_config


def test_class_sample_weights_by_hand():
    target = np.array([0, 0, 0, 1, 2, 2])  # n = 6, 3 classes with counts 3, 1, 2
    balanced = class_sample_weights(target, power=1.0)
    np.testing.assert_allclose(balanced, [6 / 9] * 3 + [6 / 3] + [6 / 6] * 2)
    # power 1: every class carries the same total weight, like scikit-learn's class_weight="balanced".
    np.testing.assert_allclose(np.bincount(target, weights=balanced), [2.0, 2.0, 2.0])
    np.testing.assert_allclose(class_sample_weights(target, power=0.5), np.sqrt(balanced))


def test_sqrt_balanced_trees_are_fitted_with_those_weights(tmp_path, monkeypatch):
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"})
    windows = prepare_data(config).windows
    seen = {}
    original_fit = baselines.HistGradientBoostingClassifier.fit

    def recording_fit(self, features, target, sample_weight=None):
        seen.update(target=target, sample_weight=sample_weight, l2=self.l2_regularization,
                    class_weight=self.class_weight)
        return original_fit(self, features, target, sample_weight=sample_weight)

    monkeypatch.setattr(baselines.HistGradientBoostingClassifier, "fit", recording_fit)
    train = np.arange(300)
    GradientBoostedTrees(max_iter=5, class_weight="sqrt_balanced", l2_regularization=0.5).fit(windows, train)
    counts = np.bincount(windows.target[train])
    present = np.count_nonzero(counts)
    expected = np.sqrt(len(train) / (present * counts[windows.target[train]]))
    np.testing.assert_allclose(seen["sample_weight"], expected)
    assert seen["class_weight"] is None and seen["l2"] == 0.5
    GradientBoostedTrees(max_iter=5, class_weight="balanced").fit(windows, train)
    assert seen["class_weight"] == "balanced" and seen["sample_weight"] is None


def _macro_f1(target, log_probabilities):
    return f1_score(target, log_probabilities.argmax(axis=1), average="macro", labels=range(log_probabilities.shape[1]),
                    zero_division=0)


def test_blend_weight_follows_the_informative_model():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, 400)
    informative = np.log(np.full((400, 4), 0.1))
    informative[np.arange(400), target] = np.log(0.7)
    noise = np.log(rng.dirichlet(np.ones(4), 400))
    # Trees perfect, neural head noise: the smallest weight that keeps the trees' answer, i.e. 0.
    assert choose_blend_weight(informative, noise, target) == 0.0
    # Trees noise, neural head perfect: a weight that reaches macro-F1 1, and the best on the grid.
    weight = choose_blend_weight(noise, informative, target)
    scores = [_macro_f1(target, (1 - w) * noise + w * informative) for w in BLEND_WEIGHTS]
    assert weight > 0 and _macro_f1(target, (1 - weight) * noise + weight * informative) == max(scores) == 1.0
    assert weight == BLEND_WEIGHTS[int(np.argmax(scores))]


def test_blended_run_equals_trees_and_head_combined_independently(tmp_path):
    """The blend's test predictions are the argmax of (1 - w) trees + w head, with w the grid weight of best
    inner-validation macro-F1, recomputed here from a separately trained head and separately fitted trees."""
    config = synthetic_config(tmp_path, name="blend",
                              model={"name": "gradient_boosting", "gbt_max_iter": 20, "gbt_blend_head": "gru"},
                              training={"epochs": 3, "seeds": [0, 1], "bias_calibration": True})
    prepared = prepare_data(config)
    windows, manifest = prepared.windows, prepared.fold_manifest
    # Make the task need both: the category cycle (learnable) with a quarter of the labels replaced by noise.
    rng = np.random.default_rng(1)
    noisy = rng.random(len(windows)) < 0.25
    windows.target = np.where(noisy, rng.integers(0, len(windows.classes), len(windows)), windows.target)
    result = run_baseline(config, windows, manifest, progress=lambda message: None)

    head_config = dataclasses.replace(config, model=dataclasses.replace(config.model, name="gru"))
    head = {(r.seed, r.fold): r for r in cross_validate(head_config, windows, manifest).fold_results}
    weights = {(w["seed"], w["fold"]): w["neural_weight"] for w in result.extra["blend"]["weights"]}
    assert set(weights) == {(seed, fold.fold) for seed in (0, 1) for fold in manifest.folds}
    for fold_result in result.fold_results:
        fold = manifest.folds[fold_result.fold]
        neural = head[(fold_result.seed, fold.fold)]
        # The head's kept log-probabilities are those of its selected weights.
        np.testing.assert_array_equal(neural.log_probabilities["test"].argmax(axis=1), neural.predictions["selected"])
        trees = GradientBoostedTrees(max_iter=20).fit(windows, fold.train_index)
        trees_val, trees_test = (np.maximum(trees.predict_log_probability(windows, index), -30.0)
                                 for index in (fold.inner_val_index, fold.test_index))
        val_target = windows.target[fold.inner_val_index]
        scores = [_macro_f1(val_target, (1 - w) * trees_val + w * neural.log_probabilities["inner_val"])
                  for w in BLEND_WEIGHTS]
        weight = BLEND_WEIGHTS[int(np.argmax(scores))]
        assert weights[(fold_result.seed, fold.fold)] == pytest.approx(weight)
        expected = ((1 - weight) * trees_test + weight * neural.log_probabilities["test"]).argmax(axis=1)
        np.testing.assert_array_equal(fold_result.predictions["selected"], expected)
        assert fold_result.curves == neural.curves and "calibrated" in fold_result.predictions


def test_blended_run_folder_says_hybrid_and_seed_dependent(tmp_path):
    config = synthetic_config(tmp_path, name="blend",
                              model={"name": "gradient_boosting", "gbt_max_iter": 10, "gbt_blend_head": "gru"},
                              training={"epochs": 2, "seeds": [0, 1]})
    manifest = json.loads((run_experiment(config) / "manifest.json").read_text())
    assert manifest["kind"] == "hybrid" and manifest["seed_dependent"] is True
    assert manifest["blend"]["head"] == "gru" and len(manifest["blend"]["weights"]) == 2 * 3
    trees_alone = synthetic_config(tmp_path, name="trees", model={"name": "gradient_boosting", "gbt_max_iter": 10})
    manifest = json.loads((run_experiment(trees_alone) / "manifest.json").read_text())
    assert manifest["kind"] == "baseline" and manifest["seed_dependent"] is False and "blend" not in manifest


def test_forest_averaging_equals_the_two_models_fitted_separately(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"})
    windows = prepare_data(config).windows
    rng = np.random.default_rng(3)
    windows.target = np.where(rng.random(len(windows)) < 0.3, rng.integers(0, len(windows.classes), len(windows)),
                              windows.target)
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

    np.testing.assert_allclose(averaged.predict_log_probability(windows, test), expected, atol=1e-12)
    np.testing.assert_array_equal(averaged.predict(windows, test), expected.argmax(axis=1))
    # The two models disagree (otherwise this test could not tell averaging from the boosted trees alone).
    assert np.abs(forest_log - np.maximum(boosted.predict_log_probability(windows, test), -30.0)).max() > 0.1


def test_trees_with_a_forest_are_fitted_per_seed_and_say_so(tmp_path, monkeypatch):
    fits, boosted_fits = [], []
    original = baselines.fit_fold
    monkeypatch.setattr(baselines, "fit_fold", lambda config, windows, fold, seed, earlier=None: fits.append(
        (seed, fold.fold)) or original(config, windows, fold, seed, earlier))
    original_boosted_fit = HistGradientBoostingClassifier.fit
    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", lambda self, features, target, **kwargs: (
        boosted_fits.append(len(target)) or original_boosted_fit(self, features, target, **kwargs)))
    config = synthetic_config(tmp_path, name="forest",
                              model={"name": "gradient_boosting", "gbt_max_iter": 5, "gbt_forest_trees": 5},
                              training={"seeds": [0, 1]})
    manifest = json.loads((run_experiment(config) / "manifest.json").read_text())
    assert sorted(fits) == [(seed, fold) for seed in (0, 1) for fold in range(3)]
    assert len(boosted_fits) == 3  # the forest per (seed, fold); the boosted trees once per fold
    assert manifest["kind"] == "baseline" and manifest["seed_dependent"] is True

    fits.clear()
    boosted_only = synthetic_config(tmp_path, name="boosted", model={"name": "gradient_boosting", "gbt_max_iter": 5},
                                    training={"seeds": [0, 1]})
    run_experiment(boosted_only)
    assert sorted(fits) == [(0, fold) for fold in range(3)]  # no random numbers: one fit per fold for both seeds


def test_reused_boosted_trees_equal_a_fresh_fit_for_another_seed(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"})
    windows = prepare_data(config).windows
    rng = np.random.default_rng(3)  # noisy labels, so that forests of different seeds disagree
    windows.target = np.where(rng.random(len(windows)) < 0.3, rng.integers(0, len(windows.classes), len(windows)),
                              windows.target)
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


def test_refit_with_inner_val_predicts_the_test_fold_with_trees_fitted_on_both(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting", "gbt_max_iter": 10, "gbt_forest_trees": 3,
                                               "gbt_poi_statistics": True, "gbt_refit_with_inner_val": True},
                              training={"bias_calibration": True})
    prepared = prepare_data(config)
    windows, fold = prepared.windows, prepared.fold_manifest.folds[0]
    rng = np.random.default_rng(5)  # noisy labels, so that more training windows change the trees
    windows.target = np.where(rng.random(len(windows)) < 0.3, rng.integers(0, len(windows.classes), len(windows)),
                              windows.target)
    first = baselines.fit_fold(config, windows, fold, seed=0)

    def log_probability(fit_index, apply_index):
        trees = GradientBoostedTrees(max_iter=10, seed=0, poi_statistics=True, forest_trees=3).fit(windows, fit_index)
        return np.maximum(trees.predict_log_probability(windows, apply_index), -30.0)

    both = np.union1d(fold.train_index, fold.inner_val_index)
    assert len(both) == len(fold.train_index) + len(fold.inner_val_index)
    # What selection sees comes from trees that never saw the inner validation users...
    np.testing.assert_allclose(first.inner_val_log_probability,
                               log_probability(fold.train_index, fold.inner_val_index), atol=1e-12)
    # ...and the test fold is predicted by trees fitted on training + inner validation windows.
    refit_test = log_probability(both, fold.test_index)
    np.testing.assert_allclose(first.test_log_probability, refit_test, atol=1e-12)
    np.testing.assert_array_equal(first.test_predicted, refit_test.argmax(axis=1))
    assert np.abs(refit_test - log_probability(fold.train_index, fold.test_index)).max() > 1e-3
    # Another seed reuses both boosted fits (only the forests are refitted).
    second = baselines.fit_fold(config, windows, fold, seed=1, earlier=first)
    assert second.boosted_trees is first.boosted_trees
    assert second.refit_boosted_trees is first.refit_boosted_trees is not first.boosted_trees


def test_personal_transition_features_by_hand(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"})
    windows = prepare_data(config).windows
    assert len(windows.classes) == 3
    windows.personal_transitions = np.zeros((len(windows), 6), np.int32)
    windows.personal_transitions[:2] = [[2, 0, 2, 0, 0, 0], [0, 1, 0, 3, 0, 1]]
    features = baselines.personal_transition_matrix(windows, np.array([0, 1, 2]))
    # Per half (after the last category, after the last POI): shares of each next category, then the total.
    np.testing.assert_allclose(features, [[0.5, 0, 0.5, 4, 0, 0, 0, 0],
                                          [0, 1, 0, 1, 0.75, 0, 0.25, 4],
                                          [0, 0, 0, 0, 0, 0, 0, 0]])
    train = np.arange(200)
    plain = GradientBoostedTrees(max_iter=5)
    plain.train_index = train
    personal = GradientBoostedTrees(max_iter=5, personal_transitions=True)
    personal.train_index = train
    np.testing.assert_array_equal(personal._features(windows, train, fitting=True),
                                  np.hstack([plain._features(windows, train, fitting=True),
                                             baselines.personal_transition_matrix(windows, train)]))
    windows.personal_transitions = None  # as for a next.parquet file
    with pytest.raises(ValueError, match="gbt_personal_transitions needs the user's check-in sequence"):
        personal.fit(windows, train)
