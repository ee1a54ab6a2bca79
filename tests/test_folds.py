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
