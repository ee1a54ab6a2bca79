"""The experiment notebook: its source (paired, parameters cell complete, no path shim), an execution with
papermill writes the same run folder as `nextpoi run`, and executed notebooks pass nbval (deterministic outputs
re-checked). How its parameters resolve is tested without a kernel in tests/test_notebook_parameters.py.

Executions use parameters/smoke.yaml shrunken further (2 folds, 1 epoch, 2 DGI epochs) and a temporary output
root whose embedding cache is shared by the test session.
"""

from __future__ import annotations

import json
import shutil
import warnings

import nbformat
import pandas as pd
import pytest
import yaml

from nextpoi_lib import notebook_parameters
from notebook_support import (ANALYSIS_NOTEBOOK, BIN, NOTEBOOK, REPO, SHRINK, SMOKE, code_outputs, error_outputs,
                              nbval, notebook_defaults, output_root_with_shared_cache, quiet_load, run_command,
                              shrunken_smoke_injection, write_parameter_file)


# --------------------------------------------------------------------------------------------------
# The notebook's source (how its parameters resolve: tests/test_notebook_parameters.py)


def test_notebook_source_and_ipynb_are_in_sync():
    import jupytext

    from_py = jupytext.read(REPO / "notebooks" / "experiment.py")
    from_ipynb = nbformat.read(NOTEBOOK, as_version=4)
    assert [c.source for c in from_py.cells] == [c.source for c in from_ipynb.cells]
    assert [c.metadata.get("tags") for c in from_py.cells] == [c.metadata.get("tags") for c in from_ipynb.cells]
    assert all(not c.get("outputs") for c in from_ipynb.cells if c.cell_type == "code"), "committed without outputs"


def test_parameters_cell_declares_every_config_section():
    defaults = notebook_defaults()
    for name in (*notebook_parameters.SECTION_NAMES, *notebook_parameters.NOTEBOOK_OPTIONS):
        assert name in defaults, name
    assert defaults["parameter_files"] == [] and defaults["profile"] is None and defaults["extends"] is None


def test_notebook_imports_the_installed_library_without_a_path_shim():
    """The notebook imports, calls and displays: the library comes from the environment (an installed or
    editable package), the batch scheduler is not imported into the kernel."""
    source = (REPO / "notebooks" / "experiment.py").read_text()
    assert "sys.path" not in source and "import sys" not in source
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert any("notebook_parameters" in line for line in imports)
    assert not any("batch" in line for line in imports)


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
    from nextpoi_lib.experiment import run_files

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
