import numpy as np
import pytest

from conftest import embedding_frame, synthetic_checkins
from nextpoi_lib.config import DatasetConfig
from nextpoi_lib.data import DataError, load_checkins, load_next_parquet
from nextpoi_lib.windows import build_windows, window_bounds, windows_from_next_parquet
from test_data import write_next_parquet


def table_from(frame, tmp_path):
    path = tmp_path / "c.csv"
    frame.to_csv(path, index=False)
    return load_checkins(DatasetConfig(source="checkins", path=str(path)), "toy")


def test_window_bounds_by_hand():
    # 14 visits, L=9: stride 1 -> starts 0..4 predict visits 9..13; stride 9 -> [0,9)->9, [9,13)->13.
    users, starts, ends = window_bounds(np.array([14]), 9, 1)
    assert starts.tolist() == [0, 1, 2, 3, 4] and ends.tolist() == [9, 10, 11, 12, 13]
    users, starts, ends = window_bounds(np.array([14]), 9, 9)
    assert starts.tolist() == [0, 9] and ends.tolist() == [9, 13]
    # A user with fewer visits than L gets one padded window predicting the last visit.
    users, starts, ends = window_bounds(np.array([5, 1]), 9, 1)
    assert users.tolist() == [0] and starts.tolist() == [0] and ends.tolist() == [4]


def test_windows_hold_the_right_visits_and_target(tmp_path):
    frame = synthetic_checkins(n_users=2, visits_per_user=14)
    table = table_from(frame, tmp_path)
    pois = sorted(table.frame.poi_id.unique())
    windows = build_windows(table, embedding_frame(pois), length=9, stride=9)
    assert len(windows) == 4
    first_user = table.frame[table.frame.user_id == "u000"].reset_index(drop=True)
    # Second window of u000: visits 9..12 observed, 5 padding positions, target = visit 13.
    second = 1
    assert windows.mask[second].tolist() == [True] * 4 + [False] * 5
    expected_rows = [pois.index(p) for p in first_user.poi_id[9:13]]
    assert windows.poi_index[second, :4].tolist() == expected_rows
    assert windows.classes[windows.target[second]] == first_user.category[13]
    assert (windows.category_index[second, 4:] == -1).all()
    assert windows.gap_hours[0, 1] == pytest.approx(3.0)  # visits are 3 hours apart


def test_zero_embedding_is_not_padding(tmp_path):
    table = table_from(synthetic_checkins(n_users=2, visits_per_user=12), tmp_path)
    pois = sorted(table.frame.poi_id.unique())
    embeddings = embedding_frame(pois)
    embeddings.iloc[:] = 0.0  # every embedding is an all-zero vector
    windows = build_windows(table, embeddings, length=9, stride=1)
    assert windows.mask.all()


def test_missing_embeddings_are_reported_and_handled(tmp_path):
    table = table_from(synthetic_checkins(n_users=4, visits_per_user=12), tmp_path)
    pois = sorted(table.frame.poi_id.unique())
    missing_poi = table.frame.poi_id.iloc[3]
    embeddings = embedding_frame([p for p in pois if p != missing_poi])
    with pytest.raises(DataError, match="have no embedding.*embeddings.missing"):
        build_windows(table, embeddings, 9, 1, missing="error")
    masked = build_windows(table, embeddings, 9, 1, missing="mask")
    full = build_windows(table, embedding_frame(pois), 9, 1)
    n_missing = masked.report["missing_embedding_visits"]
    assert n_missing > 0 and (~masked.mask).sum() == n_missing
    dropped = build_windows(table, embeddings, 9, 1, missing="drop_window")
    assert len(dropped) == len(full) - dropped.report["dropped_windows_missing_embedding"] and dropped.mask.all()


@pytest.mark.parametrize("length", [1, 12, 15])
def test_any_window_length(tmp_path, length):
    table = table_from(synthetic_checkins(n_users=3, visits_per_user=20), tmp_path)
    windows = build_windows(table, embedding_frame(sorted(table.frame.poi_id.unique())), length, 1)
    assert windows.mask.shape[1] == length and len(windows) == 3 * (20 - length)


def test_next_parquet_windows_mask_trailing_padding_only(tmp_path):
    path = tmp_path / "next.parquet"
    write_next_parquet(path)
    windows = windows_from_next_parquet(load_next_parquet(path))
    assert windows.mask[0].tolist() == [True] * 6 + [False] * 3
    assert windows.mask[1].all()  # the zero row in the middle stays an observed visit ...
    assert windows.report["zero_rows_inside_windows"] == 1  # ... and is reported
    assert windows.classes[0] == "Food"


def test_subcategories_by_hand(tmp_path):
    frame = synthetic_checkins(n_users=2, visits_per_user=14)
    frame["venue_type"] = [f"type{i % 4}" for i in range(len(frame))]
    path = tmp_path / "c.csv"
    frame.to_csv(path, index=False)
    table = load_checkins(DatasetConfig(source="checkins", path=str(path), subcategory_column="venue_type"), "toy")
    pois = sorted(table.frame.poi_id.unique())
    windows = build_windows(table, embedding_frame(pois), length=4, stride=1)
    user = table.frame[table.frame.user_id == "u000"].reset_index(drop=True)
    # u000 has 14 visits: windows start at 0..9; window s holds visits s..s+3.
    names = sorted(frame["venue_type"].unique())
    for start in range(10):
        assert [names[i] for i in windows.subcategory_index[start]] == user.subcategory[start:start + 4].tolist()
    # A missing subcategory is unknown (-1), not a category named "nan".
    frame.loc[1, "venue_type"] = None
    frame.to_csv(path, index=False)
    with_gap = load_checkins(DatasetConfig(source="checkins", path=str(path), subcategory_column="venue_type"), "toy")
    assert with_gap.subcategory_index[1] == -1 and (np.delete(with_gap.subcategory_index, 1) >= 0).all()
    # Without the column there is no subcategory; the data hash ignores the optional column.
    plain = table_from(frame.drop(columns="venue_type"), tmp_path)
    assert build_windows(plain, embedding_frame(pois), 4, 1).subcategory_index is None
    assert plain.data_hash == table.data_hash


def test_windows_keep_the_checkin_rows_behind_them(tmp_path):
    """The check-in sequence the features beyond the window are computed from, row by row."""
    table = table_from(synthetic_checkins(n_users=2, visits_per_user=14), tmp_path)
    pois = sorted(table.frame.poi_id.unique())
    windows = build_windows(table, embedding_frame(pois), length=4, stride=9)
    sequence = windows.sequence
    # Users of 14 visits, stride 9: per user, windows [0, 4) -> 4 and [9, 13) -> 13; u001 starts at row 14.
    assert sequence.user_starts.tolist() == [0, 14]
    assert sequence.user_first_row.tolist() == [0, 0, 14, 14]
    assert sequence.first_row.tolist() == [0, 9, 14, 23]
    assert sequence.last_row.tolist() == [3, 12, 17, 26]
    assert sequence.category.tolist() == table.category_index.tolist()
    frame = table.frame.reset_index(drop=True)
    assert [frame.poi_id[row] for row in sequence.last_row] == [pois[i] for i in windows.poi_index[:, 3]]
    # POI codes: equal codes for equal POIs, in order of first appearance.
    first_seen = list(dict.fromkeys(frame.poi_id))
    assert sequence.poi.tolist() == [first_seen.index(p) for p in frame.poi_id]
    # A subset keeps its windows' rows (and whatever was derived from them); the derived cache starts empty.
    assert windows.derived == {}
    windows.derived["anything"] = np.arange(4) * 10
    part = windows.subset(np.array([3, 1]))
    assert part.sequence.first_row.tolist() == [23, 9] and part.sequence.last_row.tolist() == [26, 12]
    assert part.sequence.user_starts.tolist() == [0, 14] and part.derived["anything"].tolist() == [30, 10]


def test_next_parquet_windows_have_no_checkin_sequence(tmp_path):
    path = tmp_path / "next.parquet"
    write_next_parquet(path)
    windows = windows_from_next_parquet(load_next_parquet(path))
    assert windows.sequence is None and not windows.has_visit_details
    assert windows.subset(np.array([1, 0])).sequence is None


def test_the_report_counts_dropped_duplicate_rows(tmp_path):
    import pandas as pd

    frame = synthetic_checkins(n_users=2, visits_per_user=8)
    table = table_from(pd.concat([frame, frame.iloc[[1, 2]]]), tmp_path)
    windows = build_windows(table, embedding_frame(sorted(table.frame.poi_id.unique())), length=4, stride=1)
    assert windows.report["dropped_duplicate_rows"] == 2 and windows.report["n_checkins"] == len(frame)


def test_timestamps_in_one_time_zone_give_local_hours_and_true_gaps(tmp_path):
    frame = synthetic_checkins(n_users=2, visits_per_user=8)
    naive = build_windows(table_from(frame, tmp_path), embedding_frame(sorted(frame.placeid.unique())), 4, 1)
    frame = frame.assign(datetime=frame["datetime"].astype(str) + "-05:00")
    aware = build_windows(table_from(frame, tmp_path), embedding_frame(sorted(frame.placeid.unique())), 4, 1)
    np.testing.assert_array_equal(aware.hour, naive.hour)
    np.testing.assert_array_equal(aware.gap_hours, naive.gap_hours)
