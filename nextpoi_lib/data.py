"""Check-in tables: loading, validating and normalising them to one canonical frame.

Canonical columns: user_id (str), poi_id (str), timestamp (datetime64), latitude, longitude (float),
category (str). Sources: the embedded Foursquare New York sample of the `mat-data` package (GPL-3 data,
read from the installed package, never copied here), any CSV/parquet check-in table with named columns,
and our users' precomputed `next.parquet` window file (see `load_next_parquet`).
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import DatasetConfig
from .errors import UserError

CANONICAL_COLUMNS = ["user_id", "poi_id", "timestamp", "latitude", "longitude", "category"]
FOURSQUARE_RESOURCE = "assets/sample/Foursquare_Sample.csv"


class DataError(UserError):
    """Input data cannot be used; the message names the problem and the fix."""


@dataclass
class CheckinTable:
    frame: pd.DataFrame  # canonical columns, sorted by user then time (stable on ties)
    classes: list[str]  # category names in class-id order
    name: str
    data_hash: str
    dropped_users: int = 0

    @property
    def category_index(self) -> np.ndarray:
        return pd.Categorical(self.frame["category"], categories=self.classes).codes.astype(np.int64)

    @property
    def subcategory_index(self) -> np.ndarray | None:
        """Codes of the optional finer category (sorted names; -1 where missing), or None when there is none."""
        if "subcategory" not in self.frame:
            return None
        return pd.factorize(self.frame["subcategory"], sort=True)[0].astype(np.int64)


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file {str(path)!r} does not exist. Check dataset.path in the parameter file.")
    if path.stat().st_size == 0:
        raise DataError(f"Data file {str(path)!r} is empty (0 bytes). Point dataset.path at a file with check-ins.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".txt", ".gz"):
            frame = pd.read_csv(path)
        else:
            raise DataError(f"Data file {str(path)!r} has suffix {suffix!r}; use .csv or .parquet.")
    except pd.errors.EmptyDataError as error:
        raise DataError(f"Data file {str(path)!r} has no columns or rows. Point dataset.path at a file "
                        f"with check-ins.") from error
    if len(frame) == 0:
        raise DataError(f"Data file {str(path)!r} has a header but no rows. Point dataset.path at a file "
                        f"with check-ins.")
    return frame


def foursquare_sample_path() -> Path:
    """Path of the embedded sample inside the installed `mat-data` package (GPL-3 data)."""
    try:
        resource = importlib.resources.files("matdata").joinpath(FOURSQUARE_RESOURCE)
    except ModuleNotFoundError as error:
        raise DataError("The embedded Foursquare sample comes from the PyPI package 'mat-data', which is not "
                        "installed. Install it without its heavy dependencies: pip install --no-deps "
                        "mat-data==0.1rc6") from error
    return Path(str(resource))


def load_foursquare_nyc() -> pd.DataFrame:
    """The mat-data Foursquare New York sample in canonical columns.

    The sample has no user id: `tid` (trajectory) is the closest key, so folds group by it. POIs are
    identified by their coordinates (`lat_lon`, "lat lon" as text).
    """
    raw = pd.read_csv(foursquare_sample_path())
    coordinates = raw["lat_lon"].str.split(" ", n=1, expand=True).astype(float)
    return pd.DataFrame({
        "user_id": raw["tid"].astype(str),
        "poi_id": raw["lat_lon"].astype(str),
        "timestamp": pd.to_datetime(raw["date_time"]),
        "latitude": coordinates[0],
        "longitude": coordinates[1],
        "category": raw["root_type"].astype(str),
        # Foursquare's venue type (491 of them, e.g. "Home (private)"), below the 10 root categories.
        "subcategory": raw["type"].astype(str),
    })


def canonicalise(raw: pd.DataFrame, config: DatasetConfig, source_name: str) -> pd.DataFrame:
    """Rename the configured columns of a check-in table to the canonical ones, with clear errors."""
    mapping = {
        config.user_column: "user_id",
        config.timestamp_column: "timestamp",
        config.latitude_column: "latitude",
        config.longitude_column: "longitude",
        config.category_column: "category",
    }
    if config.poi_column:
        mapping[config.poi_column] = "poi_id"
    if config.subcategory_column:
        mapping[config.subcategory_column] = "subcategory"
    keys = {"user_id": "user_column", "timestamp": "timestamp_column", "latitude": "latitude_column",
            "longitude": "longitude_column", "category": "category_column", "poi_id": "poi_column",
            "subcategory": "subcategory_column"}
    missing = [(column, canonical) for column, canonical in mapping.items() if column not in raw.columns]
    if missing:
        column, canonical = missing[0]
        raise DataError(f"Column {column!r} (dataset.{keys[canonical]}) is missing from {source_name}. Columns found: "
                        f"{', '.join(map(str, raw.columns))}. Name the right column in the parameter file, e.g. "
                        f"dataset: {{{keys[canonical]}: <column>}}.")
    frame = raw[list(mapping)].rename(columns=mapping)
    for column in ("latitude", "longitude"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    if "poi_id" not in frame:
        # No POI id: a POI is a distinct coordinate pair.
        frame["poi_id"] = frame["latitude"].round(6).astype(str) + " " + frame["longitude"].round(6).astype(str)
    frame["user_id"] = frame["user_id"].astype(str)
    frame["poi_id"] = frame["poi_id"].astype(str)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], errors="coerce")
    frame["category"] = frame["category"].astype("string")
    if "subcategory" in frame:
        frame["subcategory"] = frame["subcategory"].astype("string")  # a missing value stays missing: code -1
    return frame[CANONICAL_COLUMNS + (["subcategory"] if "subcategory" in frame else [])]


def validate_checkins(frame: pd.DataFrame, source_name: str, classes: list[str] | None) -> list[str]:
    """Check values; return the class list (given, or sorted by frequency in the data)."""
    for column, fix in (("timestamp", "use an ISO date-time such as 2012-04-03 18:00:09"),
                        ("latitude", "give decimal degrees"), ("longitude", "give decimal degrees"),
                        ("category", "fill or drop those rows"), ("user_id", "fill or drop those rows")):
        bad = frame[column].isna() | (frame[column].astype(str).isin(["nan", "<NA>", "None", ""]) if column in ("category", "user_id") else False)
        if bad.any():
            raise DataError(f"{int(bad.sum())} of {len(frame)} rows of {source_name} have no valid {column} "
                            f"(first at row {int(np.flatnonzero(bad.to_numpy())[0])}); {fix}.")
    if classes is not None:
        unknown = sorted(set(frame["category"].astype(str)) - set(classes))
        if unknown:
            raise DataError(f"{source_name} has categories {unknown[:5]} that are not in dataset.classes "
                            f"{classes}. Add them to dataset.classes, map them to a known category, or remove "
                            f"dataset.classes to take the classes from the data.")
        return list(classes)
    counts = frame["category"].astype(str).value_counts(sort=False)
    # Most frequent first, ties by name: stable across runs and readable in tables.
    return sorted(counts.index, key=lambda name: (-counts[name], name))


def frame_hash(frame: pd.DataFrame) -> str:
    # Only the canonical columns: an optional extra column (subcategory) does not change windows or folds.
    digest = hashlib.sha256(pd.util.hash_pandas_object(frame[CANONICAL_COLUMNS], index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def load_checkins(config: DatasetConfig, dataset_name: str) -> CheckinTable:
    """Load, validate, drop users with too few check-ins and sort stably by user then time."""
    if config.source == "foursquare_nyc":
        frame = load_foursquare_nyc()
        source_name = "the embedded Foursquare New York sample"
    elif config.source == "checkins":
        source_name = f"check-in table {config.path!r}"
        frame = canonicalise(read_table(config.path), config, source_name)
    else:
        raise DataError(f"dataset.source={config.source!r} holds windows, not check-ins; use load_next_parquet.")
    classes = validate_checkins(frame, source_name, getattr(config, "classes", None))
    frame["category"] = frame["category"].astype(str)
    counts = frame.groupby("user_id")["user_id"].transform("size")
    keep = counts >= config.min_checkins_per_user
    dropped_users = int(frame.loc[~keep, "user_id"].nunique())
    frame = frame.loc[keep]
    if frame.empty:
        raise DataError(f"No user of {source_name} has at least dataset.min_checkins_per_user="
                        f"{config.min_checkins_per_user} check-ins. Lower that setting or check the user column.")
    # mergesort is stable: check-ins with equal timestamps keep their file order.
    frame = frame.sort_values(["user_id", "timestamp"], kind="mergesort").reset_index(drop=True)
    if getattr(config, "classes", None) is None:
        classes = [name for name in classes if name in set(frame["category"])]
    return CheckinTable(frame=frame, classes=classes, name=dataset_name, data_hash=frame_hash(frame),
                        dropped_users=dropped_users)


def poi_table(checkins: CheckinTable) -> pd.DataFrame:
    """One row per POI: id, coordinates (first seen) and its most frequent category."""
    frame = checkins.frame
    first = frame.groupby("poi_id", sort=True)[["latitude", "longitude"]].first()
    category = (frame.groupby(["poi_id", "category"]).size().reset_index(name="n")
                .sort_values(["poi_id", "n", "category"], ascending=[True, False, True], kind="mergesort")
                .drop_duplicates("poi_id").set_index("poi_id")["category"])
    table = first.join(category).reset_index()
    return table[["poi_id", "latitude", "longitude", "category"]]


@dataclass
class NextParquet:
    features: np.ndarray  # [N, 9, D] float32
    labels: list[str]  # next_category per window
    users: np.ndarray  # [N] str


def load_next_parquet(path: str | Path, length: int = 9) -> NextParquet:
    """Our users' precomputed window file: '0'..'575' (9 x 64, position-major), next_category, userid.

    Feature columns may arrive typed as strings (they were stored beside the string label).
    """
    frame = read_table(path)
    source_name = f"next.parquet file {str(path)!r}"
    for column in ("next_category", "userid"):
        if column not in frame.columns:
            raise DataError(f"Column {column!r} is missing from {source_name}. Columns found: "
                            f"{', '.join(map(str, frame.columns[:8]))}... This loader expects our users' format: "
                            f"'0'..'575', next_category, userid.")
    feature_columns = [c for c in frame.columns if str(c).isdigit()]
    feature_columns.sort(key=lambda c: int(c))
    n_features = len(feature_columns)
    if n_features == 0 or n_features % length or [int(c) for c in feature_columns] != list(range(n_features)):
        raise DataError(f"{source_name} must have feature columns '0'..'{length * 64 - 1}' ({length} positions x "
                        f"dim, position-major); found {n_features} numeric-named columns. Check the file.")
    try:
        values = frame[feature_columns].apply(pd.to_numeric, errors="raise").to_numpy(np.float32)
    except (ValueError, TypeError) as error:
        raise DataError(f"{source_name} has a feature value that is not a number ({error}). Fix or drop that row.") from error
    bad_rows = ~np.isfinite(values).all(axis=1)
    if bad_rows.any():
        raise DataError(f"{int(bad_rows.sum())} windows of {source_name} have NaN or infinite features (first at "
                        f"row {int(np.flatnonzero(bad_rows)[0])}). Recompute the embeddings or drop those rows.")
    labels = frame["next_category"].astype(str)
    if labels.isin(["nan", "None", ""]).any():
        raise DataError(f"{int(labels.isin(['nan', 'None', '']).sum())} windows of {source_name} have no "
                        f"next_category. Drop those rows.")
    return NextParquet(features=values.reshape(len(frame), length, n_features // length),
                       labels=labels.tolist(), users=frame["userid"].astype(str).to_numpy())
