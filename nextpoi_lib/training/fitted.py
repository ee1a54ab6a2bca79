"""Cross-validation of fitted models (reference baselines, trees): fit on each fold's training windows, predict
its test windows — optionally blended with a neural head cross-validated on the same folds and seeds.

Same result shape as the neural engine (`CrossValidationResult`). A model is any object with `fit(windows,
index)` and `predict(windows, index)`; one with `predict_log_probability` can be calibrated and blended, and
one whose `draws_random_numbers` is false is fitted once per fold and reused for every seed, so seed-paired
comparisons with neural runs still find their pairs.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..blend import FittedFold, fold_predictions
from ..config import ExperimentConfig
from ..folds import Fold, FoldManifest
from ..progress import Progress, progress_step
from ..results import CrossValidationResult, FoldResult
from ..trees import LOG_PROBABILITY_FLOOR, GradientBoostedTrees
from ..windows import WindowSet

# seed -> an unfitted model
ModelFactory = Callable[[int], object]


def _fit(make_model: ModelFactory, windows: WindowSet, index: np.ndarray, seed: int, boosted):
    model = make_model(seed)
    if isinstance(model, GradientBoostedTrees):
        return model.fit(windows, index, boosted=boosted)
    return model.fit(windows, index)


def fit_fold(make_model: ModelFactory, windows: WindowSet, fold: Fold, seed: int, *, refit_with_inner_val: bool,
             want_log_probabilities: bool, earlier: FittedFold | None = None) -> FittedFold:
    """Fit on the fold's training windows; predict its test windows (and log-probabilities when wanted: for a
    calibration or a blend). `earlier`: this fold fitted for another seed; trees averaged with a forest reuse
    its boosted trees. With `refit_with_inner_val` the test windows are predicted by a second fit on training +
    inner validation windows, while the inner-validation log-probabilities (what the blend weight and the
    calibration offsets are chosen on) still come from the fit that never saw those users."""
    model = _fit(make_model, windows, fold.train_index, seed, earlier and earlier.boosted_trees)
    test_model = model
    if refit_with_inner_val:
        test_model = _fit(make_model, windows, np.union1d(fold.train_index, fold.inner_val_index), seed,
                          earlier and earlier.refit_boosted_trees)
    kept = {}
    if isinstance(model, GradientBoostedTrees):
        kept = {"boosted_trees": model.model,
                "refit_boosted_trees": test_model.model if test_model is not model else None}
    if not (want_log_probabilities and hasattr(model, "predict_log_probability")):
        return FittedFold(np.asarray(test_model.predict(windows, fold.test_index), dtype=np.int64), **kept)
    inner_val, test = (np.maximum(fitted.predict_log_probability(windows, index), LOG_PROBABILITY_FLOOR)
                       for fitted, index in ((model, fold.inner_val_index), (test_model, fold.test_index)))
    # The trees' predict is the argmax of their probabilities: take it from the log-probabilities instead of
    # building the test features and walking the trees a second time.
    return FittedFold(np.argmax(test, axis=1), inner_val, test, **kept)


def cross_validate_fitted(config: ExperimentConfig, windows: WindowSet, fold_manifest: FoldManifest,
                          make_model: ModelFactory, progress: Progress, *, refit_with_inner_val: bool = False,
                          neural_run: CrossValidationResult | None = None, blend_head: str | None = None
                          ) -> CrossValidationResult:
    """Every (seed, fold) of a fitted model; with `neural_run` (the head `blend_head` cross-validated on the
    same folds and seeds) each fold's log-probabilities are blended with the head's (weight chosen on the inner
    validation users, `blend.fold_predictions`), and the fold takes the head's curves and selected epoch."""
    neural_results = {} if neural_run is None else {(r.seed, r.fold): r for r in neural_run.fold_results}
    probe = make_model(config.training.seeds[0])
    draws_random_numbers = bool(getattr(probe, "draws_random_numbers", False))
    # Live progress bars: one step per (seed, fold); stage "trees" for the boosted trees, "fit" for the baselines.
    stage = "trees" if isinstance(probe, GradientBoostedTrees) else "fit"
    fits = len(config.training.seeds) * len(fold_manifest.folds)
    progress_step(progress, stage, 0, fits, f"{fits} (seed, fold) fits")
    want_log_probabilities = config.training.bias_calibration or neural_run is not None
    results, fitted, blend_weights = [], {}, []
    for seed in config.training.seeds:
        for fold in fold_manifest.folds:
            started = time.perf_counter()
            key = (seed if draws_random_numbers else None, fold.fold)
            if key not in fitted:
                earlier = next((fit for (_, fold_number), fit in fitted.items() if fold_number == fold.fold), None)
                fitted[key] = fit_fold(make_model, windows, fold, seed, refit_with_inner_val=refit_with_inner_val,
                                       want_log_probabilities=want_log_probabilities, earlier=earlier)
            neural = neural_results.get((seed, fold.fold))
            predictions, offsets, blend_choice = fold_predictions(
                fitted[key], windows.target[fold.inner_val_index], config.training.bias_calibration,
                None if neural is None else neural.log_probabilities)
            target = windows.target[fold.test_index]
            seconds = time.perf_counter() - started + (0.0 if neural is None else neural.seconds)
            results.append(FoldResult(seed=seed, fold=fold.fold, curves=[] if neural is None else neural.curves,
                                      selected_epoch=0 if neural is None else neural.selected_epoch,
                                      last_epoch=0 if neural is None else neural.last_epoch,
                                      test_target=target, predictions=dict(predictions), bias_offsets=offsets,
                                      seconds=seconds))
            blend = ""
            if blend_choice is not None:
                # The blend's inner-validation macro-F1 at its weight (trees fitted on the training users, as
                # when the weight was chosen): what a choice between blends may look at, never the test fold.
                blend_weights.append({"seed": seed, "fold": fold.fold, "neural_weight": round(blend_choice.weight, 3),
                                      "inner_val_macro_f1": round(blend_choice.inner_val_macro_f1, 6)})
                blend = (f" (neural weight {blend_choice.weight:.1f}, inner-validation macro-F1 "
                         f"{blend_choice.inner_val_macro_f1:.4f})")
            progress(f"[seed {seed} fold {fold.fold + 1}/{fold_manifest.n_splits}] {config.model.name}: test accuracy "
                     f"{(predictions['selected'] == target).mean():.4f}{blend}")
            progress_step(progress, stage, len(results), fits,
                          f"seed {seed} fold {fold.fold + 1}/{fold_manifest.n_splits}")
    if neural_run is None:
        return CrossValidationResult(fold_results=results, device="cpu", device_name="cpu")
    extra = {**neural_run.extra, "blend": {"head": blend_head, "weights": blend_weights}}
    return CrossValidationResult(fold_results=results, device=neural_run.device, device_name=neural_run.device_name,
                                 extra=extra)
