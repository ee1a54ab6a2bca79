"""Bad data through `nextpoi run`: refused before any work with one paragraph naming the file/column and the fix.

Each case writes a parameter file whose dataset (or embedding table) points at a bad file written in tmp_path;
the run must exit with status 2, print one `error:` paragraph with the named texts, start no work (no DGI
embeddings, no training, no tree fitting) and leave every file under the output root unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import embedding_frame, synthetic_checkins
from harness import assert_refused, run_cli, tree_hashes


def good_frame(n_users: int = 12) -> pd.DataFrame:
    return synthetic_checkins(n_users=n_users, visits_per_user=8, n_pois=12)


def write_csv(tmp_path, frame: pd.DataFrame, name: str = "checkins.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def with_timestamps(tmp_path, values) -> Path:
    frame = good_frame()
    frame["datetime"] = values(frame)
    return write_csv(tmp_path, frame)


def embedding_table(tmp_path, change=None, name: str = "vectors.parquet") -> Path:
    pois = sorted(good_frame()["placeid"].unique())
    table = embedding_frame(pois, dim=3).rename_axis("placeid").reset_index()
    if change is not None:
        table = change(table)
    path = tmp_path / name
    table.to_parquet(path) if name.endswith(".parquet") else table.to_csv(path, index=False)
    return path


def table_experiment(path, **embeddings) -> dict:
    return {"embeddings": {"source": "table", "path": str(path), "dim": 3, **embeddings}}


def nan_row(table):
    table.loc[2, "1"] = np.nan
    return table


# Each case: tmp_path -> (path of the data file, extra parameter sections), and the texts of the message.
CASES = {
    "path is a directory": (lambda tmp: (tmp, {}), ["is a directory", "dataset.path"]),
    "path does not exist": (lambda tmp: (tmp / "nosuch.csv", {}), ["does not exist", "nosuch.csv", "dataset.path"]),
    "binary file as csv": (lambda tmp: (_write_bytes(tmp / "data.csv", bytes(range(256)) * 40), {}),
                           ["data.csv", "cannot be read as a CSV", "UTF-8 text"]),
    "csv named parquet": (lambda tmp: (write_csv(tmp, good_frame(), "data.parquet"), {}),
                          ["data.parquet", "not a valid parquet file", "named .csv"]),
    "empty file": (lambda tmp: (_write_bytes(tmp / "empty.csv", b""), {}), ["empty.csv", "empty (0 bytes)"]),
    "header only": (lambda tmp: (_write_bytes(tmp / "head.csv", b"userid,placeid,datetime,latitude,longitude,"
                                                                  b"category\n"), {}), ["head.csv", "no rows"]),
    "missing column": (lambda tmp: (write_csv(tmp, good_frame().drop(columns="category")), {}),
                       ["'category'", "dataset.category_column"]),
    "numeric timestamps without a unit": (
        lambda tmp: (with_timestamps(tmp, lambda f: f["datetime"].astype("int64") // 10**9), {}),
        ["'datetime'", "holds numbers", "dataset.timestamp_unit: s or ms"]),
    "numeric text timestamps without a unit": (
        lambda tmp: (_parquet(tmp, good_frame().assign(datetime=lambda f: (f["datetime"].astype("int64") // 10**6)
                                                         .astype(str))), {}),
        ["'datetime'", "dataset.timestamp_unit"]),
    "nanoseconds read as seconds": (
        lambda tmp: (with_timestamps(tmp, lambda f: f["datetime"].astype("int64")),
                     {"dataset": {"timestamp_unit": "s"}}),
        ["'datetime'", "timestamp_unit: s", "Check the unit"]),
    "unit given for date-times": (
        lambda tmp: (write_csv(tmp, good_frame()), {"dataset": {"timestamp_unit": "ms"}}),
        ["dataset.timestamp_unit: ms reads numbers", "'datetime'", "Remove dataset.timestamp_unit"]),
    "two utc offsets": (
        lambda tmp: (with_timestamps(tmp, lambda f: f["datetime"].astype(str)
                                     + np.where(np.arange(len(f)) % 2, "+02:00", "-05:00")), {}),
        ["'datetime'", "2 different UTC offsets", "+02:00, -05:00", "one time zone", "strip the offsets"]),
    "z and an offset": (
        lambda tmp: (with_timestamps(tmp, lambda f: f["datetime"].dt.strftime("%Y-%m-%dT%H:%M:%S")
                                     + np.where(np.arange(len(f)) < 5, "Z", "+0100")), {}),
        ["'datetime'", "different UTC offsets", "+00:00, +01:00", "one time zone"]),
    "naive and aware mixed": (
        lambda tmp: (with_timestamps(tmp, lambda f: f["datetime"].astype(str)
                                     + np.where(np.arange(len(f)) == 7, "+02:00", "")), {}),
        ["'datetime'", "mixes date-times with a UTC offset", "without one", "time zone", "strip the offsets"]),
    "text that is no date": (
        lambda tmp: (with_timestamps(tmp, lambda f: f["datetime"].astype(str).where(f.index != 3, "soon")), {}),
        ["1 of 96 rows", "no valid timestamp", "ISO date-time"]),
    "latitude out of range": (
        lambda tmp: (write_csv(tmp, good_frame().assign(latitude=lambda f: f["latitude"] * 1e6)), {}),
        ["96 of 96 rows", "latitude outside [-90, 90]", "row 0: 3", "not swapped"]),
    "longitude out of range": (
        lambda tmp: (write_csv(tmp, good_frame().assign(longitude=lambda f: f["longitude"].where(f.index % 10 > 0,
                                                                                                  -187.5))), {}),
        ["10 of 96 rows", "longitude outside [-180, 180]", "row 0: -187.5", "row 10: -187.5"]),
    "a single class": (lambda tmp: (write_csv(tmp, good_frame().assign(category="Food")), {}),
                       ["single class ('Food')", "'category'", "dataset.category_column", "macro-F1"]),
    "fewer users than folds": (lambda tmp: (write_csv(tmp, good_frame(n_users=2)), {}),
                               ["Only 2 users", "folds.n_splits=3", "Lower folds.n_splits"]),
    "too few users for the inner split": (
        lambda tmp: (write_csv(tmp, good_frame(n_users=6)), {}),
        ["training users in fold", "folds.inner_val_fraction", "add users"]),
    "embedding table with nan": (
        lambda tmp: (write_csv(tmp, good_frame()), table_experiment(embedding_table(tmp, nan_row))),
        ["vectors.parquet", "embeddings.path", "1 row(s) contain NaN or infinite", "p002"]),
    "embedding table of the wrong width": (
        lambda tmp: (write_csv(tmp, good_frame()), table_experiment(embedding_table(tmp), dim=4)),
        ["vectors.parquet", "3 feature columns", "embeddings.dim=4", "Set embeddings.dim: 3"]),
    "embedding table with duplicate ids": (
        lambda tmp: (write_csv(tmp, good_frame()),
                     table_experiment(embedding_table(tmp, lambda t: t.assign(placeid=t["placeid"].where(
                         t.index != 1, "p000"))))),
        ["vectors.parquet", "appear more than once", "p000", "embeddings.path"]),
    "embedding table missing": (
        lambda tmp: (write_csv(tmp, good_frame()), table_experiment(tmp / "none.parquet")),
        ["none.parquet", "does not exist", "embeddings.path"]),
    "embedding table without the id column": (
        lambda tmp: (write_csv(tmp, good_frame()), table_experiment(embedding_table(tmp), id_column="venue")),
        ["vectors.parquet", "no id column 'venue'", "placeid", "embeddings.id_column"]),
    "embedding table that is not parquet": (
        lambda tmp: (write_csv(tmp, good_frame()),
                     table_experiment(_write_bytes(tmp / "vectors.parquet", b"placeid,0\np000,1.0\n"))),
        ["vectors.parquet", "embeddings.path", "cannot be read", "a parquet file"]),
    "embedding table is a directory": (
        lambda tmp: (write_csv(tmp, good_frame()), table_experiment(_mkdir(tmp / "vectors"))),
        ["is a directory", "embeddings.path"]),
}


def _write_bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _parquet(tmp_path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "checkins.parquet"
    frame.to_parquet(path)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def experiment_file(tmp_path, data_path: Path, sections: dict) -> Path:
    config = {
        "name": "bad", "dataset": {"source": "checkins", "path": str(data_path), "name": "bad"},
        "embeddings": {"source": "dgi", "epochs": 2, "dim": 4},
        "windows": {"length": 4, "stride": 1, "features": ["embedding"]},
        "folds": {"n_splits": 3},
        "model": {"name": "gru", "hidden_dim": 8, "num_layers": 1, "dropout": 0.0},
        "training": {"epochs": 1, "batch_size": 64, "seeds": [0], "progress": False, "device": "cpu"},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_there_are_at_least_twenty_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_is_refused_before_work(case, tmp_path, output_root, work_spy):
    make, named = CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    data_path, sections = make(data)
    parameters = experiment_file(tmp_path, data_path, sections)
    before = tree_hashes(output_root)
    result = run_cli("run", parameters, "--output-root", output_root)
    assert_refused(result, *named, spy=work_spy)
    assert tree_hashes(output_root) == before


def test_next_parquet_with_a_single_class_is_refused(tmp_path, output_root, work_spy):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(30, 9 * 2)).astype(np.float32), columns=[str(i) for i in range(18)])
    frame["next_category"] = "Food"
    frame["userid"] = np.arange(30) // 3
    path = tmp_path / "next.parquet"
    frame.to_parquet(path)
    parameters = experiment_file(tmp_path, path, {"dataset": {"source": "next_parquet"},
                                                  "windows": {"length": 9}})
    before = tree_hashes(output_root)
    result = run_cli("run", parameters, "--output-root", output_root)
    assert_refused(result, "single class ('Food')", "next_category", "next.parquet", spy=work_spy)
    assert tree_hashes(output_root) == before
