"""Helpers shared by the experiment-notebook, notebook-parameter and batch tests: the notebook's parameters
cell, a shrunken smoke experiment and a DGI cache shared by every output root of the test session (the
embedding is computed once, then read from the cache)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import yaml

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "experiment.ipynb"
ANALYSIS_NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"
SMOKE = REPO / "parameters" / "smoke.yaml"
BIN = Path(sys.executable).parent

# Shrinks parameters/smoke.yaml further so that one execution takes seconds on 2 cores.
SHRINK = {"embeddings": {"epochs": 2}, "folds": {"n_splits": 2}, "training": {"epochs": 1}}


def notebook_defaults() -> dict:
    """The variables the experiment notebook's parameters cell defines, by executing that cell."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    namespace: dict = {}
    exec(cells[0].source, namespace)
    namespace.pop("__builtins__")
    return namespace


def quiet_load(*layers, **kwargs):
    """`experiment.load_config` (what `nextpoi run` resolves), its warnings silenced."""
    from nextpoi_lib.experiment import load_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_config(*layers, **kwargs)


def smoke_sections() -> dict:
    return yaml.safe_load(SMOKE.read_text())


def shrunken_smoke_injection() -> dict:
    """What `papermill -f parameters/smoke.yaml -y <SHRINK>` injects: -y replaces whole top-level keys, so each
    shrunken section is smoke's section with SHRINK's values merged in."""
    smoke = smoke_sections()
    return {key: {**copy.deepcopy(smoke.get(key) or {}), **values} for key, values in SHRINK.items()}


def output_root_with_shared_cache(root: Path, cache: Path) -> Path:
    """An output root whose .cache (DGI embeddings) is the session's shared cache folder."""
    root.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    link = root / ".cache"
    if not link.exists():
        link.symlink_to(cache, target_is_directory=True)
    return root


def write_parameter_file(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def small_experiment(path: Path, name: str, **extra) -> Path:
    """A parameter file: smoke.yaml (by `extends`) shrunken by SHRINK, named `name`."""
    data = {"extends": str(SMOKE), "name": name, **copy.deepcopy(SHRINK)}
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return write_parameter_file(path, data)


def run_command(args: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore::DeprecationWarning")
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def nbval(notebook: Path, cwd: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """pytest --nbval-lax on one executed notebook in a subprocess (kernel python3 of this environment)."""
    return run_command([sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-kernel-name", "python3",
                        "-p", "no:cacheprovider", "-q", *extra, notebook], cwd=cwd, timeout=timeout)


def code_outputs(notebook) -> list[tuple[str, list]]:
    return [(cell.source, cell.get("outputs", [])) for cell in notebook.cells if cell.cell_type == "code"]


def error_outputs(notebook) -> list:
    return [output for _, outputs in code_outputs(notebook) for output in outputs if output.output_type == "error"]
