"""Random windows and small configs for the training tests (tests/training/test_equivalence.py, test_plan.py)."""

from __future__ import annotations

import warnings

import numpy as np

from nextpoi_lib.config import FoldConfig
from nextpoi_lib.experiment import load_config
from nextpoi_lib.folds import make_fold_manifest
from nextpoi_lib.windows import WindowSet

LENGTH, DIM, CLASSES = 6, 8, 4
MODELS = {
    "transformer": {"name": "transformer", "model_dim": 16, "num_layers": 2, "num_heads": 4, "feedforward_dim": 32},
    "gru": {"name": "gru", "hidden_dim": 16, "num_layers": 2},
    "lstm": {"name": "lstm", "hidden_dim": 16, "num_layers": 2},
    "hybrid": {"name": "hybrid", "hidden_dim": 16, "num_layers": 1, "num_heads": 2},
    "wide_gru": {"name": "wide_gru", "hidden_dim": 16, "num_layers": 2},
}
FEATURE_SETS = [
    (["embedding"], False),
    (["embedding", "category", "time", "coordinates"], False),
    (["category", "time"], False),
    (["embedding", "coordinates"], True),  # + the predicted visit's time
]


def random_windows(n: int = 150, n_pois: int = 40, seed: int = 0, users: int = 30) -> WindowSet:
    """Windows with padding, unknown categories, times and coordinates; the next class depends on the last
    visit's category so that training makes progress."""
    rng = np.random.default_rng(seed)
    poi_category = rng.integers(0, CLASSES, n_pois)
    lengths = np.where(rng.random(n) < 0.3, rng.integers(1, LENGTH, n), LENGTH)
    mask = np.arange(LENGTH)[None, :] < lengths[:, None]
    poi = np.where(mask, rng.integers(0, n_pois, (n, LENGTH)), 0)
    category = np.where(mask, poi_category[poi], -1)
    category[rng.random((n, LENGTH)) < 0.05] = -1  # a few observed visits of unknown category
    last = poi_category[poi[np.arange(n), lengths - 1]]
    target = np.where(rng.random(n) < 0.8, (last + 1) % CLASSES, rng.integers(0, CLASSES, n))

    def per_visit(values):
        return np.where(mask, values, 0).astype(values.dtype)

    return WindowSet(
        poi_index=poi.astype(np.int64), mask=mask, category_index=category.astype(np.int64),
        hour=per_visit(rng.uniform(0, 24, (n, LENGTH)).astype(np.float32)),
        weekday=per_visit(rng.integers(0, 7, (n, LENGTH))),
        gap_hours=per_visit(rng.exponential(5.0, (n, LENGTH)).astype(np.float32)),
        latitude=per_visit((40 + rng.random((n, LENGTH))).astype(np.float32)),
        longitude=per_visit((-74 + rng.random((n, LENGTH))).astype(np.float32)),
        target=target.astype(np.int64), target_hour=rng.uniform(0, 24, n).astype(np.float32),
        target_weekday=rng.integers(0, 7, n), users=np.array([f"u{u:03d}" for u in rng.integers(0, users, n)]),
        classes=[f"c{i}" for i in range(CLASSES)],
        embedding_table=rng.normal(size=(n_pois, DIM)).astype(np.float32))


def make_config(model: str = "transformer", features=("embedding",), target_time: bool = False,
                dropout: float = 0.1, **sections):
    layers = {
        "windows": {"length": LENGTH, "features": list(features), "target_time_features": target_time},
        "model": {**MODELS[model], "dropout": dropout},
        "folds": {"n_splits": 3},
        "loss": {"name": "cross_entropy", "class_weights": "balanced"},
        "scheduler": {"name": "onecycle", "max_lr": 0.01},
        "training": {"epochs": 3, "batch_size": 32, "seeds": [0], "progress": False, "device": "cpu"},
    }
    for key, value in sections.items():
        layers[key] = {**layers.get(key, {}), **value}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_config(layers)


def manifest_for(windows: WindowSet, n_splits: int = 3):
    return make_fold_manifest(windows.users, windows.target, FoldConfig(n_splits=n_splits), "test")
