import warnings

import pytest
import yaml

from nextpoi_lib.config import ConfigError, ExperimentConfig, load_config


def test_parameter_files_load_with_the_seed_numbers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        baseline = load_config("parameters/baseline.yaml")
        a = load_config("parameters/A.yaml")
        c = load_config("parameters/C.yaml")
    assert (baseline.model.num_layers, baseline.model.num_heads, baseline.model.dropout) == (4, 8, 0.1)
    assert baseline.scheduler.max_lr == 1e-2 and baseline.optimizer.weight_decay == 1e-2
    assert baseline.training.batch_size == 1024 and baseline.loss.class_weights == "balanced"
    # A extends the baseline and overrides what the seed's grid says.
    assert a.name == "A" and (a.model.num_layers, a.model.num_heads, a.model.dropout) == (2, 4, 0.2)
    assert a.loss.label_smoothing == 0.05 and a.scheduler.pct_start == 0.1 and a.training.batch_size == 512
    assert a.training.epochs == 100  # inherited
    assert c.model.name == "gru" and c.training.weighted_sampler and c.loss.class_weights == "none"


def test_layers_merge_left_to_right(tmp_path):
    first = tmp_path / "first.yaml"
    first.write_text("model: {name: gru, hidden_dim: 32}\ntraining: {epochs: 7}\n")
    second = tmp_path / "second.yaml"
    second.write_text("model: {hidden_dim: 64}\n")
    config = load_config(first, second)
    assert config.model.name == "gru" and config.model.hidden_dim == 64 and config.training.epochs == 7
    assert config.name == "second"


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("training: {epocs: 3}\n")
    with pytest.raises(ConfigError, match=r"training\.epocs.*Did you mean 'epochs'"):
        load_config(path)


def test_number_written_as_text_is_explained():
    with pytest.raises(ConfigError, match=r"optimizer\.learning_rate='1e-3'.*1\.0e-3"):
        load_config({"optimizer": {"learning_rate": "1e-3"}, "scheduler": {"name": "cosine"}})


def test_invalid_choice_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"loss\.name='focall'.*'cross_entropy', 'focal', 'logit_adjusted'"):
        load_config({"loss": {"name": "focall"}})
    with pytest.raises(ConfigError, match=r"model\.name='cnn'.*gru.*transformer"):
        load_config({"model": {"name": "cnn"}})


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"num_heads": 3, "model_dim": 64}}, r"num_heads=3 must divide model\.model_dim=64"),
    ({"windows": {"length": 0}}, r"windows\.length=0 must be >= 1"),
    ({"training": {"epochs": 0}}, r"training\.epochs=0"),
    ({"training": {"seeds": []}}, r"training\.seeds"),
    ({"folds": {"inner_val_fraction": 0.7}}, r"inner_val_fraction"),
    ({"dataset": {"source": "checkins"}}, r"dataset\.path is required"),
    ({"training": {"batch_size": "512"}}, r"training\.batch_size='512' must be an integer"),
    ({"dataset": {"source": "checkins", "path": "x.csv"},
      "model": {"name": "gradient_boosting", "gbt_subcategory_statistics": True}},
     r"gbt_subcategory_statistics=true.*dataset\.subcategory_column"),
    ({"dataset": {"source": "next_parquet", "path": "next.parquet"},
      "model": {"name": "gradient_boosting", "gbt_personal_transitions": True}},
     r"model\.gbt_personal_transitions=true needs the user's check-in sequence.*dataset\.source: checkins"),
    ({"dataset": {"source": "next_parquet", "path": "next.parquet"},
      "model": {"name": "gradient_boosting", "gbt_history_features": True}},
     r"model\.gbt_history_features=true needs the user's check-in sequence"),
    ({"model": {"gbt_class_weight": "inverse"}},
     r"model\.gbt_class_weight='inverse'.*'none', 'balanced', 'sqrt_balanced'"),
    ({"model": {"gbt_l2_regularization": -1.0}}, r"model\.gbt_l2_regularization=-1\.0 must be >= 0"),
    ({"model": {"gbt_forest_trees": -5}}, r"model\.gbt_forest_trees=-5 must be >= 0 \(0: boosted trees alone"),
    ({"model": {"name": "gradient_boosting", "gbt_blend_head": "xgboost"}},
     r"model\.gbt_blend_head='xgboost' is not a neural head\. Valid choices: .*gru.*transformer.* or null"),
    ({"model": {"name": "gru", "gbt_blend_head": "gru"}}, r"but model\.name='gru': set model\.name: gradient_boosting"),
    ({"model": {"name": "gru", "gbt_refit_with_inner_val": True}},
     r"model\.gbt_refit_with_inner_val=true refits the gradient-boosted trees, but model\.name='gru'"),
])
def test_impossible_values_fail(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


@pytest.mark.parametrize("overrides", [
    {"training": {"weighted_sampler": True}, "loss": {"class_weights": "balanced"}},
    {"training": {"weighted_sampler": True}, "loss": {"name": "focal", "focal_alpha": "balanced"}},
    {"loss": {"name": "logit_adjusted", "class_weights": "balanced"}},
])
def test_stacked_reweighting_is_refused_unless_allowed(overrides):
    with pytest.raises(ConfigError, match="stacks two re-weightings"):
        load_config(overrides)
    allowed = {**overrides, "loss": {**overrides.get("loss", {}), "allow_stacked_reweighting": True}}
    load_config(allowed)


def test_onecycle_warns_when_learning_rate_is_set():
    with pytest.warns(UserWarning, match="has no effect under scheduler.name='onecycle'.*0.0004"):
        load_config({"optimizer": {"learning_rate": 1e-3}, "scheduler": {"max_lr": 1e-2, "div_factor": 25.0}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config({"optimizer": {"learning_rate": 1e-3}, "scheduler": {"name": "cosine"}})


def test_defaults_are_the_users_baseline():
    config = ExperimentConfig()
    assert config.model.name == "transformer" and config.windows.length == 9
    assert config.folds.strategy == "user_grouped"


@pytest.mark.parametrize("training, expected", [
    ({}, ("auto", "auto")),
    ({"stack_folds": True, "fold_workers": 1}, (True, 1)),
    ({"stack_folds": False, "fold_workers": 3}, (False, 3)),
    ({"stack_folds": "auto", "fold_workers": "auto"}, ("auto", "auto")),
])
def test_engine_execution_settings_load(training, expected, tmp_path):
    config = load_config({"training": training})
    assert (config.training.stack_folds, config.training.fold_workers) == expected
    # the same through a YAML file (true/false/auto as YAML writes them)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"training": training}))
    assert (load_config(path).training.stack_folds, load_config(path).training.fold_workers) == expected


@pytest.mark.parametrize("training, message", [
    ({"stack_folds": "yes"}, r"training\.stack_folds='yes' is not valid\. Valid choices: true or false or 'auto'"),
    ({"stack_folds": 1}, r"training\.stack_folds=1 is not valid"),
    ({"stack_folds": None}, r"training\.stack_folds=None is not valid"),
    ({"fold_workers": 0}, r"training\.fold_workers=0 is not valid\. Valid choices: 'auto' or an integer >= 1"),
    ({"fold_workers": -2}, r"training\.fold_workers=-2 is not valid"),
    ({"fold_workers": "two"}, r"training\.fold_workers='two' is not valid\. Valid choices: an integer or 'auto'"),
    ({"fold_workers": True}, r"training\.fold_workers=True is not valid"),
    ({"fold_workers": 2.0}, r"training\.fold_workers=2\.0 is not valid"),
])
def test_engine_execution_settings_reject_bad_values(training, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"training": training})


def test_engine_rechecks_execution_settings_changed_after_loading():
    from nextpoi_lib.config import check_execution_settings

    config = load_config({})
    config.training.fold_workers = 0
    with pytest.raises(ConfigError, match=r"training\.fold_workers=0"):
        check_execution_settings(config.training)


def test_every_shipped_parameter_file_loads():
    from pathlib import Path

    files = sorted(p for p in Path("parameters").rglob("*.yaml") if "profiles" not in p.parts)
    assert len(files) >= 15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            assert load_config(path).name == path.stem, path
        for profile in Path("parameters/profiles").glob("*.yaml"):
            load_config("parameters/baseline.yaml", profile)
    labels_only = load_config("parameters/recommended_labels_only.yaml").model
    assert labels_only.gbt_history_features and not labels_only.gbt_poi_statistics
    # No place identity in the labels-only twin: half of the personal transitions are keyed by the POI.
    assert load_config("parameters/recommended.yaml").model.gbt_personal_transitions
    assert not labels_only.gbt_personal_transitions
