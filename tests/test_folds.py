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
