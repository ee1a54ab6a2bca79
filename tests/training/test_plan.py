"""Which execution mode a run gets (training.plan): defaults per device, fallbacks for heads and settings."""

import pytest
import torch

from nextpoi_lib.config import updated
from nextpoi_lib.training.plan import execution_plan
from window_fixtures import make_config, manifest_for, random_windows


def test_execution_plan_defaults_and_fallbacks():
    windows = random_windows()
    manifest = manifest_for(windows)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    plan = execution_plan(make_config("transformer"), cuda, manifest)
    assert plan.stack_folds and plan.fold_workers == 1  # stacked by default on CUDA
    assert not execution_plan(make_config("transformer"), cpu, manifest).stack_folds  # off by default on CPU
    for head in ("gru", "lstm", "hybrid"):  # no vmap batching rule for RNN kernels: one fold after another
        config = updated(make_config(head), training={"stack_folds": True})
        plan = execution_plan(config, cuda, manifest)
        assert not plan.stack_folds and "ignored" in plan.notes[0]
    config = updated(make_config("transformer"), training={"stack_folds": True})
    assert execution_plan(config, cpu, manifest).stack_folds
    config = updated(config, training={"stack_folds": "yes"})
    with pytest.raises(ValueError, match="stack_folds"):
        execution_plan(config, cpu, manifest)
    # fold workers: only for big enough CPU runs (tiny ones start no processes), never on CUDA
    assert execution_plan(make_config("gru"), cpu, manifest).fold_workers == 1
    config = updated(make_config("gru"), training={"fold_workers": 2})
    assert execution_plan(config, cpu, manifest).fold_workers == 2
    assert execution_plan(config, cuda, manifest).fold_workers == 1
