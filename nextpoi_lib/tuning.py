"""Hyper-parameter studies (`nextpoi tune`): Optuna searches the `tune.space` of a config, scored on the
inner-validation users of some outer folds, never on a test fold.

* Plain mode (`run_study`): one study, stored in SQLite at `<output root>/<dataset>/.tuning/<study>.db`
  (resumable: running it again adds trials to the same study; several processes may share the file). A trial's
  value is the inner-validation macro-F1 averaged over `tune.folds` x the seeds (`tune.seeds`, default
  `training.seeds`): for a neural head the selected epoch's score (`training.loop.fit_fold`, which never reads a
  test fold; pruned by epoch through its `on_epoch` hook), for the trees and the reference baselines the model
  fitted on the fold's training users and scored on its inner-validation users. The best trial's configuration is
  written as a parameter file (`<study>.best.yaml`, the full resolved config without the tune section).
* Nested mode (`run_nested`): one study per outer fold on that fold's inner-validation users; each fold's chosen
  config is then cross-validated on that fold alone, i.e. evaluated once on its own test fold after its study
  ended, and the folds together are written as one run folder whose manifest says `selection_mode: nested`.

Windows and folds are prepared once per study: keys that would change them (dataset, embeddings, windows, folds)
are refused in the space (`config.tune_key_hint`). Blended runs (trees + a head) are refused in this version.
`study_figures` draws Optuna's figures of a stored study for the report and the analysis notebook.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import yaml

from .config import ConfigError, ExperimentConfig, TuneConfig, from_dict, tune_key_hint, tune_number_kind, updated
from .devices import resolve_device
from .errors import UserError
from .experiment import check_names, computes_dgi_embeddings, run_kind_of, run_manifest
from .folds import Fold
from .metrics import macro_f1
from .preparation import PreparedData, prepare_data
from .progress import Progress
from .results import CrossValidationResult
from .runfolder import (check_output_writable, check_run_target, remove_stale_temporaries, run_directory,
                        write_run)
from .training.loop import TrainingDiverged, fit_fold
from .training.tensors import WindowTensors

STUDY_FOLDER = ".tuning"  # hidden: a run name cannot start with '.', so no run folder collides with it
OBJECTIVE = "inner-validation macro-F1"

# (value, step) -> None; raises optuna.TrialPruned when the trial should stop.
Reporter = Callable[[float, int], None]


# --------------------------------------------------------------------------------------------------
# Where studies live


def study_name_of(config: ExperimentConfig) -> str:
    return config.tune.study_name or config.name


def study_directory(config: ExperimentConfig) -> Path:
    return Path(config.output.root) / config.dataset_name() / STUDY_FOLDER


def study_path(config: ExperimentConfig) -> Path:
    """The SQLite file of the config's study (its nested studies share it)."""
    return study_directory(config) / f"{study_name_of(config)}.db"


def storage_for(path: str | Path) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on a SQLite file; several processes may write it (they wait up to a minute for the
    lock instead of failing at once)."""
    return optuna.storages.RDBStorage(f"sqlite:///{Path(path).resolve()}",
                                      engine_kwargs={"connect_args": {"timeout": 60}})


def discover_studies(output_root: str | Path) -> list[tuple[Path, str]]:
    """(SQLite file, study name) of every study under `<root>/<dataset>/.tuning/` (or `<dataset>/.tuning/` when
    `output_root` is one dataset folder), sorted."""
    root = Path(output_root)
    files = sorted(set(root.glob(f"*/{STUDY_FOLDER}/*.db")) | set(root.glob(f"{STUDY_FOLDER}/*.db")))
    found = []
    for path in files:
        for name in sorted(optuna.study.get_all_study_names(storage_for(path))):
            found.append((path, name))
    return found


# --------------------------------------------------------------------------------------------------
# The search space


def _split(key: str) -> tuple[str, str]:
    section, _, name = key.partition(".")
    return section, name


def trial_config(base: ExperimentConfig, params: dict[str, Any]) -> ExperimentConfig:
    """`base` with the dotted keys of `params` set, typed and validated again (as a parameter file would be:
    a value the config refuses raises its ConfigError) and its names checked."""
    data = base.to_dict()
    for key, value in params.items():
        section, name = _split(key)
        data[section][name] = value
    with warnings.catch_warnings():
        # The base config already warned at loading; every trial would repeat it.
        warnings.simplefilter("ignore")
        config = from_dict(data)
    check_names(config)
    return config


def _values_to_check(spec: dict[str, Any]) -> list[Any]:
    return list(spec["choices"]) if "choices" in spec else [spec["low"], spec["high"]]


def check_space(config: ExperimentConfig) -> None:
    """Refuse, before any work, a study that cannot run: a blended run, an empty space, a key the run kind does
    not read, optimizer.learning_rate under OneCycle, and every bound and choice the config would refuse
    (named with the config's own message)."""
    kind = run_kind_of(config)
    space = config.tune.space
    if kind.kind == "blended":
        raise ConfigError(f"nextpoi tune does not tune blended runs (model.name={config.model.name!r}) in this "
                          f"version: tune the head (model.name: {config.blend.head}) and the trees (model.name: "
                          f"gradient_boosting) in two studies and blend the two best configurations.")
    if not space:
        raise ConfigError("tune.space is empty: name the keys to tune, e.g. tune: {space: {optimizer.learning_rate: "
                          "{low: 1.0e-4, high: 1.0e-2, log: true}, model.hidden_dim: {choices: [32, 64, 128]}}}.")
    for key in space:
        section, _ = _split(key)
        if kind.kind == "neural":
            read = section not in ("trees", "blend")
        else:
            read = section == "trees" if config.model.name == "gradient_boosting" else key == "model.markov_order"
        if not read:
            raise ConfigError(f"tune.space key {key!r} is not read by model.name={config.model.name!r}, so every "
                              f"trial would score the same: remove it from tune.space"
                              + (" (the trees read the trees: section)" if config.model.name == "gradient_boosting"
                                 else "") + ".")
    scheduler_names = (space.get("scheduler.name", {}).get("choices") or [config.scheduler.name])
    if "optimizer.learning_rate" in space and set(scheduler_names) == {"onecycle"}:
        raise ConfigError("tune.space key 'optimizer.learning_rate' has no effect under scheduler.name='onecycle' "
                          "(OneCycle starts at max_lr/div_factor): tune scheduler.max_lr instead, or set "
                          "scheduler.name: constant or cosine.")
    for key, spec in space.items():
        tune_key_hint(key)
        for value in _values_to_check(spec):
            try:
                checked = trial_config(config, {key: value})
            except ConfigError as error:
                raise ConfigError(f"tune.space[{key!r}] allows {key}={value!r}, which the config refuses: {error} "
                                  f"Narrow the range or drop that choice.") from None
            if run_kind_of(checked).kind != kind.kind:
                raise ConfigError(f"tune.space[{key!r}] allows {key}={value!r}, a run of kind "
                                  f"{run_kind_of(checked).kind!r}, while the base config is a {kind.kind!r} run: "
                                  f"one study tunes one kind of model (they need different data). Keep choices of "
                                  f"one kind.")


def suggest(trial: optuna.Trial, key: str, spec: dict[str, Any]) -> Any:
    """The trial's value of one space entry: a categorical, an integer or a float range."""
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    log, step = bool(spec.get("log", False)), spec.get("step")
    if tune_number_kind(key) is int:  # config.validate_tune made the bounds and step integers
        return trial.suggest_int(key, spec["low"], spec["high"], step=step or 1, log=log)
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), step=step, log=log)


# --------------------------------------------------------------------------------------------------
# The objective: inner-validation macro-F1, never a test fold


class InnerValidationScorer:
    """Scores a config on the inner-validation users of some folds: a neural head by its selected epoch
    (`fit_fold`), a fitted model (trees, reference baselines) fitted on the training users. Holds the device
    tensors of the study's windows, built once."""

    def __init__(self, base: ExperimentConfig, prepared: PreparedData):
        self.base, self.prepared = base, prepared
        self.kind = run_kind_of(base)
        self.data = None
        if self.kind.kind == "neural":
            self.data = WindowTensors(prepared.windows, base, resolve_device(base.training.device),
                                      log=Progress(False))

    def score(self, config: ExperimentConfig, folds: list[Fold], seeds: list[int],
              report: Reporter | None = None) -> float:
        if self.kind.kind == "neural":
            return self._score_neural(config, folds, seeds, report)
        return self._score_fitted(config, folds, seeds, report)

    def _score_neural(self, config, folds, seeds, report) -> float:
        windows, quiet, epochs = self.prepared.windows, Progress(False), config.training.epochs
        scores: list[float] = []
        for job, (fold, seed) in enumerate((fold, seed) for fold in folds for seed in seeds):
            best_so_far = [-1.0]

            def on_epoch(curve: dict, job=job, best_so_far=best_so_far) -> None:
                # The running objective: finished jobs' selected scores with this job's best epoch so far; steps
                # count epochs over the jobs, so trials are compared at the same (job, epoch).
                best_so_far[0] = max(best_so_far[0], curve["val_macro_f1"])
                if report is not None:
                    report(float(np.mean(scores + best_so_far)), job * epochs + curve["epoch"])

            fitted = fit_fold(config, self.data, windows, fold, seed, quiet, f"[tune fold {fold.fold} seed {seed}]",
                              on_epoch=on_epoch)
            scores.append(float(fitted.tracker.best_score))
        return float(np.mean(scores))

    def _score_fitted(self, config, folds, seeds, report) -> float:
        windows = self.prepared.windows
        make_model = self.kind.make_model(config)
        # A model that draws no random numbers gives the same fit for every seed: fit it once per fold.
        if not getattr(make_model(seeds[0]), "draws_random_numbers", False):
            seeds = seeds[:1]
        scores: list[float] = []
        for job, (fold, seed) in enumerate((fold, seed) for fold in folds for seed in seeds):
            model = make_model(seed).fit(windows, fold.train_index)
            predicted = np.asarray(model.predict(windows, fold.inner_val_index))
            scores.append(macro_f1(windows.target[fold.inner_val_index], predicted, len(windows.classes)))
            if report is not None:
                report(float(np.mean(scores)), job)
        return float(np.mean(scores))


# --------------------------------------------------------------------------------------------------
# Studies


def _objective_attributes(config: ExperimentConfig, mode: str, folds: list[int], seeds: list[int]) -> dict:
    """What a study's values mean; a study resumed with another objective would mix incomparable values."""
    data = config.to_dict()
    for section, key in (("tune", None), ("output", None), ("training", "device"), ("training", "progress")):
        if key is None:
            data.pop(section, None)
        else:
            data[section].pop(key, None)
    base_hash = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {"metric": OBJECTIVE, "mode": mode, "folds": folds, "seeds": seeds, "base_config_hash": base_hash}


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Draws trial k with a fresh sampler seeded by (tune.sampler_seed, k).

    The storage gives every trial its own number, also to processes that share one study, so each process
    draws other points than its neighbours (one seed per process would make them repeat each other's trials),
    a resumed study draws new points, and the same sequence of trials gives the same points again."""

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self._make, self._seed, self._by_trial = make, seed, {}

    def _for(self, trial) -> optuna.samplers.BaseSampler:
        if trial.number not in self._by_trial:
            state = np.random.SeedSequence([self._seed, trial.number]).generate_state(1)[0]
            self._by_trial[trial.number] = self._make(int(state))
        return self._by_trial[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)
        self._by_trial.pop(trial.number, None)


SAMPLERS = {"random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}


def _sampler(config: ExperimentConfig) -> optuna.samplers.BaseSampler:
    sampler = SAMPLERS[config.tune.sampler]
    return TrialSeededSampler(lambda seed: sampler(seed=seed), config.tune.sampler_seed)


def _pruner(config: ExperimentConfig) -> optuna.pruners.BasePruner:
    if config.tune.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def open_study(config: ExperimentConfig, name: str, attributes: dict,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create the study, or load it when it exists (resume); refuse one stored with another objective."""
    path = study_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(storage=storage_for(path), study_name=name, direction="maximize",
                                sampler=_sampler(config), pruner=pruner or _pruner(config),
                                load_if_exists=True)
    stored = study.user_attrs.get("objective")
    if stored is None:
        study.set_user_attr("objective", attributes)
    elif stored != attributes:
        changed = sorted(key for key in attributes if stored.get(key) != attributes.get(key))
        before, now = [stored.get(key) for key in changed], [attributes.get(key) for key in changed]
        raise ConfigError(f"The study {name!r} in {str(path)!r} was started with another objective "
                          f"({', '.join(changed)} differ: stored {before}, now {now}); its values would not compare. "
                          f"Set tune.study_name to a new name, or restore the settings.")
    return study


def _trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, done: int, total: int) -> str:
    state = trial.state.name.lower()
    value = f"{OBJECTIVE} {trial.value:.4f}" if trial.value is not None else state
    params = ", ".join(f"{key}={value!r}" if not isinstance(value, float) else f"{key}={value:.4g}"
                       for key, value in trial.params.items())
    try:
        best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        best = "no complete trial yet"
    return f"[{study.study_name} trial {trial.number}, {done}/{total}] {value}" + \
        (f" ({state})" if trial.value is not None and state != "complete" else "") + f"  {params}; {best}"


def optimize(study: optuna.Study, base: ExperimentConfig, scorer: InnerValidationScorer, folds: list[Fold],
             seeds: list[int], trials: int, progress: Progress) -> None:
    """Run `trials` more trials of `study`; a trial whose training diverges is recorded as failed and the study
    goes on."""
    space = base.tune.space
    done = [0]

    def objective(trial: optuna.Trial) -> float:
        params = {key: suggest(trial, key, spec) for key, spec in space.items()}
        config = trial_config(base, params)

        def report(value: float, step: int) -> None:
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        return scorer.score(config, folds, seeds, report)

    def line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        done[0] += 1
        progress(_trial_line(study, trial, done[0], trials))

    study.optimize(objective, n_trials=trials, catch=(TrainingDiverged,), callbacks=[line])


class TuningFailed(UserError):
    """A study ended without any complete trial."""


@dataclass
class StudyOutcome:
    study_name: str
    storage_path: Path
    best_value: float
    best_params: dict[str, Any]
    n_trials: int  # all trials stored (complete, pruned, failed)
    best_config: ExperimentConfig
    best_config_path: Path


def tune_seeds(config: ExperimentConfig) -> list[int]:
    return list(config.tune.seeds or config.training.seeds)


def _prepare(config: ExperimentConfig, progress: Progress) -> PreparedData:
    kind = run_kind_of(config)
    return prepare_data(config, progress, with_embeddings=kind.uses_embeddings(config),
                        reads_visit_categories=kind.reads_visit_categories(config))


def _quiet_optuna() -> None:
    # One line per trial is ours (`_trial_line`); Optuna's own INFO lines would double them.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def best_config_text(base: ExperimentConfig, study: optuna.Study, best_config: ExperimentConfig,
                     prepared: PreparedData, folds: list[Fold], seeds: list[int]) -> str:
    """The best trial's config as a parameter file: a comment header (study, trials, best value, folds and users
    it was chosen on) and the full resolved config without the tune section."""
    states = {}
    for trial in study.trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    users = sum(len(fold.inner_val_users) for fold in folds)
    header = [
        f"Best configuration of the study {study.study_name!r} (nextpoi tune, {study_path(base)}).",
        f"Trials: {len(study.trials)} ({', '.join(f'{n} {s}' for s, n in sorted(states.items()))}); best: trial "
        f"{study.best_trial.number}, {OBJECTIVE} {study.best_value:.4f}.",
        f"Scored on the inner-validation users of outer folds {[fold.fold for fold in folds]} ({users} users, "
        f"{sum(len(fold.inner_val_index) for fold in folds)} windows), seeds {seeds}; no test fold was read.",
        f"Data {prepared.dataset_name} (hash {prepared.data_hash}, folds {prepared.fold_manifest.hash}).",
        "Best parameters: " + ", ".join(f"{k}={v!r}" for k, v in study.best_trial.params.items()) + ".",
        f"Written {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}. Run it: nextpoi run <this file>.",
    ]
    data = best_config.to_dict()
    data.pop("tune")
    return "".join(f"# {line}\n" for line in header) + yaml.safe_dump(data, sort_keys=False)


def run_study(config: ExperimentConfig, trials: int | None = None, progress: Progress | None = None,
              pruner: optuna.pruners.BasePruner | None = None, best_output: str | Path | None = None
              ) -> StudyOutcome:
    """Plain mode: run (or resume) the config's study for `trials` more trials (default `tune.trials`), then write
    the best configuration as a parameter file (default `<study folder>/<study>.best.yaml`)."""
    progress = progress or Progress(config.training.progress)
    trials = trials if trials is not None else config.tune.trials
    _check_trials(trials)
    check_space(config)
    kind = run_kind_of(config)
    check_output_writable(config, computes_dgi_embeddings(config, kind))
    _quiet_optuna()
    name, seeds = study_name_of(config), tune_seeds(config)
    study = open_study(config, name, _objective_attributes(config, "plain", list(config.tune.folds), seeds), pruner)
    before = len(study.trials)
    prepared = _prepare(config, progress)
    folds = [prepared.fold_manifest.folds[number] for number in config.tune.folds]
    progress(f"Study {name} ({study_path(config)}): {before} trials stored, {trials} more; {OBJECTIVE} over the "
             f"inner-validation users of folds {list(config.tune.folds)}, seeds {seeds}")
    optimize(study, config, InnerValidationScorer(config, prepared), folds, seeds, trials, progress)
    try:
        best = study.best_trial
    except ValueError:
        raise TuningFailed(f"The study {name!r} has no complete trial ({len(study.trials)} trials, all pruned or "
                           f"failed): run more trials, or set tune.pruner: none.") from None
    best_config = trial_config(config, best.params)
    best_config = dataclasses.replace(best_config, name=f"{config.name}-tuned", tune=TuneConfig())
    path = Path(best_output) if best_output else study_directory(config) / f"{name}.best.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(best_config_text(config, study, best_config, prepared, folds, seeds))
    progress(f"Study {name}: {len(study.trials)} trials, best {OBJECTIVE} {study.best_value:.4f} (trial "
             f"{best.number}: {best.params}) -> best configuration {path}")
    return StudyOutcome(study_name=name, storage_path=study_path(config), best_value=study.best_value,
                        best_params=dict(best.params), n_trials=len(study.trials), best_config=best_config,
                        best_config_path=path)


def _check_trials(trials: int) -> None:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials={trials!r} must be an integer >= 1 (trials to add to the study).")


# --------------------------------------------------------------------------------------------------
# Nested mode


def nested_study_name(config: ExperimentConfig, fold: int) -> str:
    return f"{study_name_of(config)}.nested-fold{fold}"


def run_nested(config: ExperimentConfig, trials: int | None = None, progress: Progress | None = None,
               pruner: optuna.pruners.BasePruner | None = None) -> Path:
    """Nested mode: per outer fold a study (`trials` more trials) on that fold's inner-validation users, then that
    fold's chosen config cross-validated on the fold alone: its test fold is evaluated once, after its study
    ended. Writes one run folder `<study>-nested` (manifest `selection_mode: nested`, each fold's parameters)."""
    progress = progress or Progress(config.training.progress)
    trials = trials if trials is not None else config.tune.trials
    _check_trials(trials)
    check_space(config)
    kind = run_kind_of(config)
    run_config = updated(config, name=f"{study_name_of(config)}-nested")
    for stale in remove_stale_temporaries(run_directory(run_config)):
        progress(f"Cleaned up {stale}, left by a run of {run_config.name} that did not finish")
    check_run_target(run_config)
    check_output_writable(run_config, computes_dgi_embeddings(run_config, kind))
    _quiet_optuna()
    seeds = tune_seeds(config)
    started_at, started = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    prepared = _prepare(config, progress)
    scorer = InnerValidationScorer(config, prepared)
    fold_results, selections, extra = [], [], {}
    for fold in prepared.fold_manifest.folds:
        name = nested_study_name(config, fold.fold)
        study = open_study(config, name, _objective_attributes(config, "nested", [fold.fold], seeds), pruner)
        progress(f"Nested fold {fold.fold}: study {name}, {len(study.trials)} trials stored, {trials} more")
        optimize(study, config, scorer, [fold], seeds, trials, progress)
        try:
            best = study.best_trial
        except ValueError:
            raise TuningFailed(f"The nested study {name!r} has no complete trial: run more trials, or set "
                               f"tune.pruner: none.") from None
        chosen = updated(trial_config(config, best.params), name=run_config.name)
        # The only place the tuner reads a test fold: this fold's, once, with the config chosen without it.
        one_fold = PreparedData(windows=prepared.windows,
                                fold_manifest=dataclasses.replace(prepared.fold_manifest, folds=[fold]),
                                data_hash=prepared.data_hash, dataset_name=prepared.dataset_name)
        result = kind.cross_validate(chosen, one_fold, progress)
        fold_results += result.fold_results
        extra = extra or result.extra
        device = (result.device, result.device_name)
        selections.append({"fold": fold.fold, "study": name, "trials": len(study.trials), "best_trial": best.number,
                           "inner_val_macro_f1": round(float(study.best_value), 6), "params": dict(best.params)})
        progress(f"Nested fold {fold.fold}: chose {best.params} ({OBJECTIVE} {study.best_value:.4f})")
    combined = CrossValidationResult(fold_results=fold_results, device=device[0], device_name=device[1], extra=extra)
    manifest = run_manifest(run_config, prepared, combined, started_at, time.perf_counter() - started)
    manifest.update({"selection_mode": "nested",
                     "nested_selection": {"objective": OBJECTIVE, "storage": str(study_path(config)),
                                          "seeds": seeds, "folds": selections}})
    path = write_run(run_directory(run_config), combined, prepared.windows.classes,
                     yaml.safe_dump(run_config.to_dict(), sort_keys=False), prepared.fold_manifest.to_json(), manifest)
    progress(f"Nested tuning of {config.name}: {len(selections)} folds -> {path}")
    return path


# --------------------------------------------------------------------------------------------------
# Figures


def study_figures(storage: str | Path | optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    """Optuna's plotly figures of a stored study: "optimization_history", "param_importances" (when at least two
    complete trials vary the parameters) and "slice". `storage`: the SQLite file, a storage URL or object."""
    if isinstance(storage, Path) or (isinstance(storage, str) and "://" not in storage):
        storage = storage_for(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    figures = {"optimization_history": optuna.visualization.plot_optimization_history(study)}
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    varied = {key for key in study.best_trial.params if len({repr(t.params.get(key)) for t in complete}) > 1} \
        if complete else set()
    if len(complete) >= 2 and varied:
        figures["param_importances"] = optuna.visualization.plot_param_importances(study)
    figures["slice"] = optuna.visualization.plot_slice(study)
    for key, figure in figures.items():
        figure.update_layout(title=f"{name}: {figure.layout.title.text or key}")
    return figures


def study_summary(storage: str | Path | optuna.storages.BaseStorage, name: str) -> dict[str, Any]:
    """A stored study in numbers: trials per state, the best value and parameters, what the values mean."""
    if isinstance(storage, Path) or (isinstance(storage, str) and "://" not in storage):
        storage = storage_for(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    states: dict[str, int] = {}
    for trial in study.trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    try:
        best = study.best_trial
    except ValueError:
        best = None
    return {"study": name, "trials": len(study.trials), "states": states,
            "best_value": None if best is None else best.value, "best_trial": None if best is None else best.number,
            "best_params": {} if best is None else dict(best.params),
            "objective": study.user_attrs.get("objective", {})}
