import numpy as np
import pandas as pd
import pytest

from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.training import cross_validate
from synthetic import synthetic_config


def test_gru_learns_a_deterministic_cycle(tmp_path):
    config = synthetic_config(tmp_path)
    prepared = prepare_data(config)
    result = cross_validate(config, prepared.windows, prepared.fold_manifest)
    for fold in result.fold_results:
        accuracy = (fold.predictions["selected"] == fold.test_target).mean()
        assert accuracy > 0.95, accuracy


def test_selected_epoch_is_the_best_inner_validation_epoch(tmp_path):
    config = synthetic_config(tmp_path, training={"epochs": 6}, optimizer={"learning_rate": 0.003})
    prepared = prepare_data(config)
    result = cross_validate(config, prepared.windows, prepared.fold_manifest)
    for fold in result.fold_results:
        curve = pd.DataFrame(fold.curves)
        # first epoch reaching the maximum of the validation curve (strictly-better rule)
        assert fold.selected_epoch == int(curve.loc[curve.val_macro_f1.idxmax(), "epoch"])
        assert fold.last_epoch == 6 and len(curve) == 6


@pytest.mark.parametrize("model", ["transformer", "hybrid", "lstm"])
def test_same_seed_same_metrics_on_cpu(tmp_path, model):
    config = synthetic_config(tmp_path, model={"name": model, "num_heads": 2, "model_dim": 16},
                              windows={"features": ["embedding", "category", "time", "coordinates"]},
                              training={"epochs": 2, "seeds": [3]})
    prepared = prepare_data(config)
    first = cross_validate(config, prepared.windows, prepared.fold_manifest)
    second = cross_validate(config, prepared.windows, prepared.fold_manifest)
    for a, b in zip(first.fold_results, second.fold_results):
        np.testing.assert_array_equal(a.predictions["selected"], b.predictions["selected"])
        assert pd.DataFrame(a.curves).equals(pd.DataFrame(b.curves))


def test_weighted_sampler_and_early_stopping(tmp_path):
    config = synthetic_config(tmp_path, training={"weighted_sampler": True, "early_stopping_patience": 2,
                                                  "epochs": 30})
    prepared = prepare_data(config)
    result = cross_validate(config, prepared.windows, prepared.fold_manifest)
    for fold in result.fold_results:
        assert fold.last_epoch <= fold.selected_epoch + 2


@pytest.mark.parametrize("stack_folds", [False, True])
def test_non_finite_loss_stops_training_naming_seed_fold_epoch_and_the_fix(tmp_path, stack_folds):
    from nextpoi_lib.training.loop import TrainingDiverged

    config = synthetic_config(tmp_path, model={"name": "transformer", "num_heads": 2, "model_dim": 16},
                              scheduler={"name": "onecycle", "max_lr": 1.0e6},
                              training={"epochs": 3, "seeds": [4], "stack_folds": stack_folds})
    prepared = prepare_data(config)
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at seed 4, fold 0, epoch 1 .*lower "
                                               r"scheduler.max_lr \(now 1e\+06\)"):
        cross_validate(config, prepared.windows, prepared.fold_manifest)


def test_non_finite_loss_under_a_constant_rate_names_the_learning_rate(tmp_path):
    from nextpoi_lib.training.loop import check_finite_losses

    config = synthetic_config(tmp_path)
    check_finite_losses(config, 0, 1, 2, 3.5, 1.0, 0.02)  # finite: nothing happens
    with pytest.raises(ValueError, match=r"inner-validation loss is inf at seed 0, fold 1, epoch 2.*"
                                         r"optimizer.learning_rate \(now 0.02\), e.g. to 0.002"):
        check_finite_losses(config, 0, 1, 2, 3.5, float("inf"), 0.02)
