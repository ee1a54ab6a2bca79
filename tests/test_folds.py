import numpy as np
import pytest

from conftest import embedding_frame, synthetic_checkins
from nextpoi_lib.config import DatasetConfig, FoldConfig
from nextpoi_lib.data import load_checkins
from nextpoi_lib.folds import make_fold_manifest
from nextpoi_lib.windows import build_windows


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "c.csv"
    synthetic_checkins(n_users=60, visits_per_user=15).to_csv(path, index=False)
    return load_checkins(DatasetConfig(source="checkins", path=str(path)), "toy")


def manifest_for(table, length, stride, config=FoldConfig()):
    windows = build_windows(table, embedding_frame(sorted(table.frame.poi_id.unique())), length, stride)
    manifest = make_fold_manifest(windows.users, windows.target, config, table.data_hash,
                                  assignment_users=table.frame.user_id.to_numpy(),
                                  assignment_labels=table.category_index)
    return windows, manifest


def test_user_grouped_folds_are_disjoint_and_cover_every_window(table):
    windows, manifest = manifest_for(table, 9, 1)
    seen_users = set()
    all_test = np.concatenate([fold.test_index for fold in manifest.folds])
    assert sorted(all_test.tolist()) == list(range(len(windows)))
    for fold in manifest.folds:
        test_users = set(windows.users[fold.test_index])
        assert not test_users & seen_users
        seen_users |= test_users
        train_users = set(windows.users[fold.train_index])
        inner_users = set(windows.users[fold.inner_val_index])
        assert not train_users & test_users and not inner_users & test_users and not train_users & inner_users
        assert inner_users == set(fold.inner_val_users) and test_users == set(fold.test_users)
        assert len(fold.train_index) + len(fold.inner_val_index) + len(fold.test_index) == len(windows)


def test_folds_do_not_depend_on_window_settings(table):
    _, stride1 = manifest_for(table, 9, 1)
    _, stride9 = manifest_for(table, 9, 9)
    _, length12 = manifest_for(table, 12, 3)
    assert stride1.hash == stride9.hash == length12.hash
    assert [f.test_users for f in stride1.folds] == [f.test_users for f in length12.folds]


def test_fold_seed_changes_assignment(table):
    _, first = manifest_for(table, 9, 1)
    _, second = manifest_for(table, 9, 1, FoldConfig(seed=7))
    assert first.hash != second.hash


def test_legacy_record_level_split_mixes_users(table):
    windows, manifest = manifest_for(table, 9, 1, FoldConfig(strategy="legacy_record_level"))
    shared = [set(windows.users[f.test_index]) & set(windows.users[f.train_index]) for f in manifest.folds]
    assert any(shared)  # exactly the leak the default protocol removes
    assert "test_windows" in manifest.to_json()["folds"][0]


def test_an_assignment_made_early_gives_the_same_folds(table):
    from nextpoi_lib.folds import assign_users

    windows, manifest = manifest_for(table, 9, 1)
    early = assign_users(table.frame.user_id.to_numpy(), table.category_index, FoldConfig())
    again = make_fold_manifest(windows.users, windows.target, FoldConfig(), table.data_hash, assignment=early)
    assert again.hash == manifest.hash
    for first, second in zip(manifest.folds, again.folds):
        assert first.train_index.tolist() == second.train_index.tolist()
        assert first.inner_val_index.tolist() == second.inner_val_index.tolist()


def test_too_few_users_are_refused_with_the_key_to_change(table):
    from nextpoi_lib.data import DataError
    from nextpoi_lib.folds import assign_users

    users = table.frame.user_id.to_numpy()
    few = np.isin(users, np.unique(users)[:3])
    with pytest.raises(DataError, match=r"Only 3 users, fewer than folds.n_splits=5"):
        assign_users(users[few], table.category_index[few], FoldConfig())
    few = np.isin(users, np.unique(users)[:6])
    with pytest.raises(DataError, match=r"training users in fold 0, fewer than the 7 parts.*folds.inner_val_fraction"):
        assign_users(users[few], table.category_index[few], FoldConfig())


def test_rare_classes_are_named_with_their_training_counts_per_fold(table):
    from nextpoi_lib.folds import rare_class_message, warn_rare_classes

    windows, manifest = manifest_for(table, 9, 1)
    classes = list(table.classes)
    assert rare_class_message(manifest, windows.target, classes) is None
    targets = windows.target.copy()
    train0 = manifest.folds[0].train_index
    rare = targets == 2
    targets[rare] = 0
    targets[train0[:3]] = 2  # only 3 training targets of class 2 in fold 0 (and at most 3 elsewhere)
    counts = [int((targets[fold.train_index] == 2).sum()) for fold in manifest.folds]
    message = rare_class_message(manifest, targets, classes)
    assert f"{classes[2]!r} (" + ", ".join(f"fold {f}: {n}" for f, n in enumerate(counts)) + ")" in message
    assert "fewer than 5 training targets" in message and "folds.n_splits" in message and "\n" not in message
    assert message.startswith("1 of 3 classes") and f"{classes[0]!r} (" not in message
    assert "weighs" not in message
    with pytest.warns(UserWarning, match="fewer than 5 training targets"):
        warn_rare_classes(manifest, targets, classes)
    # Under balanced weights: the largest ratio of the most to the least frequent class's count over the folds.
    per_fold = [np.bincount(targets[fold.train_index], minlength=3) for fold in manifest.folds]
    ratios = [counts.max() / counts[counts > 0].min() for counts in per_fold]
    worst = int(np.argmax(ratios))
    weighted = rare_class_message(manifest, targets, classes, balanced_weights=True)
    assert (f"a {classes[int(np.argmin(np.where(per_fold[worst] > 0, per_fold[worst], 10**9)))]!r} target weighs "
            f"{ratios[worst]:,.0f} times a {classes[int(np.argmax(per_fold[worst]))]!r} target in fold "
            f"{manifest.folds[worst].fold}") in weighted


# ------------------------------------------------------------------------------ folds.group_by: person_proxy

HOME = "Home (private)"


def test_person_proxy_groups_join_users_who_share_a_home_transitively():
    """Known answer: a-b share home h1, b-c share h2 (so a, b, c are one person); d visits the same café as a
    (a venue, not a home: no link); e has a home of its own; f and g share an office (not a linking type)."""
    from nextpoi_lib.folds import person_proxy_groups

    rows = [("a", "h1", HOME), ("b", "h1", HOME), ("b", "h2", HOME), ("c", "h2", HOME), ("a", "cafe", "Café"),
            ("d", "cafe", "Café"), ("e", "h3", HOME), ("f", "office", "Office"), ("g", "office", "Office")]
    expected = {"a": "a", "b": "a", "c": "a", "d": "d", "e": "e", "f": "f", "g": "g"}
    for order in (rows, rows[::-1], rows[3:] + rows[:3]):  # the answer does not depend on the check-ins' order
        users, pois, kinds = (np.array(column) for column in zip(*order))
        assert person_proxy_groups(users, pois, kinds, [HOME]) == expected
    # Offices link too once they are named: f and g become one group.
    users, pois, kinds = (np.array(column) for column in zip(*rows))
    assert person_proxy_groups(users, pois, kinds, [HOME, "Office"]) == {**expected, "g": "f"}


@pytest.fixture
def household_table(tmp_path):
    """60 users in households of 1-5 (sizes cycling), every user checking in at the household's private home
    every fifth visit; the other visits are the synthetic cycle over shared venues."""
    frame = synthetic_checkins(n_users=60, visits_per_user=15)
    users = sorted(frame.userid.unique())
    household, size, start = {}, 1, 0
    while start < len(users):
        for user in users[start:start + size]:
            household[user] = f"home{start:03d}"
        start, size = start + size, size % 5 + 1
    frame["venue_type"] = "Venue"
    at_home = frame.groupby("userid").cumcount() % 5 == 0
    frame.loc[at_home, "placeid"] = frame.loc[at_home, "userid"].map(household)
    frame.loc[at_home, "venue_type"] = HOME
    path = tmp_path / "households.csv"
    frame.to_csv(path, index=False)
    table = load_checkins(DatasetConfig(source="checkins", path=str(path), subcategory_column="venue_type"), "toy")
    return table, household


def person_proxy_manifest(table, config):
    from nextpoi_lib.folds import assign_users

    frame = table.frame
    windows = build_windows(table, embedding_frame(sorted(frame.poi_id.unique())), 9, 1)
    assignment = assign_users(frame.user_id.to_numpy(), table.category_index, config,
                              sample_pois=frame.poi_id.to_numpy(), sample_subcategories=frame.subcategory.to_numpy())
    return windows, make_fold_manifest(windows.users, windows.target, config, table.data_hash, assignment=assignment)


def test_person_proxy_folds_never_split_a_household(household_table):
    table, household = household_table
    windows, manifest = person_proxy_manifest(table, FoldConfig(group_by="person_proxy"))
    assert manifest.groups == {user: min(u for u in household if household[u] == home)
                               for user, home in household.items()}
    n_households = len(set(household.values()))
    assert n_households == 20  # sizes 1+2+3+4+5 = 15, four times
    for fold in manifest.folds:
        parts = {name: {household[user] for user in windows.users[index]} for name, index in
                 (("train", fold.train_index), ("inner", fold.inner_val_index), ("test", fold.test_index))}
        assert not parts["train"] & parts["test"] and not parts["inner"] & parts["test"]
        assert not parts["train"] & parts["inner"]
        assert len(parts["train"]) + len(parts["inner"]) + len(parts["test"]) == n_households
    # Grouped by user alone, the same data puts members of one household on both sides of some fold.
    _, by_user = person_proxy_manifest(table, FoldConfig())
    assert any({household[u] for u in fold.test_users} & {household[u] for u in household if u not in fold.test_users}
               for fold in by_user.folds)


def test_prepared_windows_carry_their_person_proxy_group(household_table, tmp_path):
    # The out-of-fold label statistics (trees, place_statistics) split the training users by these groups.
    from nextpoi_lib.preparation import prepare_data
    from synthetic import synthetic_config

    _, household = household_table
    dataset = {"path": str(tmp_path / "households.csv"), "subcategory_column": "venue_type"}
    config = synthetic_config(tmp_path, dataset=dataset, folds={"group_by": "person_proxy"},
                              model={"name": "gradient_boosting"})
    prepared = prepare_data(config)
    first_member = {home: min(u for u in household if household[u] == home) for home in household.values()}
    np.testing.assert_array_equal(prepared.windows.groups,
                                  [first_member[household[user]] for user in prepared.windows.users])
    by_user = synthetic_config(tmp_path, dataset=dataset, model={"name": "gradient_boosting"})
    assert prepare_data(by_user).windows.groups is None


def test_person_proxy_manifest_records_the_grouping_and_hashes_it(household_table):
    table, household = household_table
    _, proxy = person_proxy_manifest(table, FoldConfig(group_by="person_proxy"))
    _, by_user = person_proxy_manifest(table, FoldConfig())
    written = proxy.to_json()
    assert written["group_by"] == "person_proxy" and written["person_link_subcategories"] == [HOME]
    assert written["groups"] == proxy.groups and written["n_groups"] == 20
    assert by_user.to_json()["group_by"] == "user" and "groups" not in by_user.to_json()
    assert proxy.hash != by_user.hash
    # A link type that no check-in has leaves every user alone: the same folds as group_by user, but the
    # manifest still says how it was grouped, so its hash differs.
    _, unlinked = person_proxy_manifest(table, FoldConfig(group_by="person_proxy", person_link_subcategories=["Nope"]))
    assert set(unlinked.groups.values()) == set(household)
    assert [f.test_users for f in unlinked.folds] == [f.test_users for f in by_user.folds]
    assert unlinked.hash != by_user.hash


def test_group_by_user_keeps_todays_fold_hash(table):
    """The hash and folds measured with the code before folds.group_by existed (same synthetic table)."""
    _, manifest = manifest_for(table, 9, 1)
    _, explicit = manifest_for(table, 9, 1, FoldConfig(group_by="user"))
    assert manifest.hash == explicit.hash == "0127d988f81fe34c"
    assert manifest.groups is None and manifest.group_by == "user"


def test_person_proxy_needs_subcategories(table):
    from nextpoi_lib.config import ConfigError, from_dict
    from nextpoi_lib.data import DataError
    from nextpoi_lib.folds import assign_users

    with pytest.raises(DataError, match="folds.group_by='person_proxy'.*dataset.subcategory_column"):
        assign_users(table.frame.user_id.to_numpy(), table.category_index, FoldConfig(group_by="person_proxy"))
    with pytest.raises(ConfigError, match=r"dataset.source='checkins' has no subcategory.*dataset.subcategory_column"):
        from_dict({"dataset": {"source": "checkins", "path": "x.csv"}, "folds": {"group_by": "person_proxy"}})
    with pytest.raises(ConfigError, match="folds.strategy='legacy_record_level'"):
        from_dict({"folds": {"group_by": "person_proxy", "strategy": "legacy_record_level"}})
    with pytest.raises(ConfigError, match="folds.person_link_subcategories"):
        from_dict({"folds": {"group_by": "person_proxy", "person_link_subcategories": []}})
    assert from_dict({"folds": {"group_by": "person_proxy"}}).folds.person_link_subcategories == [HOME]


@pytest.mark.slow
def test_embedded_sample_person_proxy_count():
    """Measured on the mat-data Foursquare sample: 1,726 of 3,079 trajectories visit a private home; they fall
    into 103 components, so the proxy has 1,353 + 103 = 1,456 pseudo-persons (largest: 113 trajectories)."""
    from nextpoi_lib.folds import person_proxy_groups

    frame = load_checkins(DatasetConfig(source="foursquare_nyc"), "foursquare_nyc").frame
    groups = person_proxy_groups(frame.user_id.to_numpy(), frame.poi_id.to_numpy(), frame.subcategory.to_numpy(),
                                 FoldConfig().person_link_subcategories)
    home_users = set(frame.user_id[frame.subcategory == HOME])
    print(f"trajectories {len(groups)}, with a private home {len(home_users)}, person-proxy groups "
          f"{len(set(groups.values()))}")
    assert (len(groups), len(home_users), len(set(groups.values()))) == (3079, 1726, 1456)
    assert len({groups[user] for user in home_users}) == 103
    home = frame[frame.subcategory == HOME]
    shared_homes = home.groupby("poi_id").user_id.nunique().loc[lambda n: n > 1].index
    assert home[home.poi_id.isin(shared_homes)].user_id.nunique() == 1704  # share their home with another tid
    # The folds of the ready layer keep every pseudo-person whole, outside and inside each fold.
    from nextpoi_lib.folds import assign_users

    table = load_checkins(DatasetConfig(source="foursquare_nyc"), "foursquare_nyc")
    assignment = assign_users(frame.user_id.to_numpy(), table.category_index, FoldConfig(group_by="person_proxy"),
                              sample_pois=frame.poi_id.to_numpy(), sample_subcategories=frame.subcategory.to_numpy())
    assert assignment.groups == groups
    for fold, inner in enumerate(assignment.inner):
        test = {groups[user] for user, outer in assignment.outer.items() if outer == fold}
        validating = {groups[user] for user, part in inner.items() if part == 0}
        fitting = {groups[user] for user, part in inner.items() if part != 0}
        assert not test & (validating | fitting) and not validating & fitting


def test_the_person_proxy_layer_sets_the_grouping_on_any_experiment():
    from pathlib import Path

    from nextpoi_lib.experiment import load_config

    repo = Path(__file__).resolve().parent.parent
    layer = repo / "parameters" / "folds" / "person_proxy.yaml"
    for main in ("recommended.yaml", "smoke.yaml"):
        plain = load_config(repo / "parameters" / main)
        layered = load_config(repo / "parameters" / main, layer)
        assert plain.folds.group_by == "user"
        assert layered.folds.group_by == "person_proxy" and layered.folds.person_link_subcategories == [HOME]
        assert layered.name == plain.name  # the layer names no run
        assert layered.folds.n_splits == plain.folds.n_splits and layered.folds.seed == plain.folds.seed
