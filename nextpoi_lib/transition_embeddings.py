"""POI embeddings from the graph of visit transitions, trained inside each fold from its training users only.

`embeddings.source: transition_graph` trains Deep Graph Infomax (the encoder and summary of
`nextpoi_lib.embeddings`) over the directed graph "POI of visit i -> POI of visit i+1 of the same user", built
from the check-ins of one fold's TRAINING users: not its inner-validation users (model selection must see POI
vectors that never saw their transitions, as the test users do), not its test users. Each fold gets its own
[P, D] table, rows in the order of `windows.embedding_table` (the POI table, sorted by id), cached per (data
hash, fold manifest hash, fold, settings).

Why per fold: an edge "A was followed by B" lets message passing copy B into A's vector. Over all users, the
next visit of a test window's last POI is in the graph, and our users measured about 29 points of inflated
macro-F1 from exactly that leak (domain brief, item 9). `transition_graph_all_users` is that leaky graph under
an explicit name, for measuring the leak; its run manifest says `embeddings.leaky: true`.

Message passing runs over both directions of every transition edge (a POI's vector summarises where people
came from and where they went next, within the training users); self transitions (two visits to the same POI
in a row) are dropped, since the GCN adds a self loop to every node anyway. Node features are the one-hot POI
category of `data.poi_table`, as for the spatial DGI.

POIs outside a fold's training graph (no transition of a training user touches them: visited only by test or
inner-validation users, or only as one user's single visit) stay in the graph as isolated nodes: the GCN's
self loop gives them a vector computed from their own node features only (their category), never from a
held-out user's visits. Their count per fold is in the run manifest (`embeddings.folds[k].unseen_pois`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import ConfigError, EmbeddingConfig
from .data import CheckinTable, DataError
from .embeddings import train_dgi, write_parquet_atomic
from .folds import FoldManifest
from .progress import Progress
from .windows import WindowSet

__all__ = [
    "TRANSITION_GRAPH", "TRANSITION_GRAPH_ALL_USERS", "TRANSITION_SOURCES", "LEAKY_SOURCES", "UNSEEN_POLICY",
    "FoldEmbeddingTables", "checkin_poi_rows", "transition_edges", "category_features", "train_transition_dgi",
    "transition_cache_key", "cached_transition_table", "fold_transition_tables", "all_users_transition_table",
    "embeddings_manifest",
]

TRANSITION_GRAPH = "transition_graph"
TRANSITION_GRAPH_ALL_USERS = "transition_graph_all_users"
TRANSITION_SOURCES = (TRANSITION_GRAPH, TRANSITION_GRAPH_ALL_USERS)
# Sources whose vectors have seen the test users' visits; the run manifest flags them.
LEAKY_SOURCES = (TRANSITION_GRAPH_ALL_USERS,)
UNSEEN_POLICY = ("isolated_node: a POI without a training transition keeps its node (self loop only), so its "
                 "vector comes from its own category features")

# Bump when the computation changes the vectors for the same inputs, so old cache files are no longer hit.
_CACHE_FORMAT_VERSION = 1


@dataclass
class FoldEmbeddingTables:
    """One [P, D] float32 table per fold (rows: the POIs of `poi_ids`, the order of windows.embedding_table)."""
    source: str
    poi_ids: pd.Index
    tables: dict[int, np.ndarray]  # fold number -> [P, D]
    folds_report: list[dict] = field(default_factory=list)  # per fold: users, edges, unseen POIs, cache key

    def table_for(self, fold: int) -> np.ndarray:
        if fold not in self.tables:
            raise KeyError(f"No transition embedding table for fold {fold}; folds computed: {sorted(self.tables)}.")
        return self.tables[fold]


# --------------------------------------------------------------------------------------------------
# The graph


def checkin_poi_rows(checkins: CheckinTable, poi_ids: pd.Index) -> np.ndarray:
    """The row of `poi_ids` (the embedding table's POI order) of every check-in, in the check-ins' order."""
    rows = pd.Index(pd.Index(poi_ids).astype(str)).get_indexer(checkins.frame["poi_id"].astype(str))
    if (rows < 0).any():
        missing = checkins.frame["poi_id"].to_numpy()[rows < 0]
        raise DataError(f"{len(set(missing))} POIs of the check-ins (e.g. {sorted(set(map(str, missing)))[:3]}) "
                        f"are not in the POI table of the transition embeddings; build it with data.poi_table "
                        f"from the same check-ins.")
    return rows.astype(np.int64)


def transition_edges(checkin_users: np.ndarray, checkin_pois: np.ndarray,
                     users: np.ndarray | list[str] | None = None) -> np.ndarray:
    """Distinct directed transitions (POI of a visit -> POI of the same user's next visit) as a [2, E] int64
    array sorted by (source, destination), self transitions dropped.

    `checkin_users` / `checkin_pois`: one entry per check-in, sorted by user then time (a CheckinTable's
    order). `users`: only these users' transitions (a fold's training users); None: every user's."""
    checkin_users = np.asarray(checkin_users).astype(str)
    checkin_pois = np.asarray(checkin_pois, dtype=np.int64)
    if len(checkin_users) != len(checkin_pois):
        raise ValueError(f"checkin_users and checkin_pois must have one entry per check-in; got "
                         f"{len(checkin_users)} and {len(checkin_pois)}.")
    if len(checkin_pois) < 2:
        return np.zeros((2, 0), np.int64)
    # Consecutive rows of one user are consecutive visits (rows are sorted by user, then time).
    keep = checkin_users[1:] == checkin_users[:-1]
    if users is not None:
        # Both rows of a kept pair belong to the same user, so testing the first one suffices.
        keep &= np.isin(checkin_users[:-1], np.asarray(users).astype(str))
    source, destination = checkin_pois[:-1][keep], checkin_pois[1:][keep]
    not_self = source != destination
    pairs = np.unique(np.stack([source[not_self], destination[not_self]], axis=1), axis=0)
    return np.ascontiguousarray(pairs.T.reshape(2, -1)).astype(np.int64)


def category_features(pois: pd.DataFrame, categories: list[str]) -> np.ndarray:
    """[P, C] float32 one-hot POI category (the node features of the spatial DGI), rows in `pois` order."""
    codes = pd.Index(list(categories)).get_indexer(pois["category"])
    if (codes < 0).any():
        unknown = sorted(set(pois["category"][codes < 0].astype(str)))
        raise DataError(f"POI categories {unknown[:5]} are not among the classes {list(categories)}; the node "
                        f"features of the transition graph are one-hot classes.")
    features = np.zeros((len(pois), len(categories)), np.float32)
    features[np.arange(len(pois)), codes] = 1.0
    return features


# --------------------------------------------------------------------------------------------------
# Deep Graph Infomax over a given graph


def train_transition_dgi(features: np.ndarray, edges: np.ndarray, dim: int, epochs: int, learning_rate: float,
                         seed: int, device: str = "cpu", progress: bool = False) -> np.ndarray:
    """Train DGI on the graph `edges` ([2, E] directed transitions between rows of `features`, message passing
    over both directions) and return the [P, dim] float32 node vectors.

    The encoder (one GCN layer + PReLU), the summary and the warning filter are those of the spatial DGI
    (`nextpoi_lib.embeddings`); only the graph differs. Same inputs and seed give bit-identical vectors on CPU;
    the caller's torch random state is left untouched."""
    edges = np.asarray(edges, dtype=np.int64).reshape(2, -1)
    both = np.unique(np.concatenate([edges, edges[::-1]], axis=1), axis=1) if edges.shape[1] else edges
    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
    vectors = train_dgi(x, torch.from_numpy(np.ascontiguousarray(both)), dim=int(dim), epochs=int(epochs),
                        learning_rate=float(learning_rate), seed=int(seed), device=device, progress=progress,
                        label="Transition DGI")
    if not np.isfinite(vectors).all():
        raise RuntimeError("Transition-graph DGI diverged (the embeddings contain NaN or inf). Lower "
                           "embeddings.learning_rate or embeddings.epochs and run again.")
    return vectors


# --------------------------------------------------------------------------------------------------
# Cache


def _settings(settings: EmbeddingConfig) -> dict:
    """The settings that change the vectors (graph and knn_k are the spatial graph's; path/id_column a table's)."""
    return {"dim": int(settings.dim), "epochs": int(settings.epochs), "learning_rate": float(settings.learning_rate),
            "seed": int(settings.seed)}


def transition_cache_key(source: str, data_hash: str, manifest_hash: str | None, fold: int | None,
                         settings: EmbeddingConfig, poi_ids: pd.Index, features: np.ndarray, edges: np.ndarray) -> str:
    """sha256 hex digest of one table: the source, data hash, fold manifest hash and fold (None for the
    all-users table), the settings, and the graph itself (POI ids, node features, edges), so a table is never
    reused for another graph even if a hash were stale."""
    digest = hashlib.sha256()

    def feed(label: str, payload: bytes) -> None:
        # Label and length prefix keep the fields apart, so no two inputs concatenate alike.
        digest.update(f"{label}:{len(payload)}:".encode())
        digest.update(payload)

    feed("meta", json.dumps({"format": _CACHE_FORMAT_VERSION, "source": source, "data": data_hash,
                             "manifest": manifest_hash, "fold": fold, "settings": _settings(settings)},
                            sort_keys=True).encode())
    feed("poi_id", "\x1f".join(map(str, poi_ids)).encode())
    feed("features", np.ascontiguousarray(features, dtype="<f4").tobytes())
    feed("edges", np.ascontiguousarray(edges, dtype="<i8").tobytes())
    return digest.hexdigest()


def cached_transition_table(key: str, cache_dir: Path | None, poi_ids: pd.Index, features: np.ndarray,
                            edges: np.ndarray, settings: EmbeddingConfig, device: str,
                            progress: bool) -> np.ndarray:
    """`train_transition_dgi` with a disk cache `<cache_dir>/transition-<key[:16]>.parquet` (rows: poi_ids);
    written atomically (temporary file, then os.replace). `cache_dir=None`: no cache."""
    path = None if cache_dir is None else Path(cache_dir) / f"transition-{key[:16]}.parquet"
    if path is not None and path.exists():
        stored = pd.read_parquet(path)
        # A file edited by hand or a 16-digit prefix collision: the stored rows must be exactly our POIs.
        if stored.shape == (len(poi_ids), settings.dim) and np.array_equal(
                stored.index.astype(str).to_numpy(), pd.Index(poi_ids).astype(str).to_numpy()):
            return stored.to_numpy(np.float32)
    vectors = train_transition_dgi(features, edges, settings.dim, settings.epochs, settings.learning_rate,
                                   settings.seed, device, progress)
    if path is not None:
        write_parquet_atomic(pd.DataFrame(vectors, index=pd.Index(pd.Index(poi_ids).astype(str), name="poi_id"),
                                          columns=[str(i) for i in range(vectors.shape[1])]), path)
    return vectors


# --------------------------------------------------------------------------------------------------
# Tables of a run


def fold_transition_tables(checkins: CheckinTable, pois: pd.DataFrame, windows: WindowSet, manifest: FoldManifest,
                           settings: EmbeddingConfig, cache_dir: Path | None, device: str = "cpu",
                           progress: Progress | None = None, train_progress: bool = False) -> FoldEmbeddingTables:
    """One transition-graph DGI table per fold, from that fold's training users only (the users of its
    `train_index` windows; never its inner-validation or test users). `pois`: the POI table (data.poi_table)
    whose rows are the rows of windows.embedding_table."""
    progress = progress or Progress(False)
    if manifest.strategy != "user_grouped":
        raise ConfigError(f"embeddings.source={TRANSITION_GRAPH!r} needs user-grouped folds, but "
                          f"folds.strategy={manifest.strategy!r} puts windows of one user in training and test, so "
                          f"no fold has a transition graph free of its test users. Set folds.strategy: user_grouped.")
    poi_ids = pd.Index(pois["poi_id"].astype(str), name="poi_id")
    features = category_features(pois, checkins.classes)
    checkin_users = checkins.frame["user_id"].to_numpy().astype(str)
    checkin_pois = checkin_poi_rows(checkins, poi_ids)
    tables, report = {}, []
    for fold in manifest.folds:
        train_users = np.unique(windows.users[fold.train_index]).astype(str)
        held_out = set(fold.test_users) | set(fold.inner_val_users)
        if held_out & set(train_users):
            raise DataError(f"Fold {fold.fold}: users {sorted(held_out & set(train_users))[:3]} are both training "
                            f"and held-out users; the transition graph would leak their visits.")
        edges = transition_edges(checkin_users, checkin_pois, train_users)
        key = transition_cache_key(TRANSITION_GRAPH, checkins.data_hash, manifest.hash, fold.fold, settings,
                                   poi_ids, features, edges)
        in_graph = np.zeros(len(poi_ids), bool)
        in_graph[edges.reshape(-1)] = True
        unseen = int((~in_graph).sum())
        progress(f"POI embeddings, fold {fold.fold + 1}/{len(manifest.folds)}: Deep Graph Infomax on the "
                 f"transitions of {len(train_users)} training users ({edges.shape[1]} distinct edges; {unseen} of "
                 f"{len(poi_ids)} POIs without a training transition keep their own features only)")
        tables[fold.fold] = cached_transition_table(key, cache_dir, poi_ids, features, edges, settings, device,
                                                    train_progress)
        report.append({"fold": fold.fold, "training_users": int(len(train_users)), "edges": int(edges.shape[1]),
                       "pois_in_graph": int(in_graph.sum()), "unseen_pois": unseen, "cache_key": key[:16]})
    return FoldEmbeddingTables(source=TRANSITION_GRAPH, poi_ids=poi_ids, tables=tables, folds_report=report)


def all_users_transition_table(checkins: CheckinTable, pois: pd.DataFrame, settings: EmbeddingConfig,
                               cache_dir: Path | None, device: str = "cpu", progress: Progress | None = None,
                               train_progress: bool = False) -> pd.DataFrame:
    """LEAKY: one table from every user's transitions, test users included (`transition_graph_all_users`, for
    measuring the leak). Indexed by poi_id in `pois` order, columns "0".."D-1", like the spatial DGI."""
    progress = progress or Progress(False)
    poi_ids = pd.Index(pois["poi_id"].astype(str), name="poi_id")
    features = category_features(pois, checkins.classes)
    edges = transition_edges(checkins.frame["user_id"].to_numpy(), checkin_poi_rows(checkins, poi_ids))
    key = transition_cache_key(TRANSITION_GRAPH_ALL_USERS, checkins.data_hash, None, None, settings, poi_ids,
                               features, edges)
    progress(f"POI embeddings: Deep Graph Infomax on the transitions of ALL users ({edges.shape[1]} distinct "
             f"edges), test users included: LEAKY by construction (embeddings.source={TRANSITION_GRAPH_ALL_USERS})")
    vectors = cached_transition_table(key, cache_dir, poi_ids, features, edges, settings, device, train_progress)
    return pd.DataFrame(vectors, index=poi_ids, columns=[str(i) for i in range(vectors.shape[1])])


def embeddings_manifest(source: str, used: bool, fold_tables: FoldEmbeddingTables | None = None) -> dict:
    """manifest["embeddings"]: the source, whether the run read POI embeddings, `leaky` (true only for a leaky
    source the run used), and for per-fold tables the policy for unseen POIs and each fold's graph."""
    entry = {"source": source, "used": bool(used), "leaky": bool(used and source in LEAKY_SOURCES)}
    if fold_tables is not None:
        entry.update({"per_fold": True, "unseen_policy": UNSEEN_POLICY, "folds": fold_tables.folds_report})
    return entry
