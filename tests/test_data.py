import numpy as np
import pandas as pd
import pytest

from conftest import synthetic_checkins
from nextpoi_lib.config import DatasetConfig
from nextpoi_lib.data import DataError, load_checkins, load_foursquare_nyc, load_next_parquet, poi_table


def gowalla(path) -> DatasetConfig:
    return DatasetConfig(source="checkins", path=str(path))


def test_gowalla_columns_load_and_sort_stably(tmp_path):
    frame = synthetic_checkins(n_users=3, visits_per_user=6)
    # Two check-ins of u000 at the same time: file order must decide.
    frame.loc[1, "datetime"] = frame.loc[2, "datetime"]
    frame = frame.iloc[::-1]  # reversed file order everywhere else
    path = tmp_path / "gowalla.parquet"
    frame.to_parquet(path)
    table = load_checkins(gowalla(path), "toy")
    user0 = table.frame[table.frame.user_id == "u000"]
    assert user0["timestamp"].is_monotonic_increasing
    tied = user0[user0["timestamp"] == frame.loc[1, "datetime"]]
    # Reversed file: row 2 comes before row 1 in the file, so it stays first.
    assert tied["poi_id"].tolist() == [frame.loc[2, "placeid"], frame.loc[1, "placeid"]]
    assert table.classes == ["Food", "Shop", "Travel"] or set(table.classes) == {"Food", "Shop", "Travel"}


def test_classes_come_from_data_most_frequent_first(checkin_csv):
    frame = pd.read_csv(checkin_csv)
    table = load_checkins(gowalla(checkin_csv), "toy")
    counts = frame["category"].value_counts()
    assert table.classes[0] == counts.idxmax()
    assert sorted(table.classes) == sorted(counts.index)


def test_missing_column_is_named_with_the_fix(checkin_csv):
    config = DatasetConfig(source="checkins", path=str(checkin_csv), category_column="spot")
    with pytest.raises(DataError, match=r"Column 'spot' \(dataset.category_column\) is missing.*Columns found: userid"):
        load_checkins(config, "toy")


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_checkins(gowalla(path), "toy")
    path.write_text("userid,placeid,datetime,latitude,longitude,category\n")
    with pytest.raises(DataError, match="no rows"):
        load_checkins(gowalla(path), "toy")


def test_unknown_category_against_fixed_classes(checkin_csv):
    config = DatasetConfig(source="checkins", path=str(checkin_csv), classes=["Food", "Shop"])
    with pytest.raises(DataError, match=r"categories \['Travel'\] that are not in dataset.classes"):
        load_checkins(config, "toy")


def test_bad_timestamps_are_counted(tmp_path):
    frame = synthetic_checkins(n_users=2, visits_per_user=5)
    frame["datetime"] = frame["datetime"].astype(str)
    frame.loc[3, "datetime"] = "not a date"
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="1 of 10 rows .* no valid timestamp"):
        load_checkins(gowalla(path), "toy")


def test_users_with_few_checkins_are_dropped(tmp_path):
    frame = pd.concat([synthetic_checkins(n_users=3, visits_per_user=6),
                       synthetic_checkins(n_users=1, visits_per_user=3, seed=1).assign(userid="short")])
    path = tmp_path / "c.csv"
    frame.to_csv(path, index=False)
    table = load_checkins(DatasetConfig(source="checkins", path=str(path), min_checkins_per_user=5), "toy")
    assert "short" not in set(table.frame.user_id) and table.dropped_users == 1


def test_poi_table_takes_the_most_frequent_category(tmp_path):
    frame = synthetic_checkins(n_users=2, visits_per_user=5)
    frame.loc[0, "category"] = "Odd"
    path = tmp_path / "c.csv"
    frame.to_csv(path, index=False)
    pois = poi_table(load_checkins(gowalla(path), "toy"))
    assert pois["poi_id"].is_unique
    assert not (pois["category"] == "Odd").any() or (frame["placeid"] == frame.loc[0, "placeid"]).sum() == 1


def test_embedded_foursquare_sample():
    frame = load_foursquare_nyc()
    assert len(frame) == 66962 and frame["user_id"].nunique() == 3079 and frame["poi_id"].nunique() == 15213
    assert frame["category"].nunique() == 10
    assert frame["latitude"].between(40, 41.5).all() and frame["longitude"].between(-75, -73).all()


def write_next_parquet(path, n=6, dim=64, as_strings=True):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, 9, dim)).astype(np.float32)
    features[0, 6:] = 0.0  # trailing padding: 6 observed visits
    features[1, 3] = 0.0  # a zero row in the middle: a POI without embedding in the users' pipeline
    frame = pd.DataFrame(features.reshape(n, 9 * dim), columns=[str(i) for i in range(9 * dim)])
    if as_strings:
        frame = frame.astype(str)
    frame["next_category"] = ["Food", "Shopping", "Food", "Travel", "Food", "Shopping"][:n]
    frame["userid"] = [1, 1, 2, 2, 3, 3][:n]
    frame.to_parquet(path)
    return features


def test_next_parquet_with_string_columns(tmp_path):
    path = tmp_path / "next.parquet"
    features = write_next_parquet(path)
    loaded = load_next_parquet(path)
    assert loaded.features.dtype == np.float32
    np.testing.assert_allclose(loaded.features, features, rtol=1e-6)
    assert loaded.labels[1] == "Shopping" and loaded.users.tolist()[:2] == ["1", "1"]


def test_next_parquet_errors(tmp_path):
    path = tmp_path / "next.parquet"
    frame = pd.DataFrame({"0": ["1.0"], "next_category": ["Food"]})
    frame.to_parquet(path)
    with pytest.raises(DataError, match="'userid' is missing"):
        load_next_parquet(path)
    frame = pd.DataFrame({str(i): [0.5] for i in range(576)} | {"next_category": ["Food"], "userid": [1]})
    frame.loc[0, "7"] = np.nan
    frame.to_parquet(path)
    with pytest.raises(DataError, match="NaN or infinite"):
        load_next_parquet(path)


# --------------------------------------------------------------------------------------------------
# Bad data: duplicates, numeric timestamps, time zones, file problems, coordinates, classes


def write(tmp_path, frame, name="c.csv"):
    path = tmp_path / name
    frame.to_parquet(path) if name.endswith(".parquet") else frame.to_csv(path, index=False)
    return path


def test_exact_duplicate_rows_are_dropped_and_counted(tmp_path):
    frame = synthetic_checkins(n_users=3, visits_per_user=6)
    doubled = pd.concat([frame, frame.iloc[[0, 4, 4]]]).sort_index(kind="mergesort")
    path = write(tmp_path, doubled)
    table = load_checkins(gowalla(path), "toy")
    assert table.dropped_duplicate_rows == 3 and len(table.frame) == len(frame)
    assert table.data_hash == load_checkins(gowalla(write(tmp_path, frame, "clean.csv")), "toy").data_hash
    kept = load_checkins(DatasetConfig(source="checkins", path=str(path), duplicate_rows="keep"), "toy")
    assert kept.dropped_duplicate_rows == 0 and len(kept.frame) == len(frame) + 3
    # Rows that differ in any column, even one the library does not read, are not duplicates.
    extra = doubled.assign(note=np.arange(len(doubled)))
    assert load_checkins(gowalla(write(tmp_path, extra, "extra.csv")), "toy").dropped_duplicate_rows == 0


@pytest.mark.parametrize("unit, scale", [("s", 10**9), ("ms", 10**6)])
def test_numeric_timestamps_with_a_unit_are_seconds_or_milliseconds_since_1970(tmp_path, unit, scale):
    frame = synthetic_checkins(n_users=3, visits_per_user=6)
    expected = load_checkins(gowalla(write(tmp_path, frame, "iso.csv")), "toy").frame
    numeric = frame.assign(datetime=frame["datetime"].astype("int64") // scale)
    config = DatasetConfig(source="checkins", path=str(write(tmp_path, numeric)), timestamp_unit=unit)
    pd.testing.assert_series_equal(load_checkins(config, "toy").frame["timestamp"], expected["timestamp"])


def test_numeric_timestamps_without_a_unit_are_refused(tmp_path):
    frame = synthetic_checkins(n_users=3, visits_per_user=6)
    path = write(tmp_path, frame.assign(datetime=frame["datetime"].astype("int64") // 10**9))
    with pytest.raises(DataError, match=r"'datetime' \(dataset.timestamp_column\).*holds numbers.*"
                                        r"set dataset.timestamp_unit: s or ms"):
        load_checkins(gowalla(path), "toy")
    config = DatasetConfig(source="checkins", path=str(write(tmp_path, frame, "iso.csv")), timestamp_unit="s")
    with pytest.raises(DataError, match="Remove dataset.timestamp_unit"):
        load_checkins(config, "toy")


def test_one_utc_offset_is_kept(tmp_path):
    frame = synthetic_checkins(n_users=3, visits_per_user=6)
    path = write(tmp_path, frame.assign(datetime=frame["datetime"].astype(str) + "+02:00"))
    timestamps = load_checkins(gowalla(path), "toy").frame["timestamp"]
    assert str(timestamps.dt.tz) == "UTC+02:00"
    assert sorted(timestamps.dt.hour) == sorted(frame["datetime"].dt.hour)


@pytest.mark.parametrize("suffixes, fragment", [
    (("+02:00", "-05:00"), "2 different UTC offsets"),
    (("Z", "+01"), r"2 different UTC offsets \(\+00:00, \+01:00\)"),
    (("", "+02:00"), "mixes date-times with a UTC offset"),
])
def test_several_time_zones_are_refused(tmp_path, suffixes, fragment):
    frame = synthetic_checkins(n_users=3, visits_per_user=6)
    text = frame["datetime"].astype(str) + np.where(np.arange(len(frame)) % 3, suffixes[0], suffixes[1])
    with pytest.raises(DataError, match=fragment + r".*(one time zone|strip the offsets)"):
        load_checkins(gowalla(write(tmp_path, frame.assign(datetime=text))), "toy")


def test_a_named_time_zone_in_parquet_is_read(tmp_path):
    frame = synthetic_checkins(n_users=3, visits_per_user=6)
    frame["datetime"] = frame["datetime"].dt.tz_localize("America/New_York")
    table = load_checkins(gowalla(write(tmp_path, frame, "tz.parquet")), "toy")
    assert str(table.frame["timestamp"].dt.tz) == "America/New_York"


def test_file_problems_name_the_file_and_what_it_should_be(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_checkins(gowalla(tmp_path), "toy")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(DataError, match=r"binary.csv.*cannot be read as a CSV.*UTF-8 text"):
        load_checkins(gowalla(binary), "toy")
    not_parquet = tmp_path / "text.parquet"
    not_parquet.write_text("userid,placeid\nu1,p1\n")
    with pytest.raises(DataError, match=r"text.parquet.*not a valid parquet file.*named .csv"):
        load_checkins(gowalla(not_parquet), "toy")


def test_coordinates_out_of_range_are_counted_with_examples(tmp_path):
    frame = synthetic_checkins(n_users=3, visits_per_user=6)
    frame.loc[[2, 5], "latitude"] = [95.0, -123.5]
    with pytest.raises(DataError, match=r"2 of 18 rows .* latitude outside \[-90, 90\] \(row 2: 95, row 5: -123.5\)"):
        load_checkins(gowalla(write(tmp_path, frame)), "toy")
    frame = synthetic_checkins(n_users=3, visits_per_user=6)
    frame.loc[0, "longitude"] = 200.0
    with pytest.raises(DataError, match=r"1 of 18 rows .* longitude outside \[-180, 180\]"):
        load_checkins(gowalla(write(tmp_path, frame)), "toy")


def test_a_single_class_is_refused(tmp_path):
    frame = synthetic_checkins(n_users=3, visits_per_user=6).assign(category="Food")
    with pytest.raises(DataError, match=r"'category' \(dataset.category_column\).*single class \('Food'\).*macro-F1"):
        load_checkins(gowalla(write(tmp_path, frame)), "toy")
