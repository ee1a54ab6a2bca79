"""Runs: one experiment from a validated config to a complete run folder (format: docs/run-folder.md).

`run_experiment` checks the target folder before any work, prepares windows and folds, runs the engine or a
reference baseline, and writes the folder atomically: everything goes into a hidden temporary folder that is
renamed into place at the end, so a crashed run never looks complete, and an existing complete run is only
replaced when `output.overwrite` is set.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import torch
import yaml

from . import __version__
from .baselines import BASELINE_REGISTRY, draws_random_numbers, run_baseline
from .config import ExperimentConfig, load_config
from .data import DataError, load_checkins, load_next_parquet, poi_table
from .engine import CrossValidationResult, Progress, cross_validate
from .folds import FoldManifest, make_fold_manifest
from .metrics import fold_report
from .windows import WindowSet, build_windows, windows_from_next_parquet

SELECTIONS = ("selected", "last", "calibrated")


class RunExistsError(FileExistsError):
    """A complete run with this name exists and overwriting was not asked for."""


@dataclass
class PreparedData:
    windows: WindowSet
    fold_manifest: FoldManifest
    data_hash: str
    dataset_name: str


def run_directory(config: ExperimentConfig) -> Path:
    return Path(config.output.root) / config.dataset_name() / config.name


def is_complete(path: Path) -> bool:
    manifest = Path(path) / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def check_run_target(config: ExperimentConfig) -> Path:
    """Fail before any work if the run would overwrite a complete run without being asked to."""
    target = run_directory(config)
    if target.exists() and not config.output.overwrite:
        state = "A complete run" if is_complete(target) else "A folder that is not a complete run"
        raise RunExistsError(f"{state} already exists at {str(target)!r}. Give this experiment another name "
                             f"(name: ... in the parameter file), delete that folder, or pass --overwrite "
                             f"(output.overwrite: true) to replace it.")
    return target


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def embedding_table_for(config: ExperimentConfig, checkins, progress: Progress) -> pd.DataFrame:
    from .embeddings import cached_dgi_embeddings, load_embedding_table

    e = config.embeddings
    pois = poi_table(checkins)
    if "embedding" not in config.windows.features or run_kind(config) == "baseline":
        # Neither the feature set nor a reference baseline uses POI embeddings: skip computing them.
        return pd.DataFrame(index=pd.Index(pois["poi_id"], name="poi_id"))
    if e.source == "table":
        return load_embedding_table(e.path, id_column=e.id_column, dim=e.dim)
    device = "cuda" if config.training.device != "cpu" and torch.cuda.is_available() else "cpu"
    cache_dir = Path(config.output.root) / ".cache" / "embeddings"
    progress(f"POI embeddings: Deep Graph Infomax on a {e.graph} graph of {len(pois)} POIs (cached in {cache_dir})")
    return cached_dgi_embeddings(pois, checkins.classes, cache_dir=cache_dir, dim=e.dim, graph=e.graph,
                                 knn_k=e.knn_k, epochs=e.epochs, learning_rate=e.learning_rate, seed=e.seed,
                                 device=device, progress=config.training.progress)


def prepare_data(config: ExperimentConfig, progress: Progress | None = None) -> PreparedData:
    """Windows and folds for a config. Folds depend only on the check-ins and the fold settings."""
    progress = progress or Progress(config.training.progress)
    dataset_name = config.dataset_name()
    if config.dataset.source == "next_parquet":
        next_file = load_next_parquet(config.dataset.path, config.windows.length)
        windows = windows_from_next_parquet(next_file, config.dataset.classes, config.dataset.legacy_padding)
        data_hash = file_hash(Path(config.dataset.path))
        manifest = make_fold_manifest(windows.users, windows.target, config.folds, data_hash)
    else:
        checkins = load_checkins(config.dataset, dataset_name)
        embeddings = embedding_table_for(config, checkins, progress)
        windows = build_windows(checkins, embeddings, config.windows.length, config.windows.stride,
                                config.embeddings.missing)
        data_hash = checkins.data_hash
        manifest = make_fold_manifest(windows.users, windows.target, config.folds, data_hash,
                                      assignment_users=checkins.frame["user_id"].to_numpy(),
                                      assignment_labels=checkins.category_index)
    report = windows.report
    progress(f"Data {dataset_name}: {report['n_windows']} windows of {windows.length} visits from "
             f"{report['n_users']} users, {len(windows.classes)} classes"
             + (f"; {report['missing_embedding_visits']} visits without embedding ({report['missing_embedding_policy']})"
                if report.get("missing_embedding_visits") else ""))
    return PreparedData(windows=windows, fold_manifest=manifest, data_hash=data_hash, dataset_name=dataset_name)


def run_kind(config: ExperimentConfig) -> str:
    """The run's kind: "baseline" (reference baselines and trees), "neural", or "hybrid" (trees blended with a
    neural head)."""
    if config.model.name not in BASELINE_REGISTRY:
        return "neural"
    return "baseline" if config.model.gbt_blend_head is None else "hybrid"


def seed_dependent(config: ExperimentConfig) -> bool:
    """Whether the run's seeds give different results: every neural or hybrid run, and among the reference
    baselines only the trees averaged with a random forest (the others draw no random numbers)."""
    return run_kind(config) != "baseline" or draws_random_numbers(config)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def result_tables(result: CrossValidationResult, classes: list[str]) -> dict[str, pd.DataFrame]:
    fold_rows, class_rows, confusion_rows, curve_rows, attention_rows = [], [], [], [], []
    for fold in result.fold_results:
        curve_rows.extend(fold.curves)
        for selection, predicted in fold.predictions.items():
            report = fold_report(fold.test_target, predicted, classes)
            epoch = fold.selected_epoch if selection != "last" else fold.last_epoch
            fold_rows.append({"seed": fold.seed, "fold": fold.fold, "selection": selection, "epoch": epoch,
                              "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                              "macro_f1_min50": report["macro_f1_min50"], "n_test": report["n_test"]})
            per_class = report["per_class"].assign(seed=fold.seed, fold=fold.fold, selection=selection)
            class_rows.append(per_class)
            for true_index, row in enumerate(report["confusion"]):
                for predicted_index, count in enumerate(row):
                    confusion_rows.append((fold.seed, fold.fold, selection, classes[true_index],
                                           classes[predicted_index], int(count)))
        if fold.attention is not None:
            attention_rows.extend({"seed": fold.seed, "fold": fold.fold, "position": position, "weight": float(w)}
                                  for position, w in enumerate(fold.attention))
    per_class = pd.concat(class_rows, ignore_index=True)[["seed", "fold", "selection", "class", "precision", "recall",
                                                          "f1", "support"]]
    curve_columns = ["seed", "fold", "epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "learning_rate"]
    return {
        "fold_metrics": pd.DataFrame(fold_rows),
        "per_class": per_class,
        "confusion": pd.DataFrame(confusion_rows, columns=["seed", "fold", "selection", "true_class",
                                                           "predicted_class", "count"]),
        "curves": pd.DataFrame(curve_rows, columns=curve_columns),
        "attention": pd.DataFrame(attention_rows, columns=["seed", "fold", "position", "weight"]),
    }


def summarise(fold_metrics: pd.DataFrame, per_class: pd.DataFrame) -> dict:
    """Mean and std (ddof=1) over all fold x seed pairs, per selection."""
    summary: dict = {}
    for selection, group in fold_metrics.groupby("selection", sort=False):
        summary[selection] = {
            metric: {"mean": float(group[metric].mean()), "std": float(group[metric].std(ddof=1))
                     if len(group) > 1 else 0.0, "n": int(group[metric].notna().sum())}
            for metric in ("macro_f1", "accuracy", "macro_f1_min50")}
    selected = per_class[per_class["selection"] == "selected"]
    summary["per_class"] = {name: {metric: float(group[metric].mean()) for metric in ("precision", "recall", "f1")}
                            for name, group in selected.groupby("class", sort=False)}
    return summary


def write_run(config: ExperimentConfig, prepared: PreparedData, result: CrossValidationResult,
              started_at: dt.datetime, duration: float) -> Path:
    """Write every file into a temporary folder, then rename it into place."""
    target = run_directory(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".{target.name}.partial-{os.getpid()}-{int(time.time() * 1000)}"
    temporary.mkdir()
    try:
        tables = result_tables(result, prepared.windows.classes)
        for name, table in tables.items():
            if name == "attention" and table.empty:
                continue
            table.to_csv(temporary / f"{name}.csv", index=False)
        (temporary / "summary.json").write_text(json.dumps(summarise(tables["fold_metrics"], tables["per_class"]),
                                                           indent=2))
        (temporary / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        (temporary / "fold_manifest.json").write_text(json.dumps(prepared.fold_manifest.to_json()))
        kind = run_kind(config)
        manifest = {
            "status": "complete", "run_name": config.name, "dataset": prepared.dataset_name,
            "task": "next_category_with_target_time" if config.windows.target_time_features else "next_category",
            "package_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
            "sklearn_version": sklearn.__version__, "python_version": platform.python_version(),
            "device": result.device, "device_name": result.device_name, "profile": config.profile,
            "data_hash": prepared.data_hash, "fold_manifest_hash": prepared.fold_manifest.hash,
            "seeds": config.training.seeds, "classes": prepared.windows.classes,
            "n_windows": len(prepared.windows), "n_folds": len(prepared.fold_manifest.folds),
            "windows_report": prepared.windows.report, "started_at": started_at.isoformat(timespec="seconds"),
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "duration_seconds": round(duration, 2), "model": config.model.name, "kind": kind,
            "seed_dependent": seed_dependent(config),
            "features": config.windows.features,
            # Stacked folds draw dropout masks differently from one fold at a time: say which path ran.
            "engine": result.extra.get("engine", {"mode": "baseline"}),
            # Trees blended with a neural head: the head and the weight chosen per (seed, fold).
            **({"blend": result.extra["blend"]} if "blend" in result.extra else {}),
            "selected_epochs": [{"seed": f.seed, "fold": f.fold, "epoch": f.selected_epoch}
                                for f in result.fold_results],
        }
        (temporary / "manifest.json").write_text(json.dumps(manifest, indent=2))
        replaced = None
        if target.exists():
            # Only reached with output.overwrite (checked before any work): swap, then delete the old run.
            replaced = target.parent / f".{target.name}.replaced-{int(time.time() * 1000)}"
            target.rename(replaced)
        temporary.rename(target)
        if replaced is not None:
            shutil.rmtree(replaced)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


def run_experiment(config: ExperimentConfig, progress: Progress | None = None) -> Path:
    """Validate the target, prepare data, cross-validate, write the run folder; returns its path."""
    progress = progress or Progress(config.training.progress)
    check_run_target(config)
    started_at, started = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    prepared = prepare_data(config, progress)
    if config.model.name in BASELINE_REGISTRY:
        result = run_baseline(config, prepared.windows, prepared.fold_manifest, progress)
    else:
        result = cross_validate(config, prepared.windows, prepared.fold_manifest, progress)
    path = write_run(config, prepared, result, started_at, time.perf_counter() - started)
    summary = json.loads((path / "summary.json").read_text())["selected"]
    progress(f"Run {config.name}: macro-F1 {summary['macro_f1']['mean']:.4f} ± {summary['macro_f1']['std']:.4f}, "
             f"accuracy {summary['accuracy']['mean']:.4f} over {summary['macro_f1']['n']} fold x seed -> {path}")
    return path


def run_files(*parameter_files: str | Path, overrides: dict | None = None,
              progress: Progress | None = None) -> Path:
    """`nextpoi run a.yaml b.yaml` from Python: layered parameter files (later wins)."""
    config = load_config(*parameter_files, overrides=overrides)
    return run_experiment(config, progress)
