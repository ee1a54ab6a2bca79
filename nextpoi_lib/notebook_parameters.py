"""Notebook parameters: the experiment notebook's global variables, resolved into the config it runs.

This module runs inside the notebook's kernel. papermill injects a "# Parameters" cell after the notebook's
parameters cell; `injected_parameter_names` reads which names that cell set (`watch_injected_parameters`
records the cells the kernel runs, also when the executor keeps no input history), and `notebook_config`
resolves the notebook's globals into the `ExperimentConfig` to run. The layering rules are those of
`layers.resolve_layers` (through `experiment.load_config`), the same for `nextpoi run`, `nextpoi batch` and
the notebook; `experiment_config` is that resolution for the notebook's options, and the batch runner calls it
to validate exactly the config the notebook will run.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Sequence

import yaml

from .config import ExperimentConfig
from .experiment import load_config
from .layers import resolve_profile

# Top-level config keys the notebook takes as variables. `profile` is not among them: in the notebook it names
# the profile file to apply, and the config's `profile` key records that file's name.
SECTION_NAMES = tuple(f.name for f in dataclasses.fields(ExperimentConfig) if f.name != "profile")
NOTEBOOK_OPTIONS = ("parameter_files", "extends", "profile", "output_root", "overwrite")
PAPERMILL_COMMENT = "# Parameters"  # first line of the cell papermill injects (papermill's default comment)


def experiment_config(parameter_files: Sequence[str | os.PathLike] = (), extends=None,
                      sections: dict[str, Any] | None = None, profile: str | os.PathLike | None = None,
                      output_root: str | os.PathLike | None = None, overwrite: bool = False,
                      gpu_visible: bool | None = None) -> ExperimentConfig:
    """The config the experiment notebook runs. Layers, later wins: library defaults <- `parameter_files` (left to
    right; the run name defaults to the last file's stem, as with `nextpoi run`) <- `extends` (names relative to
    parameters/, like a file's `extends:` key) <- `sections` (top-level keys given inline) <- the `profile` file
    (never changes the run name; its name is recorded in `config.profile`) <- `output_root` / `overwrite`.
    Raises ConfigError naming the key, as `load_config` does."""
    if isinstance(parameter_files, (str, os.PathLike)):
        parameter_files = [parameter_files]
    overrides: dict[str, Any] = {}
    if output_root:
        overrides.setdefault("output", {})["root"] = str(output_root)
    if overwrite:
        overrides.setdefault("output", {})["overwrite"] = True
    return load_config(*parameter_files, extends=extends or None, sections=dict(sections) if sections else None,
                       profile=profile, overrides=overrides or None, gpu_visible=gpu_visible)


# --------------------------------------------------------------------------------------------------
# Which names papermill injected


_executed_cells: list[str] = []


def _record_cell(info) -> None:
    _executed_cells.append(getattr(info, "raw_cell", "") or "")


def watch_injected_parameters() -> None:
    """Record the source of every cell this kernel runs from now on (IPython's pre_run_cell event), so that
    `injected_parameter_names` sees papermill's cell also when the executor keeps no input history (nbval runs
    cells with store_history=False). The experiment notebook calls this in its first cell."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        return
    shell = get_ipython()
    if shell is not None and _record_cell not in shell.events.callbacks["pre_run_cell"]:
        shell.events.register("pre_run_cell", _record_cell)


def injected_parameter_names() -> set[str] | None:
    """Names papermill injected into this kernel (its "# Parameters" cell, placed after the parameters cell), read
    from the cells recorded by `watch_injected_parameters`, else from IPython's input history; an empty set when
    nothing was injected, None outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with ipykernel
        return None
    shell = get_ipython()
    if shell is None:
        return None
    if _record_cell in shell.events.callbacks["pre_run_cell"]:
        history = list(_executed_cells)
    else:
        history = list(shell.user_ns.get("In") or getattr(shell.history_manager, "input_hist_raw", []))
    for source in reversed(history):
        lines = (source or "").lstrip().splitlines()
        if lines and lines[0].strip() == PAPERMILL_COMMENT:
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            return {target.id for node in tree.body if isinstance(node, ast.Assign)
                    for target in node.targets if isinstance(target, ast.Name)}
    return set()


# --------------------------------------------------------------------------------------------------
# The notebook's globals -> the config


@dataclass
class NotebookConfig:
    config: ExperimentConfig
    layers: list[str]

    def describe(self) -> str:
        yaml_text = yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        return ("Layers (later wins): " + " <- ".join(["library defaults", *self.layers]) + "\n\n"
                + f"Resolved configuration of run {self.config.name!r}:\n{yaml_text}")


def notebook_config(namespace: dict[str, Any], injected: set[str] | None = None) -> NotebookConfig:
    """Resolve the experiment notebook's parameters (its global variables) into the config to run.

    When papermill injected any config section (-f/-y/-p), only the injected sections are layered, so
    `-f parameters/X.yaml` gives exactly the config of `nextpoi run parameters/X.yaml`. Otherwise, when
    `parameter_files` or `extends` are set (the batch runner injects parameter_files), the files alone define the
    experiment; and with neither, the notebook's own section values (a tiny CPU-sized experiment) are used --
    also when only options such as `profile` or `output_root` were injected."""
    if injected is None:
        injected = injected_parameter_names() or set()
    injected = {name for name in injected if not name.startswith("PAPERMILL_")}
    parameter_files = list(namespace.get("parameter_files") or [])
    extends = namespace.get("extends")
    # Anything injected that is not a notebook option is a config key: a typo then fails with load_config's message.
    injected_sections = [name for name in SECTION_NAMES if name in injected]
    injected_sections += sorted(injected - set(SECTION_NAMES) - set(NOTEBOOK_OPTIONS))
    if injected_sections:
        given, origin = injected_sections, "injected sections"
    elif parameter_files or extends:
        given, origin = [], ""
    else:
        given, origin = list(SECTION_NAMES), "notebook defaults"
    sections = {name: namespace.get(name) for name in given}
    layers = [str(f) for f in parameter_files]
    if extends:
        layers.append(f"extends {extends}")
    if sections:
        layers.append(f"{origin} ({', '.join(sections)})")
    profile_path = resolve_profile(namespace.get("profile"))
    if profile_path is not None:
        layers.append(f"profile {profile_path}")
    if namespace.get("output_root") or namespace.get("overwrite"):
        layers.append("output_root/overwrite")
    config = experiment_config(parameter_files, extends, sections, profile_path, namespace.get("output_root"),
                               bool(namespace.get("overwrite")))
    return NotebookConfig(config=config, layers=layers)
