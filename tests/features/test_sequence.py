"""nextpoi_lib.features.sequence: the heads' user_past input, checked against counts made here by hand."""
import numpy as np
import pandas as pd
import pytest

from conftest import embedding_frame
from nextpoi_lib.config import DatasetConfig
from nextpoi_lib.data import DataError, load_checkins
from nextpoi_lib.features.sequence import numeric_feature_count, numeric_features, user_past_features
from nextpoi_lib.windows import build_windows

VISITS = {"a": [("p1", "Food"), ("p2", "Shop"), ("p1", "Food"), ("p3", "Travel"), ("p1", "Food"), ("p2", "Shop"),
                ("p4", "Food"), ("p1", "Food")],
          "b": [("p2", "Shop"), ("p2", "Shop"), ("p1", "Food"), ("p2", "Shop"), ("p3", "Travel")]}


def toy_windows(tmp_path, visits=VISITS, min_class_checkins=None):
    rows = [{"userid": user, "placeid": poi, "datetime": pd.Timestamp("2012-04-01") + pd.Timedelta(hours=i),
             "latitude": 40.0 + i, "longitude": -74.0, "category": category}
            for user, sequence in visits.items() for i, (poi, category) in enumerate(sequence)]
    path = tmp_path / "c.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = load_checkins(DatasetConfig(source="checkins", path=str(path)), "toy")
    pois = sorted({poi for sequence in visits.values() for poi, _ in sequence})
    return build_windows(table, embedding_frame(pois), length=3, stride=1, min_class_checkins=min_class_checkins)


def expected_user_past(windows) -> np.ndarray:
    """The user_past vector of every window, counted here from VISITS."""
    classes, rows = windows.classes, []
    for w, user in enumerate(windows.users):
        sequence = VISITS[user]
        start = windows.sequence.first_row[w] - windows.sequence.user_first_row[w]
        target = windows.sequence.last_row[w] - windows.sequence.user_first_row[w] + 1
        categories = [category for _, category in sequence]
        before = np.array([categories[:start].count(name) for name in classes], float)
        up_to_target = np.array([categories[:target].count(name) for name in classes], float)
        row = list(np.log1p(before) / 5) + [np.log1p(before.sum()) / 5] + list(up_to_target / up_to_target.sum())
        last = target - 1
        for key in (1, 0):  # after the same category, then after the same POI
            followed = np.zeros(len(classes))
            for j in range(last):
                if sequence[j][key] == sequence[last][key]:
                    followed[classes.index(categories[j + 1])] += 1
            row += list(followed / max(followed.sum(), 1)) + [np.log1p(followed.sum()) / 5]
        rows.append(row)
    return np.array(rows)


def test_user_past_by_hand(tmp_path):
    windows = toy_windows(tmp_path)
    assert len(windows) == 7
    np.testing.assert_allclose(user_past_features(windows), expected_user_past(windows), rtol=1e-6, atol=1e-7)


def test_user_past_is_repeated_at_every_observed_position(tmp_path):
    windows = toy_windows(tmp_path)
    windows.mask[0, 2] = False  # a padded position stays zero
    numeric = numeric_features(windows, ["category", "time", "user_past"], target_time=False)
    assert numeric.shape[-1] == numeric_feature_count(["category", "time", "user_past"], False,
                                                      len(windows.classes)) == 5 + 4 * 3 + 3
    past = user_past_features(windows)
    for w in range(len(windows)):
        for position in range(windows.length):
            expected = past[w] if windows.mask[w, position] else np.zeros(past.shape[1])
            np.testing.assert_array_equal(numeric[w, position, 5:], expected)
    assert numeric_feature_count(["embedding"], False, 3) == 0


def test_user_past_refuses_windows_without_a_sequence_or_with_unknown_categories(tmp_path):
    windows = toy_windows(tmp_path)
    windows.sequence = None
    windows.derived.clear()
    with pytest.raises(ValueError, match="user_past.*next.parquet"):
        user_past_features(windows)
    visits = {**VISITS, "c": [("p5", "Rare")] + VISITS["a"]}
    windows = toy_windows(tmp_path, visits, min_class_checkins=2)
    with pytest.raises(DataError, match="user_past.*min_class_checkins.*class_map"):
        user_past_features(windows)
