"""Blending and calibration of fitted models' fold predictions, as plain functions.

The trees blended with a neural head (run kind "blended"): per (seed, fold) the head's log-probabilities are
averaged with the trees' with a weight w in BLEND_WEIGHTS chosen on the inner validation users; post-hoc
per-class offsets (`training.bias_calibration`) are then fitted on the same users. The test fold is only ever
predicted with what those users chose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .metrics import fit_bias_offsets, macro_f1

# Blend weights of the neural head's log-probabilities tried on the inner validation users.
BLEND_WEIGHTS = np.linspace(0.0, 1.0, 11)


@dataclass
class FittedFold:
    """What a fitted model says about one fold: test predictions, and log-probabilities where it has them."""
    test_predicted: np.ndarray
    inner_val_log_probability: np.ndarray | None = None
    test_log_probability: np.ndarray | None = None
    # The fitted boosted trees (GradientBoostedTrees.model), kept to serve the fold's other seeds; not the
    # forest, which differs per seed and is large. With trees.refit_with_inner_val, also those refitted on
    # training + inner validation windows.
    boosted_trees: Any = None
    refit_boosted_trees: Any = None


def blended(trees: np.ndarray, neural: np.ndarray, weight: float) -> np.ndarray:
    """(1 - w) * trees + w * neural log-probabilities."""
    return (1.0 - weight) * trees + weight * neural


def blend_macro_f1(trees: np.ndarray, neural: np.ndarray, target: np.ndarray, weight: float) -> float:
    """Macro-F1 of the blend at `weight` on `target` (all of the trees' classes count)."""
    return macro_f1(target, np.argmax(blended(trees, neural, weight), axis=1), trees.shape[1])


@dataclass(frozen=True)
class BlendChoice:
    """The blend weight chosen on the inner validation users, and the blend's macro-F1 there at that weight
    (what a choice between blends may look at, never the test fold)."""
    weight: float
    inner_val_macro_f1: float


def choose_blend_weight(trees: np.ndarray, neural: np.ndarray, target: np.ndarray) -> BlendChoice:
    """The weight w in BLEND_WEIGHTS for which (1 - w) * trees + w * neural log-probabilities give the highest
    macro-F1 on (inner validation) targets; ties go to the smaller weight (the trees alone at w = 0)."""
    scores = [blend_macro_f1(trees, neural, target, weight) for weight in BLEND_WEIGHTS]
    best = int(np.argmax(scores))
    return BlendChoice(float(BLEND_WEIGHTS[best]), float(scores[best]))


def fold_predictions(fitted: FittedFold, inner_val_target: np.ndarray, calibrate: bool,
                     neural_log_probabilities: dict[str, np.ndarray] | None = None):
    """Selected (and calibrated) test predictions of a fitted fold, blended with a neural head when given.
    Returns (predictions, bias offsets or None, the BlendChoice or None)."""
    predictions = {"selected": fitted.test_predicted, "last": fitted.test_predicted}
    validation, test = fitted.inner_val_log_probability, fitted.test_log_probability
    if validation is None:
        return predictions, None, None
    choice = None
    if neural_log_probabilities is not None:
        choice = choose_blend_weight(validation, neural_log_probabilities["inner_val"], inner_val_target)
        validation = blended(validation, neural_log_probabilities["inner_val"], choice.weight)
        test = blended(test, neural_log_probabilities["test"], choice.weight)
        prediction = np.argmax(test, axis=1)
        predictions = {"selected": prediction, "last": prediction}
    offsets = None
    if calibrate:
        # Same post-hoc offsets as for neural heads: fitted on the inner validation users only.
        offsets = fit_bias_offsets(validation, inner_val_target)
        predictions["calibrated"] = np.argmax(test + offsets, axis=1)
    return predictions, offsets, choice
