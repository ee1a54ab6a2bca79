"""nextpoi_lib.features.target_statistics: next-category statistics keyed by the last POI or subcategory."""
import numpy as np
import pytest

from nextpoi_lib.features.target_statistics import (TransitionStatisticsFeature, last_visit_keys,
                                                    out_of_fold_statistics, transition_statistics)
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.windows import WindowSet
from synthetic import synthetic_config


@pytest.mark.parametrize("key", ["poi", "subcategory"])
def test_transition_statistics_use_only_fit_windows_labels(tmp_path, key):
    """Changing the labels of windows outside the fit set must not change the statistics."""
    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"})
    windows = prepare_data(config).windows
    windows.subcategory_index = np.where(windows.mask, windows.poi_index % 7, -1)
    keys = last_visit_keys(windows, key)
    fit, apply = np.arange(0, 300), np.arange(300, 400)
    before = transition_statistics(windows, keys, fit, apply)
    windows.target[apply] = (windows.target[apply] + 1) % len(windows.classes)
    np.testing.assert_array_equal(transition_statistics(windows, keys, fit, apply), before)
    # Out-of-fold rows: a row's own label never enters its features.
    train = np.arange(0, 400)
    own = out_of_fold_statistics(windows, keys, train)
    windows.target[train[:1]] = (windows.target[train[:1]] + 1) % len(windows.classes)
    np.testing.assert_array_equal(out_of_fold_statistics(windows, keys, train)[0], own[0])
    # The tree feature: out-of-fold statistics for the rows it is fitted on, fit-row statistics for others.
    feature = TransitionStatisticsFeature(key)
    np.testing.assert_array_equal(feature.columns(windows, train, train, fitting=True),
                                  out_of_fold_statistics(windows, keys, train))
    np.testing.assert_array_equal(feature.columns(windows, apply, train, fitting=False),
                                  transition_statistics(windows, keys, train, apply))


def tiny_windows(target, poi_index=None, mask=None, subcategory_index=None):
    n = len(target)
    empty = np.zeros((n, 1))
    return WindowSet(poi_index=empty.astype(int) if poi_index is None else poi_index,
                     mask=empty.astype(bool) if mask is None else mask, category_index=empty.astype(int),
                     hour=empty, weekday=empty.astype(int), gap_hours=empty, latitude=empty, longitude=empty,
                     target=np.asarray(target), target_hour=empty[:, 0], target_weekday=empty[:, 0].astype(int),
                     users=np.array([chr(ord("a") + i) for i in range(n)]), classes=["x", "y", "z"],
                     embedding_table=np.zeros((1, 1)), subcategory_index=subcategory_index)


def test_transition_statistics_by_hand():
    """Two keys, three classes, smoothing 5 towards the fit prior: computed independently."""
    windows = tiny_windows([0, 0, 1, 2, 2, 2])
    keys = np.array([0, 0, 0, 1, 1, 1])
    statistics = transition_statistics(windows, keys, np.arange(6), np.array([0, 3]))
    prior = np.array([2, 1, 3]) / 6
    expected_key0 = (np.array([2, 1, 0]) + 5 * prior) / 8
    np.testing.assert_allclose(np.exp(statistics[0, :3]), expected_key0, rtol=1e-6)
    np.testing.assert_allclose(statistics[:, 3], np.log1p([3, 3]))


def test_last_visit_keys_by_hand():
    mask = np.array([[True, True, False], [True, False, False], [True, True, True]])
    poi = np.array([[4, 7, 0], [2, 0, 0], [1, 5, 3]])
    subcategory = np.array([[1, 0, -1], [-1, -1, -1], [2, 2, 1]])
    windows = tiny_windows([0, 1, 2], poi_index=poi, mask=mask, subcategory_index=subcategory)
    assert last_visit_keys(windows, "poi").tolist() == [7, 2, 3]
    # An unknown last subcategory (-1) gets a key of its own, after the largest known one.
    assert last_visit_keys(windows, "subcategory").tolist() == [0, 2, 1]
    windows.subcategory_index = None
    with pytest.raises(ValueError, match="subcategory_statistics needs a finer category.*"
                                         "trees.subcategory_statistics: false"):
        last_visit_keys(windows, "subcategory")


def test_out_of_fold_parts_keep_a_person_proxy_group_whole():
    # 40 windows of 40 users at one POI, users paired into 20 groups. With the groups set, a window's out-of-fold
    # statistics leave out its group-mate's window as its own (a test window's never include its person's
    # other weeks either); with each user its own group, the group-mate is usually in another part and counts.
    rng = np.random.default_rng(3)
    n = 40
    windows = tiny_windows(rng.integers(0, 3, n))
    windows.users = np.array([f"u{i:02d}" for i in range(n)])
    mates = np.arange(n) ^ 1  # 0<->1, 2<->3, ...
    keys, train = np.zeros(n, np.int64), np.arange(n)

    def changed_by_mates(groups):
        windows.groups = groups
        before = out_of_fold_statistics(windows, keys, train)
        changed = np.zeros(n, bool)
        for i in range(n):
            original = windows.target.copy()
            windows.target[mates[i]] = (windows.target[mates[i]] + 1) % 3
            changed[i] = not np.array_equal(out_of_fold_statistics(windows, keys, train)[i], before[i])
            windows.target = original
        return changed

    assert not changed_by_mates(np.array([f"g{i // 2:02d}" for i in range(n)])).any()
    assert changed_by_mates(None).sum() >= n // 2
    # A window subset keeps its groups.
    windows.groups = np.array([f"g{i // 2:02d}" for i in range(n)])
    np.testing.assert_array_equal(windows.subset(np.array([3, 4])).groups, ["g01", "g02"])
