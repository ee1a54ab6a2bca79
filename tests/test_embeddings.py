"""Tests of nextpoi_lib.embeddings: spatial graph, DGI embeddings, their cache and user tables.

Graphs are checked against edge sets worked out by hand (or by geometry: Euler's formula for
triangulations); DGI runs on a handful of POIs for a few epochs so the file stays fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial import ConvexHull

from nextpoi_lib import embeddings as emb
from nextpoi_lib.embeddings import (
    build_spatial_graph,
    cached_dgi_embeddings,
    compute_dgi_embeddings,
    embedding_cache_key,
    load_embedding_table,
)

# --------------------------------------------------------------------------------------------------
# helpers


def undirected(edge_index: torch.Tensor) -> set[tuple[int, int]]:
    """The undirected edge set {(min, max)} of an edge_index."""
    src, dst = edge_index.tolist()
    return {(min(a, b), max(a, b)) for a, b in zip(src, dst)}


def expected_edge_index(pairs: set[tuple[int, int]]) -> torch.Tensor:
    """Both directions of each pair, sorted by (source, destination)."""
    both = sorted({(a, b) for a, b in pairs} | {(b, a) for a, b in pairs})
    return torch.tensor(both, dtype=torch.long).T.reshape(2, -1)


def assert_well_formed(edge_index: torch.Tensor, n: int) -> None:
    assert edge_index.dtype == torch.long
    assert edge_index.shape[0] == 2
    src, dst = edge_index.tolist()
    pairs = list(zip(src, dst))
    assert all(a != b for a, b in pairs), "self loop"
    assert len(set(pairs)) == len(pairs), "duplicate edge"
    assert set(pairs) == {(b, a) for a, b in pairs}, "not symmetric"
    assert pairs == sorted(pairs), "not sorted by (source, destination)"
    assert all(0 <= v < n for v in src + dst)


# Near the equator a degree of longitude and of latitude are about the same length, so hand-made
# shapes keep their geometry after the projection.
SQUARE_LAT = np.array([0.0, 0.0, 1.0, 1.0, 0.5])
SQUARE_LON = np.array([0.0, 1.0, 0.0, 1.0, 0.5])
# 0 = (0,0), 1 = (0,1), 2 = (1,0), 3 = (1,1) corners, 4 = centre. Four sides plus four spokes to
# the centre; the diagonals cross at the centre, so they are not Delaunay edges.
SQUARE_EDGES = {(0, 1), (0, 2), (1, 3), (2, 3), (0, 4), (1, 4), (2, 4), (3, 4)}


# --------------------------------------------------------------------------------------------------
# build_spatial_graph


def test_delaunay_square_with_centre_gives_sides_and_spokes():
    edge_index = build_spatial_graph(SQUARE_LAT, SQUARE_LON, method="delaunay")
    assert torch.equal(edge_index, expected_edge_index(SQUARE_EDGES))
    assert edge_index.shape == (2, 16)


def test_delaunay_edge_count_matches_euler_formula_on_random_points():
    # A Delaunay triangulation of n points in general position, h of them on the convex hull,
    # has exactly 3n - 3 - h edges.
    rng = np.random.default_rng(3)
    lat = 45.0 + rng.uniform(0, 0.1, 60)
    lon = 7.0 + rng.uniform(0, 0.1, 60)
    edge_index = build_spatial_graph(lat, lon)
    assert_well_formed(edge_index, 60)
    h = len(ConvexHull(np.column_stack([lon * np.cos(np.radians(lat.mean())), lat])).vertices)
    assert len(undirected(edge_index)) == 3 * 60 - 3 - h
    assert torch.equal(edge_index, build_spatial_graph(lat, lon)), "not deterministic"


def test_knn_k1_on_a_line_gives_known_neighbours_and_is_symmetric():
    lon = np.array([0.0, 1.0, 3.0, 7.0])
    lat = np.zeros(4)
    # Nearest: 0->1, 1->0, 2->1 (2 < 4), 3->2.
    edge_index = build_spatial_graph(lat, lon, method="knn", knn_k=1)
    assert torch.equal(edge_index, expected_edge_index({(0, 1), (1, 2), (2, 3)}))
    assert_well_formed(edge_index, 4)
    # k=2: 0->{1,2}, 1->{0,2}, 2->{1,0}, 3->{2,1}.
    edge_index = build_spatial_graph(lat, lon, method="knn", knn_k=2)
    assert undirected(edge_index) == {(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)}


def test_knn_k_is_capped_at_n_minus_one():
    edge_index = build_spatial_graph(np.zeros(3), np.array([0.0, 1.0, 2.0]), method="knn", knn_k=10)
    assert undirected(edge_index) == {(0, 1), (0, 2), (1, 2)}


def test_projection_shrinks_longitude_by_cos_latitude():
    # A 1 deg x 0.7 deg rectangle at 60 deg north: in degrees the north-south sides are shorter,
    # but a degree of longitude there is only ~0.49 of a degree of latitude, so in metres the
    # east-west sides (A-B, C-D) are the shorter ones.
    lat = np.array([60.0, 60.0, 60.7, 60.7])
    lon = np.array([0.0, 1.0, 0.0, 1.0])
    edge_index = build_spatial_graph(lat, lon, method="knn", knn_k=1)
    assert undirected(edge_index) == {(0, 1), (2, 3)}


def test_duplicate_coordinates_are_connected_to_their_representative():
    # Square + centre as before, plus 5 = copy of the centre and 6 = copy of corner 0.
    lat = np.append(SQUARE_LAT, [0.5, 0.0])
    lon = np.append(SQUARE_LON, [0.5, 0.0])
    edge_index = build_spatial_graph(lat, lon)
    assert_well_formed(edge_index, 7)
    assert undirected(edge_index) == SQUARE_EDGES | {(4, 5), (0, 6)}


def test_collinear_points_fall_back_to_knn_with_a_warning():
    lat = np.zeros(4)
    lon = np.array([0.0, 1.0, 3.0, 7.0])
    with pytest.warns(RuntimeWarning, match="nearest neighbours"):
        edge_index = build_spatial_graph(lat, lon, method="delaunay", knn_k=1)
    assert undirected(edge_index) == {(0, 1), (1, 2), (2, 3)}


def test_fewer_than_three_distinct_locations_fall_back_and_connect_duplicates():
    lat = np.array([0.0, 0.0, 0.0, 1.0])
    lon = np.array([0.0, 0.0, 0.0, 1.0])
    with pytest.warns(RuntimeWarning, match="2 distinct"):
        edge_index = build_spatial_graph(lat, lon)
    # 0, 1, 2 share a location (representative 0); 3 is the other location.
    assert undirected(edge_index) == {(0, 1), (0, 2), (0, 3)}


def test_single_poi_has_no_edges():
    assert build_spatial_graph(np.array([1.0]), np.array([2.0])).shape == (2, 0)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"method": "transitions"}, "Unknown graph method"),
        ({"knn_k": 0}, "knn_k"),
    ],
)
def test_graph_rejects_bad_settings(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_spatial_graph(SQUARE_LAT, SQUARE_LON, **kwargs)


def test_graph_rejects_nan_coordinates():
    with pytest.raises(ValueError, match="1 POI"):
        build_spatial_graph(np.array([0.0, np.nan, 1.0]), np.array([0.0, 1.0, 2.0]))


# --------------------------------------------------------------------------------------------------
# compute_dgi_embeddings

CATS = ["Food", "Shop", "Travel"]
FAST = dict(dim=8, epochs=15)


def small_pois(n: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "poi_id": [f"p{i:02d}" for i in range(n)],
            "latitude": 41.0 + rng.uniform(0, 0.02, n),
            "longitude": 2.0 + rng.uniform(0, 0.02, n),
            "category": [CATS[i % 3] for i in range(n)],
        }
    )


def test_dgi_output_shape_dtype_index_order_and_finite():
    pois = small_pois().sample(frac=1.0, random_state=1)  # rows not in id order
    out = compute_dgi_embeddings(pois, CATS, **FAST)
    assert out.shape == (12, 8)
    assert list(out.columns) == [str(i) for i in range(8)]
    assert (out.dtypes == np.float32).all()
    assert out.index.name == "poi_id"
    assert list(out.index) == list(pois["poi_id"])
    assert np.isfinite(out.to_numpy()).all()


def test_dgi_same_seed_identical_different_seed_different():
    pois = small_pois()
    a = compute_dgi_embeddings(pois, CATS, seed=5, **FAST)
    b = compute_dgi_embeddings(pois, CATS, seed=5, **FAST)
    c = compute_dgi_embeddings(pois, CATS, seed=6, **FAST)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    assert not np.allclose(a.to_numpy(), c.to_numpy())


def test_dgi_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    compute_dgi_embeddings(small_pois(), CATS, **FAST)
    assert torch.equal(torch.rand(3), expected)


def test_dgi_vector_depends_only_on_the_spatial_neighbourhood():
    # Two identical 3-POI paths a degree apart (knn_k=1 on offsets 0, 1, 2.5 gives the path
    # 0-1-2). A one-layer GCN aggregates each POI's closed neighbourhood with weights
    # 1/sqrt(deg_i * deg_j), so whatever the learnt weights are: corresponding POIs of the two
    # paths are equal, and the two ends (Shop next to the Food middle, same degrees) are equal,
    # while the middle POI (Food, sees both Shops) differs.
    offsets = np.array([0.0, 0.001, 0.0025])
    pois = pd.DataFrame(
        {
            "poi_id": [1, 2, 3, 4, 5, 6],
            "latitude": np.concatenate([40 + offsets, 41 + offsets]),
            "longitude": np.zeros(6),
            "category": ["Shop", "Food", "Shop"] * 2,
        }
    )
    edge_index = build_spatial_graph(pois.latitude, pois.longitude, method="knn", knn_k=1)
    assert undirected(edge_index) == {(0, 1), (1, 2), (3, 4), (4, 5)}
    out = compute_dgi_embeddings(pois, CATS, graph="knn", knn_k=1, **FAST).to_numpy()
    np.testing.assert_allclose(out[:3], out[3:], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[0], out[2], rtol=0, atol=1e-6)
    assert np.abs(out[0] - out[1]).max() > 1e-3


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda p: p.iloc[0:0], "empty"),
        (lambda p: p.assign(latitude=[np.nan] + list(p.latitude[1:])), "missing or non-numeric latitude"),
        (lambda p: p.assign(category=["Bar"] + list(p.category[1:])), "Bar"),
        (lambda p: p.assign(poi_id=["p01"] + list(p.poi_id[1:])), "p01"),
        (lambda p: p.drop(columns="category"), "category"),
    ],
)
def test_dgi_rejects_bad_poi_tables(mutate, fragment):
    with pytest.raises(ValueError, match=fragment):
        compute_dgi_embeddings(mutate(small_pois()), CATS, **FAST)


# --------------------------------------------------------------------------------------------------
# cache


@pytest.fixture
def count_computes(monkeypatch):
    calls = []
    real = emb.compute_dgi_embeddings

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(emb, "compute_dgi_embeddings", counting)
    return calls


def test_cache_second_call_loads_from_disk(tmp_path, count_computes):
    pois = small_pois()
    first = cached_dgi_embeddings(pois, CATS, tmp_path, **FAST)
    key = embedding_cache_key(pois, CATS, **FAST)
    assert [p.name for p in tmp_path.iterdir()] == [f"dgi-{key[:16]}.parquet"]

    second = cached_dgi_embeddings(pois, CATS, tmp_path, **FAST)
    assert len(count_computes) == 1
    pd.testing.assert_frame_equal(first, second)

    # The same POIs in another row order hit the same file and come back in the new order.
    shuffled = pois.iloc[::-1]
    third = cached_dgi_embeddings(shuffled, CATS, tmp_path, **FAST)
    assert len(count_computes) == 1
    pd.testing.assert_frame_equal(third, first.iloc[::-1])


def test_cache_key_depends_on_settings_categories_and_content_only():
    pois = small_pois()
    base = embedding_cache_key(pois, CATS, **FAST)
    assert len(base) == 64
    # Defaults filled in: passing a default explicitly is the same input.
    assert embedding_cache_key(pois, CATS, graph="delaunay", seed=0, **FAST) == base
    # Where it runs and how loudly do not change the result.
    assert embedding_cache_key(pois, CATS, device="meta", progress=True, **FAST) == base
    assert embedding_cache_key(pois.iloc[::-1], CATS, **FAST) == base
    changed = [
        embedding_cache_key(pois, CATS, dim=8, epochs=16),
        embedding_cache_key(pois, CATS, seed=1, **FAST),
        embedding_cache_key(pois, CATS, graph="knn", **FAST),
        embedding_cache_key(pois, list(reversed(CATS)), **FAST),
        embedding_cache_key(pois.assign(latitude=pois.latitude + 1e-9), CATS, **FAST),
        embedding_cache_key(pois.assign(category=["Food"] * 12), CATS, **FAST),
    ]
    assert base not in changed
    assert len(set(changed)) == len(changed)


def test_cache_miss_on_changed_setting_recomputes(tmp_path, count_computes):
    pois = small_pois()
    cached_dgi_embeddings(pois, CATS, tmp_path, **FAST)
    cached_dgi_embeddings(pois, CATS, tmp_path, dim=8, epochs=10)
    assert len(count_computes) == 2
    assert len(list(tmp_path.glob("dgi-*.parquet"))) == 2
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith("dgi-")], "temp file left"


# --------------------------------------------------------------------------------------------------
# load_embedding_table


def string_typed_table() -> pd.DataFrame:
    # As our users store them: features as text next to a string label.
    return pd.DataFrame(
        {
            "placeid": [101, 102, 103],
            "category": ["Food", "Shop", "Food"],
            "0": ["0.5", "-1.25", "3"],
            "1": ["1e-3", "2.0", "-0.0"],
            "2": [1.0, 2.0, 3.0],
        }
    )


def test_load_parquet_with_string_typed_columns(tmp_path):
    path = tmp_path / "vectors.parquet"
    string_typed_table().to_parquet(path)
    out = load_embedding_table(path, dim=3)
    expected = pd.DataFrame(
        np.array([[0.5, 0.001, 1.0], [-1.25, 2.0, 2.0], [3.0, 0.0, 3.0]], dtype=np.float32),
        index=pd.Index(["101", "102", "103"], name="poi_id"),
        columns=["0", "1", "2"],
    )
    pd.testing.assert_frame_equal(out, expected)


def test_load_csv_keeps_ids_as_written(tmp_path):
    path = tmp_path / "vectors.csv"
    path.write_text("venue,1,0\n007,2.5,1.5\n010,4,3\n")
    out = load_embedding_table(path, id_column="venue")
    assert list(out.index) == ["007", "010"]
    assert list(out.columns) == ["0", "1"]
    np.testing.assert_array_equal(out.to_numpy(), np.array([[1.5, 2.5], [3.0, 4.0]], np.float32))


def test_load_integer_ids_stored_as_float_lose_the_decimal_point(tmp_path):
    path = tmp_path / "vectors.parquet"
    pd.DataFrame({"placeid": [5.0, 6.0], "0": [1.0, 2.0]}).to_parquet(path)
    assert list(load_embedding_table(path).index) == ["5", "6"]


def write(tmp_path, frame: pd.DataFrame) -> str:
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    return str(path)


@pytest.mark.parametrize(
    "frame, kwargs, fragments",
    [
        (string_typed_table().drop(columns="placeid"), {}, ["'placeid'", "category"]),
        (string_typed_table()[["placeid", "category"]], {}, ["no feature columns"]),
        (string_typed_table().drop(columns="1"), {}, ["missing 1", "unexpected 2"]),
        (string_typed_table(), {"dim": 4}, ["3 feature columns", "dim=4"]),
        (string_typed_table().assign(**{"1": ["1", "x", "2"]}), {}, ["'1'"]),
        (
            string_typed_table().assign(**{"0": [np.nan, 1.0, np.inf]}),
            {},
            ["2 row(s)", "101, 103"],
        ),
        (string_typed_table().assign(placeid=[7, 7, 8]), {}, ["1 id(s)", "7"]),
    ],
    ids=["no-id", "no-features", "gap", "dim", "not-numeric", "nan-inf", "duplicate-id"],
)
def test_load_errors_name_the_problem(tmp_path, frame, kwargs, fragments):
    path = write(tmp_path, frame)
    with pytest.raises(ValueError) as info:
        load_embedding_table(path, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_load_rejects_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_embedding_table(tmp_path / "nope.parquet")
    other = tmp_path / "vectors.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="unsupported file type '.json'"):
        load_embedding_table(other)


@pytest.mark.parametrize(
    "frame, kwargs, fragments",
    [
        (string_typed_table(), {"id_column": "venue"}, ["no id column 'venue'", "Set embeddings.id_column"]),
        (string_typed_table(), {"dim": 4}, ["embeddings.dim=4", "Set embeddings.dim: 3"]),
        (string_typed_table().assign(**{"0": [np.nan, 1.0, 2.0]}), {}, ["NaN or infinite", "embeddings.path"]),
        (string_typed_table().assign(placeid=[7, 7, 8]), {}, ["more than once", "embeddings.path"]),
    ],
    ids=["id-column", "width", "nan", "duplicate-id"],
)
def test_load_errors_are_data_errors_naming_the_embeddings_key(tmp_path, frame, kwargs, fragments):
    from nextpoi_lib.data import DataError

    path = write(tmp_path, frame)
    with pytest.raises(DataError) as info:
        load_embedding_table(path, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert "Pass id_column" not in str(info.value)


def test_load_file_problems_are_data_errors(tmp_path):
    from nextpoi_lib.data import DataError

    with pytest.raises(DataError, match="does not exist.*embeddings.path"):
        load_embedding_table(tmp_path / "nope.parquet")
    with pytest.raises(DataError, match="is a directory.*embeddings.path"):
        load_embedding_table(tmp_path)
    fake = tmp_path / "vectors.parquet"
    fake.write_text("placeid,0\n1,0.5\n")
    with pytest.raises(DataError, match=r"vectors.parquet \(embeddings.path\) cannot be read.*a parquet file"):
        load_embedding_table(fake)
    binary = tmp_path / "vectors.csv"
    binary.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(DataError, match=r"vectors.csv \(embeddings.path\) cannot be read.*UTF-8 text"):
        load_embedding_table(binary)
