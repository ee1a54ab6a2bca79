import numpy as np
import torch
from sklearn.metrics import confusion_matrix, f1_score

from nextpoi_lib.metrics import confusion_counts, fit_bias_offsets, fold_report, macro_f1_from_confusion


def test_device_confusion_and_macro_f1_equal_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        target = rng.integers(0, 5, 200)
        predicted = np.where(rng.random(200) < 0.5, target, rng.integers(0, 4, 200))  # class 4 never predicted
        confusion = confusion_counts(torch.from_numpy(target), torch.from_numpy(predicted), 5).numpy()
        np.testing.assert_array_equal(confusion, confusion_matrix(target, predicted, labels=range(5)))
        assert np.isclose(macro_f1_from_confusion(confusion), f1_score(target, predicted, average="macro",
                                                                       zero_division=0))


def test_fold_report_supports_sum_to_fold_size():
    target = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 2, 0])
    report = fold_report(target, predicted, ["a", "b", "c"])
    assert report["per_class"]["support"].sum() == len(target) == report["confusion"].sum()
    assert report["accuracy"] == 4 / 6
    assert np.isclose(report["per_class"]["f1"].mean(), report["macro_f1"])
    assert np.isnan(report["macro_f1_min50"])  # no class has 50 test targets


def test_bias_offsets_recover_a_shifted_minority_class():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 3, 3000)
    logits = np.eye(3)[target] * 2.0 + rng.normal(0, 1.0, (3000, 3))
    logits[:, 2] -= 3.0  # the model under-calls class 2
    before = f1_score(target, logits.argmax(1), average="macro")
    offsets = fit_bias_offsets(logits, target)
    after = f1_score(target, (logits + offsets).argmax(1), average="macro")
    assert after > before + 0.1 and offsets[2] - offsets[:2].mean() > 1.5
