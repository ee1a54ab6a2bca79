"""Check-in tables: loading, validating and normalising them to one canonical frame.

Canonical columns: user_id (str), poi_id (str), timestamp (datetime64), latitude, longitude (float),
category (str). Sources: the embedded Foursquare New York sample of the `mat-data` package (GPL-3 data,
read from the installed package, never copied here), any CSV/parquet check-in table with named columns,
and our users' precomputed `next.parquet` window file (see `load_next_parquet`).

Bad data is refused with a `DataError` naming the file/column and the fix, before any expensive work: a path
that is a directory, a file that is not the CSV/parquet its name says, numeric timestamps without
`dataset.timestamp_unit`, several UTC offsets (or naive mixed with offset-aware) in one timestamp column,
coordinates outside [-90, 90] / [-180, 180], a single class. Exact duplicate rows are dropped (and counted) or
kept as `dataset.duplicate_rows` says.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
import warnings
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
    dropped_duplicate_rows: int = 0  # exact duplicate rows removed (dataset.duplicate_rows: drop)

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
    if path.is_dir():
        raise DataError(f"Data file {str(path)!r} is a directory, not a file. Point dataset.path at the CSV or "
                        f"parquet file inside it.")
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
    except (UnicodeDecodeError, pd.errors.ParserError, OSError) as error:
        # A binary file (or a broken compressed one) named .csv: the CSV reader cannot decode or split it.
        raise DataError(f"Data file {str(path)!r} (dataset.path) cannot be read as a CSV text table "
                        f"({_short(error)}). It should be comma-separated UTF-8 text "
                        f"with a header row; a parquet file must be named .parquet.") from error
    except ValueError as error:
        if suffix != ".parquet" or isinstance(error, DataError):
            raise
        # pyarrow's ArrowInvalid (a ValueError): the file is not parquet (e.g. a CSV renamed to .parquet).
        raise DataError(f"Data file {str(path)!r} (dataset.path) is not a valid parquet file "
                        f"({_short(error)}). It should be a parquet file written by "
                        f"pandas/pyarrow; a CSV file must be named .csv.") from error
    if len(frame) == 0:
        raise DataError(f"Data file {str(path)!r} has a header but no rows. Point dataset.path at a file "
                        f"with check-ins.")
    return frame


def _short(error: BaseException) -> str:
    """The error's type and first sentence (the readers' messages run on), for a one-paragraph message."""
    text = str(error).split(". ")[0].strip()
    return f"{type(error).__name__}: {text[:150]}"


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


# A time of day followed by a UTC offset (Z, +02, +0200, +02:00) at the end of a date-time text.
_OFFSET = re.compile(r"\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(Z|[+-]\d{2}(?::?\d{2})?)\s*$", re.IGNORECASE)


def _normal_offset(offset: str) -> str:
    if offset.upper() == "Z":
        return "+00:00"
    digits = offset[1:].replace(":", "")
    return f"{offset[0]}{digits[:2]}:{(digits[2:] or '00')}"


def _looks_numeric(values: pd.Series) -> bool:
    present = values.dropna()
    if present.empty:
        return False
    if pd.api.types.is_bool_dtype(present):
        return False
    if pd.api.types.is_numeric_dtype(present):
        return True
    head = present.iloc[:100]
    if (not head.map(lambda v: isinstance(v, str)).all()
            or pd.to_numeric(head.str.strip(), errors="coerce").isna().any()):
        return False  # quick answer for the common case, date-time text
    if present.map(lambda v: isinstance(v, str)).all():
        return bool(pd.to_numeric(present.str.strip(), errors="coerce").notna().all())
    return False


def parse_timestamps(values: pd.Series, column: str, unit: str | None, source_name: str) -> pd.Series:
    """The timestamp column as datetime64 (invalid entries NaT, counted later by validate_checkins).

    Numbers are seconds/milliseconds since 1970 (UTC) only when dataset.timestamp_unit says so; date-times
    with several UTC offsets, or naive ones mixed with offset-aware ones, are refused: their order and hour
    of day would be ambiguous.
    """
    where = f"The timestamp column {column!r} (dataset.timestamp_column) of {source_name}"
    if pd.api.types.is_datetime64_any_dtype(values):
        # Already date-times (e.g. from parquet), naive or in one time zone.
        return values
    if _looks_numeric(values):
        if unit is None:
            example = values.dropna().iloc[0]
            example = example.item() if isinstance(example, np.generic) else example
            raise DataError(f"{where} holds numbers (e.g. {example!r}), not date-times. If they are seconds or "
                            f"milliseconds since 1970 (UTC), set dataset.timestamp_unit: s or ms in the parameter "
                            f"file; otherwise write ISO date-times such as 2012-04-03 18:00:09.")
        numbers = values if pd.api.types.is_numeric_dtype(values) else pd.to_numeric(
            values.astype("string").str.strip(), errors="coerce")
        try:
            return pd.to_datetime(numbers, unit=unit, errors="raise")
        except (ValueError, OverflowError) as error:
            other = "ms" if unit == "s" else "s"
            raise DataError(f"{where} holds numbers that are not valid {'seconds' if unit == 's' else 'milliseconds'}"
                            f" since 1970 with dataset.timestamp_unit: {unit} ({error}). Check the unit (perhaps "
                            f"dataset.timestamp_unit: {other}) or the values.") from error
    if unit is not None:
        example = values.dropna().iloc[0] if values.notna().any() else None
        raise DataError(f"dataset.timestamp_unit: {unit} reads numbers, but {where[0].lower() + where[1:]} holds "
                        f"text such as "
                        f"{example!r}. Remove dataset.timestamp_unit to read date-times, or give numbers.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pandas' notices about mixed zones and per-element parsing
            parsed = pd.to_datetime(values, errors="coerce")
    except (ValueError, TypeError):  # newer pandas refuses mixed time zones outright
        parsed = None
    if (parsed is not None and pd.api.types.is_datetime64_any_dtype(parsed)
            and not (parsed.isna() & values.notna()).any()):
        # Every value parsed with one format: naive, or all in one UTC offset. Nothing more to check.
        return parsed
    # Some values did not parse, or pandas gave up on one dtype: tell time-zone trouble from bad values.
    text = values.dropna().astype(str)
    distinct = pd.Series(text.unique())
    offsets = distinct.str.extract(_OFFSET)[0]
    aware = offsets.notna()
    if aware.any():
        if not aware.all():
            raise DataError(f"{where} mixes date-times with a UTC offset (e.g. {distinct[aware].iloc[0]!r}) and "
                            f"date-times without one (e.g. {distinct[~aware].iloc[0]!r}), so their order and hour "
                            f"of day are ambiguous across time zones. Convert every timestamp to one time zone and "
                            f"write them all with the same offset, or strip the offsets (local time) from all.")
        found = sorted(set(offsets[aware].map(_normal_offset)))
        if len(found) > 1:
            raise DataError(f"{where} has timestamps with {len(found)} different UTC offsets ({', '.join(found[:5])}"
                            f"{' ...' if len(found) > 5 else ''}), i.e. several time zones in one column. Convert "
                            f"every timestamp to one time zone (e.g. UTC) before loading, or strip the offsets to "
                            f"keep local times.")
    if parsed is None or not pd.api.types.is_datetime64_any_dtype(parsed):
        # Objects with different time zones that the text check did not see (e.g. datetime objects).
        raise DataError(f"{where} has timestamps in different time zones (UTC offsets). Convert every timestamp "
                        f"to one time zone (e.g. UTC) before loading, or strip the offsets to keep local times.")
    return parsed  # values that are no date-time are NaT, counted (with the fix) by validate_checkins


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
    frame["timestamp"] = parse_timestamps(frame["timestamp"], config.timestamp_column, config.timestamp_unit,
                                          source_name)
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
    for column, limit in (("latitude", 90.0), ("longitude", 180.0)):
        values = frame[column].to_numpy(np.float64)
        outside = np.flatnonzero(np.abs(values) > limit)
        if len(outside):
            examples = ", ".join(f"row {int(row)}: {values[row]:g}" for row in outside[:3])
            raise DataError(f"{len(outside)} of {len(frame)} rows of {source_name} have a {column} outside "
                            f"[-{limit:g}, {limit:g}] ({examples}). The {column} column must hold decimal degrees; "
                            f"check that latitude and longitude are not swapped (dataset.latitude_column, "
                            f"dataset.longitude_column) and fix or drop those rows.")
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
        # No row of the sample is an exact duplicate; checked like a file all the same.
        frame, dropped_duplicates = drop_duplicate_rows(frame, config.duplicate_rows)
    elif config.source == "checkins":
        source_name = f"check-in table {config.path!r}"
        # Exact duplicates are judged on every column of the file, before any column is dropped.
        raw, dropped_duplicates = drop_duplicate_rows(read_table(config.path), config.duplicate_rows)
        frame = canonicalise(raw, config, source_name)
    else:
        raise DataError(f"dataset.source={config.source!r} holds windows, not check-ins; use load_next_parquet.")
    class_map = getattr(config, "class_map", None)
    if class_map:
        frame = frame.assign(category=apply_class_map(frame["category"], class_map, source_name))
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
    check_several_classes(frame["category"], f"The category column {config.category_column!r} "
                          f"(dataset.category_column) of {source_name}")
    return CheckinTable(frame=frame, classes=classes, name=dataset_name, data_hash=frame_hash(frame),
                        dropped_users=dropped_users, dropped_duplicate_rows=dropped_duplicates)


def apply_class_map(categories: pd.Series, class_map: dict[str, str], source_name: str) -> pd.Series:
    """`dataset.class_map`: each raw category name found in the map becomes its class name (several raw names may
    become one class); a raw category not in the map keeps its name. A key that is no category of the data is
    refused, naming it: a misspelt key would otherwise merge nothing, silently. Missing values stay missing (and
    are refused by validate_checkins)."""
    present = set(categories.dropna().astype(str))
    unknown = sorted(set(class_map) - present)
    if unknown:
        raise DataError(f"dataset.class_map names raw categories {unknown[:5]} that {source_name} does not have. "
                        f"Its categories are {sorted(present)[:12]}{' ...' if len(present) > 12 else ''}. Fix "
                        f"or remove those keys of dataset.class_map.")
    mapped = categories.astype("string").map(lambda name: class_map.get(name, name) if isinstance(name, str)
                                             else name)
    return mapped.astype("string")


def drop_duplicate_rows(frame: pd.DataFrame, policy: str) -> tuple[pd.DataFrame, int]:
    """`dataset.duplicate_rows`: "drop" keeps the first of each set of exact duplicate rows (every column
    equal) and returns how many it dropped; "keep" returns the frame as it is (and 0)."""
    if policy == "keep":
        return frame, 0
    duplicated = frame.duplicated(keep="first")
    n = int(duplicated.sum())
    return (frame.loc[~duplicated].reset_index(drop=True) if n else frame), n


def check_several_classes(labels: pd.Series, where: str) -> None:
    """At least two classes: with one, every prediction is right and macro-F1 is trivially 1.0."""
    found = pd.unique(labels.astype(str))
    if len(found) < 2:
        raise DataError(f"{where} has a single class ({', '.join(map(repr, found))}) after loading, so there is "
                        f"nothing to predict (macro-F1 would be trivially 1.0). Use data with at least two "
                        f"categories, or check that the right column holds them.")


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
    check_several_classes(labels, f"The next_category column of {source_name}")
    return NextParquet(features=values.reshape(len(frame), length, n_features // length),
                       labels=labels.tolist(), users=frame["userid"].astype(str).to_numpy())
