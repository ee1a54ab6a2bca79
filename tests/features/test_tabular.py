"""nextpoi_lib.features.tabular: the trees' window features, built by hand for two small windows."""
import numpy as np
import pytest

from nextpoi_lib.features.tabular import (categorical_columns, last_observed, require_visit_details,
                                          window_category_counts, window_feature_matrix)
from nextpoi_lib.windows import WindowSet


def two_windows() -> WindowSet:
    """Window 0 observes 3 visits (categories 0, 2, 2); window 1 observes 2 (category 1, 1) then padding."""
    mask = np.array([[True, True, True], [True, True, False]])
    return WindowSet(
        poi_index=np.array([[0, 1, 2], [3, 4, 0]]), mask=mask, category_index=np.array([[0, 2, 2], [1, 1, -1]]),
        hour=np.array([[8.0, 9.5, 20.0], [13.0, 14.0, 0.0]], np.float32),
        weekday=np.array([[0, 1, 6], [3, 3, 0]]),
        gap_hours=np.array([[0.0, 1.0, np.e - 1], [0.0, 3.0, 0.0]], np.float32),
        latitude=np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]], np.float32),
        longitude=np.array([[-1.0, -2.0, -3.0], [-4.0, -5.0, 0.0]], np.float32),
        target=np.array([1, 0]), target_hour=np.array([21.0, 15.0], np.float32), target_weekday=np.array([6, 3]),
        users=np.array(["a", "b"]), classes=["x", "y", "z"], embedding_table=np.zeros((5, 2), np.float32))


def test_last_observed_by_hand():
    values = np.array([[5, 6, 7], [8, 9, 10], [11, 12, 13]])
    mask = np.array([[True, True, True], [True, False, False], [True, True, False]])
    assert last_observed(values, mask).tolist() == [7, 8, 12]


def test_window_feature_matrix_by_hand():
    windows = two_windows()
    nan = np.nan
    expected = np.array([
        # categories by position | category counts | hours | weekdays | log1p gaps
        # | last latitude, longitude, hour, weekday, category | observed visits
        [0, 2, 2, 1, 0, 2, 8.0, 9.5, 20.0, 0, 1, 6, 0.0, np.log(2.0), 1.0, 3.0, -3.0, 20.0, 6, 2, 3],
        [1, 1, -1, 0, 2, 0, 13.0, 14.0, nan, 3, 3, nan, 0.0, np.log(4.0), nan, 5.0, -5.0, 14.0, 3, 1, 2],
    ])
    features = window_feature_matrix(windows, np.array([0, 1]))
    np.testing.assert_allclose(features, expected, rtol=1e-6)  # NaN where the position is padding
    np.testing.assert_allclose(window_feature_matrix(windows, np.array([1])), expected[1:], rtol=1e-6)
    np.testing.assert_array_equal(window_category_counts(windows, np.array([1, 0])), [[0, 2, 0], [1, 0, 2]])
    categorical = categorical_columns(windows, expected.shape[1] + 4)
    # Category-valued: each position, and the last observed category (second to last column of the matrix).
    assert np.flatnonzero(categorical).tolist() == [0, 1, 2, 19]


def test_models_that_read_visits_refuse_windows_without_visit_details():
    windows = two_windows()
    require_visit_details(windows, "markov")  # check-in windows pass
    windows.category_index = np.full((2, 3), -1)  # as for next.parquet windows
    with pytest.raises(ValueError, match="Baseline 'markov' needs the categories of the observed visits.*"
                                         "dataset.source: checkins"):
        require_visit_details(windows, "markov")
