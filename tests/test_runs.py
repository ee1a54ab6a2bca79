import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nextpoi_lib import runs
from nextpoi_lib.runs import RunExistsError, run_experiment
from test_engine import synthetic_config

RUN_FILES = {"config.yaml", "manifest.json", "fold_manifest.json", "curves.csv", "fold_metrics.csv", "per_class.csv",
             "confusion.csv", "summary.json"}


def test_run_folder_is_complete_and_consistent(tmp_path):
    config = synthetic_config(tmp_path, model={"name": "hybrid", "num_heads": 2},
                              training={"epochs": 3, "seeds": [0, 1], "bias_calibration": True})
    path = run_experiment(config)
    assert RUN_FILES | {"attention.csv"} <= {p.name for p in path.iterdir()}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["seeds"] == [0, 1] and manifest["device"] == "cpu"
    # The hybrid head cannot be stacked and this tiny run is below the fold-worker threshold.
    assert manifest["engine"]["mode"] == "per_fold"
    folds = json.loads((path / "fold_manifest.json").read_text())
    fold_sizes = {f["fold"]: f["n_test"] for f in folds["folds"]}
    metrics = pd.read_csv(path / "fold_metrics.csv")
    assert set(metrics.selection) == {"selected", "last", "calibrated"} and len(metrics) == 2 * 3 * 3
    per_class = pd.read_csv(path / "per_class.csv")
    supports = per_class.groupby(["seed", "fold", "selection"])["support"].sum()
    for (seed, fold, selection), total in supports.items():
        assert total == fold_sizes[fold]
    confusion = pd.read_csv(path / "confusion.csv")
    assert (confusion.groupby(["seed", "fold", "selection"])["count"].sum() == supports).all()
    summary = json.loads((path / "summary.json").read_text())
    selected = metrics[metrics.selection == "selected"]
    assert summary["selected"]["macro_f1"]["mean"] == pytest.approx(selected.macro_f1.mean())
    assert summary["selected"]["macro_f1"]["std"] == pytest.approx(selected.macro_f1.std(ddof=1))
    assert summary["selected"]["macro_f1"]["n"] == 6
    curves = pd.read_csv(path / "curves.csv")
    assert len(curves) == 2 * 3 * 3 and curves.learning_rate.notna().all()
    attention = pd.read_csv(path / "attention.csv")
    np.testing.assert_allclose(attention.groupby(["seed", "fold"]).weight.sum(), 1.0, rtol=1e-4)


def test_existing_run_is_never_overwritten_silently(tmp_path):
    config = synthetic_config(tmp_path, training={"epochs": 1})
    path = run_experiment(config)
    before = (path / "manifest.json").read_text()
    with pytest.raises(RunExistsError, match="already exists.*--overwrite"):
        run_experiment(config)
    assert (path / "manifest.json").read_text() == before
    config.output.overwrite = True
    run_experiment(config)
    assert json.loads((path / "manifest.json").read_text())["started_at"] >= json.loads(before)["started_at"]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_crash_leaves_no_complete_run_and_keeps_the_old_one(tmp_path, monkeypatch):
    config = synthetic_config(tmp_path, training={"epochs": 1})
    path = run_experiment(config)
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(runs, "summarise", broken)
    config.output.overwrite = True
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(config)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_baseline_runs_share_the_format(tmp_path):
    config = synthetic_config(tmp_path, name="markov", model={"name": "markov", "markov_order": 1})
    path = run_experiment(config)
    assert RUN_FILES <= {p.name for p in path.iterdir()}
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["kind"] == "baseline" and manifest["engine"] == {"mode": "baseline"}
    assert json.loads((path / "summary.json").read_text())["selected"]["accuracy"]["mean"] > 0.95


def test_next_parquet_loads_and_trains(tmp_path):
    from test_data import write_next_parquet

    rng = np.random.default_rng(0)
    n = 60
    features = rng.normal(size=(n, 9, 64)).astype(np.float32)
    labels = np.array(["Food", "Shopping", "Travel"])[rng.integers(0, 3, n)]
    features[:, 0, 0] = (labels == "Food") * 5.0  # a learnable signal
    frame = pd.DataFrame(features.reshape(n, 576), columns=[str(i) for i in range(576)]).astype(str)
    frame["next_category"] = labels
    frame["userid"] = np.arange(n) // 3
    path = tmp_path / "next.parquet"
    frame.to_parquet(path)
    config = synthetic_config(tmp_path, dataset={"source": "next_parquet", "path": str(path), "name": "alabama"},
                              windows={"length": 9, "features": ["embedding"]}, training={"epochs": 2})
    run = run_experiment(config)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["n_windows"] == n and manifest["classes"][0] in {"Food", "Shopping", "Travel"}


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nextpoi_lib.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("content, message", [
    ("training: {epocs: 3}\n", "Unknown key 'training.epocs'"),
    ("training: {weighted_sampler: true}\nloss: {class_weights: balanced}\n", "stacks two re-weightings"),
    ("dataset: {source: checkins, path: missing.csv}\n", "does not exist"),
])
def test_cli_bad_input_gives_one_paragraph_and_writes_nothing(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    result = run_cli("run", str(path), "--output-root", str(tmp_path / "outputs"), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("manifest.json"))


def test_smoke_run_on_the_embedded_dataset(tmp_path):
    """The README's smoke command on the real data: every file present, supports sum to the folds."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    result = run_cli("run", str(root / "parameters/smoke.yaml"), "--output-root", str(tmp_path / "o"), "--quiet",
                     cwd=root)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "o" / "foursquare_nyc" / "smoke"
    manifest = json.loads((path / "manifest.json").read_text())
    assert len(manifest["classes"]) == 10 and manifest["n_folds"] == 5
    folds = json.loads((path / "fold_manifest.json").read_text())["folds"]
    users = [set(f["test_users"]) for f in folds]
    assert sum(len(u) for u in users) == len(set().union(*users)) == 3079
    for fold in folds:
        assert not set(fold["inner_val_users"]) & set(fold["test_users"])


@pytest.mark.parametrize("key", ["poi", "subcategory"])
def test_transition_statistics_use_only_fit_windows_labels(tmp_path, key):
    """Changing the labels of windows outside the fit set must not change the statistics."""
    from nextpoi_lib.baselines import last_visit_keys, out_of_fold_statistics, transition_statistics
    from nextpoi_lib.runs import prepare_data

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


def test_transition_statistics_by_hand():
    """Two keys, three classes, smoothing 5 towards the fit prior: computed independently."""
    from nextpoi_lib.baselines import transition_statistics
    from nextpoi_lib.windows import WindowSet

    target = np.array([0, 0, 1, 2, 2, 2])
    keys = np.array([0, 0, 0, 1, 1, 1])
    empty = np.zeros((6, 1))
    windows = WindowSet(poi_index=empty.astype(int), mask=empty.astype(bool), category_index=empty.astype(int),
                        hour=empty, weekday=empty.astype(int), gap_hours=empty, latitude=empty, longitude=empty,
                        target=target, target_hour=empty[:, 0], target_weekday=empty[:, 0].astype(int),
                        users=np.array(list("abcdef")), classes=["x", "y", "z"], embedding_table=np.zeros((1, 1)))
    statistics = transition_statistics(windows, keys, np.arange(6), np.array([0, 3]))
    prior = np.array([2, 1, 3]) / 6
    expected_key0 = (np.array([2, 1, 0]) + 5 * prior) / 8
    np.testing.assert_allclose(np.exp(statistics[0, :3]), expected_key0, rtol=1e-6)
    np.testing.assert_allclose(statistics[:, 3], np.log1p([3, 3]))


def test_trees_use_history_and_subcategory_features(tmp_path):
    """The target is set by the subcategory of the last visit; only the subcategory statistics can know it."""
    from nextpoi_lib.baselines import GradientBoostedTrees, history_feature_matrix
    from nextpoi_lib.runs import prepare_data

    config = synthetic_config(tmp_path, model={"name": "gradient_boosting"})
    windows = prepare_data(config).windows
    rng = np.random.default_rng(0)
    windows.subcategory_index = np.where(windows.mask, rng.integers(0, 6, windows.mask.shape), -1)
    last = windows.subcategory_index[np.arange(len(windows)), windows.mask.sum(axis=1) - 1]
    windows.target = last % 3
    train, test = np.arange(0, 500), np.arange(500, len(windows))
    plain = GradientBoostedTrees(max_iter=30).fit(windows, train)
    with_subcategory = GradientBoostedTrees(max_iter=30, subcategory_statistics=True).fit(windows, train)
    assert (with_subcategory.predict(windows, test) == windows.target[test]).mean() > 0.95
    assert (plain.predict(windows, test) == windows.target[test]).mean() < 0.7
    # History features: counts before the window, their total, shares over past + window.
    history = history_feature_matrix(windows, test)
    assert history.shape == (len(test), 2 * len(windows.classes) + 1)
    np.testing.assert_array_equal(history[:, :3], windows.history_counts[test])
    np.testing.assert_allclose(history[:, -3:].sum(axis=1), 1.0)
