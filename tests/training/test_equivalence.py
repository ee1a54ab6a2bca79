"""The training package's fast paths compute the same function as the straightforward one.

* batches gathered from POI indices (WindowTensors) + the training forward == dense features built
  independently with numpy + a plain forward, for every head and several feature sets (logits, gradients);
* stacked folds (torch.vmap over stacked parameters) == one model per fold (logits, gradients, the AdamW
  update, whole training runs with dropout off);
* fold workers == folds trained one after another; the same seed gives the same metrics twice;
* a dataset that does not fit on the device falls back to host-resident batches;
* no host synchronisation per training step;
* benchmarks/engine_speed.py --size ci runs and its engine and plain metrics are close.

Which mode a run uses is tested in test_plan.py.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nextpoi_lib.config import updated
from nextpoi_lib.heads import MODEL_REGISTRY, build_model
from nextpoi_lib.losses import build_loss
from nextpoi_lib.progress import Progress
from nextpoi_lib.training import cross_validate, tensors
from nextpoi_lib.training.loop import train_fold
from nextpoi_lib.training.stacked import (FoldView, ParameterLayout, StackedAdamW, make_stacked_forward,
                                          train_folds_stacked)
from nextpoi_lib.training.tensors import WindowTensors, storage_device_for
from nextpoi_lib.windows import WindowSet
from window_fixtures import CLASSES, FEATURE_SETS, LENGTH, MODELS, make_config, manifest_for, random_windows

ROOT = Path(__file__).resolve().parents[2]
TRAINING_PACKAGE = Path(tensors.__file__).resolve().parent

# --------------------------------------------------------------------------------------------------
# The straightforward path: dense features built with numpy, a plain forward


def dense_inputs(windows: WindowSet, features, target_time: bool) -> tuple[np.ndarray, np.ndarray]:
    """[N, L, D] embeddings and [N, L, K] numeric features, computed here independently of the library."""
    embedded = windows.embedding_table[windows.poi_index] if "embedding" in features else None
    columns = []
    if "time" in features:
        hour = windows.hour.astype(np.float64) * (2 * np.pi / 24)
        day = windows.weekday.astype(np.float64) * (2 * np.pi / 7)
        columns += [np.sin(hour), np.cos(hour), np.sin(day), np.cos(day),
                    np.log1p(np.clip(windows.gap_hours, 0, None)) / 5]
    if "coordinates" in features:
        for values in (windows.latitude, windows.longitude):
            seen = values[windows.mask].astype(np.float64)
            columns.append((values - seen.mean()) / (seen.std() + 1e-6))
    if target_time:
        hour = windows.target_hour.astype(np.float64) * (2 * np.pi / 24)
        day = windows.target_weekday.astype(np.float64) * (2 * np.pi / 7)
        columns += [np.repeat(v[:, None], LENGTH, axis=1) for v in (np.sin(hour), np.cos(hour), np.sin(day),
                                                                    np.cos(day))]
    numeric = np.zeros((len(windows), LENGTH, len(columns)), np.float32)
    for i, column in enumerate(columns):
        numeric[..., i] = np.where(windows.mask, column, 0.0)
    return embedded, numeric


def plain_forward(model, embedded, category, numeric, mask):
    parts = []
    if embedded is not None:
        parts.append(torch.from_numpy(np.ascontiguousarray(embedded)))
    if model.encoder.category is not None:
        parts.append(model.encoder.category(torch.from_numpy(np.where(category < 0, CLASSES, category))))
    if numeric.shape[-1]:
        parts.append(torch.from_numpy(numeric))
    return model.head(torch.cat(parts, dim=-1), torch.from_numpy(mask))


def model_forward(model, batch):
    return model(batch["embedded"], batch["category"], batch["numeric"], batch["mask"])


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_close(a, b, tolerance=2e-5):
    torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("features,target_time", FEATURE_SETS, ids=lambda v: "+".join(v) if isinstance(v, list) else str(v))
@pytest.mark.parametrize("head", sorted(MODEL_REGISTRY))
def test_gathered_batches_and_model_forward_equal_dense_features_and_plain_forward(head, features, target_time):
    assert set(MODELS) == set(MODEL_REGISTRY), "add the new head to MODELS"
    windows = random_windows()
    config = make_config(head, features, target_time)
    data = WindowTensors(windows, config, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(config.model, features, data.embedding_dim, CLASSES, LENGTH, data.numeric_dim)
    reference = copy.deepcopy(model)
    embedded, numeric = dense_inputs(windows, features, target_time)
    assert numeric.shape[-1] == data.numeric_dim
    index = np.random.default_rng(1).permutation(len(windows))[:48]
    batch = data.batch(torch.from_numpy(index))
    dense = (None if embedded is None else embedded[index], windows.category_index[index], numeric[index],
             windows.mask[index])
    target = torch.from_numpy(windows.target[index])
    criterion = build_loss(config.loss, windows.target, CLASSES)
    for training in (True, False):
        model.train(training)
        reference.train(training)
        model.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same dropout masks in both (the encoder draws no random numbers)
        logits = model_forward(model, batch)
        torch.manual_seed(7)
        expected = plain_forward(reference, *dense)
        assert_close(logits, expected)
        criterion(logits, batch["target"]).backward()
        criterion(expected, target).backward()
        got, want = gradients(model), gradients(reference)
        assert got.keys() == want.keys() and len(got) == len(list(model.parameters()))
        for name in want:
            assert_close(got[name], want[name])


# --------------------------------------------------------------------------------------------------
# Stacked folds


def stacked_models(config, data, seeds=(0, 1, 2)):
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(config.model, config.windows.features, data.embedding_dim, CLASSES, LENGTH,
                                  data.numeric_dim))
    return models


@pytest.mark.parametrize("features,target_time", FEATURE_SETS, ids=lambda v: "+".join(v) if isinstance(v, list) else str(v))
def test_stacked_forward_and_gradients_equal_one_model_per_fold(features, target_time):
    windows = random_windows()
    config = make_config("transformer", features, target_time, dropout=0.0)
    data = WindowTensors(windows, config, torch.device("cpu"))
    models = stacked_models(config, data)
    template = copy.deepcopy(models[0])
    layout = ParameterLayout(template)
    flat = torch.stack([layout.flatten(m) for m in models]).requires_grad_(True)
    forward = make_stacked_forward(template, layout)
    rng = np.random.default_rng(2)
    index = torch.from_numpy(np.stack([rng.permutation(len(windows))[:40] for _ in models]))
    batch = data.batch(index.reshape(-1))
    batch = {name: t.view(len(models), 40, *t.shape[1:]) for name, t in batch.items()}
    criterion = build_loss(config.loss, windows.target, CLASSES)
    # Training mode (the only mode the stacked forward runs in; dropout is off so that masks play no role).
    template.train()
    logits = forward(flat, batch["embedded"], batch["category"], batch["numeric"], batch["mask"])
    torch.stack([criterion(logits[k], batch["target"][k]) for k in range(len(models))]).sum().backward()
    for columns in layout.no_grad_slices:  # as train_folds_stacked does (vmap's embedding backward ignores padding_idx)
        flat.grad[:, columns] = 0.0
    assert bool(layout.no_grad_slices) == ("category" in features)
    for k, model in enumerate(models):
        model.train()
        one = {name: t[k] for name, t in batch.items()}
        expected = model_forward(model, one)
        assert_close(logits[k], expected)
        criterion(expected, one["target"]).backward()
        assert_close(flat.grad[k], torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
        # Evaluation goes through FoldView: the template run with row k's weights, the module's own eval path.
        model.eval()
        view = FoldView(template, layout, flat[k].detach()).eval()
        with torch.no_grad():
            assert_close(view(*(one[n] for n in ("embedded", "category", "numeric", "mask"))),
                         model_forward(model, one))


def test_stacked_adamw_equals_torch_adamw_per_row():
    torch.manual_seed(0)
    rows, width, steps = 3, 50, 7
    start = torch.randn(rows, width)
    flat = start.clone().requires_grad_(True)
    optimizer = StackedAdamW(flat, weight_decay=0.01)
    references = [torch.nn.Parameter(start[k].clone()) for k in range(rows)]
    torch_optimizers = [torch.optim.AdamW([p], lr=1.0, weight_decay=0.01) for p in references]
    # per row and step: learning rate and beta1 (OneCycle cycles it), some rows inactive in some steps
    hyper = [[(1e-2 * (1 + k) / (1 + s), 0.85 + 0.01 * s, 0.999) for s in range(steps)] for k in range(rows)]
    active = [[True] * steps, [True, True, False, False, True, True, True], [s % 2 == 0 for s in range(steps)]]
    used = [0] * rows
    for step in range(steps):
        grads = torch.randn(rows, width)
        step_hyper = []
        for k in range(rows):
            if active[k][step]:
                lr, beta1, beta2 = hyper[k][used[k]]
                step_hyper.append((lr, beta1, beta2))
                torch_optimizers[k].param_groups[0].update(lr=lr, betas=(beta1, beta2))
                references[k].grad = grads[k].clone()
                torch_optimizers[k].step()
                used[k] += 1
            else:
                step_hyper.append(None)
        flat.grad = grads.clone()
        optimizer.step(torch.tensor(optimizer.coefficients(step_hyper), dtype=torch.float32))
    for k in range(rows):
        torch.testing.assert_close(flat.detach()[k], references[k].detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("training", [
    {},
    {"weighted_sampler": True, "batch_size": 24},
    {"early_stopping_patience": 1, "epochs": 5},
    {"bias_calibration": True, "batch_size": 128},  # a single, ragged batch per epoch
], ids=["onecycle", "weighted-sampler", "early-stopping", "one-batch"])
def test_stacked_training_equals_per_fold_training_without_dropout(training):
    windows = random_windows(n=240)
    sections = {"training": training}
    if training.get("weighted_sampler"):
        sections["loss"] = {"class_weights": "none"}
    config = make_config("transformer", ["embedding", "category", "time"], dropout=0.0, **sections)
    manifest = manifest_for(windows)
    assert len({len(f.train_index) % config.training.batch_size for f in manifest.folds}) > 1  # ragged, unequal
    data = WindowTensors(windows, config, torch.device("cpu"))
    quiet = Progress(False)
    labels = [f"[fold {f.fold}]" for f in manifest.folds]
    stacked = train_folds_stacked(config, data, windows, manifest.folds, 0, quiet, labels)
    for fold, result in zip(manifest.folds, stacked):
        reference = train_fold(config, data, windows, fold, 0, quiet, f"[fold {fold.fold}]")
        assert (result.selected_epoch, result.last_epoch) == (reference.selected_epoch, reference.last_epoch)
        got, want = pd.DataFrame(result.curves), pd.DataFrame(reference.curves)
        assert list(got.columns) == list(want.columns) and len(got) == len(want)
        np.testing.assert_allclose(got.to_numpy(float), want.to_numpy(float), rtol=1e-4, atol=1e-5)
        assert result.predictions.keys() == reference.predictions.keys()
        for selection in reference.predictions:
            np.testing.assert_array_equal(result.predictions[selection], reference.predictions[selection])
        np.testing.assert_allclose(result.attention, reference.attention, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stacked_training_equals_per_fold_training_on_cuda():
    windows = random_windows(n=240)
    config = make_config("transformer", ["embedding", "category", "time"], dropout=0.0,
                         training={"device": "cuda", "mixed_precision": False})
    manifest = manifest_for(windows)
    data = WindowTensors(windows, config, torch.device("cuda"))
    quiet = Progress(False)
    stacked = train_folds_stacked(config, data, windows, manifest.folds, 0, quiet, ["a", "b", "c"])
    for fold, result in zip(manifest.folds, stacked):
        reference = train_fold(config, data, windows, fold, 0, quiet, "x")
        np.testing.assert_allclose(pd.DataFrame(result.curves).to_numpy(float),
                                   pd.DataFrame(reference.curves).to_numpy(float), rtol=1e-3, atol=1e-4)
        agreement = (result.predictions["selected"] == reference.predictions["selected"]).mean()
        assert agreement >= 0.95, agreement
    # with bf16 autocast (the default on GPUs that support it) the stacked path runs and learns
    config = make_config("transformer", ["embedding", "category", "time"], training={"device": "cuda"})
    result = cross_validate(config, windows, manifest)
    assert result.extra["engine"]["mode"] == "stacked_folds"
    assert all(np.isfinite(pd.DataFrame(f.curves).train_loss).all() for f in result.fold_results)


# --------------------------------------------------------------------------------------------------
# Determinism and fold workers


def assert_same_results(first, second):
    assert len(first.fold_results) == len(second.fold_results)
    for a, b in zip(first.fold_results, second.fold_results):
        assert (a.seed, a.fold, a.selected_epoch, a.last_epoch) == (b.seed, b.fold, b.selected_epoch, b.last_epoch)
        for selection in a.predictions:
            np.testing.assert_array_equal(a.predictions[selection], b.predictions[selection])
        assert pd.DataFrame(a.curves).equals(pd.DataFrame(b.curves))


@pytest.mark.parametrize("mode", ["per_fold", "stacked_folds"])
def test_same_seed_gives_identical_metrics_twice_on_cpu(mode):
    windows = random_windows(n=200)
    config = make_config("transformer", ["embedding", "category", "time", "coordinates"],
                         training={"seeds": [3, 4], "epochs": 2})
    config = updated(config, training={"stack_folds": mode == "stacked_folds"})
    manifest = manifest_for(windows)
    first = cross_validate(config, windows, manifest)
    second = cross_validate(config, windows, manifest)
    assert first.extra["engine"]["mode"] == mode
    assert_same_results(first, second)


def test_fold_workers_give_the_same_results_as_folds_one_after_another():
    windows = random_windows(n=200)
    config = make_config("gru", ["embedding", "time"], training={"seeds": [0, 1], "epochs": 2,
                                                                  "bias_calibration": True})
    manifest = manifest_for(windows)
    config = updated(config, training={"fold_workers": 2})
    lines = []
    parallel = cross_validate(config, windows, manifest, progress=lines.append)
    assert parallel.extra["engine"]["mode"] == "fold_workers" and parallel.extra["engine"]["threads_per_worker"] >= 1
    assert any("worker processes" in line for line in lines) and sum("done in" in line for line in lines) == 6
    again = cross_validate(config, windows, manifest, progress=Progress(False))
    assert_same_results(parallel, again)
    # the workers' thread count, in this process, folds one after another: the very same numbers
    config = updated(config, training={"fold_workers": 1})
    threads = torch.get_num_threads()
    torch.set_num_threads(parallel.extra["engine"]["threads_per_worker"])
    try:
        serial = cross_validate(config, windows, manifest)
    finally:
        torch.set_num_threads(threads)
    assert serial.extra["engine"]["mode"] == "per_fold"
    assert_same_results(parallel, serial)


# --------------------------------------------------------------------------------------------------
# Host fallback


def test_storage_device_decision():
    cuda = torch.device("cuda")
    assert storage_device_for(10, cuda, 100) == (cuda, None)
    device, message = storage_device_for(80, cuda, 100)
    assert device == torch.device("cpu") and "keeping them in host memory" in message
    assert storage_device_for(10**12, torch.device("cpu"), None) == (torch.device("cpu"), None)


def test_windows_that_do_not_fit_fall_back_to_host_batches(monkeypatch):
    windows = random_windows()
    config = make_config("transformer", ["embedding", "category", "time"], training={"epochs": 1})
    manifest = manifest_for(windows)
    reference = cross_validate(config, windows, manifest)
    resident = WindowTensors(windows, config, torch.device("cpu"))
    monkeypatch.setattr(tensors, "device_free_memory", lambda device: 1024)  # a device with 1 KiB free
    messages = []
    data = WindowTensors(windows, config, torch.device("cpu"), log=messages.append)
    assert data.host_resident and not resident.host_resident
    assert len(messages) == 1 and "keeping them in host memory" in messages[0]
    index = torch.arange(0, len(windows), 3)
    for name, value in resident.batch(index).items():
        assert torch.equal(data.batch(index)[name], value)
    lines = []
    fallback = cross_validate(config, windows, manifest, progress=lines.append)
    assert any("keeping them in host memory" in line for line in lines)
    assert_same_results(reference, fallback)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_host_fallback_on_cuda(monkeypatch):
    windows = random_windows()
    config = make_config("transformer", training={"epochs": 1, "device": "cuda"})
    monkeypatch.setattr(tensors, "device_free_memory", lambda device: 1024)
    data = WindowTensors(windows, config, torch.device("cuda"), log=lambda message: None)
    assert data.storage_device.type == "cpu" and data.tensors["poi_index"].is_pinned()
    batch = data.batch(torch.arange(10, device="cuda"))
    assert all(t.device.type == "cuda" for t in batch.values())
    cross_validate(config, windows, manifest_for(windows))


# --------------------------------------------------------------------------------------------------
# No host synchronisation per step


SYNCING = ("cpu", "item", "tolist", "numpy", "__bool__", "__float__", "__int__")


def count_training_syncs(monkeypatch, run) -> int:
    """Calls of tensor -> host conversions made by the training package's own modules while `run()` executes."""
    calls = []
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, _original=original, **kwargs):
            if Path(sys._getframe(1).f_code.co_filename).resolve().parent == TRAINING_PACKAGE:
                calls.append(1)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    run()
    monkeypatch.undo()
    return len(calls)


@pytest.mark.parametrize("stacked", [False, True], ids=["per-fold", "stacked"])
def test_host_synchronisations_do_not_grow_with_steps(monkeypatch, stacked):
    windows = random_windows(n=240)
    manifest = manifest_for(windows)
    counts = []
    for batch_size in (8, 128):  # ~20 steps per epoch vs 1
        config = make_config("transformer", training={"batch_size": batch_size, "epochs": 2})
        data = WindowTensors(windows, config, torch.device("cpu"))
        quiet = Progress(False)
        if stacked:
            run = lambda: train_folds_stacked(config, data, windows, manifest.folds, 0, quiet, ["a", "b", "c"])
        else:
            run = lambda: train_fold(config, data, windows, manifest.folds[0], 0, quiet, "a")
        counts.append(count_training_syncs(monkeypatch, run))
    assert counts[0] == counts[1] and counts[0] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("stacked", [False, True], ids=["per-fold", "stacked"])
def test_cuda_synchronisations_do_not_grow_with_steps(stacked):
    """On a GPU, everything that waits for the device counts (PyTorch internals included)."""
    windows = random_windows(n=240)
    manifest = manifest_for(windows)
    counts = []
    for batch_size in (8, 128):
        config = make_config("transformer", training={"batch_size": batch_size, "epochs": 2, "device": "cuda"})
        data = WindowTensors(windows, config, torch.device("cuda"))
        quiet = Progress(False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                if stacked:
                    train_folds_stacked(config, data, windows, manifest.folds, 0, quiet, ["a", "b", "c"])
                else:
                    train_fold(config, data, windows, manifest.folds[0], 0, quiet, "a")
            finally:
                torch.cuda.set_sync_debug_mode(0)
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], counts


# --------------------------------------------------------------------------------------------------
# The benchmark, CI-sized (< 1 minute)


def test_benchmark_ci_size_runs_and_engine_metrics_match_the_plain_loop(tmp_path):
    output = tmp_path / "ci.json"
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "engine_speed.py"), "--size", "ci",
                                "--threads", "1", "--json", str(output)], capture_output=True, text=True,
                               timeout=60, cwd=ROOT)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert time.perf_counter() - started < 60
    assert "| case" in completed.stdout and "plain/variant" in completed.stdout
    result = json.loads(output.read_text())
    assert result["size"] == "ci" and result["device"] and result["date"]
    rows = {(r["case"], r["variant"]): r for r in result["rows"]}
    assert {case for case, _ in rows} == {"baseline-2000", "C-2000"}
    for case in ("baseline-2000", "C-2000"):
        plain, fast = rows[(case, "plain")], rows[(case, "engine")]
        assert fast["similar"] and abs(fast["macro_f1"] - plain["macro_f1"]) <= result["tolerance"]
        assert fast["seconds"] > 0 and plain["seconds"] > 0 and fast["peak_rss_bytes"] > 0
    assert result["memory_check"]["epoch_readings"]
