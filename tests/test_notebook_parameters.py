"""Notebook parameters: the experiment notebook's globals resolve exactly like `nextpoi run` (the layers of
`layers.resolve_layers`), and the names papermill injected are read from its "# Parameters" cell. No kernel runs
here: the notebook's parameters cell is executed as plain Python.
"""

from __future__ import annotations

import warnings

import pytest
import yaml

from nextpoi_lib import layers, notebook_parameters
from nextpoi_lib.config import ConfigError, updated
from notebook_support import REPO, SMOKE, notebook_defaults, quiet_load, smoke_sections

# Every experiment file (reference baselines in parameters/baselines/ included), not the profiles.
# Layers that complete another file (profiles, class maps) are no experiment files of their own.
PARAMETER_FILES = sorted(p for p in (REPO / "parameters").rglob("*.yaml") if not {"profiles", "classes", "folds"} & set(p.parts))


def resolve_like_papermill(injected: dict):
    """The config the notebook builds when papermill injects `injected` after the parameters cell."""
    namespace = {**notebook_defaults(), **injected}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return notebook_parameters.notebook_config(namespace, injected=set(injected)).config


@pytest.mark.parametrize("parameter_file", PARAMETER_FILES, ids=lambda p: str(p.relative_to(REPO / "parameters")))
def test_dash_f_resolves_like_nextpoi_run(parameter_file):
    """`papermill -f FILE` injects the file's top-level keys; the notebook must resolve them to the config of
    `nextpoi run FILE` (extends, defaults of sections the file leaves out, the name)."""
    injected = yaml.safe_load(parameter_file.read_text())
    assert resolve_like_papermill(injected).to_dict() == quiet_load(parameter_file).to_dict()


@pytest.mark.parametrize("parameter_file", [REPO / "parameters" / "A.yaml", SMOKE], ids=lambda p: p.name)
def test_dash_f_with_profile_resolves_like_nextpoi_run_with_profile(parameter_file):
    injected = {**yaml.safe_load(parameter_file.read_text()), "profile": "cpu"}
    expected = quiet_load(parameter_file, REPO / "parameters" / "profiles" / "cpu.yaml")
    expected = updated(expected, profile="cpu")  # as `nextpoi run --profile` records it
    config = resolve_like_papermill(injected)
    assert config.to_dict() == expected.to_dict()
    assert config.name == parameter_file.stem and config.training.seeds == [0]


def test_parameter_files_sections_and_profile_layer_in_order(tmp_path):
    override = {"training": {"epochs": 7}, "model": {"dropout": 0.25}}
    config = resolve_like_papermill({"parameter_files": [str(REPO / "parameters" / "C.yaml")], **override,
                                     "profile": "gpu", "output_root": str(tmp_path), "overwrite": True})
    expected = quiet_load(REPO / "parameters" / "C.yaml", override,
                          overrides={"output": {"root": str(tmp_path), "overwrite": True}})
    expected = updated(expected, profile="gpu")
    assert config.to_dict() == expected.to_dict()
    assert config.name == "C" and config.training.epochs == 7 and config.model.name == "gru"


def test_extends_is_resolved_relative_to_parameters():
    config = resolve_like_papermill({"extends": "baseline.yaml", "name": "mine", "training": {"epochs": 2}})
    expected = quiet_load(REPO / "parameters" / "baseline.yaml", {"name": "mine", "training": {"epochs": 2}})
    assert config.to_dict() == expected.to_dict()


def test_without_injection_the_notebook_defaults_are_a_tiny_cpu_experiment():
    defaults = notebook_defaults()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = notebook_parameters.notebook_config(defaults, injected=set()).config
        from_files = notebook_parameters.notebook_config({**defaults, "parameter_files": [str(SMOKE)]},
                                                         injected=set()).config
    assert config.name == "notebook" and config.training.epochs <= 5 and config.model.num_layers == 1
    assert config.embeddings.epochs <= 20 and config.windows.stride == 9 and config.training.device == "auto"
    # With parameter_files set and nothing injected, the files alone define the experiment.
    assert from_files.to_dict() == quiet_load(SMOKE).to_dict()


def test_injecting_only_options_keeps_the_notebook_defaults(tmp_path):
    config = resolve_like_papermill({"profile": "cpu", "output_root": str(tmp_path)})
    expected = resolve_like_papermill({})
    assert config.name == expected.name == "notebook" and config.model == expected.model
    assert config.profile == "cpu" and config.output.root == str(tmp_path)
    cpu = yaml.safe_load((REPO / "parameters" / "profiles" / "cpu.yaml").read_text())
    assert config.training.epochs == cpu["training"]["epochs"] != expected.training.epochs  # applied last


def test_invalid_injected_values_fail_with_the_config_message():
    with pytest.raises(ConfigError, match="Did you mean 'training'"):
        resolve_like_papermill({**smoke_sections(), "trainng": {"epochs": 1}})
    with pytest.raises(ConfigError, match="training.epochs"):
        resolve_like_papermill({**smoke_sections(), "training": {"epochs": "many"}})
    with pytest.raises(ConfigError, match="Profile 'nope' does not exist"):
        resolve_like_papermill({**smoke_sections(), "profile": "nope"})


def test_describe_lists_the_layers_in_order(tmp_path):
    namespace = {**notebook_defaults(), "parameter_files": [str(SMOKE)], "profile": "cpu",
                 "output_root": str(tmp_path)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resolved = notebook_parameters.notebook_config(namespace, injected={"parameter_files", "profile",
                                                                            "output_root"})
    cpu = layers.resolve_profile("cpu")
    assert cpu.resolve() == (REPO / "parameters" / "profiles" / "cpu.yaml").resolve()
    assert resolved.layers == [str(SMOKE), f"profile {cpu}", "output_root/overwrite"]
    text = resolved.describe()
    assert text.startswith(f"Layers (later wins): library defaults <- {SMOKE} <- profile {cpu} <- output_root")
    heading, yaml_text = text.split("\n\n", 1)[1].split("\n", 1)
    assert heading == "Resolved configuration of run 'smoke':"
    assert yaml.safe_load(yaml_text) == resolved.config.to_dict()


@pytest.mark.parametrize("watched", [True, False], ids=["cell-watcher", "input-history"])
def test_injected_names_are_read_from_the_papermill_cell(watched):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        if watched:
            notebook_parameters.watch_injected_parameters()
            notebook_parameters.watch_injected_parameters()  # idempotent
        shell.run_cell("name = 'defaults'\ntraining = {}", store_history=watched)
        assert notebook_parameters.injected_parameter_names() == set()
        # nbval executes with store_history=False: the watcher still sees the cell.
        shell.run_cell('# Parameters\nname = "smoke"\ntraining = {"epochs": 3}\n', store_history=not watched)
        shell.run_cell("x = 1", store_history=not watched)
        assert notebook_parameters.injected_parameter_names() == {"name", "training"}
    finally:
        InteractiveShell.clear_instance()
        notebook_parameters._executed_cells.clear()
    assert notebook_parameters.injected_parameter_names() is None  # outside IPython


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_profiles_keep_the_run_name_and_are_recorded():
    for profile in ("cpu", "gpu"):
        config = notebook_parameters.experiment_config([REPO / "parameters" / "baseline.yaml"], profile=profile)
        assert config.name == "baseline" and config.profile == profile
    cpu = notebook_parameters.experiment_config([REPO / "parameters" / "D.yaml"], profile="cpu")
    full = notebook_parameters.experiment_config([REPO / "parameters" / "D.yaml"], profile="gpu")
    assert full.to_dict() == {**quiet_load(REPO / "parameters" / "D.yaml").to_dict(), "profile": "gpu"}
    assert cpu.training.seeds == [0] and cpu.training.epochs < full.training.epochs
    assert layers.resolve_profile("auto", gpu_visible=False).name == "cpu.yaml"
    assert layers.resolve_profile("auto", gpu_visible=True).name == "gpu.yaml"
    # gpu_visible decides "auto" here as in the batch runner (the Ray cluster's GPUs for backend="ray").
    auto_cpu = notebook_parameters.experiment_config([REPO / "parameters" / "D.yaml"], profile="auto",
                                                     gpu_visible=False)
    assert auto_cpu.to_dict() == cpu.to_dict()
