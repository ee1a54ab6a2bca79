"""nextpoi_lib.features.personal: what each user did after their own earlier visits to a category and a POI."""
import numpy as np
import pandas as pd
import pytest

from conftest import embedding_frame
from nextpoi_lib.config import DatasetConfig
from nextpoi_lib.data import load_checkins
from nextpoi_lib.features.personal import (PersonalTransitionFeatures, personal_transition_matrix,
                                           personal_transitions)
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.windows import build_windows
from synthetic import synthetic_config


def test_personal_transitions_by_hand(tmp_path):
    """What the user did after their own earlier visits to the last visit's category and POI, counted by hand."""
    visits = {"a": [("p1", "Food"), ("p2", "Shop"), ("p1", "Food"), ("p3", "Travel"), ("p1", "Food"),
                    ("p2", "Shop"), ("p4", "Food"), ("p1", "Food")],
              "b": [("p1", "Food"), ("p2", "Shop"), ("p1", "Food"), ("p2", "Shop"), ("p1", "Food")]}
    rows = [{"userid": user, "placeid": poi, "datetime": pd.Timestamp("2012-04-01") + pd.Timedelta(hours=i),
             "latitude": 40.0, "longitude": -74.0, "category": category}
            for user, sequence in visits.items() for i, (poi, category) in enumerate(sequence)]
    path = tmp_path / "c.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = load_checkins(DatasetConfig(source="checkins", path=str(path)), "toy")
    windows = build_windows(table, embedding_frame(["p1", "p2", "p3", "p4"]), length=3, stride=1)

    def counts(after_category: dict, after_poi: dict) -> list[int]:
        row = np.zeros(2 * len(windows.classes), int)
        for offset, counted in ((0, after_category), (len(windows.classes), after_poi)):
            for name, count in counted.items():
                row[offset + windows.classes.index(name)] = count
        return row.tolist()

    # User a: windows predict visits 3..7, so their last visits are rows 2..6 (listed above).
    expected = [
        counts({"Shop": 1}, {"Shop": 1}),  # row 2 (p1, Food): only 0 -> 1 started at Food / at p1
        counts({}, {}),  # row 3 (p3, Travel): never at Travel or p3 before
        counts({"Shop": 1, "Travel": 1}, {"Shop": 1, "Travel": 1}),  # row 4 (p1, Food): 0 -> 1 and 2 -> 3
        counts({"Food": 1}, {"Food": 1}),  # row 5 (p2, Shop): 1 -> 2
        counts({"Shop": 2, "Travel": 1}, {}),  # row 6 (p4, Food): 0 -> 1, 2 -> 3, 4 -> 5; p4 is new
        # User b starts from nothing: a's transitions do not count. Windows predict visits 3 and 4.
        counts({"Shop": 1}, {"Shop": 1}),  # row 2 (p1, Food)
        counts({"Food": 1}, {"Food": 1}),  # row 3 (p2, Shop)
    ]
    # A subset cut before the counts exist computes them from its own share of the check-in sequence.
    assert personal_transitions(windows.subset(np.array([4, 0]))).tolist() == [expected[4], expected[0]]
    assert "personal_transitions" not in windows.derived  # computed only when asked for
    assert personal_transitions(windows).tolist() == expected
    assert personal_transitions(windows) is windows.derived["personal_transitions"]  # once per window set
    # ... and one cut afterwards keeps the cached rows.
    assert personal_transitions(windows.subset(np.array([4, 0]))).tolist() == [expected[4], expected[0]]


def test_personal_transition_features_by_hand(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"})
    windows = prepare_data(config).windows
    assert len(windows.classes) == 3
    windows.derived["personal_transitions"] = np.zeros((len(windows), 6), np.int32)
    windows.derived["personal_transitions"][:2] = [[2, 0, 2, 0, 0, 0], [0, 1, 0, 3, 0, 1]]
    features = personal_transition_matrix(windows, np.array([0, 1, 2]))
    # Per half (after the last category, after the last POI): shares of each next category, then the total.
    np.testing.assert_allclose(features, [[0.5, 0, 0.5, 4, 0, 0, 0, 0],
                                          [0, 1, 0, 1, 0.75, 0, 0.25, 4],
                                          [0, 0, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(
        PersonalTransitionFeatures().columns(windows, np.array([0, 1, 2]), np.arange(3), fitting=False), features)


def test_personal_transitions_need_the_checkin_sequence(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"})
    windows = prepare_data(config).windows
    windows.sequence = None  # as for a next.parquet file
    with pytest.raises(ValueError, match="personal_transitions needs the user's check-in sequence.*"
                                         "trees.personal_transitions: false"):
        personal_transitions(windows)
