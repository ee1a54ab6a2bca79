"""Experiment configuration: one typed, frozen object, loaded from layered YAML and validated once at the edge.

Everything downstream trusts an `ExperimentConfig`; code that needs a variant of it (a blended run's head, a
benchmark's execution mode) derives a copy with `updated` instead of changing it. Errors name the key, the value and the valid choices,
so a typo in a parameter file fails before any data is read.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from .errors import UserError


class ConfigError(UserError):
    """A parameter file asks for something invalid; the message says which key and how to fix it."""


@dataclass(frozen=True)
class DatasetConfig:
    # foursquare_nyc: the embedded mat-data sample; checkins: any CSV/parquet check-in table;
    # next_parquet: our users' precomputed 9x64 window file.
    source: Literal["foursquare_nyc", "checkins", "next_parquet"] = "foursquare_nyc"
    path: str | None = None
    name: str | None = None  # folder name under outputs/; derived from the source when empty
    # Column names of a check-in table (the defaults match the Gowalla per-state files).
    user_column: str = "userid"
    poi_column: str | None = "placeid"  # None: POIs are identified by their coordinates
    timestamp_column: str = "datetime"
    latitude_column: str = "latitude"
    longitude_column: str = "longitude"
    category_column: str = "category"
    # Optional finer category (e.g. Foursquare's venue type); used by trees.subcategory_statistics only.
    # The embedded Foursquare sample always has one.
    subcategory_column: str | None = None
    min_checkins_per_user: int = 5
    # Exact duplicate check-in rows (every column equal): "drop" keeps one of each and reports how many were
    # dropped; "keep" keeps them all (each one becomes a visit and a target).
    duplicate_rows: Literal["drop", "keep"] = "drop"
    # Numeric timestamps: the unit of a number of seconds/milliseconds since 1970 ("s", "ms"); null: the
    # timestamp column must hold date-times (a number is then refused rather than read as nanoseconds).
    timestamp_unit: Literal["s", "ms"] | None = None
    # Fixed class list in id order (e.g. Gowalla's 7 categories); empty: the classes found in the data,
    # most frequent first. A category outside a given list is an error.
    classes: list[str] | None = None
    # Raw category name -> class name, applied right after loading (before the classes are derived), so targets,
    # category inputs, POI graph features and fold stratification all see the mapped classes. Several raw names
    # may map to one class (merging them); a raw category not in the map keeps its name. A key that is not a
    # category of the data is an error (a typo would otherwise merge nothing). E.g. parameters/classes/gowalla7.yaml.
    class_map: dict[str, str] | None = None
    # Classes with fewer check-ins than this (after the user filter) stop being targets: windows predicting them
    # are removed; their visits stay in the windows as observed visits of unknown category (category id -1, like
    # a visit without category). The dropped classes and their counts are in the windows report. null: keep all.
    min_class_checkins: int | None = None
    # next.parquet stores no mask; its writer padded short windows on the right with zero vectors.
    # "trailing_zero_rows" reads trailing all-zero positions as padding (only for that legacy file),
    # "none" treats every position as a real visit.
    legacy_padding: Literal["trailing_zero_rows", "none"] = "trailing_zero_rows"


@dataclass(frozen=True)
class EmbeddingConfig:
    # dgi: Deep Graph Infomax over the spatial POI graph; table: the user's own vectors (path); transition_graph:
    # DGI over the graph of consecutive visits of each fold's training users, one table per fold
    # (nextpoi_lib.transition_embeddings); transition_graph_all_users: the same over every user's visits, leaky
    # by construction (a test window's next visit is in the graph), only for measuring that leak.
    source: Literal["dgi", "table", "transition_graph", "transition_graph_all_users"] = "dgi"
    path: str | None = None  # for source=table: parquet/CSV with placeid, '0'..'63'
    id_column: str = "placeid"
    dim: int = 64
    graph: Literal["delaunay", "knn"] = "delaunay"
    knn_k: int = 10
    epochs: int = 200
    learning_rate: float = 1e-3
    seed: int = 0
    # What to do with visits whose POI has no embedding: "error" stops, "mask" marks those positions
    # as not observed in the padding mask (reported), "drop_window" removes windows that contain one.
    missing: Literal["error", "mask", "drop_window"] = "error"


@dataclass(frozen=True)
class WindowConfig:
    length: int = 9
    stride: int = 1
    # Inputs of each observed visit the neural heads see. poi_identity / venue_type: trainable tables of the
    # POI / finer category, their vocabulary fitted per fold on the training windows (model.identity_*);
    # user_past: the user's category counts before the window and own transitions (as the trees' history and
    # personal features), repeated at every position. place_statistics: the trees' target statistics of the
    # window's last POI and last venue type (next-category shares after them among the fold's training windows,
    # out-of-fold for those rows, and how often they were seen), fitted per fold, repeated at every position.
    features: list[Literal["embedding", "category", "time", "coordinates", "poi_identity", "venue_type",
                           "user_past", "place_statistics"]] = field(
        default_factory=lambda: ["embedding"]
    )
    # Adding the predicted visit's own time changes the task; it must be asked for by this name.
    target_time_features: bool = False


@dataclass(frozen=True)
class FoldConfig:
    n_splits: int = 5
    # user_grouped: StratifiedGroupKFold by user. legacy_record_level: our users' old split that puts
    # windows of one user in train and test; kept only to reproduce old numbers.
    strategy: Literal["user_grouped", "legacy_record_level"] = "user_grouped"
    inner_val_fraction: float = 0.15
    seed: int = 42
    # What a fold keeps whole (user_grouped only). user: each user (in the embedded sample a `tid`, one week's
    # trajectory). person_proxy: users linked, transitively, by check-ins at the same POI of a subcategory in
    # person_link_subcategories (a private home), since one person's weeks are separate `tid`s there and
    # grouping by `tid` leaves most of a test person's other weeks in training (folds.person_proxy_groups).
    group_by: Literal["user", "person_proxy"] = "user"
    # The subcategories (dataset.subcategory_column; the embedded sample's venue type) whose POIs link users
    # under group_by: person_proxy. A home is private to a person; a shared building or a venue is not.
    person_link_subcategories: list[str] = field(default_factory=lambda: ["Home (private)"])


@dataclass(frozen=True)
class ModelConfig:
    name: str = "transformer"
    model_dim: int = 64  # width the transformer works at (inputs are projected to it)
    hidden_dim: int = 256  # recurrent heads' hidden size
    num_layers: int = 4
    num_heads: int = 8
    dropout: float = 0.1
    causal: bool = False
    feedforward_dim: int = 256
    category_embedding_dim: int = 32
    # windows.features poi_identity / venue_type: width of their tables; an id visited fewer than
    # identity_min_count times in the fold's training windows shares the "unseen" row; identity_dropout: the
    # chance, in training, that a visit's row is replaced by the unseen row (which trains that row);
    # identity_weight_decay: AdamW's decay for these tables alone (0: a rare id's row is not shrunk at every
    # step between its few gradients); identity_init: "random", or "embedding" (each POI's row starts at its
    # embedding vector; needs identity_dim == embeddings.dim and 'embedding' in windows.features).
    identity_dim: int = 32
    identity_min_count: int = 2
    identity_dropout: float = 0.1
    identity_weight_decay: float = 0.0
    identity_init: Literal["random", "embedding"] = "random"
    # Reference baseline "markov" only.
    markov_order: int = 2


@dataclass(frozen=True)
class TreesConfig:
    """The gradient-boosted trees (model.name: gradient_boosting, or blended_trees with a neural head)."""
    max_iter: int = 200
    learning_rate: float = 0.1
    # Add the next-category distribution observed after each window's last POI in the training users
    # (out-of-fold for the training rows) as features of the trees.
    poi_statistics: bool = False
    # The same statistics keyed by the last visit's subcategory (needs a subcategory column in the data).
    subcategory_statistics: bool = False
    # Category counts of the user's visits before the window: the part of their past the L visits don't show.
    history_features: bool = False
    # What the user did next after their own earlier visits to the window's last category and last POI (shares
    # of each next category and how many such transitions): the user's habits, from before the target only.
    personal_transitions: bool = False
    # "balanced" weights each training window inversely to its class frequency (scikit-learn class_weight);
    # "sqrt_balanced" by the square root of that weight: most of the minority-class gain, less lost accuracy.
    class_weight: Literal["none", "balanced", "sqrt_balanced"] = "none"
    l2_regularization: float = 0.0
    # > 0: also fit a random forest of this many trees (scikit-learn RandomForestClassifier: >= 3 windows per
    # leaf, 30% of the features per split, the same class weights) on the same features, and average the two
    # models' log-probabilities. Bagging and boosting err differently; the forest draws random numbers, so
    # such a run depends on the seed.
    forest_trees: int = 0
    # After the blend weight and calibration offsets are chosen on the inner validation users (with trees fitted
    # on the training users only), refit the trees (and forest) on training + inner validation windows for the
    # test predictions: ~18% more users behind the trees and their POI statistics, the test fold still unseen.
    refit_with_inner_val: bool = False


@dataclass(frozen=True)
class BlendConfig:
    """model.name: blended_trees — the trees' log-probabilities averaged with a neural head's."""
    # The neural head (a name of the head registry, configured by the model/loss/optimizer/training sections)
    # trained on the same folds; the blend weight is chosen on the inner validation users.
    head: str | None = None


@dataclass(frozen=True)
class LossConfig:
    name: Literal["cross_entropy", "focal", "logit_adjusted"] = "cross_entropy"
    class_weights: Literal["none", "balanced"] = "none"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    focal_alpha: Literal["none", "balanced"] = "none"
    logit_adjustment_tau: float = 1.0
    # Stacking two re-weightings over-corrects (our users lost 10-25 points); allowed only on request.
    allow_stacked_reweighting: bool = False


@dataclass(frozen=True)
class OptimizerConfig:
    name: Literal["adamw"] = "adamw"
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2


@dataclass(frozen=True)
class SchedulerConfig:
    name: Literal["onecycle", "cosine", "constant"] = "onecycle"
    max_lr: float = 1e-2
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 100
    batch_size: int = 1024
    weighted_sampler: bool = False
    early_stopping_patience: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    # Post-hoc per-class logit offsets fitted on the inner validation users to maximise macro-F1.
    bias_calibration: bool = False
    progress: bool = True
    # bf16 autocast on GPUs that support it (fp32 master weights and loss).
    mixed_precision: bool = True
    # How the engine runs the (seed, fold) jobs (see nextpoi_lib/training/__init__.py). Fold workers give exactly the
    # in-process numbers at equal thread counts; stacked folds draw dropout masks differently.
    # stack_folds: train the folds of a seed as one batched computation (torch.vmap, Transformer only);
    # "auto" = on CUDA yes, on CPU no (slower there).
    stack_folds: bool | Literal["auto"] = "auto"
    # fold_workers: CPU worker processes that train whole folds in parallel, splitting the intra-op threads;
    # "auto" = as many as threads (and jobs) for runs large enough to pay for process start-up, else 1.
    fold_workers: int | Literal["auto"] = "auto"


@dataclass(frozen=True)
class OutputConfig:
    root: str = "outputs"
    overwrite: bool = False


# One value of a tune search-space entry (a bound, a flag, a step or the list of choices), checked by
# `validate_tune`: the generic coercion accepts any of them so the messages can name what is wrong.
TuneValue = bool | int | float | str | list[bool | int | float | str] | None


@dataclass(frozen=True)
class TuneConfig:
    """`nextpoi tune` only (nextpoi_lib/tuning.py): an Optuna study over this file's config. `nextpoi run` ignores
    the section and runs the base config."""
    # Dotted config key -> {low, high, log?, step?} (a range; integers when the key holds an integer) or
    # {choices: [...]}, e.g. {"optimizer.learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": true}}. Keys of the
    # data sections (dataset, embeddings, windows, folds) are refused: windows and folds are prepared once per study.
    space: dict[str, dict[str, TuneValue]] = field(default_factory=dict)
    trials: int = 20  # trials per `nextpoi tune` call when --trials is not given
    # Outer folds (0-based, as in fold_metrics.csv) whose inner-validation users score a trial; never their test users.
    folds: list[int] = field(default_factory=lambda: [0, 1])
    seeds: list[int] | None = None  # null: training.seeds
    study_name: str | None = None  # null: the run name
    sampler: Literal["tpe", "random"] = "tpe"
    sampler_seed: int = 0
    # "median": stop a trial whose inner-validation macro-F1 after an epoch is below the median of earlier trials'.
    pruner: Literal["median", "none"] = "median"


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    description: str = ""
    profile: str | None = None
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    embeddings: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    windows: WindowConfig = field(default_factory=WindowConfig)
    folds: FoldConfig = field(default_factory=FoldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trees: TreesConfig = field(default_factory=TreesConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def dataset_name(self) -> str:
        if self.dataset.name:
            return self.dataset.name
        if self.dataset.source == "foursquare_nyc":
            return "foursquare_nyc"
        return Path(self.dataset.path or "data").stem


def updated(config: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    """A copy of the frozen `config` with some keys changed: a section's keys as a mapping
    (`updated(config, training={"fold_workers": 1})`), a top-level key as a value (`updated(config, name="x")`).
    Unknown keys raise TypeError. The copy is not validated again: the settings the engine reads that way
    (training.stack_folds, fold_workers) are re-checked there."""
    values = {}
    for name, change in changes.items():
        section = getattr(config, name)
        values[name] = dataclasses.replace(section, **change) if dataclasses.is_dataclass(section) else change
    return dataclasses.replace(config, **values)


# --------------------------------------------------------------------------------------------------
# From a mapping (resolved from YAML layers by nextpoi_lib.layers) to the typed config

# Tree options that older parameter files spelled under `model:` with a `gbt_` prefix.
_LEGACY_TREE_KEYS = ("max_iter", "learning_rate", "poi_statistics", "subcategory_statistics", "history_features",
                     "personal_transitions", "class_weight", "l2_regularization", "forest_trees",
                     "refit_with_inner_val")


def translate_legacy_keys(data: dict[str, Any]) -> dict[str, Any]:
    """Older parameter files (and the config.yaml of older run folders) spelled the trees' options
    `model.gbt_<key>` and the blend `model.name: gradient_boosting` + `model.gbt_blend_head: <head>`. Accept them
    with a deprecation message naming the new key; refuse a key given both ways."""
    model = data.get("model")
    if not isinstance(model, dict) or not any(str(key).startswith("gbt_") for key in model):
        return data
    data = copy.deepcopy(data)
    model = data["model"]
    moved = []
    for key in _LEGACY_TREE_KEYS:
        if f"gbt_{key}" not in model:
            continue
        trees = data.setdefault("trees", {})
        if not isinstance(trees, dict) or key in trees:
            raise ConfigError(f"model.gbt_{key} and trees.{key} are both given. model.gbt_{key} is the old spelling "
                              f"of trees.{key}: keep trees.{key} only.")
        trees[key] = model.pop(f"gbt_{key}")
        moved.append(f"model.gbt_{key} -> trees.{key}")
    if "gbt_blend_head" in model:
        # Translated file by file (nextpoi_lib.layers), so a layer that only sets the head also names the run kind.
        head = model.pop("gbt_blend_head")
        blend = data.setdefault("blend", {})
        if not isinstance(blend, dict) or "head" in blend:
            raise ConfigError("model.gbt_blend_head and blend.head are both given. model.gbt_blend_head is the "
                              "old spelling of blend.head (with model.name: blended_trees): keep blend.head only.")
        blend["head"] = head
        if head is not None:
            if model.get("name") in (None, "gradient_boosting"):
                model["name"] = "blended_trees"
            moved.append(f"model.gbt_blend_head={head!r} -> model.name: blended_trees, blend.head: {head!r}")
        else:
            if model.get("name") in (None, "blended_trees"):
                model["name"] = "gradient_boosting"
            moved.append("model.gbt_blend_head: null -> model.name: gradient_boosting (the trees alone)")
    unknown = sorted(key for key in model if str(key).startswith("gbt_"))
    if unknown:
        raise ConfigError(f"Unknown key 'model.{unknown[0]}'. The trees' options are in the section trees: "
                          f"(without the gbt_ prefix): {', '.join(_LEGACY_TREE_KEYS)}.")
    warnings.warn("Deprecated keys: the trees' options moved to their own section and the blend to a run kind of "
                  "its own; rewrite " + "; ".join(moved) + ".", FutureWarning, stacklevel=3)
    return data


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Type a resolved mapping (old `model.gbt_*` keys translated) and check each value; no name registry is
    consulted here: `experiment.load_config` checks the names of models and heads."""
    data = translate_legacy_keys(data)
    config = _build(ExperimentConfig, data, prefix="")
    validate(config, data)
    return config


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"Section {prefix.rstrip('.') or 'top level'!r} must be a mapping of keys, "
                          f"got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"Unknown key {prefix + key!r}.{hint} Valid keys in "
                          f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(fields))}.")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, prefix + name + ".")
        else:
            values[name] = _coerce(value, hint, prefix + name)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = get_origin(hint)
    args = get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        if len(options) == 1:
            raise ConfigError(errors[0])
        # e.g. bool | Literal["auto"]: name every accepted form, not only the first one tried.
        choices = [_describe(option) for option in options] + (["null"] if type(None) in args else [])
        raise ConfigError(f"{key}={value!r} is not valid. Valid choices: {' or '.join(choices)}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not a valid choice. Valid choices: "
                              f"{', '.join(repr(a) for a in args)}.")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r} must be a mapping of names, e.g. {{'Nightlife Spot': 'Nightlife'}}.")
        return {_coerce(name, args[0], f"{key} key"): _coerce(item, args[1], f"{key}[{name!r}]")
                for name, item in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list, e.g. [{value!r}].")
        return [_coerce(item, args[0], f"{key}[{index}]") for index, item in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false.")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            extra = ""
            if isinstance(value, str):
                # PyYAML reads 1e-3 (no dot) as a string; say so instead of failing obscurely later.
                extra = (" YAML reads numbers like 1e-3 as text; write 1.0e-3 or 0.001.")
            raise ConfigError(f"{key}={value!r} must be a number.{extra}")
        if not math.isfinite(value):
            # YAML reads .inf, -.inf and .nan as floats; no setting means them, and they fail far downstream.
            raise ConfigError(f"{key}={value!r} must be a finite number (YAML reads .inf, -.inf and .nan as "
                              f"infinity and not-a-number): give a real value such as 0.001.")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string.")
        return value
    raise ConfigError(f"{key}: unsupported type {hint}.")  # pragma: no cover - programming error


def _describe(hint: Any) -> str:
    """The accepted values of one type, for error messages."""
    if get_origin(hint) is Literal:
        return " or ".join(repr(a) for a in get_args(hint))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


# Names that become folders (outputs/<dataset>/<name>/): one path component, portable on every file system.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
SAFE_NAME_RULE = ("one folder name of letters, digits, '.', '_' and '-' (no '/', spaces or other characters), "
                  "not starting with '.'")


def is_safe_name(name: Any) -> bool:
    return isinstance(name, str) and len(name) <= 200 and _SAFE_NAME.fullmatch(name) is not None


# The machine check (is that GPU there?) is devices.check_device, called by experiment.load_config.
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def validate(config: ExperimentConfig, raw: dict[str, Any] | None = None) -> None:
    """Value and cross-field checks; raises ConfigError naming the key and the fix. Names of registered models
    and heads are checked one layer up, by the experiment's composition root."""
    raw = raw or {}
    d, e, w, f, m, l, o, s, t = (config.dataset, config.embeddings, config.windows, config.folds, config.model,
                                 config.loss, config.optimizer, config.scheduler, config.training)
    trees = config.trees
    _require(is_safe_name(config.name),
             f"name={config.name!r} cannot name a run folder: it must be {SAFE_NAME_RULE}. Set name: to e.g. "
             f"'{_suggest_name(config.name)}'.")
    if d.name is not None:
        _require(is_safe_name(d.name),
                 f"dataset.name={d.name!r} cannot name the dataset folder: it must be {SAFE_NAME_RULE}. Set "
                 f"dataset.name: to e.g. '{_suggest_name(d.name)}'.")
    elif not is_safe_name(config.dataset_name()):
        raise ConfigError(f"The dataset folder would be named after the data file's stem "
                          f"{config.dataset_name()!r} (dataset.path={d.path!r}), which is not {SAFE_NAME_RULE}: set "
                          f"dataset.name to a safe name, e.g. dataset.name: '{_suggest_name(config.dataset_name())}'.")
    if d.source in ("checkins", "next_parquet"):
        _require(d.path is not None, f"dataset.path is required when dataset.source={d.source!r}: give the "
                                     f"path of the {'check-in table (CSV or parquet)' if d.source == 'checkins' else 'next.parquet file'}.")
    _require(d.min_checkins_per_user >= 1, f"dataset.min_checkins_per_user={d.min_checkins_per_user} must be >= 1.")
    if d.class_map is not None:
        _require(len(d.class_map) >= 1, "dataset.class_map is empty: map at least one raw category to a class "
                                        "(e.g. {'Nightlife Spot': Nightlife}), or set it to null.")
        empty = [raw_name for raw_name, name in d.class_map.items() if not raw_name.strip() or not name.strip()]
        _require(not empty, f"dataset.class_map[{empty[0] if empty else ''!r}]: raw category and class names must "
                            f"not be empty.")
        if d.classes is not None:
            outside = sorted(set(d.class_map.values()) - set(d.classes))
            _require(not outside, f"dataset.class_map maps onto {outside}, which dataset.classes {d.classes} does "
                                  f"not list. Add them to dataset.classes or fix the class_map values.")
    if d.min_class_checkins is not None:
        _require(d.min_class_checkins >= 1, f"dataset.min_class_checkins={d.min_class_checkins} must be >= 1 "
                                            f"(or null to keep every class).")
        _require(d.source != "next_parquet",
                 "dataset.min_class_checkins counts check-ins, and a next.parquet file holds windows only: remove "
                 "it, or load the check-in table (dataset.source: checkins).")
    if e.source == "table":
        _require(e.path is not None, "embeddings.path is required when embeddings.source='table': give the "
                                     "parquet/CSV with columns placeid, '0'..'63'.")
    _require(e.dim >= 1, f"embeddings.dim={e.dim} must be >= 1.")
    _require(e.knn_k >= 1, f"embeddings.knn_k={e.knn_k} must be >= 1.")
    _require(e.epochs >= 1, f"embeddings.epochs={e.epochs} must be >= 1.")
    _require(e.learning_rate > 0, f"embeddings.learning_rate={e.learning_rate} must be > 0 (e.g. 0.001).")
    _require(e.seed >= 0, f"embeddings.seed={e.seed} must be >= 0.")
    if e.source in ("transition_graph", "transition_graph_all_users"):
        _require(d.source != "next_parquet",
                 f"embeddings.source={e.source!r} builds a graph of consecutive check-ins, and a next.parquet file "
                 f"holds windows only: load the check-in table (dataset.source: checkins) or use the file's own "
                 f"embeddings (embeddings.source: dgi).")
    if e.source == "transition_graph":
        _require(f.strategy == "user_grouped",
                 f"embeddings.source='transition_graph' trains each fold's graph on its training users only, but "
                 f"folds.strategy={f.strategy!r} puts windows of one user in training and test. Valid choices with "
                 f"this source: folds.strategy: user_grouped.")
    if e.source == "transition_graph_all_users":
        warnings.warn("embeddings.source='transition_graph_all_users' trains the POI vectors on every user's "
                      "transitions, test users included: the next visit of a test window's last POI is in the "
                      "graph, so its scores are inflated (leaky by construction; the run manifest says "
                      "embeddings.leaky: true). Use embeddings.source: transition_graph for a leak-free run.",
                      UserWarning, stacklevel=2)
    _require(w.length >= 1, f"windows.length={w.length} must be >= 1 (the number of past visits the model sees).")
    _require(w.stride >= 1, f"windows.stride={w.stride} must be >= 1 (1 = every transition, "
                            f"{w.length} = non-overlapping windows).")
    _require(len(w.features) >= 1 and len(set(w.features)) == len(w.features),
             f"windows.features={w.features!r} must list each of 'embedding', 'category', 'time', "
             f"'coordinates', 'poi_identity', 'venue_type', 'user_past', 'place_statistics' at most once, and at "
             f"least one of them.")
    needs_checkins = [name for name in ("poi_identity", "venue_type", "user_past", "place_statistics")
                      if name in w.features]
    _require(not (needs_checkins and d.source == "next_parquet"),
             f"windows.features lists {needs_checkins}, which need each visit's POI and the user's check-in "
             f"sequence, and a next.parquet file holds only precomputed embeddings: load the check-in table "
             f"(dataset.source: checkins) or remove {needs_checkins} from windows.features.")
    for name in ("venue_type", "place_statistics"):  # place_statistics: its half keyed by the last venue type
        if name in w.features:
            _require(d.source == "foursquare_nyc" or (d.source == "checkins" and d.subcategory_column),
                     f"windows.features lists {name!r}, which needs a finer category per check-in, and "
                     f"dataset.source={d.source!r} has none: set dataset.subcategory_column to the column that "
                     f"holds it (check-in tables), or remove {name!r} from windows.features.")
    if d.source == "next_parquet":
        _require(w.features == ["embedding"] and not w.target_time_features,
                 f"windows.features={w.features!r}: a next.parquet file holds only the precomputed embeddings; "
                 f"use features: [embedding], or load the check-in table instead.")
        _require(w.length == 9, f"windows.length={w.length}: a next.parquet file holds windows of 9 visits; "
                                f"set windows.length: 9 or regenerate windows from the check-in table.")
        for key in ("history_features", "personal_transitions"):
            _require(not getattr(trees, key),
                     f"trees.{key}=true needs the user's check-in sequence, and a next.parquet file holds only its "
                     f"windows: load the check-in table (dataset.source: checkins) or set {key}: false.")
    _require(f.n_splits >= 2, f"folds.n_splits={f.n_splits} must be >= 2.")
    _require(f.seed >= 0, f"folds.seed={f.seed} must be >= 0.")
    _require(0.0 < f.inner_val_fraction < 0.5,
             f"folds.inner_val_fraction={f.inner_val_fraction} must be between 0 and 0.5 (share of training "
             f"users held out for model selection).")
    if f.group_by == "person_proxy":
        _require(f.strategy == "user_grouped",
                 f"folds.group_by='person_proxy' groups users, and folds.strategy={f.strategy!r} splits windows "
                 f"without grouping: use folds.strategy: user_grouped, or folds.group_by: user.")
        _require(d.source == "foursquare_nyc" or (d.source == "checkins" and bool(d.subcategory_column)),
                 f"folds.group_by='person_proxy' links users through check-ins at POIs of the subcategories "
                 f"folds.person_link_subcategories, and dataset.source={d.source!r} has no subcategory per "
                 f"check-in: set dataset.subcategory_column to the column that holds it (check-in tables), or "
                 f"use folds.group_by: user.")
        links = f.person_link_subcategories
        _require(isinstance(links, (list, tuple)) and len(links) >= 1
                 and all(isinstance(name, str) and name.strip() for name in links),
                 f"folds.person_link_subcategories={links!r} must list at least one subcategory name (text), e.g. "
                 f"['Home (private)'] for the embedded Foursquare sample.")
    _require(trees.max_iter >= 1, f"trees.max_iter={trees.max_iter} must be >= 1 (the number of boosting rounds).")
    _require(trees.learning_rate > 0, f"trees.learning_rate={trees.learning_rate} must be > 0 (e.g. 0.1).")
    _require(trees.l2_regularization >= 0, f"trees.l2_regularization={trees.l2_regularization} must be >= 0.")
    _require(trees.forest_trees >= 0,
             f"trees.forest_trees={trees.forest_trees} must be >= 0 (0: boosted trees alone; e.g. 200: averaged "
             f"with a random forest of 200 trees).")
    if trees.subcategory_statistics:
        _require(d.source == "foursquare_nyc" or (d.source == "checkins" and d.subcategory_column),
                 f"trees.subcategory_statistics=true needs a finer category per check-in, and dataset.source="
                 f"{d.source!r} has none: set dataset.subcategory_column to the column that holds it (check-in "
                 f"tables), or set trees.subcategory_statistics: false.")
    _require(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} must be in [0, 1).")
    _require(m.num_layers >= 1, f"model.num_layers={m.num_layers} must be >= 1.")
    _require(m.num_heads >= 1, f"model.num_heads={m.num_heads} must be >= 1.")
    for key in ("model_dim", "hidden_dim", "feedforward_dim", "category_embedding_dim", "identity_dim"):
        _require(getattr(m, key) >= 1, f"model.{key}={getattr(m, key)} must be >= 1 (a layer width).")
    _require(m.identity_min_count >= 1,
             f"model.identity_min_count={m.identity_min_count} must be >= 1 (visits in a fold's training windows an "
             f"id needs for its own row; e.g. 2).")
    _require(0.0 <= m.identity_dropout < 1.0,
             f"model.identity_dropout={m.identity_dropout} must be in [0, 1) (e.g. 0.1).")
    _require(m.identity_weight_decay >= 0,
             f"model.identity_weight_decay={m.identity_weight_decay} must be >= 0 (e.g. 0.0).")
    if m.identity_init == "embedding" and "poi_identity" in w.features:
        _require("embedding" in w.features,
                 "model.identity_init='embedding' starts each POI's poi_identity row at its embedding vector, which "
                 "is loaded only when windows.features lists 'embedding': add 'embedding' to windows.features, or "
                 "set model.identity_init: random.")
        _require(m.identity_dim == e.dim,
                 f"model.identity_init='embedding' copies each POI's {e.dim}-d embedding into its poi_identity row, "
                 f"so model.identity_dim={m.identity_dim} must equal embeddings.dim={e.dim}: set model.identity_dim: "
                 f"{e.dim}, or set model.identity_init: random.")
    _require(m.markov_order >= 1, f"model.markov_order={m.markov_order} must be >= 1 (the number of last visits "
                                  f"the Markov baseline conditions on).")
    _require(0.0 <= l.label_smoothing < 1.0, f"loss.label_smoothing={l.label_smoothing} must be in [0, 1).")
    _require(l.focal_gamma >= 0.0, f"loss.focal_gamma={l.focal_gamma} must be >= 0.")
    _require(o.learning_rate > 0, f"optimizer.learning_rate={o.learning_rate} must be > 0.")
    _require(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay} must be >= 0.")
    _require(s.max_lr > 0 and s.div_factor > 0 and s.final_div_factor > 0 and 0 < s.pct_start < 1,
             f"scheduler: max_lr={s.max_lr}, div_factor={s.div_factor}, final_div_factor={s.final_div_factor} "
             f"must be > 0 and pct_start={s.pct_start} in (0, 1).")
    _require(t.epochs >= 1, f"training.epochs={t.epochs} must be >= 1.")
    _require(t.batch_size >= 1, f"training.batch_size={t.batch_size} must be >= 1.")
    _require(len(t.seeds) >= 1 and len(set(t.seeds)) == len(t.seeds) and min(t.seeds) >= 0,
             f"training.seeds={t.seeds!r} must list at least one seed, each once, each >= 0.")
    _require(t.early_stopping_patience is None or t.early_stopping_patience >= 1,
             f"training.early_stopping_patience={t.early_stopping_patience} must be >= 1 or null.")
    _require(_DEVICE.fullmatch(t.device) is not None,
             f"training.device={t.device!r} must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N' ('auto': a CUDA GPU, "
             f"else Apple's MPS, else the CPU).")
    check_execution_settings(t)
    validate_tune(config)

    # Two re-weightings of the same imbalance over-correct; refuse unless asked for by name.
    stacks = []
    if t.weighted_sampler and l.class_weights == "balanced":
        stacks.append("training.weighted_sampler with loss.class_weights='balanced'")
    if t.weighted_sampler and l.name == "focal" and l.focal_alpha == "balanced":
        stacks.append("training.weighted_sampler with focal loss alpha='balanced'")
    if l.class_weights == "balanced" and l.name == "focal" and l.focal_alpha == "balanced":
        stacks.append("loss.class_weights='balanced' with focal loss alpha='balanced'")
    if l.class_weights == "balanced" and l.name == "logit_adjusted":
        stacks.append("loss.class_weights='balanced' with logit-adjusted loss")
    if t.weighted_sampler and l.name == "logit_adjusted":
        stacks.append("training.weighted_sampler with logit-adjusted loss")
    if stacks and not l.allow_stacked_reweighting:
        raise ConfigError(
            f"This configuration stacks two re-weightings of the class imbalance ({'; '.join(stacks)}). Each one "
            f"alone already rebalances the classes; together they over-correct towards minority classes (our users "
            f"measured losses of 10-25 macro-F1 points). Keep one of them, or set loss.allow_stacked_reweighting: "
            f"true if you mean to measure the stack.")
    if l.name == "focal" and l.class_weights == "balanced" and l.focal_alpha == "none":
        warnings.warn("loss.class_weights='balanced' with focal loss is used as focal alpha (per-class weights).",
                      stacklevel=2)
    if s.name == "onecycle" and "learning_rate" in (raw.get("optimizer") or {}):
        warnings.warn(
            f"optimizer.learning_rate={o.learning_rate} has no effect under scheduler.name='onecycle': OneCycle "
            f"starts at max_lr/div_factor = {s.max_lr / s.div_factor:g} and peaks at max_lr={s.max_lr:g}. Change "
            f"scheduler.max_lr / div_factor instead.", UserWarning, stacklevel=2)
    if w.target_time_features:
        warnings.warn("windows.target_time_features: true adds the predicted visit's time to the input. This is a "
                      "different, easier task; the run is labelled 'next_category_with_target_time'.", stacklevel=2)


def _suggest_name(name: Any) -> str:
    """A safe name close to `name`, for error messages."""
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).lstrip("._") or "experiment"
    return text[:200]


def check_execution_settings(t: TrainingConfig) -> None:
    """training.stack_folds and training.fold_workers; also called by the engine, since a config object may be
    changed after loading (benchmarks and tests set these two keys directly)."""
    _require(isinstance(t.stack_folds, bool) or t.stack_folds == "auto",
             f"training.stack_folds={t.stack_folds!r} is not valid. Valid choices: true, false or 'auto' (stacked "
             f"folds on CUDA, folds one by one on CPU).")
    _require(t.fold_workers == "auto" or (isinstance(t.fold_workers, int) and not isinstance(t.fold_workers, bool)
                                          and t.fold_workers >= 1),
             f"training.fold_workers={t.fold_workers!r} is not valid. Valid choices: 'auto' or an integer >= 1 "
             f"(1 = folds one after another in this process).")


# A study prepares windows and folds once and scores every trial on the same inner-validation users: keys that
# would change them (the data sections), the objective's seeds, the device and where the study lives are fixed.
TUNE_FIXED_SECTIONS = ("dataset", "embeddings", "windows", "folds", "output", "tune")
TUNE_FIXED_KEYS = ("training.seeds", "training.device", "training.progress")
_TUNE_RANGE_KEYS = ("low", "high", "log", "step")


def tune_key_hint(key: str) -> Any:
    """The type of the config key a `tune.space` entry names (`section.key`); ConfigError naming it when the key
    is not one of the config or may not be tuned."""
    sections = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}
    hints = typing.get_type_hints(ExperimentConfig)
    section, _, name = str(key).partition(".")
    tunable = [s for s, hint in hints.items() if dataclasses.is_dataclass(hint) and s not in TUNE_FIXED_SECTIONS]
    if section not in sections or not dataclasses.is_dataclass(hints[section]) or not name or "." in name:
        raise ConfigError(f"tune.space key {key!r} is not a config key: write it as section.key, e.g. "
                          f"'optimizer.learning_rate' or 'model.hidden_dim'. Sections that may be tuned: "
                          f"{', '.join(tunable)}.")
    if section in TUNE_FIXED_SECTIONS or key in TUNE_FIXED_KEYS:
        raise ConfigError(f"tune.space key {key!r} cannot be tuned: a study prepares the windows and folds once and "
                          f"scores every trial on the same inner-validation users and seeds (tune.seeds), so the "
                          f"sections {', '.join(TUNE_FIXED_SECTIONS)} and the keys {', '.join(TUNE_FIXED_KEYS)} stay "
                          f"as the base config sets them. Remove it from tune.space (set it in the base config, or "
                          f"run one study per value).")
    fields = typing.get_type_hints(hints[section])
    if name not in fields:
        import difflib

        close = difflib.get_close_matches(name, fields, n=1)
        hint = f" Did you mean '{section}.{close[0]}'?" if close else ""
        raise ConfigError(f"tune.space key {key!r} is not a config key.{hint} Valid keys in {section}: "
                          f"{', '.join(sorted(fields))}.")
    return fields[name]


def tune_number_kind(key: str) -> type | None:
    """int or float when the dotted config key holds a number (a range can be tuned), else None."""
    return _numeric_kind(tune_key_hint(key))


def _numeric_kind(hint: Any) -> type | None:
    """int or float when the key holds a number (null or 'auto' besides allowed), else None."""
    options = get_args(hint) if get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for kind in (int, float):
        if kind in options:
            return kind
    return None


def _check_tune_entry(key: str, spec: dict[str, Any]) -> None:
    hint = tune_key_hint(key)
    where = f"tune.space[{key!r}]"
    if "choices" in spec:
        _require(set(spec) == {"choices"},
                 f"{where} gives choices together with {sorted(set(spec) - {'choices'})}: an entry is either "
                 f"{{choices: [...]}} or a range {{low, high, log?, step?}}.")
        choices = spec["choices"]
        _require(isinstance(choices, list) and len(choices) >= 1,
                 f"{where}.choices={choices!r} must be a non-empty list of values, e.g. [64, 128].")
        for index, choice in enumerate(choices):
            _coerce(choice, hint, f"{where}.choices[{index}]")
        _require(len({repr(c) for c in choices}) == len(choices), f"{where}.choices={choices!r} lists a value twice.")
        return
    unknown = sorted(set(spec) - set(_TUNE_RANGE_KEYS))
    _require(not unknown, f"{where} has the unknown key {unknown[0] if unknown else ''!r}. Valid keys: "
                          f"choices, or {', '.join(_TUNE_RANGE_KEYS)}.")
    _require("low" in spec and "high" in spec,
             f"{where}={spec!r} needs low and high (a range, with log: true for a log scale and step for a grid) or "
             f"choices: [...].")
    kind = _numeric_kind(hint)
    _require(kind is not None, f"{where} is a range, but {key} is not a number: give its values as choices: [...].")
    for bound in ("low", "high", "step"):
        value = spec.get(bound)
        if value is None and bound == "step":
            continue
        if kind is int:
            _require(isinstance(value, int) and not isinstance(value, bool),
                     f"{where}.{bound}={value!r} must be an integer: {key} holds an integer.")
        else:
            extra = (" YAML reads numbers like 1e-3 as text; write 1.0e-3 or 0.001." if isinstance(value, str) else "")
            _require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
                     f"{where}.{bound}={value!r} must be a finite number.{extra}")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    _require(isinstance(log, bool), f"{where}.log={log!r} must be true or false.")
    _require(low < high, f"{where}: low={low!r} must be below high={high!r}.")
    _require(not log or low > 0, f"{where}: log: true needs low > 0 (got low={low!r}).")
    _require(step is None or step > 0, f"{where}.step={step!r} must be > 0.")
    _require(not (log and step is not None),
             f"{where}: log and step cannot be combined (Optuna samples a log range continuously): drop one.")


def validate_tune(config: ExperimentConfig) -> None:
    """The tune section's own checks (the keys and the shape of each range); `tuning.check_space` also builds the
    config at every bound and choice, so a value the config would refuse is named before any trial runs."""
    tune = config.tune
    _require(tune.trials >= 1, f"tune.trials={tune.trials} must be >= 1 (trials per nextpoi tune call).")
    n_splits = config.folds.n_splits
    _require(len(tune.folds) >= 1 and len(set(tune.folds)) == len(tune.folds)
             and all(0 <= fold < n_splits for fold in tune.folds),
             f"tune.folds={tune.folds!r} must list at least one outer fold, each once, each in 0..{n_splits - 1} "
             f"(folds.n_splits={n_splits}); e.g. [0, 1].")
    if tune.seeds is not None:
        _require(len(tune.seeds) >= 1 and len(set(tune.seeds)) == len(tune.seeds) and min(tune.seeds) >= 0,
                 f"tune.seeds={tune.seeds!r} must list at least one seed, each once, each >= 0 (or null: "
                 f"training.seeds).")
    if tune.study_name is not None:
        _require(is_safe_name(tune.study_name),
                 f"tune.study_name={tune.study_name!r} names the study's file: it must be {SAFE_NAME_RULE}. Set "
                 f"it to e.g. '{_suggest_name(tune.study_name)}'.")
    _require(tune.sampler_seed >= 0, f"tune.sampler_seed={tune.sampler_seed} must be >= 0.")
    for key, spec in tune.space.items():
        _check_tune_entry(key, spec)


def config_to_yaml(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
