import math

import numpy as np
import pytest
import torch

from nextpoi_lib.config import LossConfig
from nextpoi_lib.losses import (CrossEntropy, FocalLoss, LogitAdjustedLoss, balanced_class_weights, build_loss,
                                class_priors)

LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
TARGET = torch.tensor([0, 2])


def softmax_row(row):
    exp = [math.exp(v) for v in row]
    return [v / sum(exp) for v in exp]


def test_balanced_weights_by_hand():
    targets = np.array([0, 0, 0, 1])
    # n / (k * count): 4 / (2 * 3) and 4 / (2 * 1); class 2 absent -> 0
    np.testing.assert_allclose(balanced_class_weights(targets, 3), [4 / 6, 2.0, 0.0], rtol=1e-6)


def test_focal_loss_by_hand():
    p0 = softmax_row([2.0, 0.0, -1.0])[0]
    p1 = softmax_row([0.5, 0.5, 0.0])[2]
    gamma = 2.0
    expected = (-(1 - p0) ** gamma * math.log(p0) - (1 - p1) ** gamma * math.log(p1)) / 2
    assert FocalLoss(gamma)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-5)
    alpha = torch.tensor([0.25, 1.0, 3.0])
    expected_alpha = (-0.25 * (1 - p0) ** gamma * math.log(p0) - 3.0 * (1 - p1) ** gamma * math.log(p1)) / 2
    assert FocalLoss(gamma, alpha)(LOGITS, TARGET).item() == pytest.approx(expected_alpha, rel=1e-5)
    # gamma 0 without alpha is plain cross-entropy
    assert FocalLoss(0.0)(LOGITS, TARGET).item() == pytest.approx(
        torch.nn.functional.cross_entropy(LOGITS, TARGET).item(), rel=1e-6)


def test_logit_adjusted_loss_by_hand():
    priors = torch.tensor([0.5, 0.3, 0.2])
    tau = 1.5
    adjusted = [[v + tau * math.log(p) for v, p in zip(row, priors.tolist())] for row in LOGITS.tolist()]
    expected = -(math.log(softmax_row(adjusted[0])[0]) + math.log(softmax_row(adjusted[1])[2])) / 2
    assert LogitAdjustedLoss(priors, tau)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-5)


def test_weighted_smoothed_cross_entropy_matches_torch():
    weight = torch.tensor([1.0, 2.0, 0.5])
    ours = CrossEntropy(weight, 0.05)(LOGITS, TARGET)
    reference = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.05)(LOGITS, TARGET)
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)


def test_build_loss_uses_training_fold_statistics():
    targets = np.array([0, 0, 0, 1, 2, 2])
    loss = build_loss(LossConfig(name="cross_entropy", class_weights="balanced"), targets, 3)
    np.testing.assert_allclose(loss.weight.numpy(), balanced_class_weights(targets, 3))
    adjusted = build_loss(LossConfig(name="logit_adjusted", logit_adjustment_tau=1.0), targets, 3)
    np.testing.assert_allclose(adjusted.adjustment.numpy(), np.log(class_priors(targets, 3)), rtol=1e-6)
    focal = build_loss(LossConfig(name="focal", focal_alpha="balanced"), targets, 3)
    np.testing.assert_allclose(focal.alpha.numpy(), balanced_class_weights(targets, 3))
