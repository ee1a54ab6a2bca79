"""nextpoi_lib.blend: the blend weight chosen on inner validation users, and a fitted fold's predictions."""
import numpy as np
import pytest
from sklearn.metrics import f1_score

from nextpoi_lib.blend import BLEND_WEIGHTS, FittedFold, choose_blend_weight, fold_predictions
from nextpoi_lib.metrics import fit_bias_offsets


def _macro_f1(target, log_probabilities):
    return f1_score(target, log_probabilities.argmax(axis=1), average="macro", labels=range(log_probabilities.shape[1]),
                    zero_division=0)


def test_blend_weights_are_the_tenths():
    np.testing.assert_allclose(BLEND_WEIGHTS, [i / 10 for i in range(11)])


def test_blend_weight_follows_the_informative_model():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, 400)
    informative = np.log(np.full((400, 4), 0.1))
    informative[np.arange(400), target] = np.log(0.7)
    noise = np.log(rng.dirichlet(np.ones(4), 400))
    # Trees perfect, neural head noise: the smallest weight that keeps the trees' answer, i.e. 0.
    trees_alone = choose_blend_weight(informative, noise, target)
    assert trees_alone.weight == 0.0 and trees_alone.inner_val_macro_f1 == _macro_f1(target, informative) == 1.0
    # Trees noise, neural head perfect: a weight that reaches macro-F1 1, and the best on the grid.
    choice = choose_blend_weight(noise, informative, target)
    scores = [_macro_f1(target, (1 - w) * noise + w * informative) for w in BLEND_WEIGHTS]
    blend = (1 - choice.weight) * noise + choice.weight * informative
    assert choice.weight > 0 and _macro_f1(target, blend) == max(scores) == 1.0
    assert choice.weight == BLEND_WEIGHTS[int(np.argmax(scores))] and choice.inner_val_macro_f1 == 1.0


def _log_probabilities(rng, n, num_classes=3):
    return np.log(rng.dirichlet(np.ones(num_classes), n))


def test_fold_predictions_without_log_probabilities_are_the_models_own():
    fitted = FittedFold(test_predicted=np.array([2, 0, 1]))
    predictions, offsets, choice = fold_predictions(fitted, np.array([0, 1]), calibrate=True)
    assert offsets is None and choice is None
    assert set(predictions) == {"selected", "last"}
    assert predictions["selected"].tolist() == predictions["last"].tolist() == [2, 0, 1]


def test_fold_predictions_calibrated_on_inner_validation_by_hand():
    rng = np.random.default_rng(2)
    validation, test = _log_probabilities(rng, 300), _log_probabilities(rng, 50)
    validation_target = rng.integers(0, 3, 300)
    fitted = FittedFold(test.argmax(axis=1), validation, test)
    plain, offsets, choice = fold_predictions(fitted, validation_target, calibrate=False)
    assert offsets is None and choice is None and set(plain) == {"selected", "last"}
    calibrated, offsets, choice = fold_predictions(fitted, validation_target, calibrate=True)
    assert choice is None
    np.testing.assert_allclose(offsets, fit_bias_offsets(validation, validation_target))
    np.testing.assert_array_equal(calibrated["selected"], test.argmax(axis=1))
    np.testing.assert_array_equal(calibrated["calibrated"], (test + offsets).argmax(axis=1))


def test_fold_predictions_blended_with_a_neural_head_by_hand():
    rng = np.random.default_rng(4)
    validation_target = rng.integers(0, 3, 300)
    trees = {"inner_val": _log_probabilities(rng, 300), "test": _log_probabilities(rng, 60)}
    # A head that knows most inner-validation targets: the blend must lean on it.
    neural = {"inner_val": np.log(np.full((300, 3), 0.2)), "test": _log_probabilities(rng, 60)}
    knows = rng.random(300) < 0.8
    neural["inner_val"][np.flatnonzero(knows), validation_target[knows]] = np.log(0.6)
    fitted = FittedFold(trees["test"].argmax(axis=1), trees["inner_val"], trees["test"])
    predictions, offsets, choice = fold_predictions(fitted, validation_target, calibrate=True,
                                                    neural_log_probabilities=neural)
    scores = [_macro_f1(validation_target, (1 - w) * trees["inner_val"] + w * neural["inner_val"])
              for w in BLEND_WEIGHTS]
    expected_weight = BLEND_WEIGHTS[int(np.argmax(scores))]
    weight = choice.weight
    assert weight == expected_weight > 0
    # The recorded inner-validation score is the blend's at that weight, computed here with scikit-learn.
    assert choice.inner_val_macro_f1 == pytest.approx(max(scores), abs=1e-12)
    blended_test = (1 - weight) * trees["test"] + weight * neural["test"]
    np.testing.assert_array_equal(predictions["selected"], blended_test.argmax(axis=1))
    np.testing.assert_array_equal(predictions["last"], predictions["selected"])
    # The offsets are fitted on the blended inner-validation log-probabilities, then applied to the blended test.
    blended_validation = (1 - weight) * trees["inner_val"] + weight * neural["inner_val"]
    np.testing.assert_allclose(offsets, fit_bias_offsets(blended_validation, validation_target))
    np.testing.assert_array_equal(predictions["calibrated"], (blended_test + offsets).argmax(axis=1))
