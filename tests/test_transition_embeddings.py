"""Transition-graph POI embeddings (nextpoi_lib.transition_embeddings): one table per fold from its training
users' consecutive visits only; the all-users variant exists, under its own name, flagged leaky."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from nextpoi_lib import transition_embeddings as te
from nextpoi_lib.config import ConfigError, EmbeddingConfig
from nextpoi_lib.experiment import RUN_KINDS, run_experiment
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.training import neural as neural_module
from nextpoi_lib.training.tensors import WindowTensors
from synthetic import synthetic_config

N_POIS = 24
CLASSES = ("Food", "Shop", "Travel")


def random_walk_checkins(n_users: int = 30, visits: int = 10, seed: int = 0) -> pd.DataFrame:
    """Users visit random POIs (each POI has one category and fixed coordinates), so every user adds
    transitions of their own and the folds' graphs differ."""
    rng = np.random.default_rng(seed)
    latitude, longitude = 40.0 + rng.random(N_POIS), -74.0 + rng.random(N_POIS)
    rows = []
    for user in range(n_users):
        for visit, poi in enumerate(rng.integers(0, N_POIS, visits)):
            rows.append({"userid": f"u{user:03d}", "placeid": f"p{poi:03d}",
                         "datetime": pd.Timestamp("2012-04-01") + pd.Timedelta(hours=user + 5 * visit),
                         "latitude": latitude[poi], "longitude": longitude[poi], "category": CLASSES[poi % 3]})
    return pd.DataFrame(rows)


def config_for(tmp_path, checkins: pd.DataFrame | None = None, **sections):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "checkins.csv"
    if not path.exists():
        (random_walk_checkins() if checkins is None else checkins).to_csv(path, index=False)
    sections.setdefault("embeddings", {})
    sections["embeddings"] = {"source": "transition_graph", "epochs": 3, "dim": 4, **sections["embeddings"]}
    sections.setdefault("windows", {"features": ["embedding"]})
    return synthetic_config(tmp_path, **sections)


def expected_edges(checkins: pd.DataFrame, users: set[str]) -> set[tuple[str, str]]:
    """(POI, next POI of the same user) of `users`, from the raw check-ins: sort each user's visits by time."""
    edges = set()
    for user, visits in checkins.groupby("userid"):
        if user not in users:
            continue
        pois = visits.sort_values("datetime", kind="stable")["placeid"].tolist()
        edges |= {(a, b) for a, b in zip(pois, pois[1:]) if a != b}
    return edges


@pytest.fixture
def trainer_spy(monkeypatch):
    """Record the graph of every DGI training (the edges as POI-id pairs) and still train."""
    calls = []
    real = te.train_transition_dgi

    def spy(features, edges, *args, **kwargs):
        calls.append(np.array(edges))
        return real(features, edges, *args, **kwargs)

    monkeypatch.setattr(te, "train_transition_dgi", spy)
    return calls


def as_id_pairs(edges: np.ndarray, poi_ids) -> set[tuple[str, str]]:
    ids = np.asarray(poi_ids).astype(str)
    return {(ids[a], ids[b]) for a, b in edges.T}


def test_each_fold_graph_holds_exactly_its_training_users_transitions(tmp_path, trainer_spy):
    checkins = random_walk_checkins()
    config = config_for(tmp_path, checkins)
    prepared = prepare_data(config)
    manifest = prepared.fold_manifest
    assert len(trainer_spy) == len(manifest.folds)
    all_users = set(checkins["userid"])
    for fold, edges in zip(manifest.folds, trainer_spy):
        train_users = all_users - set(fold.test_users) - set(fold.inner_val_users)
        graph = as_id_pairs(edges, prepared.fold_embeddings.poi_ids)
        assert graph == expected_edges(checkins, train_users)
        # Transitions only held-out users make exist here (else the check above could not catch a leak).
        held_out_only = expected_edges(checkins, set(fold.test_users) | set(fold.inner_val_users)) - graph
        assert held_out_only and not held_out_only & graph
        # Unseen POIs: those no training transition touches, counted independently.
        touched = {poi for pair in graph for poi in pair}
        report = prepared.fold_embeddings.folds_report[fold.fold]
        assert report["unseen_pois"] == N_POIS - len(touched) and report["training_users"] == len(train_users)


def test_changing_a_test_users_checkins_leaves_that_folds_table_unchanged(tmp_path):
    checkins = random_walk_checkins()
    first = prepare_data(config_for(tmp_path / "a", checkins))
    fold = first.fold_manifest.folds[0]
    user = fold.test_users[0]
    # Send the test user elsewhere: every visit goes to another POI of the same category (so the check-in labels,
    # and with them the fold assignment, stay the same), with that POI's coordinates.
    changed = checkins.copy()
    rows = changed.index[changed["userid"] == user]
    pois = changed.drop_duplicates("placeid").set_index("placeid")
    for row in rows:
        poi = int(changed.at[row, "placeid"][1:])
        other = f"p{(poi + 3) % N_POIS:03d}"
        changed.loc[row, ["placeid", "latitude", "longitude"]] = [other, pois.at[other, "latitude"],
                                                                  pois.at[other, "longitude"]]
    second = prepare_data(config_for(tmp_path / "b", changed))
    assert first.data_hash != second.data_hash
    assert [f.test_users for f in first.fold_manifest.folds] == [f.test_users for f in second.fold_manifest.folds]
    np.testing.assert_array_equal(first.fold_embeddings.table_for(0), second.fold_embeddings.table_for(0))
    # In a fold where that user trains, the graph (and so the table) changes: the check above can fail.
    training_fold = next(f.fold for f in first.fold_manifest.folds if user not in f.test_users + f.inner_val_users)
    assert not np.array_equal(first.fold_embeddings.table_for(training_fold),
                              second.fold_embeddings.table_for(training_fold))


def test_all_users_variant_holds_test_transitions_and_is_flagged_leaky(tmp_path, trainer_spy):
    checkins = random_walk_checkins()
    with pytest.warns(UserWarning, match="leaky by construction"):
        config = config_for(tmp_path, checkins, embeddings={"source": "transition_graph_all_users"},
                            training={"epochs": 1})
    path = run_experiment(config)
    assert len(trainer_spy) == 1
    poi_ids = sorted(checkins["placeid"].unique())
    assert as_id_pairs(trainer_spy[0], poi_ids) == expected_edges(checkins, set(checkins["userid"]))
    manifest = json.loads((path / "manifest.json").read_text())
    folds = json.loads((path / "fold_manifest.json").read_text())["folds"]
    test_edges = expected_edges(checkins, set(folds[0]["test_users"]))
    assert test_edges <= as_id_pairs(trainer_spy[0], poi_ids)
    assert manifest["embeddings"]["leaky"] is True
    assert manifest["embeddings"]["source"] == "transition_graph_all_users"


def test_per_fold_source_is_not_leaky_and_the_default_loads_without_warning(tmp_path):
    (tmp_path / "default").mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        synthetic_config(tmp_path / "default")  # the spatial DGI: no leak warning
    assert not [w for w in caught if "leaky" in str(w.message)]
    path = run_experiment(config_for(tmp_path, training={"epochs": 1}))
    entry = json.loads((path / "manifest.json").read_text())["embeddings"]
    assert entry["leaky"] is False and entry["source"] == "transition_graph" and entry["per_fold"] is True
    assert [fold["fold"] for fold in entry["folds"]] == [0, 1, 2]
    assert all(fold["unseen_pois"] + fold["pois_in_graph"] == N_POIS for fold in entry["folds"])


def test_second_preparation_reads_the_cache_and_the_key_follows_its_inputs(tmp_path, trainer_spy):
    config = config_for(tmp_path)
    first = prepare_data(config)
    assert len(trainer_spy) == 3
    second = prepare_data(config)
    assert len(trainer_spy) == 3  # every fold loaded from the cache, no training
    for fold in range(3):
        np.testing.assert_array_equal(first.fold_embeddings.table_for(fold), second.fold_embeddings.table_for(fold))
    # Other settings: a new key, so trained again.
    prepare_data(config_for(tmp_path, embeddings={"epochs": 4}))
    assert len(trainer_spy) == 6

    settings = EmbeddingConfig(source="transition_graph", dim=4, epochs=3)
    ids, features, edges = pd.Index(["a", "b"]), np.eye(2, dtype=np.float32), np.array([[0], [1]])
    base = dict(source="transition_graph", data_hash="d", manifest_hash="m", fold=0, settings=settings,
                poi_ids=ids, features=features, edges=edges)
    key = te.transition_cache_key(**base)
    assert key == te.transition_cache_key(**base)
    for change in ({"fold": 1}, {"manifest_hash": "m2"}, {"data_hash": "d2"},
                   {"settings": EmbeddingConfig(source="transition_graph", dim=4, epochs=4)},
                   {"settings": EmbeddingConfig(source="transition_graph", dim=4, epochs=3, seed=1)},
                   {"edges": np.array([[1], [0]])}):
        assert te.transition_cache_key(**{**base, **change}) != key, change
    # Settings that do not change the vectors (the spatial graph's) keep the key.
    assert te.transition_cache_key(**{**base, "settings": EmbeddingConfig(source="transition_graph", dim=4,
                                                                           epochs=3, graph="knn")}) == key


def test_each_fold_trains_on_its_own_table_and_stacked_folds_fall_back(tmp_path, monkeypatch):
    config = config_for(tmp_path, model={"name": "transformer", "num_heads": 2, "model_dim": 16},
                        training={"epochs": 1, "stack_folds": True})
    tables = prepare_data(config).fold_embeddings  # trained here, read from the cache by the run
    swapped, used = [], []
    real_swap, real_train = WindowTensors.use_embedding_table, neural_module.train_fold

    def swap(self, table):
        swapped.append(np.array(table))
        return real_swap(self, table)

    def train(config, data, windows, fold, *args, **kwargs):
        used.append((fold.fold, data.table.numpy().copy()))
        return real_train(config, data, windows, fold, *args, **kwargs)

    monkeypatch.setattr(WindowTensors, "use_embedding_table", swap)
    monkeypatch.setattr(neural_module, "train_fold", train)
    path = run_experiment(config)
    assert [fold for fold, _ in used] == [0, 1, 2] and len(swapped) == 3
    for fold, table in used:
        np.testing.assert_array_equal(table, tables.table_for(fold))
    assert not np.array_equal(tables.table_for(0), tables.table_for(1))
    engine = json.loads((path / "manifest.json").read_text())["engine"]
    assert engine["mode"] == "per_fold" and any("transition_graph" in note for note in engine["notes"])


def test_blended_head_trains_on_the_fold_tables(tmp_path, monkeypatch):
    config = config_for(tmp_path, model={"name": "blended_trees"}, blend={"head": "gru"}, trees={"max_iter": 5},
                        training={"epochs": 1})
    prepared = prepare_data(config)
    used = []
    real_train = neural_module.train_fold

    def train(config, data, windows, fold, *args, **kwargs):
        used.append((fold.fold, data.table.numpy().copy()))
        return real_train(config, data, windows, fold, *args, **kwargs)

    monkeypatch.setattr(neural_module, "train_fold", train)
    RUN_KINDS["blended"].cross_validate(config, prepared, progress=lambda message: None)
    assert [fold for fold, _ in used] == [0, 1, 2]
    for fold, table in used:
        np.testing.assert_array_equal(table, prepared.fold_embeddings.table_for(fold))


def test_cross_validate_without_the_fold_tables_is_refused(tmp_path):
    config = config_for(tmp_path, training={"epochs": 1})
    prepared = prepare_data(config)
    with pytest.raises(ConfigError, match="fold_tables"):
        neural_module.cross_validate(config, prepared.windows, prepared.fold_manifest)


def test_transition_sources_refuse_what_they_cannot_use(tmp_path):
    with pytest.raises(ConfigError, match="folds.strategy"):
        config_for(tmp_path, folds={"strategy": "legacy_record_level"})
    with pytest.raises(ConfigError, match="next.parquet"):
        synthetic_config(tmp_path, dataset={"source": "next_parquet", "path": str(tmp_path / "next.parquet")},
                         embeddings={"source": "transition_graph"}, windows={"length": 9, "features": ["embedding"]})


def test_fold_workers_train_each_fold_on_its_own_table(tmp_path):
    """Fold workers (other processes, no spy reaches them) give the very numbers of folds one after another,
    which gather from each fold's own table (checked above); zeros instead of the tables would not."""
    import torch

    from nextpoi_lib.config import updated

    config = config_for(tmp_path, training={"epochs": 2, "fold_workers": 2})
    prepared = prepare_data(config)
    parallel = neural_module.cross_validate(config, prepared.windows, prepared.fold_manifest,
                                            fold_tables=prepared.fold_embeddings)
    assert parallel.extra["engine"]["mode"] == "fold_workers"
    serial_config = updated(config, training={"fold_workers": 1})
    threads = torch.get_num_threads()
    torch.set_num_threads(parallel.extra["engine"]["threads_per_worker"])
    zeros = te.FoldEmbeddingTables(source="transition_graph", poi_ids=prepared.fold_embeddings.poi_ids,
                                   tables={k: np.zeros_like(t) for k, t in prepared.fold_embeddings.tables.items()})
    try:
        serial = neural_module.cross_validate(serial_config, prepared.windows, prepared.fold_manifest,
                                              fold_tables=prepared.fold_embeddings)
        blank = neural_module.cross_validate(serial_config, prepared.windows, prepared.fold_manifest,
                                             fold_tables=zeros)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(parallel.fold_results, serial.fold_results):
        assert a.fold == b.fold
        np.testing.assert_array_equal(a.predictions["selected"], b.predictions["selected"])
        assert pd.DataFrame(a.curves).equals(pd.DataFrame(b.curves))
    assert any(not pd.DataFrame(a.curves).equals(pd.DataFrame(b.curves))
               for a, b in zip(blank.fold_results, serial.fold_results))
