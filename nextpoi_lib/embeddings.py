"""POI embeddings: computed with Deep Graph Infomax over a spatial POI graph, or loaded from a table.

Two sources of per-POI vectors are supported:

* ``compute_dgi_embeddings`` / ``cached_dgi_embeddings`` train a Deep Graph Infomax (DGI) model on a
  graph whose nodes are POIs and whose edges join POIs that are spatial neighbours (Delaunay
  triangulation or k nearest neighbours). The node features are the one-hot POI category, so the
  learnt vector of a POI summarises the categories found around it.
* ``load_embedding_table`` reads vectors a user computed elsewhere (parquet or CSV with an id column
  and feature columns named ``"0"`` .. ``"D-1"``).

Both return the same shape of result: a float32 DataFrame indexed by POI id (index name ``poi_id``)
with columns ``"0"`` .. ``"D-1"``.

The graph is built from coordinates only, never from visit transitions. An edge "A was followed by B
in some check-in sequence" lets the message passing copy information about B into A's vector; at
prediction time the vector of the last visit then already carries the next visit, and our users
measured about 29 points of inflated macro-F1 from exactly that leak. Coordinates are known before
any visit happens, so a spatial graph cannot leak the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .data import DataError
from .progress import progress_step

__all__ = [
    "build_spatial_graph",
    "compute_dgi_embeddings",
    "cached_dgi_embeddings",
    "embedding_cache_key",
    "load_embedding_table",
]

GRAPH_METHODS = ("delaunay", "knn")

# Bump when the computation changes in a way that changes the vectors for the same settings, so
# that old cache files are no longer hit.
_CACHE_FORMAT_VERSION = 1

# Settings that change where or how loudly the computation runs, not its result.
_SETTINGS_NOT_IN_KEY = ("device", "progress")

_POI_COLUMNS = ("poi_id", "latitude", "longitude", "category")

_FEATURE_NAME = re.compile(r"^[0-9]+$")


# --------------------------------------------------------------------------------------------------
# Spatial graph
# --------------------------------------------------------------------------------------------------


def _project(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Equirectangular projection around the mean latitude, as an (n, 2) array of (x, y) degrees.

    A degree of longitude is cos(latitude) times shorter than a degree of latitude; without the
    correction, Delaunay and kNN would prefer north-south neighbours (at 40 degrees north an
    east-west degree is only 0.77 of a north-south one). One city spans a few tenths of a degree,
    so a single scale factor is accurate enough. Inputs spanning the antimeridian are not handled.
    """
    scale = np.cos(np.radians(np.mean(latitude)))
    return np.column_stack([longitude * scale, latitude])


def _finalise_edges(src: np.ndarray, dst: np.ndarray, n: int) -> torch.Tensor:
    """Turn candidate pairs into a sorted, undirected, loop-free, duplicate-free edge_index."""
    src = np.asarray(src, dtype=np.int64).reshape(-1)
    dst = np.asarray(dst, dtype=np.int64).reshape(-1)
    keep = src != dst
    lo = np.minimum(src[keep], dst[keep])
    hi = np.maximum(src[keep], dst[keep])
    # One integer key per undirected pair makes deduplication and sorting a single np.unique.
    pairs = np.unique(lo * n + hi)
    lo, hi = pairs // n, pairs % n
    both_src = np.concatenate([lo, hi])
    both_dst = np.concatenate([hi, lo])
    order = np.lexsort((both_dst, both_src))  # by source, then destination
    edge_index = np.stack([both_src[order], both_dst[order]])
    return torch.from_numpy(np.ascontiguousarray(edge_index))


def _knn_pairs(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed pairs (i, j) where j is one of the k nearest other points of i."""
    from scipy.spatial import cKDTree

    n = len(points)
    k = min(k, n - 1)
    if k < 1:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    # Ask for k + 1 because the query point itself is normally its own nearest neighbour.
    _, idx = cKDTree(points).query(points, k=k + 1)
    idx = np.asarray(idx, dtype=np.int64).reshape(n, k + 1)
    rows = np.arange(n)[:, None]
    not_self = idx != rows
    # With several points at distance 0 the point itself may be missing from its own result;
    # then drop the farthest candidate instead, so that every row keeps exactly k neighbours.
    self_missing = not_self.all(axis=1)
    not_self[self_missing, -1] = False
    neighbours = idx[not_self].reshape(n, k)
    return np.repeat(np.arange(n), k), neighbours.reshape(-1)


def build_spatial_graph(
    latitude: np.ndarray,
    longitude: np.ndarray,
    method: str = "delaunay",
    knn_k: int = 10,
) -> torch.Tensor:
    """Spatial neighbour graph of POIs as an undirected ``edge_index`` (LongTensor, shape [2, E]).

    ``method="delaunay"`` joins POIs that share a Delaunay triangle (a parameter-free graph with
    about 3 edges per POI that adapts to density: long edges in sparse areas, short ones downtown).
    ``method="knn"`` joins each POI to its ``knn_k`` nearest POIs, symmetrised.

    Both directions of every edge are present, there are no self loops and no duplicate edges, and
    the edges are sorted by (source, destination), so the same coordinates always give the same
    tensor. Node i is the i-th entry of the input arrays.

    The graph is built from coordinates only, never from visit transitions: transition edges leak
    the next visit into the last visit's vector (see the module docstring).
    """
    lat = np.asarray(latitude, dtype=np.float64)
    lon = np.asarray(longitude, dtype=np.float64)
    if lat.ndim != 1 or lon.ndim != 1 or lat.shape != lon.shape:
        raise ValueError(
            f"latitude and longitude must be 1-D arrays of the same length; got shapes {lat.shape} "
            f"and {lon.shape}. Pass one value per POI, e.g. pois['latitude'].to_numpy()."
        )
    if not (np.isfinite(lat).all() and np.isfinite(lon).all()):
        n_bad = int((~(np.isfinite(lat) & np.isfinite(lon))).sum())
        raise ValueError(
            f"{n_bad} POI(s) have a missing or infinite latitude/longitude, so they cannot be "
            f"placed in the spatial graph. Drop those POIs or fill in their coordinates first."
        )
    if method not in GRAPH_METHODS:
        raise ValueError(
            f"Unknown graph method {method!r}. Use one of {', '.join(GRAPH_METHODS)}."
        )
    if isinstance(knn_k, bool) or not isinstance(knn_k, (int, np.integer)) or knn_k < 1:
        raise ValueError(f"knn_k must be a positive integer; got {knn_k!r}.")

    n = len(lat)
    if n < 2:
        return torch.empty((2, 0), dtype=torch.long)
    points = _project(lat, lon)

    if method == "knn":
        src, dst = _knn_pairs(points, int(knn_k))
        return _finalise_edges(src, dst, n)

    # Delaunay. Qhull cannot triangulate repeated points (it drops them silently), and POIs often
    # share coordinates (several shops in one building). Triangulate the distinct locations and
    # attach every other POI at a location to that location's first POI (its representative).
    unique_points, representative, inverse = np.unique(
        points, axis=0, return_index=True, return_inverse=True
    )
    inverse = inverse.reshape(-1)  # numpy 2.0.0 returned a 2-D inverse for axis=0
    own_rep = representative[inverse]
    dup_src = np.flatnonzero(own_rep != np.arange(n))
    dup_dst = own_rep[dup_src]

    m = len(unique_points)
    uniq_src: np.ndarray
    uniq_dst: np.ndarray
    fallback_reason = None
    if m < 3:
        fallback_reason = f"only {m} distinct location(s)"
    else:
        from scipy.spatial import Delaunay, QhullError

        try:
            tri = Delaunay(unique_points)
        except QhullError:
            fallback_reason = "the locations are collinear (or otherwise degenerate)"
    if fallback_reason is not None:
        k = min(int(knn_k), m - 1)
        warnings.warn(
            f"Delaunay triangulation is impossible ({fallback_reason}); using the {k} nearest "
            f"neighbours instead. Pass method='knn' to choose this explicitly.",
            RuntimeWarning,
            stacklevel=2,
        )
        uniq_src, uniq_dst = _knn_pairs(unique_points, int(knn_k))
    else:
        s = tri.simplices
        uniq_src = np.concatenate([s[:, 0], s[:, 1], s[:, 2]])
        uniq_dst = np.concatenate([s[:, 1], s[:, 2], s[:, 0]])
        # Qhull may leave nearly coincident points out of every triangle ("coplanar" points);
        # attach each one to the triangulation vertex it reports as nearest, so no POI is isolated.
        if len(tri.coplanar):
            uniq_src = np.concatenate([uniq_src, tri.coplanar[:, 0]])
            uniq_dst = np.concatenate([uniq_dst, tri.coplanar[:, 2]])

    src = np.concatenate([representative[uniq_src], dup_src])
    dst = np.concatenate([representative[uniq_dst], dup_dst])
    return _finalise_edges(src, dst, n)


# --------------------------------------------------------------------------------------------------
# Deep Graph Infomax
# --------------------------------------------------------------------------------------------------


def _examples(values, limit: int = 5) -> str:
    shown = [str(v) for v in list(values)[:limit]]
    more = len(values) - len(shown)
    return ", ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def _validate_pois(pois: pd.DataFrame, categories: list[str]) -> None:
    """Raise ValueError with a fix-it message when the POI table cannot be embedded."""
    if not isinstance(pois, pd.DataFrame):
        raise ValueError(
            f"pois must be a pandas DataFrame with columns {', '.join(_POI_COLUMNS)}; "
            f"got {type(pois).__name__}."
        )
    missing = [c for c in _POI_COLUMNS if c not in pois.columns]
    if missing:
        raise ValueError(
            f"The POI table lacks column(s) {', '.join(missing)} (found: "
            f"{', '.join(map(str, pois.columns))}). Provide one row per POI with columns "
            f"{', '.join(_POI_COLUMNS)}; rename your columns if they use other names."
        )
    if len(pois) == 0:
        raise ValueError(
            "The POI table is empty, so there is nothing to embed. Check that the data set was "
            "loaded and that no earlier filter removed every POI."
        )
    cats = list(categories)
    if not cats or len(set(cats)) != len(cats):
        raise ValueError(
            f"categories must be a non-empty list of distinct names (it fixes the one-hot feature "
            f"order); got {cats!r}. Pass the class list of the data set, each name once."
        )
    ids = pois["poi_id"]
    if ids.isna().any():
        raise ValueError(
            f"{int(ids.isna().sum())} POI row(s) have no poi_id. Every POI needs an id to attach "
            f"its vector to; drop those rows or give them ids."
        )
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        raise ValueError(
            f"poi_id must be unique, but {dup.nunique()} id(s) appear more than once "
            f"(e.g. {_examples(dup.unique())}). Keep one row per POI, e.g. with "
            f"pois.drop_duplicates('poi_id')."
        )
    for col in ("latitude", "longitude"):
        values = pd.to_numeric(pois[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"{int(bad.sum())} POI(s) have a missing or non-numeric {col} (e.g. poi_id "
                f"{_examples(ids[bad].tolist())}), so they cannot be placed in the spatial graph. "
                f"Drop those POIs or fill in their coordinates."
            )
        limit = 90.0 if col == "latitude" else 180.0
        if (np.abs(values) > limit).any():
            n_out = int((np.abs(values) > limit).sum())
            raise ValueError(
                f"{n_out} POI(s) have a {col} outside [-{limit:g}, {limit:g}] (e.g. poi_id "
                f"{_examples(ids[np.abs(values) > limit].tolist())}). Coordinates must be decimal "
                f"degrees; check that latitude and longitude are not swapped."
            )
    known = set(cats)
    unknown_mask = ~pois["category"].isin(known)
    if unknown_mask.any():
        unknown = pois.loc[unknown_mask, "category"]
        raise ValueError(
            f"{int(unknown_mask.sum())} POI(s) have a category that is not in categories: "
            f"{_examples(pd.unique(unknown.astype(str)))}. Known categories: {_examples(cats, 20)}. "
            f"Map those POIs to one of the known categories or drop them."
        )


class _GCNEncoder(torch.nn.Module):
    """One GCN layer followed by a PReLU, the encoder of the original DGI paper."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        from torch_geometric.nn import GCNConv

        # cached=True: the graph never changes during full-batch training (the corruption only
        # permutes features), so the normalised adjacency is computed once instead of per pass.
        self.conv = GCNConv(in_channels, dim, cached=True)
        self.act = torch.nn.PReLU(dim)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        # adjacency: an edge_index or a sparse (transposed) adjacency matrix; GCNConv takes both.
        return self.act(self.conv(x, adjacency))


def _mean_sigmoid_summary(z: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """Graph summary of DGI: the sigmoid of the mean node vector."""
    return torch.sigmoid(z.mean(dim=0))


@contextlib.contextmanager
def _quiet_sparse_warnings():
    """Silence torch's notices about sparse CSR tensors (beta status, unchecked invariants).

    They are informational, fire on every call and would bury the warnings that matter; the CSR
    matrices here are built by torch_geometric from a validated edge_index.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly")
        yield


def train_dgi(x: torch.Tensor, edge_index: torch.Tensor, dim: int, epochs: int, learning_rate: float, seed: int,
              device: str = "cpu", progress: bool = False, label: str = "DGI") -> np.ndarray:
    """Full-batch Deep Graph Infomax (one GCN layer + PReLU encoder, mean-sigmoid summary, Adam) on the node
    features `x` [n, F] over the symmetric graph `edge_index` [2, E]; returns the [n, dim] float32 node vectors.
    Used by the spatial graph here and by the per-fold transition graphs (`transition_embeddings`). Same inputs
    and seed give bit-identical vectors on CPU; the caller's torch random state is left untouched."""
    from torch_geometric.nn import DeepGraphInfomax
    from torch_geometric.utils import to_torch_csr_tensor

    n = x.shape[0]
    dev = torch.device(device)
    x = x.to(dev)
    # GCNConv also takes the adjacency as a sparse CSR matrix; on CPU its sparse-dense product is
    # several times faster than the scatter-based message passing over edge_index (about 7x on a
    # 15k-POI Delaunay graph), and it sums each row in a fixed order, so results stay
    # reproducible. GCNConv reads the matrix as transposed (rows are targets); the graph is
    # symmetric, so edge_index serves as is.
    with _quiet_sparse_warnings():
        adjacency = to_torch_csr_tensor(edge_index, size=(n, n)).to(dev)

    started = time.perf_counter()
    # fork_rng restores the caller's CPU random state afterwards, so computing embeddings does not
    # change what a later seeded experiment draws. Only the CPU generator is seeded: parameters are
    # initialised on CPU before moving to the device, and the permutation uses its own CPU
    # generator, so the random draws are the same whatever the device.
    with torch.random.fork_rng(devices=[]), _quiet_sparse_warnings():
        torch.default_generator.manual_seed(int(seed))
        permutation_rng = torch.Generator(device="cpu").manual_seed(int(seed))

        def corruption(features: torch.Tensor, edges):
            # Standard DGI corruption: shuffle which node carries which features, keep the graph.
            perm = torch.randperm(features.size(0), generator=permutation_rng)
            return features[perm.to(features.device)], edges

        model = DeepGraphInfomax(
            hidden_channels=int(dim),
            encoder=_GCNEncoder(x.shape[1], int(dim)),
            summary=_mean_sigmoid_summary,
            corruption=corruption,
        ).to(dev)
        optimizer = torch.optim.Adam(model.parameters(), lr=float(learning_rate))

        # Live progress bars (nextpoi batch): one step per DGI epoch, to the environment's event file if any.
        progress_step(None, "embeddings", 0, int(epochs), f"{label} on {n} POIs")
        for epoch in range(1, int(epochs) + 1):
            model.train()
            optimizer.zero_grad()
            pos_z, neg_z, summary = model(x, adjacency)
            loss = model.loss(pos_z, neg_z, summary)
            loss.backward()
            optimizer.step()
            progress_step(None, "embeddings", epoch, int(epochs), f"{label} epoch {epoch}/{epochs}")
            if progress and (epoch == 1 or epoch % 50 == 0 or epoch == epochs):
                print(
                    f"{label} epoch {epoch}/{epochs}  loss {loss.item():.4f}  "
                    f"({time.perf_counter() - started:.1f}s)",
                    flush=True,
                )

        model.eval()
        with torch.no_grad():
            return model.encoder(x, adjacency).detach().to("cpu", torch.float32).numpy()


def compute_dgi_embeddings(
    pois: pd.DataFrame,
    categories: list[str],
    dim: int = 64,
    graph: str = "delaunay",
    knn_k: int = 10,
    epochs: int = 200,
    learning_rate: float = 1e-3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> pd.DataFrame:
    """Train Deep Graph Infomax on the spatial POI graph and return one vector per POI.

    ``pois`` has one row per POI with columns ``poi_id, latitude, longitude, category``; the node
    features are the one-hot category in ``categories`` order. The graph is
    ``build_spatial_graph(..., method=graph, knn_k=knn_k)``. Training is full batch with Adam.

    Returns a DataFrame indexed by ``poi_id`` (index name ``poi_id``, rows in the order of
    ``pois``) with float32 columns ``"0"`` .. ``str(dim - 1)``. On CPU the same inputs and seed
    give bit-identical vectors. The caller's global torch random state is left untouched.
    """
    _validate_pois(pois, categories)
    for name, value, minimum in (("dim", dim, 1), ("epochs", epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number; got {learning_rate!r}.")

    cats = list(categories)
    n = len(pois)
    lat = pd.to_numeric(pois["latitude"]).to_numpy(dtype=np.float64)
    lon = pd.to_numeric(pois["longitude"]).to_numpy(dtype=np.float64)
    edge_index = build_spatial_graph(lat, lon, method=graph, knn_k=knn_k)

    cat_index = pd.Index(cats).get_indexer(pois["category"])
    x = torch.zeros((n, len(cats)), dtype=torch.float32)
    x[torch.arange(n), torch.from_numpy(cat_index.astype(np.int64))] = 1.0

    z = train_dgi(x, edge_index, dim=int(dim), epochs=int(epochs), learning_rate=float(learning_rate),
                  seed=int(seed), device=device, progress=progress, label="DGI")
    if not np.isfinite(z).all():
        raise RuntimeError(
            "DGI training diverged (the embeddings contain NaN or inf). Lower learning_rate "
            "or the number of epochs and run again."
        )
    return pd.DataFrame(
        z,
        index=pd.Index(pois["poi_id"].to_numpy(), name="poi_id"),
        columns=[str(i) for i in range(z.shape[1])],
    )


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------

# Captured at import so that the cache key stays the same when tests monkeypatch the function.
_COMPUTE_SIGNATURE = inspect.signature(compute_dgi_embeddings)


def _resolved_settings(settings: dict) -> dict:
    """Settings with every default filled in, so that passing a default explicitly or leaving it
    out gives the same key; unknown names raise TypeError like a wrong keyword would."""
    bound = _COMPUTE_SIGNATURE.bind(None, None, **settings)
    bound.apply_defaults()
    resolved = dict(bound.arguments)
    for name in ("pois", "categories", *_SETTINGS_NOT_IN_KEY):
        resolved.pop(name, None)
    return resolved


def _sorted_order(pois: pd.DataFrame) -> np.ndarray:
    """Row positions of ``pois`` sorted by poi_id (stable), the canonical order of the cache."""
    return pd.Series(pois["poi_id"].to_numpy()).argsort(kind="stable").to_numpy()


def embedding_cache_key(pois: pd.DataFrame, categories: list[str], **settings) -> str:
    """sha256 hex digest (64 characters) identifying the DGI embeddings of this input.

    It covers the POI table content (poi_id, latitude, longitude, category, taken in poi_id order so
    that row order does not matter), the category list (its order fixes the features) and the
    settings of ``compute_dgi_embeddings`` with defaults filled in, except ``device`` and
    ``progress``, which do not change the result.
    """
    _validate_pois(pois, categories)
    order = _sorted_order(pois)
    table = pois.iloc[order]
    h = hashlib.sha256()

    def feed(label: str, payload: bytes) -> None:
        # Label and length prefix keep the fields apart, so no two inputs concatenate alike.
        h.update(f"{label}:{len(payload)}:".encode())
        h.update(payload)

    meta = {
        "format": _CACHE_FORMAT_VERSION,
        "categories": [str(c) for c in categories],
        "settings": _resolved_settings(settings),
        # The id dtype changes the sort order (10 < 9 as text), so it belongs to the identity.
        "poi_id_dtype": str(pois["poi_id"].dtype),
    }
    feed("meta", json.dumps(meta, sort_keys=True, default=str).encode())
    feed("poi_id", "\x1f".join(map(str, table["poi_id"].tolist())).encode())
    for col in ("latitude", "longitude"):
        values = pd.to_numeric(table[col]).to_numpy(dtype="<f8")
        feed(col, values.tobytes())
    feed("category", "\x1f".join(map(str, table["category"].tolist())).encode())
    return h.hexdigest()


def cached_dgi_embeddings(
    pois: pd.DataFrame, categories: list[str], cache_dir: Path, **settings
) -> pd.DataFrame:
    """``compute_dgi_embeddings`` with a disk cache in ``cache_dir``.

    The file is ``<cache_dir>/dgi-<first 16 hex digits of embedding_cache_key>.parquet``, holding the
    vectors in poi_id order. A hit returns them in the order of ``pois``; a miss computes, writes
    the file atomically (temporary file, then os.replace, so an interrupted run never leaves a
    truncated file that a later run would trust) and returns the computed vectors.
    """
    key = embedding_cache_key(pois, categories, **settings)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"dgi-{key[:16]}.parquet"
    order = _sorted_order(pois)
    ids = pd.Index(pois["poi_id"].to_numpy(), name="poi_id")

    if path.exists():
        stored = pd.read_parquet(path)
        expected_dim = _resolved_settings(settings)["dim"]
        sorted_ids = ids[order].astype(str)
        # Guard against a 16-digit prefix collision or a file edited by hand: the stored ids must be
        # exactly ours, in the same canonical order.
        if stored.shape == (len(pois), expected_dim) and np.array_equal(
            stored.index.astype(str).to_numpy(), sorted_ids.to_numpy()
        ):
            values = np.empty((len(pois), stored.shape[1]), dtype=np.float32)
            values[order] = stored.to_numpy(dtype=np.float32)
            return pd.DataFrame(values, index=ids, columns=[str(c) for c in stored.columns])
        warnings.warn(
            f"Cache file {path} does not match this POI table; recomputing and overwriting it.",
            RuntimeWarning,
            stacklevel=2,
        )

    embeddings = compute_dgi_embeddings(pois, categories, **settings)

    write_parquet_atomic(embeddings.iloc[order], path)
    return embeddings


def write_parquet_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write `frame` to `path` under a temporary name beside it, then rename: a cache file is whole or absent,
    also when two processes write it at once or one is killed while writing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        frame.to_parquet(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------
# User tables
# --------------------------------------------------------------------------------------------------


def _read_table(path: Path, id_column: str) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".pq", ".csv"):
        raise DataError(
            f"Cannot read embedding table {path} (embeddings.path): unsupported file type "
            f"{path.suffix!r}. Save the table as .parquet or .csv (id column {id_column!r} plus "
            f"columns '0', '1', ...)."
        )
    if path.stat().st_size == 0:
        raise DataError(f"Embedding table {path} (embeddings.path) is empty (0 bytes). Write the POI "
                        f"vectors to it, or point embeddings.path at the right file.")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        # Read everything as text: ids keep leading zeros and exact spelling (they must match the
        # check-in table's ids), and feature columns go through the same to_numeric check as
        # string-typed parquet columns.
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    except pd.errors.EmptyDataError as error:
        raise DataError(f"Embedding table {path} (embeddings.path) has no columns or rows. Write the POI "
                        f"vectors to it, or point embeddings.path at the right file.") from error
    except (ValueError, OSError) as error:  # UnicodeDecodeError, ParserError, pyarrow's ArrowInvalid
        kind = "a parquet file" if suffix != ".csv" else "comma-separated UTF-8 text with a header row"
        raise DataError(
            f"Embedding table {path} (embeddings.path) cannot be read ({type(error).__name__}: "
            f"{str(error).split('. ')[0][:150]}). It should be {kind}, with an id column (embeddings.id_column) and "
            f"columns '0', '1', ...; check the file and its suffix."
        ) from error


def load_embedding_table(
    path: str | Path, id_column: str = "placeid", dim: int | None = None
) -> pd.DataFrame:
    """Read per-POI vectors from a parquet or CSV file.

    The file holds an id column (``id_column``) and feature columns named ``"0"`` .. ``"D-1"``;
    other columns (e.g. ``category``) are ignored. Feature columns stored as strings are converted
    to numbers. Returns a float32 DataFrame indexed by the ids as strings (index name ``poi_id``)
    with columns ``"0"`` .. ``"D-1"``. Raises DataError (a ValueError) with the problem and its fix when the file
    is missing or malformed, when ``dim`` is given and differs from D, for NaN/inf values and for
    duplicate ids.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"Embedding table {path} is a directory, not a file. Point embeddings.path at "
                        f"the parquet or CSV file of vectors.")
    if not path.is_file():
        raise DataError(
            f"Embedding table {path} does not exist (or is not a file). Check embeddings.path in "
            f"the parameter file; relative paths are resolved from the current directory "
            f"({Path.cwd()})."
        )
    table = _read_table(path, id_column)
    where = f"Embedding table {path} (embeddings.path)"

    if id_column not in table.columns:
        raise DataError(
            f"{where} has no id column {id_column!r}; columns found: "
            f"{_examples([str(c) for c in table.columns], 20)}. Set embeddings.id_column to the "
            f"column that holds the POI ids."
        )
    if len(table) == 0:
        raise DataError(f"{where} has no rows. Write at least one POI vector to it.")

    feature_names = [c for c in table.columns if isinstance(c, str) and _FEATURE_NAME.match(c)]
    if not feature_names:
        raise DataError(
            f"{where} has no feature columns named '0', '1', ...; columns found: "
            f"{_examples([str(c) for c in table.columns], 20)}. Name the vector components "
            f"'0' .. 'D-1' (e.g. df.columns = [str(i) for i in range(D)])."
        )
    numbers = sorted(int(c) for c in feature_names)
    d = len(feature_names)
    canonical = {str(i) for i in range(d)}
    if set(feature_names) != canonical:
        missing = sorted(canonical - set(feature_names), key=int)
        odd = sorted(set(feature_names) - canonical, key=lambda c: (int(c), c))
        raise DataError(
            f"{where} has feature columns that are not exactly '0' .. '{d - 1}': missing "
            f"{_examples(missing) or 'none'}; unexpected {_examples(odd) or 'none'} (numbers found "
            f"run from {numbers[0]} to {numbers[-1]}). Rename the {d} feature columns to "
            f"'0' .. '{d - 1}' without gaps or leading zeros."
        )
    if dim is not None and d != dim:
        raise DataError(
            f"{where} has {d} feature columns ('0' .. '{d - 1}') but embeddings.dim={dim} was "
            f"requested. Set embeddings.dim: {d}, or point embeddings.path at a table with "
            f"{dim}-dimensional vectors."
        )

    ordered = [str(i) for i in range(d)]
    columns = {}
    for name in ordered:
        try:
            columns[name] = pd.to_numeric(table[name], errors="raise")
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"{where}: feature column {name!r} holds values that are not numbers ({exc}). "
                f"Fix or remove those values; every column '0' .. '{d - 1}' of embeddings.path must be numeric."
            ) from None
    values = pd.DataFrame(columns).to_numpy(dtype=np.float64)

    raw_ids = table[id_column]
    if raw_ids.isna().any():
        raise DataError(
            f"{where}: {int(raw_ids.isna().sum())} row(s) have an empty {id_column!r}. Every "
            f"vector needs the id of its POI; drop those rows or fill in the ids (or check "
            f"embeddings.id_column)."
        )
    if pd.api.types.is_float_dtype(raw_ids) and np.all(np.mod(raw_ids.to_numpy(), 1) == 0):
        # Integer ids saved through a float column would otherwise become "123.0" and never match
        # the check-in table's "123".
        raw_ids = raw_ids.astype(np.int64)
    ids = raw_ids.astype(str)

    bad_rows = ~np.isfinite(values).all(axis=1)
    if bad_rows.any():
        raise DataError(
            f"{where}: {int(bad_rows.sum())} row(s) contain NaN or infinite values (e.g. "
            f"{id_column} {_examples(ids[bad_rows].tolist())}). Recompute or drop those vectors in "
            f"the file of embeddings.path."
        )
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        raise DataError(
            f"{where}: {dup.nunique()} id(s) in {id_column!r} appear more than once (e.g. "
            f"{_examples(dup.unique())}). Keep one vector per POI in the file of embeddings.path "
            f"(or check embeddings.id_column)."
        )
    return pd.DataFrame(
        values.astype(np.float32),
        index=pd.Index(ids.to_numpy(), name="poi_id"),
        columns=ordered,
    )
