"""The neural heads' identity and user-past inputs of a test window see nothing at or after its target and
nothing of the other test users: change those check-ins, recompute everything from the check-in table, and
the window's identity rows (after the fold's vocabulary), venue-type rows and user_past vector are the same."""
import numpy as np
import pandas as pd
import pytest

from nextpoi_lib.config import DatasetConfig
from nextpoi_lib.data import load_checkins, poi_table
from nextpoi_lib.features.identity import UNSEEN_ROW, fit_vocabulary, identity_codes
from nextpoi_lib.features.sequence import user_past_features
from nextpoi_lib.folds import Fold
from nextpoi_lib.windows import build_windows

LENGTH = 4
CATEGORIES = ("Food", "Shop", "Travel")
TEST_USERS, VAL_USERS = ["u00", "u01", "u02"], ["u03", "u04"]


def checkins(seed: int = 0) -> pd.DataFrame:
    """12 users x 12 visits over 15 POIs (each with a category and a venue type); user u00 also visits a POI
    no one else visits."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(12):
        for visit in range(12):
            poi = int(rng.integers(15))
            rows.append({"userid": f"u{user:02d}", "placeid": f"p{poi:02d}",
                         "datetime": pd.Timestamp("2012-04-01") + pd.Timedelta(hours=5 * visit + user),
                         "latitude": 40.0 + poi / 100, "longitude": -74.0 + poi / 100,
                         "category": CATEGORIES[poi % 3], "type": f"t{poi % 7}"})
    frame = pd.DataFrame(rows)
    frame.loc[(frame.userid == "u00") & (frame.index % 12 == 2), ["placeid", "type"]] = ["p_only_test", "t_only_test"]
    return frame


def inputs(frame: pd.DataFrame, tmp_path, name: str):
    """Everything recomputed from the check-in table: windows, a fold with fixed users, its vocabularies, and
    per window the identity rows, venue-type rows and user_past vector."""
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    # Classes fixed in id order: derived from the data they would be ordered by counts, which the changes move.
    table = load_checkins(DatasetConfig(source="checkins", path=str(path), subcategory_column="type",
                                        classes=list(CATEGORIES)), "toy")
    # No embeddings wanted: the table has the POI code table's rows and no columns (as preparation makes it).
    empty = pd.DataFrame(index=pd.Index(poi_table(table)["poi_id"], name="poi_id"))
    windows = build_windows(table, empty, length=LENGTH, stride=1)
    users = windows.users
    test = np.flatnonzero(np.isin(users, TEST_USERS))
    val = np.flatnonzero(np.isin(users, VAL_USERS))
    train = np.flatnonzero(~np.isin(users, TEST_USERS + VAL_USERS))
    fold = Fold(0, train, val, test, TEST_USERS, VAL_USERS)
    rows = {}
    for feature in ("poi_identity", "venue_type"):
        vocabulary = fit_vocabulary(windows, feature, fold.train_index, min_count=2)
        rows[feature] = vocabulary.rows_of(identity_codes(windows, feature)[0])
    return windows, fold, rows, user_past_features(windows)


def assert_same_inputs(before, after, window_index):
    (windows, _, rows, past), (windows2, _, rows2, past2) = before, after
    assert (windows.users[window_index] == windows2.users[window_index]).all()
    for feature in rows:
        np.testing.assert_array_equal(rows[feature][window_index], rows2[feature][window_index])
    np.testing.assert_array_equal(past[window_index], past2[window_index])


def test_inputs_ignore_check_ins_at_or_after_the_target(tmp_path):
    frame = checkins()
    before = inputs(frame, tmp_path, "before")
    windows, fold = before[0], before[1]
    user_windows = np.flatnonzero(windows.users == "u01")
    # A window of u01 in the middle of their sequence: its target is visit 7 of the user.
    window = user_windows[3]
    target_visit = windows.sequence.last_row[window] + 1 - windows.sequence.user_first_row[window]
    assert target_visit == 3 + LENGTH
    changed = frame.copy()
    user_rows = changed.index[changed.userid == "u01"][target_visit:]
    # New POIs (names sorted before and after every other: all codes shift), categories, types, places.
    changed.loc[user_rows, "placeid"] = [f"a_new{i}" if i % 2 else f"z_new{i}" for i in range(len(user_rows))]
    changed.loc[user_rows, "category"] = "Travel"
    changed.loc[user_rows, "type"] = "a_type"
    changed.loc[user_rows, ["latitude", "longitude"]] = [41.0, -73.0]
    after = inputs(changed, tmp_path, "after")
    np.testing.assert_array_equal(after[1].test_index, fold.test_index)
    # The window itself and every earlier window of the user (targets at or before the changed rows).
    assert_same_inputs(before, after, user_windows[:4])
    # The later windows do see the change (the comparison can fail).
    assert not np.array_equal(before[3][user_windows[-1]], after[3][user_windows[-1]])


def with_other_test_users_changed(frame):
    """The check-ins with the other test users' (u01, u02) places, categories and venue types redrawn."""
    changed = frame.copy()
    others = changed.userid.isin(["u01", "u02"])
    rng = np.random.default_rng(1)
    changed.loc[others, "placeid"] = [f"a_other{i}" for i in rng.integers(0, 30, int(others.sum()))]
    changed.loc[others, "category"] = rng.choice(CATEGORIES, int(others.sum()))
    changed.loc[others, "type"] = "a_type"
    return changed


def test_inputs_ignore_the_other_test_users(tmp_path):
    frame = checkins()
    before = inputs(frame, tmp_path, "before")
    after = inputs(with_other_test_users_changed(frame), tmp_path, "after")
    assert_same_inputs(before, after, np.flatnonzero(before[0].users == "u00"))


def test_a_poi_only_test_users_visit_maps_to_the_unseen_row(tmp_path):
    windows, fold, rows, _ = inputs(checkins(), tmp_path, "before")
    codes, _ = identity_codes(windows, "poi_identity")
    table = poi_table(load_checkins(DatasetConfig(source="checkins", path=str(tmp_path / "before.csv")), "toy"))
    only_test = int(np.flatnonzero(table["poi_id"].to_numpy() == "p_only_test")[0])
    visits = codes == only_test
    assert visits[fold.test_index].any() and not visits[fold.train_index].any()
    assert (rows["poi_identity"][visits] == UNSEEN_ROW).all()
    assert (rows["venue_type"][visits] == UNSEEN_ROW).all()
    # ... while the POIs the training users visit often have their own rows.
    assert (rows["poi_identity"][fold.train_index][windows.mask[fold.train_index]] > UNSEEN_ROW).mean() > 0.9


@pytest.mark.parametrize("feature", ["poi_identity", "venue_type"])
def test_identity_rows_depend_on_the_training_windows_only(tmp_path, feature):
    """Row ids are ranks among the training vocabulary, so changing inner-validation users changes none of them
    except for POIs only those users visit (which stay unseen)."""
    frame = checkins()
    before = inputs(frame, tmp_path, "before")
    changed = frame.copy()
    val = changed.userid.isin(VAL_USERS)
    changed.loc[val, "placeid"] = "a_val_only"
    changed.loc[val, "type"] = "a_val_type"
    after = inputs(changed, tmp_path, "after")
    train = before[1].train_index
    np.testing.assert_array_equal(before[2][feature][train], after[2][feature][train])
    assert (after[2][feature][after[1].inner_val_index][after[0].mask[after[1].inner_val_index]] == UNSEEN_ROW).all()
