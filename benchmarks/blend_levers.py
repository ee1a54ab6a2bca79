"""Ways to raise the recommended blend, measured on inner-validation users only (no test fold is read).

Usage (from the repository root, `parameters/recommended.yaml` as the base):
    python benchmarks/blend_levers.py keys FOLDS [KEY,KEY,...]   # extra next-category statistics for the trees
    python benchmarks/blend_levers.py ensemble FOLDS             # heads and forests averaged over the 3 seeds
    python benchmarks/blend_levers.py stacking FOLDS             # the head's out-of-fold log-probabilities
                                                                 # as more inputs of the trees
FOLDS: comma-separated outer folds, 0-based (e.g. 0,1). Each prints the inner-validation macro-F1 per fold and
variant; the numbers of docs/results.md ("What else was tried for the blend") came from these commands.

* keys: the boosted trees of recommended.yaml (no forest, for speed) with one more next-category statistic, keyed
  like `trees.poi_statistics` (out-of-fold for the training rows) by: the last venue type x 4-hour bucket of the
  last visit (sub_hour), the same x weekend (sub_hour_weekend), the last POI x 4-hour bucket (poi_hour), the last
  two venue types (sub_pair), the last two POIs (poi_pair), the second-last POI (prev_poi).
* ensemble: recommended.yaml's head and trees (with forest) for each seed, fitted on the fold's training users; the
  blend of today (one head, one forest per seed), blended in probabilities instead of log-probabilities, the trees
  blended with the head averaged over the 3 seeds, and both averaged over the 3 seeds.
* stacking: the fold's training users cut into 3 user-grouped parts; the head (seed 0) fitted on two parts
  predicts the third, and a head fitted on all training users predicts the inner-validation users (each head's
  epoch selected on 10% of the users it is fitted on); the trees are fitted with those 10 log-probabilities as
  more columns.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
from scipy.special import logsumexp

from nextpoi_lib.blend import BLEND_WEIGHTS, choose_blend_weight
from nextpoi_lib.config import updated
from nextpoi_lib.experiment import load_config
from nextpoi_lib.features.tabular import last_observed
from nextpoi_lib.features.target_statistics import TransitionStatisticsFeature, last_visit_keys, owner_parts
from nextpoi_lib.folds import Fold
from nextpoi_lib.metrics import macro_f1
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.progress import Progress
from nextpoi_lib.training import cross_validate
from nextpoi_lib.training.fitted import fit_fold
from nextpoi_lib.trees import LOG_PROBABILITY_FLOOR, GradientBoostedTrees

BASE = "parameters/recommended.yaml"


def compact(*columns: np.ndarray) -> np.ndarray:
    """One key id per distinct combination of the columns."""
    _, inverse = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
    return inverse.ravel()


def candidate_keys(windows) -> dict[str, np.ndarray]:
    mask = windows.mask
    hour_bucket = (np.floor(last_observed(windows.hour, mask)) // 4).astype(np.int64)  # 6 buckets of 4 hours
    weekend = (last_observed(windows.weekday, mask) >= 5).astype(np.int64)
    subcategory, poi = last_visit_keys(windows, "subcategory"), last_visit_keys(windows, "poi")
    last = np.where(mask, np.arange(mask.shape[1])[None, :], -1).max(axis=1)
    rows, previous = np.arange(len(windows)), np.maximum(last - 1, 0)
    previous_subcategory = np.where(last >= 1, windows.subcategory_index[rows, previous], -2)
    previous_poi = np.where(last >= 1, windows.poi_index[rows, previous], -2)
    return {"sub_hour": compact(subcategory, hour_bucket),
            "sub_hour_weekend": compact(subcategory, hour_bucket, weekend),
            "poi_hour": compact(poi, hour_bucket),
            "sub_pair": compact(previous_subcategory, subcategory),
            "poi_pair": compact(previous_poi, poi),
            "prev_poi": compact(previous_poi)}


class KeyStatistics(TransitionStatisticsFeature):
    """A tree feature: next-category statistics by any per-window key (out-of-fold for the training rows)."""

    def __init__(self, keys: np.ndarray):
        super().__init__("precomputed")
        self._keys = keys

    def keys(self, windows) -> np.ndarray:
        return self._keys


class GivenColumns:
    """A tree feature whose columns were computed beforehand for a known set of windows."""

    def __init__(self, index: np.ndarray, values: np.ndarray):
        self.values, self.position = values, {int(row): i for i, row in enumerate(index)}

    def columns(self, windows, index, train_index, fitting):
        return self.values[[self.position[int(row)] for row in index]]


def score(target: np.ndarray, log_probability: np.ndarray) -> float:
    return 100 * macro_f1(target, log_probability.argmax(axis=1), log_probability.shape[1])


def keys(config, prepared, folds, names):
    windows = prepared.windows
    all_keys = candidate_keys(windows)
    unknown = sorted(set(names or ()) - set(all_keys))
    if unknown:
        sys.exit(f"Unknown keys {unknown}; known: {', '.join(all_keys)}.")
    for fold_number in folds:
        fold = prepared.fold_manifest.folds[fold_number]
        target = windows.target[fold.inner_val_index]
        for variant in [[]] + [[name] for name in names or all_keys]:
            started = time.time()
            model = GradientBoostedTrees.from_config(config.trees, 0)
            model.forest_trees = 0
            model.features = model.features + [KeyStatistics(all_keys[name]) for name in variant]
            predicted = model.fit(windows, fold.train_index).predict_log_probability(windows, fold.inner_val_index)
            print(f"fold {fold_number} {'+'.join(variant) or 'base'}: "
                  f"inner-val macro-F1 {score(target, predicted):.2f} "
                  f"accuracy {100 * (predicted.argmax(axis=1) == target).mean():.2f} ({time.time() - started:.0f}s)",
                  flush=True)


def normalised(log_probability: np.ndarray) -> np.ndarray:
    return log_probability - logsumexp(log_probability, axis=1, keepdims=True)


def best_probability_blend(trees: np.ndarray, head: np.ndarray, target: np.ndarray) -> float:
    trees, head = np.exp(normalised(trees)), np.exp(normalised(head))
    return max(macro_f1(target, np.argmax((1 - w) * trees + w * head, axis=1), trees.shape[1]) for w in BLEND_WEIGHTS)


def ensemble(config, prepared, folds):
    windows = prepared.windows
    manifest = dataclasses.replace(prepared.fold_manifest, folds=[prepared.fold_manifest.folds[f] for f in folds])
    run = cross_validate(updated(config, model={"name": config.blend.head}), windows, manifest, Progress(False))
    heads = {(r.seed, r.fold): r.log_probabilities["inner_val"] for r in run.fold_results}
    seeds = config.training.seeds
    for fold in manifest.folds:
        trees, earlier = {}, None
        for seed in seeds:
            earlier = fit_fold(lambda s: GradientBoostedTrees.from_config(config.trees, s), windows, fold, seed,
                               refit_with_inner_val=False, want_log_probabilities=True, earlier=earlier)
            trees[seed] = earlier.inner_val_log_probability
        target = windows.target[fold.inner_val_index]
        head_mean = np.mean([normalised(heads[(s, fold.fold)]) for s in seeds], axis=0)
        trees_mean = np.mean([normalised(trees[s]) for s in seeds], axis=0)
        rows = {
            "head alone": [score(target, heads[(s, fold.fold)]) for s in seeds],
            "trees alone": [score(target, trees[s]) for s in seeds],
            "blend (today)": [100 * choose_blend_weight(trees[s], heads[(s, fold.fold)], target).inner_val_macro_f1
                              for s in seeds],
            "blend in probabilities": [100 * best_probability_blend(trees[s], heads[(s, fold.fold)], target)
                                       for s in seeds],
            "trees + 3-seed heads": [100 * choose_blend_weight(trees[s], head_mean, target).inner_val_macro_f1
                                     for s in seeds],
            "3-seed heads alone": [score(target, head_mean)],
            "3-seed trees + 3-seed heads":
                [100 * choose_blend_weight(trees_mean, head_mean, target).inner_val_macro_f1],
        }
        for name, values in rows.items():
            print(f"fold {fold.fold} {name:28s} inner-val macro-F1 {np.mean(values):.2f} (mean of {len(values)})",
                  flush=True)


def stacking(config, prepared, folds, parts: int = 3):
    windows, manifest = prepared.windows, prepared.fold_manifest
    head_config = updated(config, model={"name": config.blend.head}, training={"seeds": [0]})
    for fold_number in folds:
        started, outer = time.time(), manifest.folds[fold_number]
        train = outer.train_index
        part = owner_parts(windows, train, parts, seed=fold_number)
        out_of_fold, inner_val_columns = np.zeros((len(train), len(windows.classes))), None
        for k in range(parts + 1):  # parts 0..parts-1 predict a part of the training users; the last, inner val
            fit_rows = train[part != k] if k < parts else train
            predict_rows = train[part == k] if k < parts else outer.inner_val_index
            selection = owner_parts(windows, fit_rows, 10, seed=100 + k) == 0
            job = Fold(fold=fold_number, train_index=fit_rows[~selection], inner_val_index=fit_rows[selection],
                       test_index=predict_rows, test_users=[], inner_val_users=[])
            result = cross_validate(head_config, windows, dataclasses.replace(manifest, folds=[job]),
                                    Progress(False)).fold_results[0]
            predicted = np.maximum(result.log_probabilities["test"], LOG_PROBABILITY_FLOOR)
            if k < parts:
                out_of_fold[part == k] = predicted
            else:
                inner_val_columns = predicted
        target = windows.target[outer.inner_val_index]
        trees = GradientBoostedTrees.from_config(config.trees, 0).fit(windows, train)
        trees_log_probability = np.maximum(trees.predict_log_probability(windows, outer.inner_val_index),
                                           LOG_PROBABILITY_FLOOR)
        stacked = GradientBoostedTrees.from_config(config.trees, 0)
        stacked.features = stacked.features + [GivenColumns(np.concatenate([train, outer.inner_val_index]),
                                                            np.vstack([out_of_fold, inner_val_columns]))]
        stacked_log_probability = stacked.fit(windows, train).predict_log_probability(windows, outer.inner_val_index)
        blend = choose_blend_weight(trees_log_probability, inner_val_columns, target).inner_val_macro_f1
        stacked_blend = choose_blend_weight(stacked_log_probability, inner_val_columns, target).inner_val_macro_f1
        print(f"fold {fold_number}: trees {score(target, trees_log_probability):.2f}, head (fit on 90% of the "
              f"training users) {score(target, inner_val_columns):.2f}, blend {100 * blend:.2f}, stacked trees "
              f"{score(target, stacked_log_probability):.2f}, stacked + blend {100 * stacked_blend:.2f} "
              f"({time.time() - started:.0f}s)", flush=True)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("keys", "ensemble", "stacking"):
        sys.exit(__doc__)
    folds = [int(f) for f in argv[1].split(",")]
    config = load_config(BASE)
    prepared = prepare_data(config, with_embeddings=argv[0] != "keys", reads_visit_categories=True)
    if argv[0] == "keys":
        keys(config, prepared, folds, argv[2].split(",") if len(argv) > 2 else None)
    elif argv[0] == "ensemble":
        ensemble(config, prepared, folds)
    else:
        stacking(config, prepared, folds)


if __name__ == "__main__":  # the head's fold workers are spawned processes: they import this module
    main(sys.argv[1:])
