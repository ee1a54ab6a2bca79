"""What a cross-validation returns: per (seed, fold) test predictions, curves and selections.

Plain result types at the bottom of the layers: the training loops and the fitted models produce them, the run
folder writes them, the composition root passes them along.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FoldResult:
    seed: int
    fold: int
    curves: list[dict]
    selected_epoch: int
    last_epoch: int
    test_target: np.ndarray
    predictions: dict[str, np.ndarray]  # selection name -> predicted class per test window
    attention: np.ndarray | None = None  # mean pooling weight per position (selected weights)
    bias_offsets: np.ndarray | None = None
    seconds: float = 0.0  # stacked folds: the seed's wall time shared equally among its folds
    # Selected weights' log-probabilities, {"inner_val": [n_val, C], "test": [n_test, C]}: what a blend with
    # another model needs. Kept in memory only; run folders do not store them.
    log_probabilities: dict[str, np.ndarray] | None = None


@dataclass
class CrossValidationResult:
    fold_results: list[FoldResult]
    device: str
    device_name: str
    extra: dict = field(default_factory=dict)  # "engine": how the jobs were executed (see execution_plan)
