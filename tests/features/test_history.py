"""nextpoi_lib.features.history: the user's category counts before each window, and the trees' history columns."""
import numpy as np
import pytest

from conftest import embedding_frame, synthetic_checkins
from nextpoi_lib.config import DatasetConfig
from nextpoi_lib.data import load_checkins, load_next_parquet
from nextpoi_lib.features.history import HistoryFeatures, counts_before, history_counts, history_feature_matrix
from nextpoi_lib.windows import build_windows, windows_from_next_parquet
from test_data import write_next_parquet


def two_user_windows(tmp_path, length=4):
    frame = synthetic_checkins(n_users=2, visits_per_user=14)
    path = tmp_path / "c.csv"
    frame.to_csv(path, index=False)
    table = load_checkins(DatasetConfig(source="checkins", path=str(path)), "toy")
    return table, build_windows(table, embedding_frame(sorted(table.frame.poi_id.unique())), length=length, stride=1)


def test_history_counts_by_hand(tmp_path):
    table, windows = two_user_windows(tmp_path)
    assert "history_counts" not in windows.derived  # computed only when asked for
    counts = history_counts(windows)
    assert windows.derived["history_counts"] is counts and history_counts(windows) is counts  # once per window set
    user = table.frame[table.frame.user_id == "u000"].reset_index(drop=True)
    # u000 has 14 visits: windows start at 0..9; window s holds visits s..s+3. Counted independently here.
    for start in range(10):
        expected = np.zeros(len(windows.classes), int)
        for category in user.category[:start]:
            expected[windows.classes.index(category)] += 1
        assert counts[start].tolist() == expected.tolist()
    # The second user's first window starts their own history from zero.
    assert counts[10].sum() == 0 and counts[11].sum() == 1


def test_history_counts_of_a_subset_equal_the_full_rows(tmp_path):
    _, windows = two_user_windows(tmp_path)
    index = np.array([12, 3, 0])
    # Cut before the counts exist (computed from the subset's sequence) and after (the cached rows).
    before = history_counts(windows.subset(index))
    full = history_counts(windows)
    np.testing.assert_array_equal(before, full[index])
    np.testing.assert_array_equal(history_counts(windows.subset(index)), full[index])


def test_counts_before_by_hand():
    category = np.array([0, 2, 2, 1, 0, 1])  # one user on rows 0..3, another on rows 4..5
    rows, first = np.array([0, 3, 4, 4, 6]), np.array([0, 0, 0, 4, 4])
    np.testing.assert_array_equal(counts_before(category, 3, first, rows),
                                  [[0, 0, 0], [1, 0, 2], [1, 1, 2], [0, 0, 0], [1, 1, 0]])


def test_history_feature_matrix_by_hand(tmp_path):
    _, windows = two_user_windows(tmp_path)
    index = np.array([0, 5, 9, 12])
    history = history_feature_matrix(windows, index)
    num_classes = len(windows.classes)
    # Counts before the window, their total, then shares over past + window.
    assert history.shape == (len(index), 2 * num_classes + 1)
    np.testing.assert_array_equal(history[:, :num_classes], history_counts(windows)[index])
    for row, window in enumerate(index):
        before = history_counts(windows)[window]
        assert history[row, num_classes] == before.sum()
        everything = before.astype(float).copy()
        for category in windows.category_index[window][windows.mask[window]]:
            everything[category] += 1
        np.testing.assert_allclose(history[row, num_classes + 1:], everything / everything.sum())
    np.testing.assert_allclose(history[:, -num_classes:].sum(axis=1), 1.0)
    np.testing.assert_array_equal(HistoryFeatures().columns(windows, index, np.arange(3), fitting=True), history)


def test_history_needs_the_checkin_sequence(tmp_path):
    path = tmp_path / "next.parquet"
    write_next_parquet(path)
    windows = windows_from_next_parquet(load_next_parquet(path))
    assert windows.sequence is None
    with pytest.raises(ValueError, match="history_features needs the user's earlier check-ins.*trees.history_features"):
        history_counts(windows)
