"""nextpoi_lib.baselines: the simple reference predictors, checked by hand on small windows."""
import numpy as np
import pytest

from nextpoi_lib.baselines import BASELINE_REGISTRY, LastCategory, MajorityClass, MarkovChain, MostFrequentInWindow
from nextpoi_lib.experiment import load_config
from nextpoi_lib.windows import WindowSet


def windows_of(categories, mask, target, num_classes=3) -> WindowSet:
    categories, mask = np.asarray(categories), np.asarray(mask, bool)
    shape = categories.shape
    zeros = np.zeros(shape, np.float32)
    return WindowSet(poi_index=np.zeros(shape, np.int64), mask=mask, category_index=np.where(mask, categories, -1),
                     hour=zeros, weekday=zeros.astype(np.int64), gap_hours=zeros, latitude=zeros, longitude=zeros,
                     target=np.asarray(target), target_hour=np.zeros(len(target), np.float32),
                     target_weekday=np.zeros(len(target), np.int64),
                     users=np.array([f"u{i}" for i in range(len(target))]),
                     classes=[f"c{i}" for i in range(num_classes)], embedding_table=np.zeros((1, 1), np.float32))


def test_majority_class_is_the_most_frequent_training_target():
    windows = windows_of([[0], [0], [0], [0], [0]], [[True]] * 5, target=[2, 1, 2, 0, 1])
    model = MajorityClass().fit(windows, np.array([0, 1, 2, 3]))  # targets 2, 1, 2, 0: class 2
    assert model.predict(windows, np.array([4, 0])).tolist() == [2, 2]
    # A tie goes to the lowest class id (targets 1 and 0 once each).
    assert MajorityClass().fit(windows, np.array([3, 4])).predict(windows, np.array([0])).tolist() == [0]


def test_last_category_repeats_the_last_observed_visit():
    windows = windows_of([[0, 1, 2], [2, 0, 0], [1, 1, 0]], [[1, 1, 1], [1, 0, 0], [1, 1, 0]], target=[0, 0, 0])
    model = LastCategory().fit(windows, np.arange(3))
    assert model.predict(windows, np.arange(3)).tolist() == [2, 2, 1]


def test_most_frequent_in_window_breaks_ties_towards_the_latest_visit():
    windows = windows_of([[0, 1, 1, 0], [2, 0, 0, 1], [1, 2, 0, 0], [0, 0, 2, 1]],
                         [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], target=[0] * 4)
    model = MostFrequentInWindow().fit(windows, np.arange(4))
    # Window 0: 0 and 1 twice each, 0 last -> 0. Window 1: 0 twice -> 0. Window 2: 1 and 2 once, 2 later -> 2.
    # Window 3: only 0 observed -> 0.
    assert model.predict(windows, np.arange(4)).tolist() == [0, 0, 2, 0]


def test_markov_chain_counts_and_backs_off_by_hand():
    # Training windows (observed history -> target): (0, 1) -> 2 twice, (0, 1) -> 0, (2, 1) -> 0, (2, 1) -> 2,
    # (1,) -> 1 three times, (2,) -> 2 twice (the short ones observe only their first visit).
    train = windows_of([[0, 1]] * 3 + [[2, 1]] * 2 + [[1, 0]] * 3 + [[2, 0]] * 2,
                       [[1, 1]] * 5 + [[1, 0]] * 5, target=[2, 2, 0, 0, 2, 1, 1, 1, 2, 2])
    model = MarkovChain(order=2).fit(train, np.arange(10))
    # Counted by hand: (0, 1): {2: 2, 0: 1} -> 2; (2, 1): {0: 1, 2: 1} -> 0 (a tie goes to the lowest id);
    # (1,): {2: 3, 0: 2, 1: 3} -> 1 (tie); (2,): {2: 2} -> 2; (): {2: 5, 0: 2, 1: 3} -> 2; (0,) never ends one.
    assert model.table == {(0, 1): 2, (2, 1): 0, (1,): 1, (2,): 2, (): 2}
    test = windows_of([[0, 1], [2, 1], [1, 1], [0, 0], [2, 2]], [[1, 1], [1, 1], [1, 1], [1, 0], [1, 0]],
                      target=[0] * 5)
    # (0, 1) and (2, 1) seen; (1, 1) unseen -> back off to (1,); (0,) unseen -> (); (2,) seen.
    assert model.predict(test, np.arange(5)).tolist() == [2, 0, 1, 2, 2]
    first_order = MarkovChain(order=1).fit(train, np.arange(10))
    assert first_order.table == {(1,): 1, (2,): 2, (): 2}
    assert first_order.predict(test, np.arange(5)).tolist() == [1, 1, 1, 2, 2]


def test_baselines_that_read_visits_refuse_next_parquet_windows():
    windows = windows_of([[0, 1]], [[1, 1]], target=[0])
    windows.category_index = np.full((1, 2), -1)  # embeddings only, as from a next.parquet file
    for model in (LastCategory(), MostFrequentInWindow(), MarkovChain()):
        with pytest.raises(ValueError, match="needs the categories of the observed visits"):
            model.fit(windows, np.arange(1))
    MajorityClass().fit(windows, np.arange(1))  # the majority class needs targets only


def test_registry_builds_each_baseline_from_the_config():
    config = load_config({"model": {"name": "markov", "markov_order": 3}})
    assert set(BASELINE_REGISTRY) == {"majority", "last_category", "most_frequent_in_window", "markov"}
    assert isinstance(BASELINE_REGISTRY["majority"](config), MajorityClass)
    assert isinstance(BASELINE_REGISTRY["last_category"](config), LastCategory)
    assert isinstance(BASELINE_REGISTRY["most_frequent_in_window"](config), MostFrequentInWindow)
    markov = BASELINE_REGISTRY["markov"](config)
    assert isinstance(markov, MarkovChain) and markov.order == 3
    # None of them draws random numbers: one fit per fold serves every seed.
    assert not any(getattr(make(config), "draws_random_numbers", False) for make in BASELINE_REGISTRY.values())
