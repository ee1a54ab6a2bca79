"""The experiment's composition root: parameters in, a complete run folder out.

The only module that knows every registry. It loads a config (`load_config`: the layers of
`nextpoi_lib.layers`, typed and checked by `nextpoi_lib.config`, then the names of models and heads checked
here), routes it to its run kind and writes the run folder (`nextpoi_lib.runfolder`):

* "neural": a head of `heads.MODEL_REGISTRY`, cross-validated by `training.cross_validate`;
* "baseline": a reference baseline of `baselines.BASELINE_REGISTRY`, or the gradient-boosted trees
  (`model.name: gradient_boosting`, options in `trees:`), cross-validated by `training.fitted`;
* "blended": the trees blended with a neural head (`model.name: blended_trees`, `blend.head: gru`): the head is
  cross-validated first on the same folds and seeds, then the trees, the weight chosen on inner validation users.

Adding a run kind is one class with `kind`, `uses_embeddings`, `seed_dependent`, `reads_visit_categories` and
`cross_validate`, and one
line in RUN_KINDS; `run_experiment` checks the target folder before any work, prepares windows and folds once,
and never overwrites a complete run unless `output.overwrite` is set.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

import sklearn
import torch
import yaml

from . import __version__
from .baselines import BASELINE_REGISTRY
from .config import ConfigError, ExperimentConfig, from_dict, updated
from .devices import check_device
from .heads import MODEL_REGISTRY
from .layers import Layer, resolve_layers
from .preparation import PreparedData, prepare_data
from .progress import Progress
from .transition_embeddings import embeddings_manifest
from .results import CrossValidationResult
from .runfolder import (check_output_writable, check_run_target, remove_stale_temporaries, run_directory,
                        write_run)
from .training import cross_validate
from .training.fitted import cross_validate_fitted
from .trees import GradientBoostedTrees

TREES = "gradient_boosting"
BLENDED_TREES = "blended_trees"


# --------------------------------------------------------------------------------------------------
# Run kinds


class NeuralRun:
    """A neural head over sequences of visits (`model.name` in heads.MODEL_REGISTRY)."""
    kind = "neural"

    def uses_embeddings(self, config: ExperimentConfig) -> bool:
        return "embedding" in config.windows.features

    def seed_dependent(self, config: ExperimentConfig) -> bool:
        return True

    def reads_visit_categories(self, config: ExperimentConfig) -> bool:
        # The heads' input encoder maps an unknown category (-1) to a zero row; the user_past input counts the
        # visits' categories (the trees' history and personal columns) and needs a class id for each.
        return "user_past" in config.windows.features

    def cross_validate(self, config: ExperimentConfig, prepared: PreparedData,
                       progress: Progress) -> CrossValidationResult:
        return cross_validate(config, prepared.windows, prepared.fold_manifest, progress,
                              fold_tables=prepared.fold_embeddings)


class BaselineRun:
    """A reference baseline, or the gradient-boosted trees alone: fitted per fold, never the POI embeddings."""
    kind = "baseline"

    def uses_embeddings(self, config: ExperimentConfig) -> bool:
        return False

    def seed_dependent(self, config: ExperimentConfig) -> bool:
        # Among the reference methods only the trees averaged with a random forest draw random numbers.
        return config.model.name == TREES and config.trees.forest_trees > 0

    def reads_visit_categories(self, config: ExperimentConfig) -> bool:
        return bool(self.make_model(config)(config.training.seeds[0]).reads_visit_categories)

    def make_model(self, config: ExperimentConfig):
        if config.model.name == TREES:
            return lambda seed: GradientBoostedTrees.from_config(config.trees, seed)
        return lambda seed: BASELINE_REGISTRY[config.model.name](config)

    def cross_validate(self, config: ExperimentConfig, prepared: PreparedData,
                       progress: Progress) -> CrossValidationResult:
        return cross_validate_fitted(config, prepared.windows, prepared.fold_manifest, self.make_model(config),
                                     progress, refit_with_inner_val=config.trees.refit_with_inner_val)


class BlendedRun(NeuralRun):
    """The trees blended with a neural head (`model.name: blended_trees`, `blend.head`): the head is configured by
    the model/loss/optimizer/training sections, the trees by `trees:`; embeddings and seeds matter as for the head."""
    kind = "blended"

    def reads_visit_categories(self, config: ExperimentConfig) -> bool:
        return GradientBoostedTrees.reads_visit_categories

    def cross_validate(self, config: ExperimentConfig, prepared: PreparedData,
                       progress: Progress) -> CrossValidationResult:
        head = config.blend.head
        progress(f"Blend: cross-validating the {head} head first; its inner-validation and test log-probabilities "
                 f"are blended with the trees'")
        head_config = updated(config, model={"name": head})
        neural_run = cross_validate(head_config, prepared.windows, prepared.fold_manifest, progress,
                                    fold_tables=prepared.fold_embeddings)
        return cross_validate_fitted(config, prepared.windows, prepared.fold_manifest,
                                     lambda seed: GradientBoostedTrees.from_config(config.trees, seed), progress,
                                     refit_with_inner_val=config.trees.refit_with_inner_val, neural_run=neural_run,
                                     blend_head=head)


RUN_KINDS = {"neural": NeuralRun(), "baseline": BaselineRun(), "blended": BlendedRun()}


def model_names() -> list[str]:
    """Every valid `model.name`."""
    return sorted(MODEL_REGISTRY) + sorted(BASELINE_REGISTRY) + [TREES, BLENDED_TREES]


def run_kind_of(config: ExperimentConfig):
    name = config.model.name
    if name in MODEL_REGISTRY:
        return RUN_KINDS["neural"]
    if name == BLENDED_TREES:
        return RUN_KINDS["blended"]
    return RUN_KINDS["baseline"]


def run_kind(config: ExperimentConfig) -> str:
    """The run's kind: "neural", "baseline" (reference baselines and the trees alone) or "blended"."""
    return run_kind_of(config).kind


def seed_dependent(config: ExperimentConfig) -> bool:
    """Whether the run's seeds give different results (written to the manifest; the leaderboard pairs by it)."""
    return run_kind_of(config).seed_dependent(config)


# --------------------------------------------------------------------------------------------------
# Loading


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_names(config: ExperimentConfig) -> None:
    """The checks that need the registries: model and head names, the heads' attention widths, and which
    sections a run kind reads."""
    m = config.model
    _require(m.name in model_names(),
             f"model.name={m.name!r} is not a registered model. Valid choices: {', '.join(model_names())}.")
    head = config.blend.head
    if m.name == BLENDED_TREES:
        _require(head is not None,
                 f"model.name={BLENDED_TREES!r} blends the trees with a neural head: set blend.head to one of "
                 f"{', '.join(sorted(MODEL_REGISTRY))}.")
    if head is not None:
        _require(m.name == BLENDED_TREES,
                 f"blend.head={head!r} blends a neural head into the gradient-boosted trees, but model.name="
                 f"{m.name!r}: set model.name: {BLENDED_TREES} or remove blend.head.")
        _require(head in MODEL_REGISTRY,
                 f"blend.head={head!r} is not a neural head. Valid choices: {', '.join(sorted(MODEL_REGISTRY))}.")
    _require(not config.trees.refit_with_inner_val or m.name in (TREES, BLENDED_TREES),
             f"trees.refit_with_inner_val=true refits the gradient-boosted trees, but model.name={m.name!r}: set "
             f"model.name: {TREES} (or {BLENDED_TREES}) or trees.refit_with_inner_val: false.")
    neural_name = head if m.name == BLENDED_TREES else m.name
    head_class = MODEL_REGISTRY.get(neural_name)
    width_key = getattr(head_class, "attention_width_key", None)
    if width_key:
        width = getattr(m, width_key)
        _require(width % m.num_heads == 0,
                 f"model.num_heads={m.num_heads} must divide model.{width_key}={width} (each head gets "
                 f"{width_key}/num_heads features). Choose num_heads in "
                 f"{[h for h in range(1, width + 1) if width % h == 0 and h <= 16]}.")


def load_config(*layers: Layer, extends: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                sections: dict[str, Any] | None = None, profile: str | os.PathLike | None = None,
                overrides: dict[str, Any] | None = None, gpu_visible: bool | None = None) -> ExperimentConfig:
    """Resolve the layers (files and/or dicts, later wins; see nextpoi_lib.layers), type and check them.
    The run name defaults to the stem of the last parameter file; `profile` ("cpu", "gpu", "auto" or a path)
    is applied last and recorded as `config.profile`."""
    resolved = resolve_layers(*layers, extends=extends, sections=sections, profile=profile, overrides=overrides,
                              gpu_visible=gpu_visible)
    config = from_dict(resolved.data)
    check_names(config)
    # A GPU that is not there fails here, before any data is read or embedding trained (errors.DeviceError).
    check_device(config.training.device)
    return config


# --------------------------------------------------------------------------------------------------
# Running


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_manifest(config: ExperimentConfig, prepared: PreparedData, result: CrossValidationResult,
                 started_at: dt.datetime, duration: float) -> dict:
    """What manifest.json says about a run (docs/run-folder.md); the run folder adds `status`."""
    return {
        "run_name": config.name, "dataset": prepared.dataset_name,
        "task": "next_category_with_target_time" if config.windows.target_time_features else "next_category",
        "package_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
        "sklearn_version": sklearn.__version__, "python_version": platform.python_version(),
        "device": result.device, "device_name": result.device_name, "profile": config.profile,
        "data_hash": prepared.data_hash, "fold_manifest_hash": prepared.fold_manifest.hash,
        "seeds": config.training.seeds, "classes": prepared.windows.classes,
        "n_windows": len(prepared.windows), "n_folds": len(prepared.fold_manifest.folds),
        "windows_report": prepared.windows.report, "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "duration_seconds": round(duration, 2), "model": config.model.name, "kind": run_kind(config),
        "seed_dependent": seed_dependent(config),
        "features": config.windows.features,
        # The POI embeddings' source; `leaky: true` for a source trained on the test users' visits
        # (transition_graph_all_users); per-fold tables add each fold's graph and its unseen POIs.
        "embeddings": embeddings_manifest(config.embeddings.source, run_kind_of(config).uses_embeddings(config)
                                          and config.dataset.source != "next_parquet", prepared.fold_embeddings),
        # Stacked folds draw dropout masks differently from one fold at a time: say which path ran.
        "engine": result.extra.get("engine", {"mode": "baseline"}),
        # Trees blended with a neural head: the head and the weight chosen per (seed, fold).
        **({"blend": result.extra["blend"]} if "blend" in result.extra else {}),
        "selected_epochs": [{"seed": f.seed, "fold": f.fold, "epoch": f.selected_epoch}
                            for f in result.fold_results],
    }


def computes_dgi_embeddings(config: ExperimentConfig, kind=None) -> bool:
    """Whether the run computes (or reads cached) DGI POI embeddings, i.e. writes `<root>/.cache/embeddings`."""
    kind = kind or run_kind_of(config)
    return (kind.uses_embeddings(config)
            and config.embeddings.source in ("dgi", "transition_graph", "transition_graph_all_users")
            and config.dataset.source != "next_parquet")


def run_experiment(config: ExperimentConfig, progress: Progress | None = None) -> Path:
    """Validate the target, prepare data, cross-validate, write the run folder; returns its path."""
    progress = progress or Progress(config.training.progress)
    kind = run_kind_of(config)
    # Temporaries left by a killed run of this name go first (an earlier run it had moved aside comes back).
    for stale in remove_stale_temporaries(run_directory(config)):
        progress(f"Cleaned up {stale}, left by a run of {config.name} that did not finish")
    check_run_target(config)
    check_output_writable(config, computes_dgi_embeddings(config, kind))
    started_at, started = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    prepared = prepare_data(config, progress, with_embeddings=kind.uses_embeddings(config),
                            reads_visit_categories=kind.reads_visit_categories(config))
    result = kind.cross_validate(config, prepared, progress)
    manifest = run_manifest(config, prepared, result, started_at, time.perf_counter() - started)
    path = write_run(run_directory(config), result, prepared.windows.classes,
                     yaml.safe_dump(config.to_dict(), sort_keys=False), prepared.fold_manifest.to_json(), manifest)
    summary = json.loads((path / "summary.json").read_text())["selected"]
    progress(f"Run {config.name}: macro-F1 {summary['macro_f1']['mean']:.4f} ± {summary['macro_f1']['std']:.4f}, "
             f"accuracy {summary['accuracy']['mean']:.4f} over {summary['macro_f1']['n']} fold x seed -> {path}")
    return path


def run_files(*parameter_files: Layer, overrides: dict | None = None, profile: str | os.PathLike | None = None,
              progress: Progress | None = None) -> Path:
    """`nextpoi run a.yaml b.yaml` from Python: layered parameter files (later wins)."""
    return run_experiment(load_config(*parameter_files, overrides=overrides, profile=profile), progress)
