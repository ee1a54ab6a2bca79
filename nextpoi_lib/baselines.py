"""Reference baselines: simple predictors that sit beside every model, on the same folds and metrics.

Each baseline is a class with `fit(windows, index)`, `predict(windows, index)` and `reads_visit_categories`
(whether it needs a target-class id for every observed visit); they look only at the
observed visits of a window (never at the visit being predicted), draw no random numbers and run in seconds
on a CPU. Adding one is one class and one line in BASELINE_REGISTRY (`experiment.py` lists the registries).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from .features.tabular import last_observed, require_visit_details
from .windows import WindowSet


class MajorityClass:
    """Predicts the most frequent class of the training windows."""
    reads_visit_categories = False

    def fit(self, windows: WindowSet, index: np.ndarray) -> "MajorityClass":
        self.majority = int(np.bincount(windows.target[index], minlength=len(windows.classes)).argmax())
        return self

    def predict(self, windows: WindowSet, index: np.ndarray) -> np.ndarray:
        return np.full(len(index), self.majority)


class LastCategory:
    """Repeats the category of the last observed visit."""
    reads_visit_categories = True  # every observed visit needs a target-class id

    def fit(self, windows: WindowSet, index: np.ndarray) -> "LastCategory":
        require_visit_details(windows, "last_category")
        return self

    def predict(self, windows: WindowSet, index: np.ndarray) -> np.ndarray:
        return last_observed(windows.category_index[index], windows.mask[index])


class MostFrequentInWindow:
    """The most frequent category among the observed visits; ties go to the most recent of them."""
    reads_visit_categories = True  # every observed visit needs a target-class id

    def fit(self, windows: WindowSet, index: np.ndarray) -> "MostFrequentInWindow":
        require_visit_details(windows, "most_frequent_in_window")
        return self

    def predict(self, windows: WindowSet, index: np.ndarray) -> np.ndarray:
        categories, mask = windows.category_index[index], windows.mask[index]
        num_classes = len(windows.classes)
        one_hot = np.zeros((len(index), num_classes))
        length = mask.shape[1]
        for position in range(length):
            observed = mask[:, position]
            # A tiny recency bonus breaks ties towards later visits without changing any count order.
            one_hot[np.flatnonzero(observed), categories[observed, position]] += 1.0 + position * 1e-3 / length
        return one_hot.argmax(axis=1)


class MarkovChain:
    """Order-K Markov chain on categories; backs off to shorter histories, then to the majority class."""
    reads_visit_categories = True  # every observed visit needs a target-class id

    def __init__(self, order: int = 2):
        self.order = order

    def _histories(self, windows: WindowSet, index: np.ndarray) -> list[tuple[int, ...]]:
        categories, mask = windows.category_index[index], windows.mask[index]
        histories = []
        for row, row_mask in zip(categories, mask):
            observed = row[row_mask]
            histories.append(tuple(int(c) for c in observed[-self.order:]))
        return histories

    def fit(self, windows: WindowSet, index: np.ndarray) -> "MarkovChain":
        require_visit_details(windows, "markov")
        counts: dict[tuple[int, ...], Counter] = defaultdict(Counter)
        for history, target in zip(self._histories(windows, index), windows.target[index]):
            for k in range(0, len(history) + 1):
                counts[history[len(history) - k:]][int(target)] += 1
        # Deterministic argmax: highest count, then lowest class id.
        self.table = {key: min(counter, key=lambda c: (-counter[c], c)) for key, counter in counts.items()}
        return self

    def predict(self, windows: WindowSet, index: np.ndarray) -> np.ndarray:
        predictions = []
        for history in self._histories(windows, index):
            for k in range(len(history), -1, -1):
                key = history[len(history) - k:]
                if key in self.table:
                    predictions.append(self.table[key])
                    break
        return np.array(predictions)


BASELINE_REGISTRY = {
    "majority": lambda config: MajorityClass(),
    "last_category": lambda config: LastCategory(),
    "most_frequent_in_window": lambda config: MostFrequentInWindow(),
    "markov": lambda config: MarkovChain(order=config.model.markov_order),
}
