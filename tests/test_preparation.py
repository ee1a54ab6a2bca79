"""nextpoi_lib.preparation: windows, folds and the POI embeddings a run asks for, prepared once."""
import hashlib

import warnings

import numpy as np
import pandas as pd
import pytest

from conftest import embedding_frame, synthetic_checkins
from nextpoi_lib import preparation
from nextpoi_lib.data import DataError, load_checkins, poi_table
from nextpoi_lib.preparation import file_hash, prepare_data
from synthetic import synthetic_config


def test_file_hash_is_the_first_16_hex_digits_of_sha256(tmp_path):
    path = tmp_path / "data.bin"
    content = bytes(range(256)) * 5000  # more than one read chunk
    path.write_bytes(content)
    assert file_hash(path) == hashlib.sha256(content).hexdigest()[:16]


def forbid_dgi(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("DGI embeddings were computed although the run does not read them")

    monkeypatch.setattr(preparation, "cached_dgi_embeddings", refuse)


def test_windows_without_embeddings_skip_them(tmp_path, monkeypatch):
    forbid_dgi(monkeypatch)
    config = synthetic_config(tmp_path, windows={"features": ["category"]})
    prepared = prepare_data(config)  # the feature set does not name embeddings
    checkins = load_checkins(config.dataset, "toy")
    n_pois = len(poi_table(checkins))
    assert prepared.windows.embedding_table.shape == (n_pois, 0)
    assert prepared.data_hash == checkins.data_hash and prepared.dataset_name == "toy"
    # Asked explicitly not to (a reference baseline), even when the feature set names them.
    with_embeddings = synthetic_config(tmp_path, windows={"features": ["embedding", "category"]})
    assert prepare_data(with_embeddings, with_embeddings=False).windows.embedding_table.shape == (n_pois, 0)


def test_dgi_embeddings_are_attached_when_the_run_reads_them(tmp_path, monkeypatch):
    seen = {}

    def stand_in(pois, categories, cache_dir, **settings):
        seen.update(pois=pois["poi_id"].tolist(), categories=categories, cache_dir=cache_dir, **settings)
        return embedding_frame(pois["poi_id"].tolist(), dim=settings["dim"])

    monkeypatch.setattr(preparation, "cached_dgi_embeddings", stand_in)
    config = synthetic_config(tmp_path, windows={"features": ["embedding", "category"]})
    prepared = prepare_data(config)
    checkins = load_checkins(config.dataset, "toy")
    pois = sorted(checkins.frame.poi_id.unique())
    assert seen["pois"] == pois and seen["categories"] == checkins.classes
    assert seen["cache_dir"] == tmp_path / "outputs" / ".cache" / "embeddings"
    assert (seen["dim"], seen["epochs"], seen["graph"], seen["device"]) == (8, 5, "delaunay", "cpu")
    expected = embedding_frame(pois, dim=8).to_numpy()
    windows = prepared.windows
    np.testing.assert_array_equal(windows.embedding_table, expected)
    # Each observed visit points at its POI's row of the table.
    frame = checkins.frame.reset_index(drop=True)
    first = frame[frame.user_id == windows.users[0]].poi_id.iloc[:windows.length]
    assert windows.poi_index[0].tolist() == [pois.index(p) for p in first]
    # Folds depend only on the check-ins and the fold settings, not on the embeddings.
    forbid_dgi(monkeypatch)
    assert prepare_data(config, with_embeddings=False).fold_manifest.hash == prepared.fold_manifest.hash


def test_an_embedding_table_file_is_read(tmp_path, monkeypatch):
    forbid_dgi(monkeypatch)
    config = synthetic_config(tmp_path)
    pois = sorted(load_checkins(config.dataset, "toy").frame.poi_id.unique())
    table = embedding_frame(pois, dim=6, seed=3)
    path = tmp_path / "vectors.csv"
    table.rename_axis("placeid").reset_index().to_csv(path, index=False)
    config = synthetic_config(tmp_path, embeddings={"source": "table", "path": str(path), "dim": 6},
                              windows={"features": ["embedding"]})
    windows = prepare_data(config).windows
    np.testing.assert_allclose(windows.embedding_table, table.to_numpy(), rtol=1e-6)


def test_next_parquet_is_prepared_with_its_file_hash(tmp_path):
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame(rng.normal(size=(n, 9 * 4)).astype(np.float32), columns=[str(i) for i in range(9 * 4)])
    frame["next_category"] = np.array(["Food", "Shopping", "Travel"])[rng.integers(0, 3, n)]
    frame["userid"] = np.arange(n) // 3
    path = tmp_path / "next.parquet"
    frame.to_parquet(path)
    config = synthetic_config(tmp_path, dataset={"source": "next_parquet", "path": str(path), "name": "alabama"},
                              windows={"length": 9, "features": ["embedding"]})
    prepared = prepare_data(config)
    assert prepared.data_hash == file_hash(path) and prepared.dataset_name == "alabama"
    assert len(prepared.windows) == n and prepared.windows.sequence is None
    assert prepared.windows.embedding_table.shape == (n * 9, 4)
    assert len(prepared.fold_manifest.folds) == 3
    for fold in prepared.fold_manifest.folds:  # user-grouped
        assert not set(prepared.windows.users[fold.test_index]) & set(prepared.windows.users[fold.train_index])


def test_progress_names_the_data(tmp_path):
    messages = []
    config = synthetic_config(tmp_path)
    prepared = prepare_data(config, messages.append)
    report = prepared.windows.report
    assert messages == [f"Data toy: {report['n_windows']} windows of 4 visits from {report['n_users']} users, "
                        f"3 classes"]


def test_dropped_duplicate_rows_reach_the_windows_report(tmp_path, monkeypatch):
    forbid_dgi(monkeypatch)
    frame = synthetic_checkins(n_users=50, visits_per_user=16, n_pois=30)
    pd.concat([frame, frame.iloc[:4]]).to_csv(tmp_path / "checkins.csv", index=False)
    assert prepare_data(synthetic_config(tmp_path)).windows.report["dropped_duplicate_rows"] == 4
    kept = synthetic_config(tmp_path, dataset={"duplicate_rows": "keep"})
    report = prepare_data(kept).windows.report
    assert report["dropped_duplicate_rows"] == 0 and report["n_checkins"] == len(frame) + 4


def test_too_few_users_are_refused_before_the_embeddings(tmp_path, monkeypatch):
    forbid_dgi(monkeypatch)
    synthetic_checkins(n_users=5, visits_per_user=16, n_pois=30).to_csv(tmp_path / "checkins.csv", index=False)
    config = synthetic_config(tmp_path, windows={"features": ["embedding"]}, folds={"n_splits": 3})
    with pytest.raises(DataError, match="training users in fold"):
        prepare_data(config)
    config = synthetic_config(tmp_path, windows={"features": ["embedding"]}, folds={"n_splits": 6})
    with pytest.raises(DataError, match="Only 5 users, fewer than folds.n_splits=6"):
        prepare_data(config)


@pytest.mark.filterwarnings("ignore:The least populated class")  # scikit-learn's own notice
def test_rare_classes_are_warned_about_after_the_folds(tmp_path, monkeypatch):
    forbid_dgi(monkeypatch)
    frame = synthetic_checkins(n_users=50, visits_per_user=16, n_pois=30)
    rare = frame.index[frame["category"] == "Travel"][3:]
    frame.loc[rare, "category"] = "Food"  # 3 Travel check-ins left
    frame.to_csv(tmp_path / "checkins.csv", index=False)
    with pytest.warns(UserWarning, match=r"'Travel' \(fold 0: \d+, fold 1: \d+, fold 2: \d+\)") as record:
        prepare_data(synthetic_config(tmp_path))
    assert len([w for w in record if "training targets" in str(w.message)]) == 1
    # Common classes: no warning.
    synthetic_checkins(n_users=50, visits_per_user=16, n_pois=30).to_csv(tmp_path / "checkins.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        prepare_data(synthetic_config(tmp_path))


def test_balanced_weights_are_read_from_the_loss_and_the_trees(tmp_path):
    from nextpoi_lib.config import updated
    from nextpoi_lib.preparation import uses_balanced_weights

    base = synthetic_config(tmp_path)
    assert not uses_balanced_weights(updated(base, loss={"name": "cross_entropy", "class_weights": "none"}))
    assert uses_balanced_weights(updated(base, loss={"name": "cross_entropy", "class_weights": "balanced"}))
    assert uses_balanced_weights(updated(base, loss={"name": "focal", "focal_alpha": "balanced"}))
    # Logit adjustment ignores class_weights; the trees' balanced weights count, their sqrt weights do not.
    assert not uses_balanced_weights(updated(base, loss={"name": "logit_adjusted", "class_weights": "balanced"}))
    assert uses_balanced_weights(updated(base, loss={"name": "logit_adjusted"}, trees={"class_weight": "balanced"}))
    assert not uses_balanced_weights(updated(base, loss={"name": "logit_adjusted"},
                                             trees={"class_weight": "sqrt_balanced"}))
