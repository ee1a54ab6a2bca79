"""Prepared data: the windows and the user-grouped folds of a config, computed once per run.

Reads the check-ins (or a next.parquet file), attaches the POI embeddings the run asks for (DGI vectors of the
spatial POI graph, cached, or a table of the user's own), cuts windows and assigns folds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import ExperimentConfig
from .data import DataError, apply_class_map, check_several_classes, load_checkins, load_next_parquet, poi_table
from .devices import resolve_device
from .embeddings import cached_dgi_embeddings, load_embedding_table
from .folds import FoldManifest, assign_users, make_fold_manifest, warn_rare_classes
from .progress import Progress, progress_step
from .transition_embeddings import (TRANSITION_GRAPH, TRANSITION_GRAPH_ALL_USERS, FoldEmbeddingTables,
                                    all_users_transition_table, fold_transition_tables)
from .windows import WindowSet, build_windows, rare_classes, windows_from_next_parquet


@dataclass
class PreparedData:
    windows: WindowSet
    fold_manifest: FoldManifest
    data_hash: str
    dataset_name: str
    # embeddings.source transition_graph: one POI table per fold (rows: windows.embedding_table's POIs), which
    # training swaps in per fold; None for every other source.
    fold_embeddings: FoldEmbeddingTables | None = None


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def embedding_cache_directory(config: ExperimentConfig) -> Path:
    """Where DGI embeddings are cached: `<output root>/.cache/embeddings`, keyed by data + settings."""
    return Path(config.output.root) / ".cache" / "embeddings"


def embedding_table_for(config: ExperimentConfig, checkins, progress: Progress, wanted: bool) -> pd.DataFrame:
    """The POI embeddings the run asks for: a table file, DGI vectors (cached), or none when not `wanted`."""
    e = config.embeddings
    pois = poi_table(checkins)
    if not wanted:
        # The run does not read POI embeddings (not in its feature set, or a reference baseline): skip them.
        return pd.DataFrame(index=pd.Index(pois["poi_id"], name="poi_id"))
    if e.source == "table":
        return load_embedding_table(e.path, id_column=e.id_column, dim=e.dim)
    if e.source == TRANSITION_GRAPH:
        # The per-fold tables need the folds, so they are trained after them (prepare_data); this zero table
        # only fixes the POI rows, which every fold's table keeps. Training swaps in the fold's own table.
        return pd.DataFrame(np.zeros((len(pois), e.dim), np.float32), index=pd.Index(pois["poi_id"], name="poi_id"),
                            columns=[str(i) for i in range(e.dim)])
    # DGI follows the training device to a CUDA GPU; on Apple's MPS and the CPU it runs on the CPU (its sparse
    # graph products have no MPS kernels in the torch_geometric we pin).
    device = "cuda" if resolve_device(config.training.device).type == "cuda" else "cpu"
    cache_dir = embedding_cache_directory(config)
    if e.source == TRANSITION_GRAPH_ALL_USERS:
        return all_users_transition_table(checkins, pois, e, cache_dir, device, progress, config.training.progress)
    progress(f"POI embeddings: Deep Graph Infomax on a {e.graph} graph of {len(pois)} POIs (cached in {cache_dir})")
    return cached_dgi_embeddings(pois, checkins.classes, cache_dir=cache_dir, dim=e.dim, graph=e.graph,
                                 knn_k=e.knn_k, epochs=e.epochs, learning_rate=e.learning_rate, seed=e.seed,
                                 device=device, progress=config.training.progress)


def uses_balanced_weights(config: ExperimentConfig) -> bool:
    """Whether the run weighs classes by n / (C * count): the neural loss's class weights (or focal alpha), or the
    trees' class_weight. (Read off the config whatever the model; a neural setting is inert for the trees.)"""
    loss = config.loss
    neural = loss.name in ("cross_entropy", "focal") and (loss.class_weights == "balanced"
                                                         or (loss.name == "focal" and loss.focal_alpha == "balanced"))
    return neural or config.trees.class_weight == "balanced"


def check_dropped_classes(config: ExperimentConfig, dropped: dict[str, int], reads_visit_categories: bool) -> None:
    """Refuse, before the embeddings are computed, a run whose model reads the observed visits' categories as
    counts, keys or predictions (trees, the category baselines: their `reads_visit_categories`) when
    dataset.min_class_checkins drops classes: those models assume every observed visit has a target-class id,
    and a dropped class's visits have category -1."""
    if dropped and reads_visit_categories:
        user_past = "user_past" in config.windows.features
        reader = f"model.name={config.model.name!r}" + (
            " with windows.features 'user_past' (category counts of the user's visits)" if user_past else "")
        fix = "remove 'user_past' from windows.features (a neural head)" if user_past else "use a neural head"
        raise DataError(f"dataset.min_class_checkins={config.dataset.min_class_checkins} drops the classes "
                        f"{dropped} (check-ins per class), whose visits stay in the windows with an unknown "
                        f"category; {reader} reads the visits' categories and does not support that yet. Merge "
                        f"those classes into others with dataset.class_map instead, or {fix}.")


def prepare_data(config: ExperimentConfig, progress: Progress | None = None,
                 with_embeddings: bool | None = None, reads_visit_categories: bool = False) -> PreparedData:
    """Windows and folds for a config. Folds depend only on the check-ins and the fold settings.
    `with_embeddings`: whether the run reads POI embeddings (None: when the feature set names them);
    `reads_visit_categories`: whether its model needs a target-class id for every observed visit."""
    if with_embeddings is None:
        with_embeddings = "embedding" in config.windows.features
    progress = progress or Progress(config.training.progress)
    dataset_name = config.dataset_name()
    fold_embeddings = None  # per-fold POI tables (embeddings.source transition_graph), trained once folds exist
    # Live progress bars: the steps of the stage "data" (read, POI embeddings, windows, folds).
    data_steps = 2 if config.dataset.source == "next_parquet" else 4
    progress_step(progress, "data", 0, data_steps, f"reading the {config.dataset.source} data")
    if config.dataset.source == "next_parquet":
        next_file = load_next_parquet(config.dataset.path, config.windows.length)
        if config.dataset.class_map:
            next_file.labels = apply_class_map(pd.Series(next_file.labels), config.dataset.class_map,
                                               f"next.parquet file {config.dataset.path!r}").astype(str).tolist()
            check_several_classes(pd.Series(next_file.labels), f"The next_category column of {config.dataset.path!r} "
                                  f"after dataset.class_map")
        windows = windows_from_next_parquet(next_file, config.dataset.classes, config.dataset.legacy_padding)
        data_hash = file_hash(Path(config.dataset.path))
        progress_step(progress, "data", 1, data_steps, "assigning folds")
        manifest = make_fold_manifest(windows.users, windows.target, config.folds, data_hash)
    else:
        # Cheap checks first (the check-ins, then users vs folds), so bad data is refused before the POI
        # embeddings (minutes of DGI training) are computed.
        checkins = load_checkins(config.dataset, dataset_name)
        assignment = None
        if config.folds.strategy == "user_grouped":
            # The same assignment make_fold_manifest would make from the check-ins, made before the embeddings.
            # folds.group_by person_proxy links users through their check-ins' POIs and subcategories.
            frame = checkins.frame
            assignment = assign_users(frame["user_id"].to_numpy(), checkins.category_index, config.folds,
                                      sample_pois=frame["poi_id"].to_numpy(),
                                      sample_subcategories=(frame["subcategory"].to_numpy()
                                                            if "subcategory" in frame else None))
        check_dropped_classes(config, rare_classes(checkins, config.dataset.min_class_checkins),
                              reads_visit_categories)
        progress_step(progress, "data", 1, data_steps, "POI embeddings")
        embeddings = embedding_table_for(config, checkins, progress, with_embeddings)
        progress_step(progress, "data", 2, data_steps, "cutting windows")
        windows = build_windows(checkins, embeddings, config.windows.length, config.windows.stride,
                                config.embeddings.missing, config.dataset.min_class_checkins)
        data_hash = checkins.data_hash
        progress_step(progress, "data", 3, data_steps, "assigning folds")
        manifest = make_fold_manifest(windows.users, windows.target, config.folds, data_hash,
                                      assignment_users=checkins.frame["user_id"].to_numpy(),
                                      assignment_labels=checkins.category_index, assignment=assignment)
        if with_embeddings and config.embeddings.source == TRANSITION_GRAPH:
            device = "cuda" if resolve_device(config.training.device).type == "cuda" else "cpu"
            fold_embeddings = fold_transition_tables(checkins, poi_table(checkins), windows, manifest,
                                                     config.embeddings, embedding_cache_directory(config), device,
                                                     progress, config.training.progress)
    if manifest.groups is not None:
        windows.groups = np.array([manifest.groups[user] for user in windows.users])
    progress_step(progress, "data", data_steps, data_steps, f"{len(windows.target)} windows")
    warn_rare_classes(manifest, windows.target, windows.classes, balanced_weights=uses_balanced_weights(config))
    report = windows.report
    progress(f"Data {dataset_name}: {report['n_windows']} windows of {windows.length} visits from "
             f"{report['n_users']} users, {len(windows.classes)} classes"
             + (f"; {report['missing_embedding_visits']} visits without embedding ({report['missing_embedding_policy']})"
                if report.get("missing_embedding_visits") else "")
             + (f"; classes with fewer than {report['min_class_checkins']} check-ins are no targets: "
                f"{report['dropped_classes_min_checkins']} ({report['dropped_windows_rare_class']} windows removed)"
                if report.get("dropped_classes_min_checkins") else ""))
    return PreparedData(windows=windows, fold_manifest=manifest, data_hash=data_hash, dataset_name=dataset_name,
                        fold_embeddings=fold_embeddings)
