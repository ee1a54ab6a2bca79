"""nextpoi_lib.training.fitted: fitted models (baselines, trees) cross-validated per (seed, fold)."""
import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import f1_score

from nextpoi_lib.baselines import MarkovChain
from nextpoi_lib.blend import BLEND_WEIGHTS
from nextpoi_lib.metrics import fit_bias_offsets
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.results import CrossValidationResult, FoldResult
from nextpoi_lib.training import fitted as fitted_module
from nextpoi_lib.training.fitted import cross_validate_fitted, fit_fold
from nextpoi_lib.trees import GradientBoostedTrees
from synthetic import synthetic_config


def quiet(message):
    pass


def noisy(windows, seed, share=0.3):
    rng = np.random.default_rng(seed)
    windows.target = np.where(rng.random(len(windows)) < share, rng.integers(0, len(windows.classes), len(windows)),
                              windows.target)
    return windows


def trees_factory(config):
    return lambda seed: GradientBoostedTrees.from_config(config.trees, seed)


def test_refit_with_inner_val_predicts_the_test_fold_with_trees_fitted_on_both(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"},
                              trees={"max_iter": 10, "forest_trees": 3, "poi_statistics": True,
                                     "refit_with_inner_val": True},
                              training={"bias_calibration": True})
    prepared = prepare_data(config)
    windows, fold = prepared.windows, prepared.fold_manifest.folds[0]
    noisy(windows, seed=5)  # noisy labels, so that more training windows change the trees
    first = fit_fold(trees_factory(config), windows, fold, seed=0, refit_with_inner_val=True,
                     want_log_probabilities=True)

    def log_probability(fit_index, apply_index):
        trees = GradientBoostedTrees(max_iter=10, seed=0, features=["poi_statistics"], forest_trees=3).fit(
            windows, fit_index)
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
    second = fit_fold(trees_factory(config), windows, fold, seed=1, refit_with_inner_val=True,
                      want_log_probabilities=True, earlier=first)
    assert second.boosted_trees is first.boosted_trees
    assert second.refit_boosted_trees is first.refit_boosted_trees is not first.boosted_trees
    # Without a calibration or a blend there is nothing to keep log-probabilities for.
    plain = fit_fold(trees_factory(config), windows, fold, seed=0, refit_with_inner_val=True,
                     want_log_probabilities=False, earlier=first)
    assert plain.inner_val_log_probability is None and plain.test_log_probability is None
    np.testing.assert_array_equal(plain.test_predicted, refit_test.argmax(axis=1))


def test_trees_with_a_forest_are_fitted_per_seed_and_the_boosted_trees_once_per_fold(tmp_path, monkeypatch):
    fits, boosted_fits = [], []
    original = fitted_module.fit_fold

    def counting_fit_fold(make_model, windows, fold, seed, **kwargs):
        fits.append((seed, fold.fold, kwargs["earlier"] is not None))
        return original(make_model, windows, fold, seed, **kwargs)

    monkeypatch.setattr(fitted_module, "fit_fold", counting_fit_fold)
    original_boosted_fit = HistGradientBoostingClassifier.fit
    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", lambda self, features, target, **kwargs: (
        boosted_fits.append(len(target)) or original_boosted_fit(self, features, target, **kwargs)))
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"}, trees={"max_iter": 5, "forest_trees": 5},
                              training={"seeds": [0, 1]})
    prepared = prepare_data(config)
    result = cross_validate_fitted(config, prepared.windows, prepared.fold_manifest, trees_factory(config), quiet)
    # The forest per (seed, fold), the second seed reusing the first's fit; the boosted trees once per fold.
    assert sorted(fits) == [(seed, fold, seed == 1) for seed in (0, 1) for fold in range(3)]
    assert len(boosted_fits) == 3
    assert [(r.seed, r.fold) for r in result.fold_results] == [(s, f) for s in (0, 1) for f in range(3)]

    fits.clear()
    boosted_config = synthetic_config(tmp_path, model={"name": "gradient_boosting"}, trees={"max_iter": 5},
                                      training={"seeds": [0, 1]})
    result = cross_validate_fitted(boosted_config, prepared.windows, prepared.fold_manifest,
                                   trees_factory(boosted_config), quiet)
    assert sorted(fits) == [(0, fold, False) for fold in range(3)]  # no random numbers: one fit per fold
    by_key = {(r.seed, r.fold): r for r in result.fold_results}
    for fold in range(3):  # ... serving both seeds with the same predictions
        np.testing.assert_array_equal(by_key[(0, fold)].predictions["selected"],
                                      by_key[(1, fold)].predictions["selected"])


def test_simple_baseline_fold_results_by_hand(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "markov", "markov_order": 1},
                              training={"seeds": [0, 1], "bias_calibration": True})
    prepared = prepare_data(config)
    windows = noisy(prepared.windows, seed=2)
    messages = []
    result = cross_validate_fitted(config, windows, prepared.fold_manifest, lambda seed: MarkovChain(order=1),
                                   messages.append)
    assert (result.device, result.device_name, result.extra) == ("cpu", "cpu", {})
    assert len(result.fold_results) == 2 * 3 and len(messages) == 2 * 3
    for fold_result in result.fold_results:
        fold = prepared.fold_manifest.folds[fold_result.fold]
        expected = MarkovChain(order=1).fit(windows, fold.train_index).predict(windows, fold.test_index)
        # No log-probabilities: nothing to calibrate, even with training.bias_calibration.
        assert set(fold_result.predictions) == {"selected", "last"} and fold_result.bias_offsets is None
        np.testing.assert_array_equal(fold_result.predictions["selected"], expected)
        np.testing.assert_array_equal(fold_result.test_target, windows.target[fold.test_index])
        assert (fold_result.curves, fold_result.selected_epoch, fold_result.last_epoch) == ([], 0, 0)
        accuracy = (expected == windows.target[fold.test_index]).mean()
        assert f"markov: test accuracy {accuracy:.4f}" in messages[result.fold_results.index(fold_result)]


def _macro_f1(target, log_probabilities):
    return f1_score(target, log_probabilities.argmax(axis=1), average="macro", labels=range(log_probabilities.shape[1]),
                    zero_division=0)


def test_blend_with_a_neural_run_by_hand(tmp_path):
    """A stand-in neural run (log-probabilities that know the targets of some windows): each fold's trees are
    blended with it at the weight of best inner-validation macro-F1, and the fold takes the head's curves."""
    config = synthetic_config(tmp_path, model={"name": "blended_trees"}, blend={"head": "gru"},
                              trees={"max_iter": 10}, training={"seeds": [0, 1], "bias_calibration": True})
    prepared = prepare_data(config)
    windows, manifest = noisy(prepared.windows, seed=1, share=0.25), prepared.fold_manifest
    rng = np.random.default_rng(7)
    num_classes = len(windows.classes)

    def head_log_probabilities(index):
        values = np.log(rng.dirichlet(np.ones(num_classes), len(index)))
        knows = rng.random(len(index)) < 0.5
        values[np.flatnonzero(knows), windows.target[index][knows]] += 2.0
        return values

    neural_folds = []
    for seed in (0, 1):
        for fold in manifest.folds:
            neural_folds.append(FoldResult(
                seed=seed, fold=fold.fold, curves=[{"seed": seed, "fold": fold.fold, "epoch": 1}], selected_epoch=1,
                last_epoch=2, test_target=windows.target[fold.test_index], predictions={}, seconds=1.5,
                log_probabilities={"inner_val": head_log_probabilities(fold.inner_val_index),
                                   "test": head_log_probabilities(fold.test_index)}))
    neural_run = CrossValidationResult(neural_folds, device="cuda", device_name="stand-in",
                                       extra={"engine": {"mode": "per_fold"}})
    result = cross_validate_fitted(config, windows, manifest, trees_factory(config), quiet, neural_run=neural_run,
                                   blend_head="gru")
    assert (result.device, result.device_name, result.extra["engine"]) == ("cuda", "stand-in", {"mode": "per_fold"})
    assert result.extra["blend"]["head"] == "gru"
    weights = {(w["seed"], w["fold"]): w["neural_weight"] for w in result.extra["blend"]["weights"]}
    inner_val_scores = {(w["seed"], w["fold"]): w["inner_val_macro_f1"] for w in result.extra["blend"]["weights"]}
    assert list(weights) == [(seed, fold.fold) for seed in (0, 1) for fold in manifest.folds]
    neural = {(r.seed, r.fold): r for r in neural_folds}
    for fold_result in result.fold_results:
        fold = manifest.folds[fold_result.fold]
        head = neural[(fold_result.seed, fold.fold)].log_probabilities
        trees = GradientBoostedTrees(max_iter=10).fit(windows, fold.train_index)
        trees_val, trees_test = (np.maximum(trees.predict_log_probability(windows, index), -30.0)
                                 for index in (fold.inner_val_index, fold.test_index))
        val_target = windows.target[fold.inner_val_index]
        scores = [_macro_f1(val_target, (1 - w) * trees_val + w * head["inner_val"]) for w in BLEND_WEIGHTS]
        weight = BLEND_WEIGHTS[int(np.argmax(scores))]
        assert weights[(fold_result.seed, fold.fold)] == pytest.approx(weight)
        # The recorded inner-validation score is the blend's at that weight: the best on the grid.
        assert inner_val_scores[(fold_result.seed, fold.fold)] == pytest.approx(max(scores), abs=1e-6)
        blended_test = (1 - weight) * trees_test + weight * head["test"]
        np.testing.assert_array_equal(fold_result.predictions["selected"], blended_test.argmax(axis=1))
        offsets = fit_bias_offsets((1 - weight) * trees_val + weight * head["inner_val"], val_target)
        np.testing.assert_array_equal(fold_result.predictions["calibrated"], (blended_test + offsets).argmax(axis=1))
        assert fold_result.curves == neural[(fold_result.seed, fold.fold)].curves
        assert (fold_result.selected_epoch, fold_result.last_epoch) == (1, 2) and fold_result.seconds >= 1.5
    # The head makes a difference: some fold leans on it.
    assert max(weights.values()) > 0
