"""A small synthetic experiment config shared by the tests of training, baselines and runs."""

from __future__ import annotations

from conftest import synthetic_checkins
from nextpoi_lib.experiment import load_config


def synthetic_config(tmp_path, **sections):
    """A cycle of POIs: the next category is a function of the last visit's category."""
    checkins = tmp_path / "checkins.csv"
    if not checkins.exists():
        synthetic_checkins(n_users=50, visits_per_user=16, n_pois=30).to_csv(checkins, index=False)
    base = {
        "name": "toy", "dataset": {"source": "checkins", "path": str(checkins), "name": "toy"},
        "embeddings": {"source": "dgi", "epochs": 5, "dim": 8},
        "windows": {"length": 4, "stride": 1, "features": ["category"]},
        "folds": {"n_splits": 3},
        "model": {"name": "gru", "hidden_dim": 16, "num_layers": 1, "dropout": 0.0},
        "loss": {"name": "cross_entropy"},
        "scheduler": {"name": "constant"},
        "optimizer": {"learning_rate": 0.02, "weight_decay": 0.0},
        "training": {"epochs": 8, "batch_size": 64, "seeds": [0], "progress": False, "device": "cpu"},
        "output": {"root": str(tmp_path / "outputs")},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return load_config(base)
