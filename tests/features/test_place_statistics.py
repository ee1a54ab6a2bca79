"""windows.features place_statistics: the trees' target statistics of the window's last POI and last venue
type as a neural input, fitted per fold (out-of-fold for the training rows), leak-free for the test windows,
and trained end to end (folds one by one: stacked folds are turned off with a note)."""
import warnings

import numpy as np
import pytest
import torch

from conftest import synthetic_checkins
from nextpoi_lib.config import ConfigError, FoldConfig
from nextpoi_lib.experiment import load_config
from nextpoi_lib.features.place_statistics import (PLACE_STATISTICS_COUNT_SCALE, place_statistics,
                                                   place_statistics_width)
from nextpoi_lib.folds import make_fold_manifest
from nextpoi_lib.features.target_statistics import last_visit_keys, out_of_fold_statistics, transition_statistics
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.progress import Progress
from nextpoi_lib.training.loop import fit_fold, forward_batch, predict_test_fold
from nextpoi_lib.training.neural import cross_validate
from nextpoi_lib.training.plan import execution_plan
from nextpoi_lib.training.tensors import WindowTensors
from synthetic import synthetic_config
from test_leaks import CATEGORIES, VAL_USERS, checkins, inputs, with_other_test_users_changed

C = len(CATEGORIES)
TRANSFORMER = {"name": "transformer", "model_dim": 16, "num_layers": 1, "num_heads": 2, "feedforward_dim": 16}


def scaled(statistics: np.ndarray) -> np.ndarray:
    """The trees' columns as the heads get them: the log1p count column divided by the scale."""
    out = statistics.copy()
    out[:, -1] /= PLACE_STATISTICS_COUNT_SCALE
    return out


def test_values_are_the_trees_statistics_of_the_fold(tmp_path):
    windows, fold, _, _ = inputs(checkins(), tmp_path, "toy")
    values = place_statistics(windows, fold.train_index)
    assert values.shape == (len(windows), place_statistics_width(C)) == (len(windows), 2 * (C + 1))
    for half, key in enumerate(("poi", "subcategory")):
        keys = last_visit_keys(windows, key)
        columns = values[:, half * (C + 1):(half + 1) * (C + 1)]
        for index in (fold.test_index, fold.inner_val_index):
            np.testing.assert_allclose(columns[index],
                                       scaled(transition_statistics(windows, keys, fold.train_index, index)),
                                       rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(columns[fold.train_index],
                                   scaled(out_of_fold_statistics(windows, keys, fold.train_index)), rtol=1e-5, atol=1e-5)
        # Out-of-fold is not the in-sample statistic (which would have seen each row's own label).
        in_sample = scaled(transition_statistics(windows, keys, fold.train_index, fold.train_index))
        assert not np.allclose(columns[fold.train_index], in_sample, atol=1e-3)


def test_a_test_window_by_hand(tmp_path):
    """Counted here from the training windows' last POIs and targets (smoothing 5 towards the training prior)."""
    windows, fold, _, _ = inputs(checkins(), tmp_path, "toy")
    values = place_statistics(windows, fold.train_index)
    window = fold.test_index[5]
    last_poi = lambda w: windows.poi_index[w][windows.mask[w]][-1]
    same = [w for w in fold.train_index if last_poi(w) == last_poi(window)]
    counts = np.bincount(windows.target[same], minlength=C)
    prior = np.bincount(windows.target[fold.train_index], minlength=C) / len(fold.train_index)
    expected = np.log((counts + 5 * prior) / (len(same) + 5) + 1e-9)
    np.testing.assert_allclose(values[window, :C], expected, rtol=1e-5)
    assert values[window, C] == pytest.approx(np.log1p(len(same)) / PLACE_STATISTICS_COUNT_SCALE)
    assert len(same) > 0


def test_a_test_window_ignores_check_ins_at_or_after_its_target(tmp_path):
    frame = checkins()
    windows, fold, _, _ = inputs(frame, tmp_path, "before")
    user_windows = np.flatnonzero(windows.users == "u01")
    target_visit = windows.sequence.last_row[user_windows[3]] + 1 - windows.sequence.user_first_row[user_windows[3]]
    changed = frame.copy()
    user_rows = changed.index[changed.userid == "u01"][target_visit:]
    changed.loc[user_rows, "placeid"] = [f"a_new{i}" if i % 2 else f"z_new{i}" for i in range(len(user_rows))]
    changed.loc[user_rows, "category"] = "Travel"
    changed.loc[user_rows, "type"] = "a_type"
    windows2, fold2, _, _ = inputs(changed, tmp_path, "after")
    np.testing.assert_array_equal(fold2.test_index, fold.test_index)
    before, after = place_statistics(windows, fold.train_index), place_statistics(windows2, fold2.train_index)
    np.testing.assert_array_equal(before[user_windows[:4]], after[user_windows[:4]])
    # The last window of the user ends on a changed visit: it does see the change (the comparison can fail).
    assert not np.array_equal(before[user_windows[-1]], after[user_windows[-1]])


def test_a_test_window_ignores_the_other_test_users(tmp_path):
    frame = checkins()
    windows, fold, _, _ = inputs(frame, tmp_path, "before")
    windows2, fold2, _, _ = inputs(with_other_test_users_changed(frame), tmp_path, "after")
    own = np.flatnonzero(windows.users == "u00")
    np.testing.assert_array_equal(place_statistics(windows, fold.train_index)[own],
                                  place_statistics(windows2, fold2.train_index)[own])


@pytest.mark.parametrize("users, changes_test_windows", [(VAL_USERS, False), (["u05", "u06"], True)],
                         ids=["inner-validation users", "training users"])
def test_test_windows_depend_on_the_training_users_labels_only(tmp_path, users, changes_test_windows):
    frame = checkins()
    windows, fold, _, _ = inputs(frame, tmp_path, "before")
    changed = frame.copy()
    rows = changed.userid.isin(users)
    changed.loc[rows, "category"] = np.random.default_rng(2).choice(CATEGORIES, int(rows.sum()))
    windows2, fold2, _, _ = inputs(changed, tmp_path, "after")
    assert not np.array_equal(windows.target[np.isin(windows.users, users)],
                              windows2.target[np.isin(windows2.users, users)])
    before = place_statistics(windows, fold.train_index)[fold.test_index]
    after = place_statistics(windows2, fold2.train_index)[fold2.test_index]
    # Changing inner-validation labels changes nothing; changing training labels does (the test can fail).
    assert np.array_equal(before, after) != changes_test_windows


def test_config_checks():
    def config_of(**sections):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_config(sections)

    with pytest.raises(ConfigError, match=r"lists \['place_statistics'\].*next.parquet.*dataset.source: checkins"):
        config_of(dataset={"source": "next_parquet", "path": "next.parquet"},
                  windows={"features": ["embedding", "place_statistics"]})
    with pytest.raises(ConfigError, match="'place_statistics'.*dataset.source='checkins' has none.*subcategory_column"):
        config_of(dataset={"source": "checkins", "path": "c.csv"}, windows={"features": ["place_statistics"]})
    config_of(dataset={"source": "checkins", "path": "c.csv", "subcategory_column": "type"},
              windows={"features": ["place_statistics"]})
    assert "place_statistics" not in config_of().windows.features  # not on by default


def test_stacked_folds_fall_back_to_one_fold_after_another_with_a_note(tmp_path):
    rng = np.random.default_rng(0)
    manifest = make_fold_manifest(np.array([f"u{u:02d}" for u in rng.integers(0, 30, 150)]), rng.integers(0, 3, 150),
                                  FoldConfig(n_splits=3), "test")
    for device in ("cuda", "cpu"):
        config = place_config(tmp_path, model=TRANSFORMER, windows={"features": ["category", "place_statistics"]},
                              training={"stack_folds": True})
        plan = execution_plan(config, torch.device(device), manifest)
        assert not plan.stack_folds
        assert any("place_statistics" in note and "Stacked folds off" in note for note in plan.notes)
        # Without the feature the same settings stack the folds.
        plain = place_config(tmp_path, model=TRANSFORMER, windows={"features": ["category"]},
                             training={"stack_folds": True})
        assert execution_plan(plain, torch.device(device), manifest).stack_folds


def place_config(tmp_path, **sections):
    """The synthetic POI cycle with a venue type per POI: the next category follows from the last POI."""
    frame = synthetic_checkins(n_users=50, visits_per_user=16, n_pois=30)
    frame["type"] = [f"t{int(place[1:]) % 7}" for place in frame.placeid]
    frame.to_csv(tmp_path / "checkins.csv", index=False)
    return synthetic_config(tmp_path, dataset={"subcategory_column": "type"}, **sections)


def test_a_head_reads_the_fold_statistics_and_learns_from_them(tmp_path):
    # place_statistics is the head's only input: what it learns, it learns from the statistics.
    config = place_config(tmp_path, windows={"features": ["place_statistics"]},
                          training={"epochs": 6, "fold_workers": 1})
    prepared = prepare_data(config)
    windows, folds = prepared.windows, prepared.fold_manifest.folds
    data = WindowTensors(windows, config, torch.device("cpu"))
    assert data.window_input_dim == 2 * (len(windows.classes) + 1)
    fold = folds[1]
    fitted = fit_fold(config, data, windows, fold, 0, Progress(False), "[fold]")
    assert fitted.model.encoder.output_dim == data.window_input_dim
    expected = place_statistics(windows, fold.train_index)
    batch = data.batch(torch.from_numpy(fold.test_index))
    np.testing.assert_allclose(batch["window_inputs"].numpy(), expected[fold.test_index], rtol=1e-6)
    # The input sits at every observed position of x and is zero on padding.
    x = fitted.model.encoder(batch["embedded"], batch["category"], batch["numeric"],
                             window_inputs=batch["window_inputs"], mask=batch["mask"])
    first = batch["window_inputs"][0]
    assert torch.equal(x[0][batch["mask"][0]], first.expand(int(batch["mask"][0].sum()), -1))
    assert (x[~batch["mask"]] == 0).all()
    # Another fold's statistics are another array: the test fold is evaluated with its own fold's.
    data.use_fold_window_inputs(place_statistics(windows, folds[0].train_index))
    predictions, _, _, _ = predict_test_fold(config, data, windows, fold, fitted.criterion, fitted.autocast,
                                             fitted.model, fitted.load_selected)
    np.testing.assert_allclose(data.batch(torch.from_numpy(fold.test_index))["window_inputs"].numpy(),
                               expected[fold.test_index], rtol=1e-6)
    assert forward_batch(fitted.model, batch).shape == (len(fold.test_index), len(windows.classes))
    accuracy = (predictions["selected"] == windows.target[fold.test_index]).mean()
    assert accuracy > 0.9  # chance is about 1/3; the last POI's statistics name the next category


def test_a_run_trains_every_fold_with_place_statistics(tmp_path):
    # A stackable head with stacked folds asked for: they are turned off with a note.
    config = place_config(tmp_path, model=TRANSFORMER, windows={"features": ["category", "place_statistics"]},
                          training={"epochs": 2, "fold_workers": 1, "stack_folds": True})
    prepared = prepare_data(config)
    result = cross_validate(config, prepared.windows, prepared.fold_manifest, Progress(False))
    assert len(result.fold_results) == len(prepared.fold_manifest.folds)
    assert result.extra["engine"]["mode"] == "per_fold"
    assert any("place_statistics" in note for note in result.extra["engine"]["notes"])
    with pytest.raises(ValueError, match="use_fold_window_inputs"):
        WindowTensors(prepared.windows, config, torch.device("cpu")).batch(torch.arange(3))


def test_the_stacked_path_refuses_place_statistics_by_name(tmp_path):
    from nextpoi_lib.config import ConfigError, updated
    from nextpoi_lib.training.stacked import train_folds_stacked
    from synthetic import synthetic_config

    config = synthetic_config(tmp_path)
    config = updated(config, windows={"features": ["category", "place_statistics"]})
    with pytest.raises(ConfigError, match="Stacked folds cannot train windows.features 'place_statistics'"):
        train_folds_stacked(config, None, None, [], 0, None, [])
