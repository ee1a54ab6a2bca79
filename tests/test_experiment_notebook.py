"""The experiment notebook: its parameters resolve exactly like `nextpoi run`, an execution with papermill writes
the same run folder as `nextpoi run`, and executed notebooks pass nbval (deterministic outputs re-checked).

Executions use parameters/smoke.yaml shrunken further (2 folds, 1 epoch, 2 DGI epochs) and a temporary output
root whose embedding cache is shared by the test session.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from nextpoi_lib import batch
from nextpoi_lib.config import ConfigError, load_config
from notebook_support import (ANALYSIS_NOTEBOOK, BIN, NOTEBOOK, REPO, SHRINK, SMOKE, code_outputs, error_outputs,
                              nbval, output_root_with_shared_cache, run_command, shrunken_smoke_injection,
                              smoke_sections, write_parameter_file)

# Every experiment file (reference baselines in parameters/baselines/ included), not the profiles.
PARAMETER_FILES = sorted(p for p in (REPO / "parameters").rglob("*.yaml") if "profiles" not in p.parts)


def notebook_defaults() -> dict:
    """The variables the notebook's parameters cell defines, by executing that cell."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    namespace: dict = {}
    exec(cells[0].source, namespace)
    namespace.pop("__builtins__")
    return namespace


def resolve_like_papermill(injected: dict):
    """The config the notebook builds when papermill injects `injected` after the parameters cell."""
    namespace = {**notebook_defaults(), **injected}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return batch.notebook_config(namespace, injected=set(injected)).config


def quiet_load(*layers, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_config(*layers, **kwargs)


# --------------------------------------------------------------------------------------------------
# Parameters -> config (no kernel)


def test_notebook_source_and_ipynb_are_in_sync():
    import jupytext

    from_py = jupytext.read(REPO / "notebooks" / "experiment.py")
    from_ipynb = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in from_py.cells] == [c.source for c in from_ipynb.cells]
    assert [c.metadata.get("tags") for c in from_py.cells] == [c.metadata.get("tags") for c in from_ipynb.cells]
    assert all(not c.get("outputs") for c in from_ipynb.cells if c.cell_type == "code"), "committed without outputs"


def test_parameters_cell_declares_every_config_section():
    defaults = notebook_defaults()
    for name in (*batch.SECTION_NAMES, "parameter_files", "extends", "profile", "output_root", "overwrite"):
        assert name in defaults, name
    assert defaults["parameter_files"] == [] and defaults["profile"] is None and defaults["extends"] is None


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
    expected.profile = "cpu"  # as `nextpoi run --profile` records it
    config = resolve_like_papermill(injected)
    assert config.to_dict() == expected.to_dict()
    assert config.name == parameter_file.stem and config.training.seeds == [0]


def test_parameter_files_sections_and_profile_layer_in_order(tmp_path):
    override = {"training": {"epochs": 7}, "model": {"dropout": 0.25}}
    config = resolve_like_papermill({"parameter_files": [str(REPO / "parameters" / "C.yaml")], **override,
                                     "profile": "gpu", "output_root": str(tmp_path), "overwrite": True})
    expected = quiet_load(REPO / "parameters" / "C.yaml", override,
                          overrides={"output": {"root": str(tmp_path), "overwrite": True}})
    expected.profile = "gpu"
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
        config = batch.notebook_config(defaults, injected=set()).config
        from_files = batch.notebook_config({**defaults, "parameter_files": [str(SMOKE)]}, injected=set()).config
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


@pytest.mark.parametrize("watched", [True, False], ids=["cell-watcher", "input-history"])
def test_injected_names_are_read_from_the_papermill_cell(watched):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        if watched:
            batch.watch_injected_parameters()
            batch.watch_injected_parameters()  # idempotent
        shell.run_cell("name = 'defaults'\ntraining = {}", store_history=watched)
        assert batch.injected_parameter_names() == set()
        # nbval executes with store_history=False: the watcher still sees the cell.
        shell.run_cell('# Parameters\nname = "smoke"\ntraining = {"epochs": 3}\n', store_history=not watched)
        shell.run_cell("x = 1", store_history=not watched)
        assert batch.injected_parameter_names() == {"name", "training"}
    finally:
        InteractiveShell.clear_instance()
        batch._executed_cells.clear()
    assert batch.injected_parameter_names() is None  # outside IPython


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_profiles_keep_the_run_name_and_are_recorded():
    for profile in ("cpu", "gpu"):
        config = batch.experiment_config([REPO / "parameters" / "baseline.yaml"], profile=profile)
        assert config.name == "baseline" and config.profile == profile
    cpu = batch.experiment_config([REPO / "parameters" / "D.yaml"], profile="cpu")
    full = batch.experiment_config([REPO / "parameters" / "D.yaml"], profile="gpu")
    assert full.to_dict() == {**quiet_load(REPO / "parameters" / "D.yaml").to_dict(), "profile": "gpu"}
    assert cpu.training.seeds == [0] and cpu.training.epochs < full.training.epochs
    assert batch.resolve_profile("auto", gpu_visible=False).name == "cpu.yaml"
    assert batch.resolve_profile("auto", gpu_visible=True).name == "gpu.yaml"


# --------------------------------------------------------------------------------------------------
# Executions (papermill and nextpoi run, then nbval)


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """`nextpoi run smoke.yaml shrink.yaml` and `papermill experiment.ipynb -f smoke.yaml -y <shrink>` into the
    same output root (the CLI run is moved aside before the notebook runs)."""
    base = tmp_path_factory.mktemp("experiment-notebook")
    root = output_root_with_shared_cache(base / "outputs", tmp_path_factory.getbasetemp() / "dgi-cache")
    shrink = write_parameter_file(base / "shrink.yaml", SHRINK)
    cli = run_command([BIN / "nextpoi", "run", SMOKE, shrink, "--output-root", root, "--overwrite"], cwd=REPO)
    assert cli.returncode == 0, cli.stderr[-3000:]
    cli_run = base / "cli-run"
    (root / "foursquare_nyc" / "smoke").rename(cli_run)

    executed_notebook = base / "smoke-executed.ipynb"
    injection = {**shrunken_smoke_injection(), "output_root": str(root), "overwrite": True}
    result = run_command([BIN / "papermill", NOTEBOOK.relative_to(REPO), executed_notebook, "-f",
                          SMOKE.relative_to(REPO), "-y", yaml.safe_dump(injection), "-k", "python3",
                          "--no-progress-bar"], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "cli_run": cli_run, "notebook_run": root / "foursquare_nyc" / "smoke",
            "notebook": executed_notebook, "base": base}


def test_papermill_run_folder_matches_nextpoi_run(executed):
    cli_run, notebook_run = executed["cli_run"], executed["notebook_run"]
    assert json.loads((notebook_run / "manifest.json").read_text())["status"] == "complete"
    assert sorted(p.name for p in notebook_run.iterdir()) == sorted(p.name for p in cli_run.iterdir())
    assert (notebook_run / "config.yaml").read_bytes() == (cli_run / "config.yaml").read_bytes()
    cli_manifest = json.loads((cli_run / "manifest.json").read_text())
    nb_manifest = json.loads((notebook_run / "manifest.json").read_text())
    assert sorted(nb_manifest) == sorted(cli_manifest)
    for key in ("run_name", "dataset", "task", "device", "profile", "data_hash", "fold_manifest_hash", "seeds",
                "classes", "n_windows", "n_folds", "model", "kind"):
        assert nb_manifest[key] == cli_manifest[key], key
    assert nb_manifest["device"] == "cpu" and nb_manifest["profile"] is None
    # Same config, same folds, same seeds on the same CPU: the same numbers.
    pd.testing.assert_frame_equal(pd.read_csv(notebook_run / "fold_metrics.csv"),
                                  pd.read_csv(cli_run / "fold_metrics.csv"))
    config = yaml.safe_load((notebook_run / "config.yaml").read_text())
    assert config["training"]["epochs"] == 1 and config["folds"]["n_splits"] == 2
    assert config["model"] == quiet_load(SMOKE).to_dict()["model"]


def test_executed_notebook_shows_config_summary_and_figures(executed):
    notebook = nbformat.read(executed["notebook"], as_version=4)
    assert not error_outputs(notebook)
    injected = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'name = "smoke"' in injected[0].source
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                     for _, outputs in code_outputs(notebook) for o in outputs)
    assert "injected sections (name, dataset, embeddings, windows, folds, model, loss, optimizer, scheduler, training" in text
    assert "Run folder smoke/: attention.csv, config.yaml, confusion.csv" in text
    assert "macro_f1" in text
    plotly = [o for _, outputs in code_outputs(notebook) for o in outputs
              if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(plotly) >= 2  # training curves and confusion matrix, inline


def test_experiment_notebook_passes_nbval(executed):
    """nbval re-executes the executed notebook (same injected parameters, overwrite) and compares the cells
    marked NBVAL_CHECK_OUTPUT: resolved config, run folder listing and the fold summary table."""
    result = nbval(executed["notebook"], executed["base"])
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_nbval_catches_a_changed_deterministic_output(executed):
    """Control: the config cell is checked, so a changed stored output fails (-x stops before training)."""
    notebook = nbformat.read(executed["notebook"], as_version=4)
    cell = next(c for c in notebook.cells if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source)
    cell.outputs[0]["text"] = cell.outputs[0]["text"].replace("epochs: 1", "epochs: 99")
    tampered = executed["base"] / "tampered.ipynb"
    nbformat.write(notebook, tampered)
    result = nbval(tampered, executed["base"], "-x")
    assert result.returncode != 0
    assert "1 failed" in result.stdout


def test_analysis_notebook_over_two_smoke_runs_passes_nbval(executed):
    from nextpoi_lib.runs import run_files

    root = executed["root"]
    shutil.rmtree(root / "foursquare_nyc" / "smoke_b", ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_files(SMOKE, write_parameter_file(executed["base"] / "shrink_b.yaml", SHRINK),
                  overrides={"name": "smoke_b", "training": {"seeds": [1], "progress": False},
                             "output": {"root": str(root)}})
    output = executed["base"] / "analysis-executed.ipynb"
    result = run_command([BIN / "papermill", ANALYSIS_NOTEBOOK.relative_to(REPO), output, "-p", "outputs_root",
                          root, "-y", yaml.safe_dump({"run_names": ["smoke", "smoke_b"]}), "-k", "python3",
                          "--no-progress-bar"], cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not error_outputs(nbformat.read(output, as_version=4))
    checked = nbval(output, executed["base"])
    assert checked.returncode == 0, checked.stdout[-4000:]
