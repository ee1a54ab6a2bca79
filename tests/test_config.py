"""nextpoi_lib.config: typing and value checks (loaded through experiment.load_config), and the old spellings of
the trees' options translated with a deprecation message."""
import dataclasses
import warnings
from pathlib import Path

import pytest
import yaml

from nextpoi_lib.config import ConfigError, ExperimentConfig, from_dict, translate_legacy_keys, updated
from nextpoi_lib.experiment import load_config

PARAMETERS = Path(__file__).resolve().parents[1] / "parameters"


def test_parameter_files_load_with_the_seed_numbers():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # A's OneCycle learning-rate note
        baseline = load_config(PARAMETERS / "baseline.yaml")
        a = load_config(PARAMETERS / "A.yaml")
        c = load_config(PARAMETERS / "C.yaml")
    assert (baseline.model.num_layers, baseline.model.num_heads, baseline.model.dropout) == (4, 8, 0.1)
    assert baseline.scheduler.max_lr == 1e-2 and baseline.optimizer.weight_decay == 1e-2
    assert baseline.training.batch_size == 1024 and baseline.loss.class_weights == "balanced"
    # A extends the baseline and overrides what the seed's grid says.
    assert a.name == "A" and (a.model.num_layers, a.model.num_heads, a.model.dropout) == (2, 4, 0.2)
    assert a.loss.label_smoothing == 0.05 and a.scheduler.pct_start == 0.1 and a.training.batch_size == 512
    assert a.training.epochs == 100  # inherited
    assert c.model.name == "gru" and c.training.weighted_sampler and c.loss.class_weights == "none"


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("training: {epocs: 3}\n")
    with pytest.raises(ConfigError, match=r"training\.epocs.*Did you mean 'epochs'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"Unknown key 'trees\.max_iters'.*Did you mean 'max_iter'"):
        load_config({"trees": {"max_iters": 3}})


def test_number_written_as_text_is_explained():
    with pytest.raises(ConfigError, match=r"optimizer\.learning_rate='1e-3'.*1\.0e-3"):
        load_config({"optimizer": {"learning_rate": "1e-3"}, "scheduler": {"name": "cosine"}})


def test_invalid_choice_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"loss\.name='focall'.*'cross_entropy', 'focal', 'logit_adjusted'"):
        load_config({"loss": {"name": "focall"}})
    with pytest.raises(ConfigError, match=r"model\.name='cnn'.*gru.*transformer"):
        load_config({"model": {"name": "cnn"}})


@pytest.mark.parametrize("overrides, message", [
    ({"windows": {"length": 0}}, r"windows\.length=0 must be >= 1"),
    ({"training": {"epochs": 0}}, r"training\.epochs=0"),
    ({"training": {"seeds": []}}, r"training\.seeds"),
    ({"folds": {"inner_val_fraction": 0.7}}, r"inner_val_fraction"),
    ({"dataset": {"source": "checkins"}}, r"dataset\.path is required"),
    ({"training": {"batch_size": "512"}}, r"training\.batch_size='512' must be an integer"),
    ({"dataset": {"source": "checkins", "path": "x.csv"},
      "model": {"name": "gradient_boosting"}, "trees": {"subcategory_statistics": True}},
     r"trees\.subcategory_statistics=true.*dataset\.subcategory_column"),
    ({"dataset": {"source": "next_parquet", "path": "next.parquet"},
      "model": {"name": "gradient_boosting"}, "trees": {"personal_transitions": True}},
     r"trees\.personal_transitions=true needs the user's check-in sequence.*dataset\.source: checkins"),
    ({"dataset": {"source": "next_parquet", "path": "next.parquet"},
      "model": {"name": "gradient_boosting"}, "trees": {"history_features": True}},
     r"trees\.history_features=true needs the user's check-in sequence"),
    ({"trees": {"class_weight": "inverse"}},
     r"trees\.class_weight='inverse'.*'none', 'balanced', 'sqrt_balanced'"),
    ({"trees": {"l2_regularization": -1.0}}, r"trees\.l2_regularization=-1\.0 must be >= 0"),
    ({"trees": {"forest_trees": -5}}, r"trees\.forest_trees=-5 must be >= 0 \(0: boosted trees alone"),
    ({"trees": {"max_iter": 2.5}}, r"trees\.max_iter=2\.5 must be an integer"),
    ({"blend": {"head": 3}}, r"blend\.head=3 must be a string"),
    ({"trees": "all"}, r"Section 'trees' must be a mapping of keys"),
])
def test_impossible_values_fail(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"gbt_class_weight": "inverse"}}, r"trees\.class_weight='inverse'.*'none', 'balanced', 'sqrt_balanced'"),
    ({"model": {"gbt_forest_trees": -5}}, r"trees\.forest_trees=-5 must be >= 0"),
    ({"dataset": {"source": "next_parquet", "path": "next.parquet"},
      "model": {"name": "gradient_boosting", "gbt_personal_transitions": True}},
     r"trees\.personal_transitions=true needs the user's check-in sequence"),
    ({"model": {"name": "gradient_boosting", "gbt_blend_head": "xgboost"}},
     r"blend\.head='xgboost' is not a neural head\. Valid choices: .*gru.*transformer"),
    ({"model": {"name": "gru", "gbt_blend_head": "gru"}}, r"but model\.name='gru': set model\.name: blended_trees"),
    ({"model": {"name": "gru", "gbt_refit_with_inner_val": True}},
     r"trees\.refit_with_inner_val=true refits the gradient-boosted trees, but model\.name='gru'"),
])
def test_old_spellings_are_checked_under_their_new_names(overrides, message):
    with pytest.warns(FutureWarning, match="Deprecated keys"):
        with pytest.raises(ConfigError, match=message):
            load_config(overrides)


# --------------------------------------------------------------------------------------------------
# The old spellings of the trees' options


def test_legacy_trees_and_blend_keys_load_with_a_future_warning():
    with pytest.warns(FutureWarning, match=r"model\.gbt_max_iter -> trees\.max_iter") as caught:
        config = load_config({"model": {"name": "gradient_boosting", "gbt_max_iter": 7, "gbt_blend_head": "gru"}})
    assert config.trees.max_iter == 7 and config.model.name == "blended_trees" and config.blend.head == "gru"
    message = str(caught[0].message)
    assert "model.gbt_blend_head='gru' -> model.name: blended_trees, blend.head: 'gru'" in message
    # Everything else keeps its default.
    assert config.trees.learning_rate == 0.1 and config.trees.forest_trees == 0


def test_every_legacy_trees_key_moves_to_its_section():
    old = {"max_iter": 12, "learning_rate": 0.2, "poi_statistics": True, "subcategory_statistics": True,
           "history_features": True, "personal_transitions": True, "class_weight": "balanced",
           "l2_regularization": 0.5, "forest_trees": 3, "refit_with_inner_val": True}
    data = {"model": {"name": "gradient_boosting", "hidden_dim": 8, **{f"gbt_{k}": v for k, v in old.items()}}}
    with pytest.warns(FutureWarning) as caught:
        translated = translate_legacy_keys(data)
    assert translated == {"model": {"name": "gradient_boosting", "hidden_dim": 8}, "trees": old}
    assert "gbt_max_iter" in data["model"]  # the input is not changed
    for key in old:
        assert f"model.gbt_{key} -> trees.{key}" in str(caught[0].message)
    with pytest.warns(FutureWarning):
        config = from_dict(data)
    assert [getattr(config.trees, key) for key in old] == list(old.values())


def test_gradient_boosting_without_a_blend_head_stays_the_trees_alone():
    with pytest.warns(FutureWarning):
        config = load_config({"model": {"name": "gradient_boosting", "gbt_max_iter": 9, "gbt_blend_head": None}})
    assert config.model.name == "gradient_boosting" and config.blend.head is None and config.trees.max_iter == 9
    with pytest.warns(FutureWarning, match=r"model\.gbt_blend_head: null"):
        config = load_config({"model": {"name": "gradient_boosting", "gbt_blend_head": None}})
    assert config.model.name == "gradient_boosting" and config.blend.head is None


@pytest.mark.parametrize("data, message", [
    ({"model": {"gbt_max_iter": 7}, "trees": {"max_iter": 8}},
     r"model\.gbt_max_iter and trees\.max_iter are both given.*keep trees\.max_iter only"),
    ({"model": {"name": "gradient_boosting", "gbt_blend_head": "gru"}, "blend": {"head": "lstm"}},
     r"model\.gbt_blend_head and blend\.head are both given"),
    ({"model": {"gbt_max_iters": 7}}, r"Unknown key 'model\.gbt_max_iters'.*section trees:.*max_iter"),
])
def test_both_spellings_or_an_unknown_old_key_fail(data, message):
    with pytest.raises(ConfigError, match=message):
        load_config(data)


def test_new_spellings_load_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = load_config({"model": {"name": "blended_trees"}, "trees": {"max_iter": 7},
                              "blend": {"head": "gru"}, "scheduler": {"name": "cosine"}})
    assert config.trees.max_iter == 7 and config.blend.head == "gru"
    assert translate_legacy_keys({"model": {"name": "gru"}}) == {"model": {"name": "gru"}}


OLD_RECOMMENDED_MODEL = """
model:
  name: gradient_boosting
  model_dim: 64
  hidden_dim: 128
  num_layers: 1
  num_heads: 8
  dropout: 0.2
  causal: false
  feedforward_dim: 256
  category_embedding_dim: 32
  markov_order: 2
  gbt_max_iter: 400
  gbt_learning_rate: 0.05
  gbt_poi_statistics: true
  gbt_subcategory_statistics: true
  gbt_history_features: true
  gbt_personal_transitions: true
  gbt_class_weight: sqrt_balanced
  gbt_l2_regularization: 0.0
  gbt_forest_trees: 200
  gbt_blend_head: gru
  gbt_refit_with_inner_val: true
"""


def test_an_old_run_folders_config_loads_as_todays():
    """The model section of the config.yaml an older version wrote for `recommended` (every gbt_ key spelled out)
    gives the config of that experiment today (blended_dgi.yaml, recommended.yaml until 2026-12-01)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        today = load_config(PARAMETERS / "blended_dgi.yaml").to_dict()
    old = {key: value for key, value in today.items() if key not in ("trees", "blend")}
    old.update(yaml.safe_load(OLD_RECOMMENDED_MODEL))
    with pytest.warns(FutureWarning):
        assert load_config(old).to_dict() == today


def test_old_style_files_extending_old_style_files_translate(tmp_path):
    (tmp_path / "parent.yaml").write_text(OLD_RECOMMENDED_MODEL)
    (tmp_path / "child.yaml").write_text("extends: parent.yaml\nmodel:\n  gbt_forest_trees: 0\n"
                                         "  gbt_poi_statistics: false\n")
    with pytest.warns(FutureWarning):
        config = load_config(tmp_path / "child.yaml")
    assert config.trees.forest_trees == 0 and not config.trees.poi_statistics and config.trees.max_iter == 400
    assert config.model.name == "blended_trees" and config.blend.head == "gru"


# --------------------------------------------------------------------------------------------------
# Other checks


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
    assert config.trees.max_iter == 200 and config.trees.class_weight == "none" and config.blend.head is None


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

    config = updated(load_config({}), training={"fold_workers": 0})
    with pytest.raises(ConfigError, match=r"training\.fold_workers=0"):
        check_execution_settings(config.training)


def test_every_shipped_parameter_file_loads_without_a_deprecation():
    files = sorted(p for p in PARAMETERS.rglob("*.yaml") if "profiles" not in p.parts)
    assert len(files) >= 15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # notes such as OneCycle's learning rate
        warnings.simplefilter("error", FutureWarning)  # no shipped file uses an old spelling
        for path in files:
            assert load_config(path).name == path.stem, path
        for profile in (PARAMETERS / "profiles").glob("*.yaml"):
            load_config(PARAMETERS / "baseline.yaml", profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        recommended = load_config(PARAMETERS / "recommended.yaml")
        labels_only = load_config(PARAMETERS / "recommended_labels_only.yaml")
        neural = load_config(PARAMETERS / "recommended_neural.yaml")
        neural_labels_only = load_config(PARAMETERS / "recommended_neural_labels_only.yaml")
        measured = load_config(PARAMETERS / "neural_wide_tuned.yaml")
        nested_study = load_config(PARAMETERS / "tune" / "wide_stats_nested.yaml")
        before = {name: load_config(PARAMETERS / f"{name}.yaml") for name in ("blended_dgi", "blended_dgi_labels_only")}
    assert recommended.model.name == "blended_trees" and recommended.blend.head == "wide_gru"
    assert labels_only.trees.history_features and not labels_only.trees.poi_statistics
    # No place identity in the labels-only twin: half of the personal transitions are keyed by the POI.
    assert recommended.trees.personal_transitions
    assert not labels_only.trees.personal_transitions
    # The recommended head, written out in full, is the configuration that was measured (neural_wide_tuned).
    assert dataclasses.replace(neural, name=measured.name) == measured
    # The nested study's base is the file it names.
    assert dataclasses.replace(nested_study, name="neural_wide_stats", tune=measured.tune) == \
        load_config(PARAMETERS / "neural_wide_stats.yaml")
    # The recommended blend: the trees of the previous recommended experiment, the recommended head's settings.
    for blend, trees_of, head_of in ((recommended, before["blended_dgi"], neural),
                                     (labels_only, before["blended_dgi_labels_only"], neural_labels_only)):
        assert blend.trees == trees_of.trees
        assert dataclasses.replace(blend.model, name=head_of.model.name) == head_of.model
        assert blend.blend.head == head_of.model.name
        assert (blend.windows, blend.loss, blend.optimizer, blend.scheduler, blend.training) == (
            head_of.windows, head_of.loss, head_of.optimizer, head_of.scheduler, head_of.training)
    # The label-only twins know nothing that names the place.
    place = {"embedding", "poi_identity", "venue_type", "place_statistics"}
    assert not place & set(neural_labels_only.windows.features) and not place & set(labels_only.windows.features)
    assert place <= set(neural.windows.features)


# --------------------------------------------------------------------------------------------------
# Values that used to end in a traceback far downstream

@pytest.mark.parametrize("key, value", [
    ("optimizer.learning_rate", float("inf")), ("scheduler.max_lr", float("-inf")), ("model.dropout", float("nan")),
    ("trees.learning_rate", float("inf")), ("embeddings.learning_rate", float("nan")),
    ("folds.inner_val_fraction", float("nan")), ("loss.focal_gamma", float("inf")),
])
def test_infinite_and_nan_floats_are_refused(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"{key}=(inf|-inf|nan) must be a finite number"):
        load_config({section: {name: value}})


def test_yaml_infinity_spellings_are_refused(tmp_path):
    for text in (".inf", "-.inf", ".nan", ".Inf", ".NaN"):
        path = tmp_path / "experiment.yaml"
        path.write_text(f"scheduler: {{max_lr: {text}}}\n")
        with pytest.raises(ConfigError, match=r"scheduler\.max_lr=.* must be a finite number"):
            load_config(path)


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"markov_order": 0}}, r"model\.markov_order=0 must be >= 1"),
    ({"model": {"markov_order": -2}}, r"model\.markov_order=-2 must be >= 1"),
    ({"model": {"model_dim": 0}}, r"model\.model_dim=0 must be >= 1"),
    ({"model": {"hidden_dim": 0, "name": "gru"}}, r"model\.hidden_dim=0 must be >= 1"),
    ({"model": {"feedforward_dim": -1}}, r"model\.feedforward_dim=-1 must be >= 1"),
    ({"model": {"category_embedding_dim": 0}}, r"model\.category_embedding_dim=0 must be >= 1"),
    ({"trees": {"max_iter": 0}}, r"trees\.max_iter=0 must be >= 1"),
    ({"trees": {"learning_rate": 0.0}}, r"trees\.learning_rate=0\.0 must be > 0"),
    ({"trees": {"learning_rate": -0.1}}, r"trees\.learning_rate=-0\.1 must be > 0"),
    ({"embeddings": {"learning_rate": 0}}, r"embeddings\.learning_rate=0\.0 must be > 0"),
    ({"folds": {"seed": -1}}, r"folds\.seed=-1 must be >= 0"),
    ({"embeddings": {"seed": -3}}, r"embeddings\.seed=-3 must be >= 0"),
    ({"training": {"seeds": [0, -1]}}, r"training\.seeds=\[0, -1\] .* each >= 0"),
    ({"training": {"device": "cudax"}}, r"training\.device='cudax' must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'"),
    ({"training": {"device": "cuda:a"}}, r"training\.device='cuda:a' must be"),
])
def test_out_of_range_values_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


def test_odd_model_widths_with_one_head_still_load():
    config = load_config({"model": {"model_dim": 7, "num_heads": 1}})
    assert config.model.model_dim == 7


@pytest.mark.parametrize("name", ["../../x", "a/b", "a\\b", "*?:<>|", "run\nname", "   ", "..", ".hidden", "",
                                  "two words", "x" * 201])
def test_unsafe_run_names_are_refused_with_the_rule(name):
    with pytest.raises(ConfigError, match=r"name=.* cannot name a run folder: it must be one folder name of "
                                          r"letters, digits, '\.', '_' and '-'"):
        load_config({"name": name})
    with pytest.raises(ConfigError, match=r"dataset\.name=.* cannot name the dataset folder: it must be one folder"):
        load_config({"dataset": {"name": name}})


@pytest.mark.parametrize("name", ["A", "smoke_b", "recommended-2", "v1.2", "_private", "Gowalla_TX-2024"])
def test_safe_names_load(name):
    config = load_config({"name": name, "dataset": {"name": name}})
    assert config.name == name and config.dataset_name() == name


def test_an_unsafe_data_file_stem_asks_for_dataset_name():
    with pytest.raises(ConfigError, match=r"data file's stem 'my checkins' .*set dataset\.name to a safe name, "
                                          r"e\.g\. dataset\.name: 'my_checkins'"):
        load_config({"dataset": {"source": "checkins", "path": "data/my checkins.csv"}})
    config = load_config({"dataset": {"source": "checkins", "path": "data/my checkins.csv", "name": "mine"}})
    assert config.dataset_name() == "mine"
    assert load_config({"dataset": {"source": "checkins", "path": "data/texas.csv"}}).dataset_name() == "texas"


# --------------------------------------------------------------------------------------------------
# The training device

def test_a_cuda_device_without_a_gpu_is_a_device_error(monkeypatch):
    import torch

    from nextpoi_lib.errors import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(DeviceError, match=rf"training\.device='{device}' asks for a CUDA GPU, but PyTorch sees "
                                              rf"none.*training\.device: auto.*or cpu"):
            load_config({"training": {"device": device}})
    assert load_config({"training": {"device": "auto"}}).training.device == "auto"
    assert load_config({"training": {"device": "cpu"}}).training.device == "cpu"


def test_the_real_device_check_on_this_machine():
    import torch

    from nextpoi_lib.errors import DeviceError

    if torch.cuda.is_available():
        assert load_config({"training": {"device": "cuda"}}).training.device == "cuda"
        beyond = f"cuda:{torch.cuda.device_count()}"
        with pytest.raises(DeviceError, match=rf"training\.device='{beyond}' asks for GPU number"):
            load_config({"training": {"device": beyond}})
    else:
        with pytest.raises(DeviceError, match=r"training\.device='cuda' asks for a CUDA GPU"):
            load_config({"training": {"device": "cuda"}})


def test_a_gpu_beyond_the_device_count_is_a_device_error(monkeypatch):
    import torch

    from nextpoi_lib.devices import check_device
    from nextpoi_lib.errors import DeviceError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device in ("cuda", "cuda:0", "cuda:1"):
        assert load_config({"training": {"device": device}}).training.device == device
    with pytest.raises(DeviceError, match=r"training\.device='cuda:2' asks for GPU number 2, but PyTorch sees 2 "
                                          r"CUDA GPUs \(cuda:0 \.\. cuda:1\)\. Set training\.device to one of them"):
        load_config({"training": {"device": "cuda:2"}})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"sees 1 CUDA GPU \(cuda:0\)"):
        check_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_device("auto")
    check_device("cpu")
