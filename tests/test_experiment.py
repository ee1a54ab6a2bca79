"""nextpoi_lib.experiment, the composition root: names checked, run kinds routed, manifest fields written."""
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import f1_score

from nextpoi_lib import experiment
from nextpoi_lib.blend import BLEND_WEIGHTS
from nextpoi_lib.config import ConfigError, from_dict
from nextpoi_lib.experiment import RUN_KINDS, load_config, run_experiment, run_files, run_kind, seed_dependent
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.training import cross_validate
from nextpoi_lib.training import fitted as fitted_module
from nextpoi_lib.trees import GradientBoostedTrees
from synthetic import synthetic_config


def _macro_f1(target, log_probabilities):
    return f1_score(target, log_probabilities.argmax(axis=1), average="macro", labels=range(log_probabilities.shape[1]),
                    zero_division=0)


def test_blended_run_equals_trees_and_head_combined_independently(tmp_path):
    """The blend's test predictions are the argmax of (1 - w) trees + w head, with w the grid weight of best
    inner-validation macro-F1, recomputed here from a separately trained head and separately fitted trees."""
    config = synthetic_config(tmp_path, name="blend", model={"name": "blended_trees"}, trees={"max_iter": 20},
                              blend={"head": "gru"}, training={"epochs": 3, "seeds": [0, 1], "bias_calibration": True})
    prepared = prepare_data(config)
    windows, manifest = prepared.windows, prepared.fold_manifest
    # Make the task need both: the category cycle (learnable) with a quarter of the labels replaced by noise.
    rng = np.random.default_rng(1)
    noisy = rng.random(len(windows)) < 0.25
    windows.target = np.where(noisy, rng.integers(0, len(windows.classes), len(windows)), windows.target)
    result = RUN_KINDS["blended"].cross_validate(config, prepared, progress=lambda message: None)

    head_config = dataclasses.replace(config, model=dataclasses.replace(config.model, name="gru"))
    head = {(r.seed, r.fold): r for r in cross_validate(head_config, windows, manifest).fold_results}
    assert result.extra["blend"]["head"] == "gru"
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


def test_blended_run_folder_says_blended_and_seed_dependent(tmp_path):
    config = synthetic_config(tmp_path, name="blend", model={"name": "blended_trees"}, trees={"max_iter": 10},
                              blend={"head": "gru"}, training={"epochs": 2, "seeds": [0, 1]})
    manifest = json.loads((run_experiment(config) / "manifest.json").read_text())
    assert manifest["kind"] == "blended" and manifest["seed_dependent"] is True
    assert manifest["model"] == "blended_trees"
    assert manifest["blend"]["head"] == "gru" and len(manifest["blend"]["weights"]) == 2 * 3
    trees_alone = synthetic_config(tmp_path, name="trees", model={"name": "gradient_boosting"}, trees={"max_iter": 10})
    manifest = json.loads((run_experiment(trees_alone) / "manifest.json").read_text())
    assert manifest["kind"] == "baseline" and manifest["seed_dependent"] is False and "blend" not in manifest
    assert manifest["model"] == "gradient_boosting"


def test_trees_with_a_forest_are_fitted_per_seed_and_say_so(tmp_path, monkeypatch):
    fits, boosted_fits = [], []
    original = fitted_module.fit_fold
    monkeypatch.setattr(fitted_module, "fit_fold", lambda make_model, windows, fold, seed, **kwargs: fits.append(
        (seed, fold.fold)) or original(make_model, windows, fold, seed, **kwargs))
    original_boosted_fit = HistGradientBoostingClassifier.fit
    monkeypatch.setattr(HistGradientBoostingClassifier, "fit", lambda self, features, target, **kwargs: (
        boosted_fits.append(len(target)) or original_boosted_fit(self, features, target, **kwargs)))
    config = synthetic_config(tmp_path, name="forest", model={"name": "gradient_boosting"},
                              trees={"max_iter": 5, "forest_trees": 5}, training={"seeds": [0, 1]})
    manifest = json.loads((run_experiment(config) / "manifest.json").read_text())
    assert sorted(fits) == [(seed, fold) for seed in (0, 1) for fold in range(3)]
    assert len(boosted_fits) == 3  # the forest per (seed, fold); the boosted trees once per fold
    assert manifest["kind"] == "baseline" and manifest["seed_dependent"] is True

    fits.clear()
    boosted_only = synthetic_config(tmp_path, name="boosted", model={"name": "gradient_boosting"},
                                    trees={"max_iter": 5}, training={"seeds": [0, 1]})
    run_experiment(boosted_only)
    assert sorted(fits) == [(0, fold) for fold in range(3)]  # no random numbers: one fit per fold for both seeds


RUN_FILES = {"config.yaml", "manifest.json", "fold_manifest.json", "curves.csv", "fold_metrics.csv", "per_class.csv",
             "confusion.csv", "summary.json"}


def test_baseline_runs_share_the_format(tmp_path):
    # The feature set names embeddings, but a reference baseline never reads them: none are computed.
    config = synthetic_config(tmp_path, name="markov", model={"name": "markov", "markov_order": 1},
                              windows={"features": ["embedding", "category"]})
    path = run_experiment(config)
    assert RUN_FILES <= {p.name for p in path.iterdir()}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "baseline" and manifest["engine"] == {"mode": "baseline"}
    assert manifest["model"] == "markov" and manifest["seed_dependent"] is False
    assert manifest["selected_epochs"] == [{"seed": 0, "fold": fold, "epoch": 0} for fold in range(3)]
    assert json.loads((path / "summary.json").read_text())["selected"]["accuracy"]["mean"] > 0.95
    assert not (tmp_path / "outputs" / ".cache").exists()


def test_manifest_describes_the_run(tmp_path):
    config = synthetic_config(tmp_path, name="described", model={"name": "majority"}, training={"seeds": [3, 4]})
    path = run_experiment(config)
    manifest = json.loads((path / "manifest.json").read_text())
    prepared = prepare_data(config)
    assert path == tmp_path / "outputs" / "toy" / "described"
    assert (manifest["run_name"], manifest["dataset"], manifest["task"]) == ("described", "toy", "next_category")
    assert manifest["seeds"] == [3, 4] and manifest["n_folds"] == 3 and manifest["status"] == "complete"
    assert manifest["n_windows"] == len(prepared.windows) and manifest["classes"] == prepared.windows.classes
    assert manifest["data_hash"] == prepared.data_hash and manifest["fold_manifest_hash"] == prepared.fold_manifest.hash
    assert manifest["features"] == ["category"] and manifest["profile"] is None and manifest["device"] == "cpu"
    assert manifest["started_at"] <= manifest["finished_at"] and manifest["duration_seconds"] >= 0
    for key in ("package_version", "git_commit", "torch_version", "sklearn_version", "python_version"):
        assert isinstance(manifest[key], str) and manifest[key]
    # The majority class of each fold's training windows, for every seed (counted here independently).
    metrics = pd.read_csv(path / "fold_metrics.csv")
    for fold in prepared.fold_manifest.folds:
        majority = np.bincount(prepared.windows.target[fold.train_index]).argmax()
        accuracy = (prepared.windows.target[fold.test_index] == majority).mean()
        rows = metrics[(metrics.fold == fold.fold) & (metrics.selection == "selected")]
        assert sorted(rows.seed) == [3, 4] and np.allclose(rows.accuracy, accuracy)


def test_next_parquet_loads_and_trains(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    features = rng.normal(size=(n, 9, 64)).astype(np.float32)
    labels = np.array(["Food", "Shopping", "Travel"])[rng.integers(0, 3, n)]
    features[:, 0, 0] = (labels == "Food") * 5.0  # a learnable signal
    frame = pd.DataFrame(features.reshape(n, 576), columns=[str(i) for i in range(576)]).astype(str)
    frame["next_category"] = labels
    frame["userid"] = np.arange(n) // 3
    path = tmp_path / "next.parquet"
    frame.to_parquet(path)
    config = synthetic_config(tmp_path, dataset={"source": "next_parquet", "path": str(path), "name": "alabama"},
                              windows={"length": 9, "features": ["embedding"]}, training={"epochs": 2})
    run = run_experiment(config)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["n_windows"] == n and manifest["classes"][0] in {"Food", "Shopping", "Travel"}
    assert manifest["kind"] == "neural" and run.parent.name == "alabama"


@pytest.mark.parametrize("sections, kind, dependent", [
    ({"model": {"name": "gru"}}, "neural", True),
    ({"model": {"name": "transformer", "num_heads": 2}}, "neural", True),
    ({"model": {"name": "markov"}}, "baseline", False),
    ({"model": {"name": "majority"}}, "baseline", False),
    ({"model": {"name": "gradient_boosting"}}, "baseline", False),
    ({"model": {"name": "gradient_boosting"}, "trees": {"forest_trees": 5}}, "baseline", True),
    ({"model": {"name": "blended_trees"}, "blend": {"head": "gru"}}, "blended", True),
])
def test_run_kinds_and_seed_dependence(sections, kind, dependent):
    config = load_config(sections)
    assert run_kind(config) == kind and seed_dependent(config) is dependent
    assert set(RUN_KINDS) == {"neural", "baseline", "blended"}


@pytest.mark.parametrize("features, uses", [(["embedding", "category"], True), (["category"], False)])
def test_which_run_kinds_read_the_poi_embeddings(features, uses):
    windows = {"windows": {"features": features}}
    assert RUN_KINDS["neural"].uses_embeddings(load_config(windows)) is uses
    assert RUN_KINDS["blended"].uses_embeddings(
        load_config(windows, {"model": {"name": "blended_trees"}, "blend": {"head": "gru"}})) is uses
    assert RUN_KINDS["baseline"].uses_embeddings(load_config(windows, {"model": {"name": "markov"}})) is False


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"name": "cnn"}},
     r"model\.name='cnn' is not a registered model\. Valid choices: .*gru.*transformer.*markov.*gradient_boosting, "
     r"blended_trees"),
    ({"model": {"num_heads": 3, "model_dim": 64}}, r"num_heads=3 must divide model\.model_dim=64"),
    ({"model": {"name": "hybrid", "num_heads": 3, "hidden_dim": 64}}, r"num_heads=3 must divide model\.hidden_dim=64"),
    # The blended head's attention width is checked too.
    ({"model": {"name": "blended_trees", "num_heads": 3, "model_dim": 64}, "blend": {"head": "transformer"}},
     r"num_heads=3 must divide model\.model_dim=64"),
    ({"model": {"name": "blended_trees"}}, r"model\.name='blended_trees' blends the trees with a neural head: set "
                                           r"blend\.head to one of .*gru.*transformer"),
    ({"model": {"name": "blended_trees"}, "blend": {"head": "xgboost"}},
     r"blend\.head='xgboost' is not a neural head\. Valid choices: .*gru.*transformer"),
    ({"model": {"name": "gru"}, "blend": {"head": "gru"}}, r"but model\.name='gru': set model\.name: blended_trees"),
    ({"model": {"name": "gradient_boosting"}, "blend": {"head": "gru"}},
     r"but model\.name='gradient_boosting': set model\.name: blended_trees"),
    ({"model": {"name": "gru"}, "trees": {"refit_with_inner_val": True}},
     r"trees\.refit_with_inner_val=true refits the gradient-boosted trees, but model\.name='gru'"),
])
def test_names_are_checked_by_the_composition_root(overrides, message):
    from_dict(overrides)  # the typed config alone consults no registry ...
    with pytest.raises(ConfigError, match=message):  # ... the composition root does
        load_config(overrides)


def test_refit_with_inner_val_is_accepted_for_both_tree_runs():
    for sections in ({"model": {"name": "gradient_boosting"}},
                     {"model": {"name": "blended_trees"}, "blend": {"head": "gru"}}):
        assert load_config(sections, {"trees": {"refit_with_inner_val": True}}).trees.refit_with_inner_val


def test_run_files_layers_parameter_files(tmp_path):
    checkins = tmp_path / "checkins.csv"
    synthetic_config(tmp_path)  # writes the check-ins
    first = tmp_path / "first.yaml"
    first.write_text(f"dataset: {{source: checkins, path: {checkins}, name: toy}}\nwindows: {{length: 4}}\n"
                     f"folds: {{n_splits: 3}}\nmodel: {{name: gru}}\ntraining: {{progress: false}}\n")
    second = tmp_path / "layered.yaml"
    second.write_text("model: {name: last_category}\n")
    path = run_files(first, second, overrides={"output": {"root": str(tmp_path / "o")}})
    assert path == tmp_path / "o" / "toy" / "layered"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["model"] == "last_category" and manifest["kind"] == "baseline"


def test_every_model_name_is_in_the_error_list():
    names = experiment.model_names()
    assert {"gru", "lstm", "transformer", "hybrid", "majority", "last_category", "most_frequent_in_window", "markov",
            "gradient_boosting", "blended_trees"} <= set(names)
