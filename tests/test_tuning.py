"""`nextpoi tune` (nextpoi_lib/tuning.py): Optuna studies stored in SQLite, scored on inner-validation users only.

Tiny synthetic check-ins (users who follow a cycle of POIs half of the time), a GRU of width 8, 2 epochs, a few
trials. The objective is checked against the inner-validation macro-F1 computed here without the tuner, the
test folds are guarded (plain mode) or counted (nested mode), and stored studies are read back with Optuna.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score

from harness import run_cli
from nextpoi_lib import tuning
from nextpoi_lib.config import ConfigError, TuneConfig
from nextpoi_lib.experiment import load_config, run_experiment
from nextpoi_lib.folds import Fold
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.progress import Progress
from nextpoi_lib.training.loop import fit_fold
from nextpoi_lib.training.tensors import WindowTensors
from nextpoi_lib.trees import GradientBoostedTrees

SPACE = {"optimizer.learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
         "model.hidden_dim": {"choices": [4, 8]}}


def noisy_checkins(n_users: int = 36, visits: int = 14, n_pois: int = 24, seed: int = 0) -> pd.DataFrame:
    """Users walk a cycle of POIs (3 categories) but jump to a random POI half of the time: scores vary."""
    rng = np.random.default_rng(seed)
    categories = ["Food", "Shop", "Travel"]
    rows, start = [], pd.Timestamp("2012-04-01 08:00")
    for user in range(n_users):
        poi = int(rng.integers(n_pois))
        for visit in range(visits):
            rows.append({"userid": f"u{user:03d}", "placeid": f"p{poi:03d}",
                         "datetime": start + pd.Timedelta(hours=user + 3 * visit), "latitude": 33.0 + poi / 100,
                         "longitude": -87.0 + poi / 50, "category": categories[poi % 3]})
            poi = (poi + 1) % n_pois if rng.random() < 0.5 else int(rng.integers(n_pois))
    return pd.DataFrame(rows)


def base_sections(tmp_path, **changes) -> dict:
    checkins = tmp_path / "checkins.csv"
    if not checkins.exists():
        noisy_checkins().to_csv(checkins, index=False)
    sections = {
        "name": "toy", "dataset": {"source": "checkins", "path": str(checkins), "name": "toy"},
        "windows": {"length": 4, "stride": 1, "features": ["category"]},
        "folds": {"n_splits": 3},
        "model": {"name": "gru", "hidden_dim": 8, "num_layers": 1, "dropout": 0.0},
        "scheduler": {"name": "constant"},
        "optimizer": {"learning_rate": 0.01, "weight_decay": 0.0},
        "training": {"epochs": 2, "batch_size": 64, "seeds": [0], "progress": False, "device": "cpu"},
        "output": {"root": str(tmp_path / "outputs")},
        "tune": {"space": SPACE, "folds": [0, 1], "sampler": "random"},
    }
    for key, value in changes.items():
        if value is None:
            sections.pop(key)  # the library default
        else:
            sections[key] = {**sections.get(key, {}), **value} if isinstance(value, dict) else value
    return sections


def quiet_load(*layers, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_config(*layers, **kwargs)


def stored_trials(config, name=None):
    study = optuna.load_study(study_name=name or config.name,
                              storage=f"sqlite:///{tuning.study_path(config).resolve()}")
    return study.trials


class GuardedFold(Fold):
    """A fold whose test windows cannot be read: any access fails the test."""

    @property
    def test_index(self):
        raise AssertionError("the tuner read a test fold")

    @test_index.setter
    def test_index(self, value):
        self._test_index = value


def guard_test_folds(monkeypatch):
    original = tuning.prepare_data

    def prepared_with_guarded_folds(*args, **kwargs):
        prepared = original(*args, **kwargs)
        folds = [GuardedFold(**{f.name: getattr(fold, f.name) for f in dataclasses.fields(Fold)})
                 for fold in prepared.fold_manifest.folds]
        prepared.fold_manifest = dataclasses.replace(prepared.fold_manifest, folds=folds)
        return prepared

    monkeypatch.setattr(tuning, "prepare_data", prepared_with_guarded_folds)


def inner_validation_f1_by_hand(config) -> float:
    """The selected epoch's inner-validation macro-F1, mean over tune.folds x seeds, trained here directly."""
    prepared = prepare_data(config, Progress(False))
    data = WindowTensors(prepared.windows, config, __import__("torch").device("cpu"), log=Progress(False))
    scores = []
    for number in config.tune.folds:
        fold = prepared.fold_manifest.folds[number]
        for seed in config.training.seeds:
            fitted = fit_fold(config, data, prepared.windows, fold, seed, Progress(False), "check")
            scores.append(max(curve["val_macro_f1"] for curve in fitted.tracker.curves))
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------------------
# Plain mode


def test_study_is_stored_in_sqlite_and_resumes_without_reading_a_test_fold(tmp_path, monkeypatch):
    guard_test_folds(monkeypatch)
    config = quiet_load(base_sections(tmp_path))
    first = tuning.run_study(config, trials=3, progress=Progress(False))
    assert tuning.study_path(config) == tmp_path / "outputs" / "toy" / ".tuning" / "toy.db"
    assert [t.state for t in stored_trials(config)] == [optuna.trial.TrialState.COMPLETE] * 3
    second = tuning.run_study(config, trials=2, progress=Progress(False))
    trials = stored_trials(config)
    assert len(trials) == 5 and [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert optuna.study.get_all_study_names(f"sqlite:///{tuning.study_path(config)}") == ["toy"]
    assert (first.n_trials, second.n_trials) == (3, 5)
    # A resumed study draws new points, not the first ones again.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 5
    # Each stored value is the inner-validation macro-F1 of its parameters, trained again here without the tuner.
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    trial = complete[-1]
    by_hand = quiet_load(base_sections(tmp_path, optimizer={"learning_rate": trial.params["optimizer.learning_rate"]},
                                       model={"hidden_dim": trial.params["model.hidden_dim"]}))
    assert trial.value == pytest.approx(inner_validation_f1_by_hand(by_hand), abs=1e-12)
    assert second.best_value == max(t.value for t in complete)


def test_best_configuration_file_is_the_base_config_with_the_best_parameters(tmp_path):
    config = quiet_load(base_sections(tmp_path))
    outcome = tuning.run_study(config, trials=3, progress=Progress(False))
    best = max((t for t in stored_trials(config) if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
    path = tmp_path / "outputs" / "toy" / ".tuning" / "toy.best.yaml"
    assert outcome.best_config_path == path and outcome.best_params == best.params
    text = path.read_text()
    assert text.startswith("# Best configuration of the study 'toy'")
    assert "Trials: 3 (3 complete)" in text and "outer folds [0, 1]" in text
    assert "tune" not in yaml.safe_load(text)
    loaded = quiet_load(path)
    expected = quiet_load(base_sections(tmp_path, name="toy-tuned", tune=None,
                                        optimizer={"learning_rate": best.params["optimizer.learning_rate"]},
                                        model={"hidden_dim": best.params["model.hidden_dim"]}))
    assert loaded.to_dict() == expected.to_dict()
    assert loaded.tune == TuneConfig()


def test_pruning_stops_trials_after_their_first_epoch(tmp_path):
    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    config = quiet_load(base_sections(tmp_path))
    with pytest.raises(tuning.TuningFailed, match="no complete trial"):
        tuning.run_study(config, trials=2, progress=Progress(False), pruner=AlwaysPrune())
    trials = stored_trials(config)
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    # Reported once, after epoch 1 of the first (fold, seed): the value is that epoch's inner-validation macro-F1.
    assert [sorted(t.intermediate_values) for t in trials] == [[1], [1]]


def test_trees_are_scored_on_inner_validation_users(tmp_path, monkeypatch):
    guard_test_folds(monkeypatch)
    config = quiet_load(base_sections(tmp_path, model={"name": "gradient_boosting"}, trees={"max_iter": 5},
                                      tune={"space": {"trees.learning_rate": {"choices": [0.05, 0.3]}},
                                            "folds": [0, 2]}))
    tuning.run_study(config, trials=2, progress=Progress(False))
    prepared = prepare_data(config, Progress(False))
    for trial in stored_trials(config):
        scores = []
        for number in (0, 2):
            fold = prepared.fold_manifest.folds[number]
            trees = GradientBoostedTrees(max_iter=5, learning_rate=trial.params["trees.learning_rate"])
            predicted = trees.fit(prepared.windows, fold.train_index).predict(prepared.windows, fold.inner_val_index)
            scores.append(f1_score(prepared.windows.target[fold.inner_val_index], predicted, average="macro",
                                   labels=range(len(prepared.windows.classes)), zero_division=0))
        assert trial.value == pytest.approx(np.mean(scores), abs=1e-12)


def test_an_ordinary_run_ignores_the_tune_section(tmp_path):
    with_tune = run_experiment(quiet_load(base_sections(tmp_path, name="with_tune")))
    without = run_experiment(quiet_load(base_sections(tmp_path, name="without", tune=None)))
    assert (with_tune / "fold_metrics.csv").read_text() == (without / "fold_metrics.csv").read_text()
    assert not (tmp_path / "outputs" / "toy" / ".tuning").exists()


# --------------------------------------------------------------------------------------------------
# Refusals, before any trial


@pytest.mark.parametrize("space, named", [
    ({"model.hiden_dim": {"choices": [4]}},
     r"'model\.hiden_dim' is not a config key\. Did you mean 'model\.hidden_dim'"),
    ({"windows.length": {"low": 2, "high": 5}}, r"'windows\.length' cannot be tuned"),
    ({"model.hidden_dim": {"low": 4.5, "high": 8}}, r"tune\.space\['model\.hidden_dim'\]\.low=4\.5 must be an integer"),
    ({"optimizer.learning_rate": {"low": "1e-3", "high": 0.1}}, r"low='1e-3' must be a finite number\. YAML reads"),
    ({"model.dropout": {"low": 0.1, "high": 0.1}}, r"low=0\.1 must be below high=0\.1"),
    ({"model.name": {"choices": ["gru", "lstmm"]}}, r"model\.name='lstmm'.*not a registered model"),
    ({"model.dropout": {"low": 0.0, "high": 1.5}}, r"allows model\.dropout=1\.5, which the config refuses: "
                                                   r"model\.dropout=1\.5 must be in \[0, 1\)"),
    ({"trees.learning_rate": {"low": 0.01, "high": 0.5}}, r"'trees\.learning_rate' is not read by model\.name='gru'"),
])
def test_a_bad_space_is_refused_naming_the_key(tmp_path, space, named):
    with pytest.raises(ConfigError, match=named):
        config = quiet_load(base_sections(tmp_path, tune={"space": space}))
        tuning.check_space(config)


def test_cli_tune_exit_codes_and_progress_lines(tmp_path, monkeypatch):
    good = tmp_path / "study.yaml"
    good.write_text(yaml.safe_dump(base_sections(tmp_path, name="study", training={"progress": True})))
    result = run_cli("tune", good, "--trials", "2")
    assert result.code == 0, result.stderr
    assert result.stdout.count("[study trial ") == 2
    best = tmp_path / "outputs" / "toy" / ".tuning" / "study.best.yaml"
    assert f"best configuration {best}" in result.stdout and best.is_file()

    prepared = []
    monkeypatch.setattr(tuning, "prepare_data", lambda *a, **k: prepared.append(1))
    bad = tmp_path / "bad.yaml"
    bad_space = {"model.dropout": {"low": 0.0, "high": 2.0}}
    bad.write_text(yaml.safe_dump(base_sections(tmp_path, tune={"space": bad_space})))
    before = sorted(p.name for p in (tmp_path / "outputs" / "toy" / ".tuning").iterdir())
    result = run_cli("tune", bad, "--trials", "2")
    assert result.code == 2 and "model.dropout=2.0" in result.stderr and "Traceback" not in result.stderr
    assert prepared == [] and sorted(p.name for p in (tmp_path / "outputs" / "toy" / ".tuning").iterdir()) == before
    assert run_cli("tune", good, "--trials", "0").code == 2
    blended = tmp_path / "blended.yaml"
    blended.write_text(yaml.safe_dump(base_sections(tmp_path, model={"name": "blended_trees"}, blend={"head": "gru"})))
    result = run_cli("tune", blended)
    assert result.code == 2 and "does not tune blended runs" in result.stderr


# --------------------------------------------------------------------------------------------------
# Nested mode, figures, report


def test_nested_mode_evaluates_each_fold_once_on_its_own_test_fold(tmp_path, monkeypatch):
    from nextpoi_lib.analysis.report import write_report
    from nextpoi_lib.training import neural

    config = quiet_load(base_sections(tmp_path))
    evaluated, labels = [], []
    original = neural.train_fold

    def recording_train_fold(config_, data, windows, fold, seed, progress, label):
        # The fold's study is over when its test fold is evaluated: every trial stored, none running.
        trials = stored_trials(config, tuning.nested_study_name(config, fold.fold))
        evaluated.append((fold.fold, seed, len(trials), config_.model.hidden_dim,
                          config_.optimizer.learning_rate, fold.test_index.copy()))
        labels.append(label)
        return original(config_, data, windows, fold, seed, progress, label)

    monkeypatch.setattr(neural, "train_fold", recording_train_fold)
    path = tuning.run_nested(config, trials=2, progress=Progress(False))
    prepared = prepare_data(config, Progress(False))
    assert [(fold, seed, n) for fold, seed, n, *_ in evaluated] == [(0, 0, 2), (1, 0, 2), (2, 0, 2)]
    # Each fold is evaluated alone, but its lines still count the outer folds.
    assert labels == ["[seed 0 fold 1/3]", "[seed 0 fold 2/3]", "[seed 0 fold 3/3]"]
    for (fold, _, _, hidden, learning_rate, test_index), expected in zip(evaluated, prepared.fold_manifest.folds):
        assert np.array_equal(test_index, expected.test_index)
        best = max(stored_trials(config, tuning.nested_study_name(config, fold)), key=lambda t: t.value)
        assert (hidden, learning_rate) == (best.params["model.hidden_dim"], best.params["optimizer.learning_rate"])

    assert path == tmp_path / "outputs" / "toy" / "toy-nested"
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["selection_mode"] == "nested" and manifest["status"] == "complete"
    chosen = manifest["nested_selection"]["folds"]
    assert [entry["fold"] for entry in chosen] == [0, 1, 2]
    for entry in chosen:
        best = max(stored_trials(config, entry["study"]), key=lambda t: t.value)
        assert entry["params"] == best.params and entry["inner_val_macro_f1"] == pytest.approx(best.value, abs=1e-6)
    assert sorted(pd.read_csv(path / "fold_metrics.csv")["fold"].unique()) == [0, 1, 2]

    # The figures come from the stored study; the report shows them in a section of their own.
    figures = tuning.study_figures(tuning.study_path(config), tuning.nested_study_name(config, 0))
    assert set(figures) <= {"optimization_history", "param_importances", "slice"}
    history_points = [y for trace in figures["optimization_history"].data if trace.name == "Objective Value"
                      for y in trace.y]
    assert sorted(history_points) == sorted(t.value for t in stored_trials(config, "toy.nested-fold0"))
    page = write_report([path], tmp_path / "report.html").read_text()
    assert "<h2>Tuning studies</h2>" in page and page.count("<h3>toy.nested-fold") == 3


def test_resuming_with_another_objective_is_refused(tmp_path):
    tuning.run_study(quiet_load(base_sections(tmp_path)), trials=1, progress=Progress(False))
    longer = quiet_load(base_sections(tmp_path, training={"epochs": 3}))
    with pytest.raises(ConfigError, match=r"study 'toy'.*another objective \(base_config_hash differ"):
        tuning.run_study(longer, trials=1, progress=Progress(False))
    other_folds = quiet_load(base_sections(tmp_path, tune={"folds": [2]}))
    with pytest.raises(ConfigError, match=r"folds differ: stored \[\[0, 1\]\], now \[\[2\]\]"):
        tuning.run_study(other_folds, trials=1, progress=Progress(False))
    assert len(stored_trials(longer)) == 1


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_processes_sharing_a_study_draw_different_points_and_a_rerun_draws_the_same(tmp_path, sampler):
    # Two processes open the same empty study at once: with one sampler seed per process they would both draw
    # the same first point. Each trial is drawn with the seed of its number, which the storage hands out once.
    config = quiet_load(base_sections(tmp_path, tune={"sampler": sampler}))
    attributes = {"objective": "test"}

    def ask_in_turn(root):
        first = tuning.open_study(dataclasses.replace(config, output=dataclasses.replace(config.output, root=root)),
                                  "shared", attributes)
        second = tuning.open_study(dataclasses.replace(config, output=dataclasses.replace(config.output, root=root)),
                                   "shared", attributes)
        points = []
        for study in (first, second, second, first):
            trial = study.ask()
            points.append((trial.number, tuning.suggest(trial, "optimizer.learning_rate",
                                                        SPACE["optimizer.learning_rate"])))
            study.tell(trial, 0.5)
        return points

    points = ask_in_turn(str(tmp_path / "a"))
    assert [number for number, _ in points] == [0, 1, 2, 3]
    assert len({value for _, value in points}) == 4
    assert ask_in_turn(str(tmp_path / "b")) == points  # the same trials in a new study: the same points
    reseeded = quiet_load(base_sections(tmp_path, tune={"sampler": sampler, "sampler_seed": 1}))
    study = tuning.open_study(reseeded, "other", attributes)
    assert tuning.suggest(study.ask(), "optimizer.learning_rate", SPACE["optimizer.learning_rate"]) != points[0][1]
