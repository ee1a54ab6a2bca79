#!/usr/bin/env python
"""Engine speed: `nextpoi_lib.training.cross_validate` against a plain PyTorch loop, on synthetic windows.

Both run in this process on the same windows, folds and configuration (model class, loss, AdamW, schedule):

* plain: the loop most code bases start from -- a TensorDataset of dense [N, 9, 64] float features on the
  CPU, a shuffling DataLoader (a WeightedRandomSampler when the config asks for the class-balanced sampler),
  `.to(device)` of every batch, scikit-learn's f1_score on the validation split every epoch, a deep copy of the
  best state, folds one after another;
* engine: `cross_validate` with its default execution plan (or the variants named with --variants).

It prints one row per (case, variant): seconds per full cross-validation (median over --repeats, runs
interleaved so that load changes hit every variant alike), ratio plain / variant, mean test macro-F1 and
accuracy (selected epoch), peak host RSS of this process and its children, and peak device memory on CUDA; then
a memory check prints the RSS (and CUDA memory) at every epoch of an engine run (it must not grow with epochs).
It exits with status 1 when the engine's median test macro-F1 over folds is not close to the plain loop's.

    python benchmarks/engine_speed.py --size ci                 # ~1 minute on 2 CPU cores
    python benchmarks/engine_speed.py --size cpu --json out.json
    python benchmarks/engine_speed.py --size gpu --json gpu.json  # on a CUDA GPU; see benchmarks/README.md
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nextpoi_lib.config import ExperimentConfig, FoldConfig, updated  # noqa: E402
from nextpoi_lib.experiment import load_config  # noqa: E402
from nextpoi_lib.folds import FoldManifest, make_fold_manifest  # noqa: E402
from nextpoi_lib.heads import build_model  # noqa: E402
from nextpoi_lib.losses import build_loss  # noqa: E402
from nextpoi_lib.progress import Progress  # noqa: E402
from nextpoi_lib.training import cross_validate  # noqa: E402
from nextpoi_lib.training.loop import make_scheduler  # noqa: E402
from nextpoi_lib.devices import resolve_device  # noqa: E402
from nextpoi_lib.windows import WindowSet  # noqa: E402

CONFIGS = {"baseline": "parameters/baseline.yaml", "C": "parameters/C.yaml"}


@dataclass
class Case:
    config: str  # baseline or C
    windows: int
    plain: bool = True  # also run the plain loop
    epochs: int | None = None  # None: the size's epochs

    @property
    def name(self) -> str:
        return f"{self.config}-{self.windows}"


@dataclass
class Size:
    cases: list[Case]
    folds: int
    epochs: int
    repeats: int
    variants: list[str]
    plain_epochs: int | None = None  # plain loop on fewer epochs, its time scaled to the full run
    # Allowed |median over folds of test macro-F1, plain - engine|. The median, because with few epochs one
    # fold of either path may collapse to a single class under OneCycle's max_lr (seen at 3 epochs).
    tolerance: float = 0.03
    threads: int | None = None
    memory: tuple[int, int, int] = (1_000, 2, 7)  # memory check: windows, folds, epochs (engine only)


SIZES = {
    # Tiny: proves everything runs and agrees, in about a minute on 2 CPU cores.
    "ci": Size(cases=[Case("baseline", 2_000), Case("C", 2_000)], folds=2, epochs=2, repeats=1,
               variants=["plain", "engine"], tolerance=0.15),
    # The CPU target: 20,000 windows, the 4-layer Transformer, 4 folds x 3 epochs (4 folds: whole rounds of
    # jobs for 2 fold workers).
    "cpu": Size(cases=[Case("baseline", 20_000)], folds=4, epochs=3, repeats=3, variants=["plain", "engine"],
                memory=(4_000, 2, 9), tolerance=0.05),
    # The GPU targets (H100): 5 folds x 100 epochs; GRU C alone at 1M windows for 50 epochs. The plain loop runs
    # 10 epochs and its time is scaled x10 (its epochs all cost the same); the engine is also run for those 10
    # epochs to compare metrics like for like.
    "gpu": Size(cases=[Case("baseline", 12_700), Case("baseline", 96_000), Case("C", 12_700), Case("C", 96_000),
                       Case("C", 1_000_000, plain=False, epochs=50)],
                folds=5, epochs=100, repeats=1, variants=["plain", "engine"], plain_epochs=10,
                memory=(96_000, 2, 30)),
}
VARIANTS = {
    "plain": "plain PyTorch loop",
    "plain-1thread": "plain PyTorch loop, 1 intra-op thread",
    "engine": "engine, default execution plan",
    "engine-serial": "engine, folds one after another in this process",
    "engine-stacked": "engine, folds of a seed stacked (torch.vmap)",
    "engine-per-fold": "engine, stacking off",
}


# --------------------------------------------------------------------------------------------------
# Synthetic data


def synthetic_windows(n_windows: int, length: int = 9, dim: int = 64, n_classes: int = 7, n_pois: int = 5_000,
                      windows_per_user: int = 40, seed: int = 0) -> WindowSet:
    """Windows whose next category follows a Markov chain over the visits' categories (imbalanced classes);
    each POI's embedding is its category's prototype plus noise, so the task is learnable but not trivial.
    About 10% of the windows are shorter than `length` (right padding)."""
    rng = np.random.default_rng(seed)
    share = 0.7 ** np.arange(n_classes)
    share /= share.sum()
    poi_category = rng.choice(n_classes, n_pois, p=share)
    poi_category[:n_classes] = np.arange(n_classes)  # every class has a POI
    prototypes = rng.normal(size=(n_classes, dim)).astype(np.float32)
    table = (0.6 * prototypes[poi_category] + rng.normal(size=(n_pois, dim))).astype(np.float32)
    successor = rng.permutation(n_classes)
    transition = 0.4 * share[None, :] + 0.6 * np.eye(n_classes)[successor]
    cumulative = np.cumsum(transition / transition.sum(axis=1, keepdims=True), axis=1)
    categories = np.empty((n_windows, length + 1), np.int64)
    categories[:, 0] = rng.choice(n_classes, n_windows, p=share)
    for step in range(1, length + 1):
        u = rng.random(n_windows)
        categories[:, step] = np.minimum((u[:, None] > cumulative[categories[:, step - 1]]).sum(axis=1), n_classes - 1)
    by_class = [np.flatnonzero(poi_category == c) for c in range(n_classes)]
    pois = np.empty((n_windows, length + 1), np.int64)
    for c in range(n_classes):
        where = categories == c
        pois[where] = by_class[c][rng.integers(0, len(by_class[c]), where.sum())]
    observed_length = np.where(rng.random(n_windows) < 0.1, rng.integers(1, length, n_windows), length)
    positions = np.arange(length)
    mask = positions[None, :] < observed_length[:, None]
    rows = np.arange(n_windows)
    target = categories[rows, observed_length]
    hours = rng.uniform(0, 24, (n_windows, length)).astype(np.float32)
    zeros = np.zeros((n_windows, length), np.float32)
    users = np.array([f"u{u:07d}" for u in range(n_windows // windows_per_user + 1)])[rows // windows_per_user]
    return WindowSet(
        poi_index=np.where(mask, pois[:, :length], 0), mask=mask,
        category_index=np.where(mask, categories[:, :length], -1), hour=np.where(mask, hours, 0),
        weekday=np.where(mask, rng.integers(0, 7, (n_windows, length)), 0), gap_hours=zeros, latitude=zeros,
        longitude=zeros, target=target, target_hour=rng.uniform(0, 24, n_windows).astype(np.float32),
        target_weekday=rng.integers(0, 7, n_windows), users=users,
        classes=[f"class{c}" for c in range(n_classes)], embedding_table=table,
        report={"n_windows": n_windows, "synthetic": True})


def experiment_config(case: Case, folds: int, epochs: int, device: str) -> ExperimentConfig:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # baseline.yaml's learning_rate under OneCycle
        return load_config(ROOT / CONFIGS[case.config], overrides={
            "name": f"bench-{case.name}", "folds": {"n_splits": folds},
            "training": {"epochs": epochs, "seeds": [0], "device": device, "progress": False}})


# --------------------------------------------------------------------------------------------------
# The plain loop (the reference the engine is compared with)


def plain_cross_validation(config: ExperimentConfig, windows: WindowSet, manifest: FoldManifest,
                           progress=None) -> list[dict]:
    device = resolve_device(config.training.device)
    training, num_classes = config.training, len(windows.classes)
    autocast = bool(training.mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported())
    features = torch.from_numpy(windows.embedding_table[windows.poi_index])  # dense [N, L, D] on the CPU
    mask, target = torch.from_numpy(windows.mask), torch.from_numpy(windows.target)
    dim = features.shape[-1]

    def forward(model, x, m):
        category = torch.zeros(m.shape, dtype=torch.long, device=device)
        numeric = torch.zeros((*m.shape, 0), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return model(x, category, numeric, m).float()

    def predict(model, loader):
        model.eval()
        predicted = []
        with torch.no_grad():
            for x, m, _ in loader:
                predicted.append(forward(model, x.to(device), m.to(device)).argmax(dim=1).cpu())
        return torch.cat(predicted).numpy()

    results = []
    for seed in training.seeds:
        for fold in manifest.folds:
            started = time.perf_counter()
            torch.manual_seed(seed * 1009 + fold.fold)
            model = build_model(config.model, config.windows.features, dim, num_classes, windows.length, 0).to(device)
            criterion = build_loss(config.loss, windows.target[fold.train_index], num_classes).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=config.optimizer.learning_rate,
                                          weight_decay=config.optimizer.weight_decay)
            scheduler = make_scheduler(config, optimizer, math.ceil(len(fold.train_index) / training.batch_size))
            train = TensorDataset(features[fold.train_index], mask[fold.train_index], target[fold.train_index])
            if training.weighted_sampler:
                counts = np.bincount(windows.target[fold.train_index], minlength=num_classes)
                sampler = WeightedRandomSampler(1.0 / counts[windows.target[fold.train_index]], len(train),
                                                replacement=True)
                loader = DataLoader(train, batch_size=training.batch_size, sampler=sampler)
            else:
                loader = DataLoader(train, batch_size=training.batch_size, shuffle=True)
            val_index = fold.inner_val_index
            val_loader = DataLoader(TensorDataset(features[val_index], mask[val_index], target[val_index]),
                                    batch_size=training.batch_size * 4)
            test_loader = DataLoader(TensorDataset(features[fold.test_index], mask[fold.test_index],
                                                   target[fold.test_index]), batch_size=training.batch_size * 4)
            best_f1, best_state, best_epoch = -1.0, None, 0
            for epoch in range(1, training.epochs + 1):
                model.train()
                for x, m, y in loader:
                    x, m, y = x.to(device), m.to(device), y.to(device)
                    loss = criterion(forward(model, x, m), y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                val_f1 = f1_score(windows.target[val_index], predict(model, val_loader), average="macro",
                                  zero_division=0)
                if val_f1 > best_f1:
                    best_f1, best_state, best_epoch = val_f1, copy.deepcopy(model.state_dict()), epoch
                if progress is not None:
                    progress(f"  [plain seed {seed} fold {fold.fold + 1}] epoch {epoch}/{training.epochs} "
                             f"val macro-F1 {val_f1:.4f}")
            model.load_state_dict(best_state)
            predicted = predict(model, test_loader)
            results.append(fold_metrics(windows.target[fold.test_index], predicted, best_epoch,
                                        time.perf_counter() - started))
    return results


def fold_metrics(target: np.ndarray, predicted: np.ndarray, epoch: int, seconds: float) -> dict:
    return {"macro_f1": float(f1_score(target, predicted, average="macro", zero_division=0)),
            "accuracy": float(accuracy_score(target, predicted)), "selected_epoch": int(epoch),
            "seconds": round(seconds, 3)}


# --------------------------------------------------------------------------------------------------
# Measurement helpers


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(child) for child in handle.read().split()]
    except OSError:
        pass
    return found


def tree_rss_bytes() -> int:
    """Resident memory of this process and all its descendants (fold workers included)."""
    total, stack = 0, [os.getpid()]
    while stack:
        pid = stack.pop()
        total += _rss_kib(pid)
        stack += _children(pid)
    return total * 1024


class PeakSampler:
    """Samples the process tree's RSS every `interval` seconds in a thread; .peak after stop()."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self):
        self.peak = tree_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes())


class EpochMemory(Progress):
    """A silent Progress that records the process tree's RSS (and CUDA memory) at every per-epoch line."""

    EPOCH = re.compile(r"(\[[^\]]+\]) epoch\s+(\d+)/")

    def __init__(self, echo: bool = False):
        super().__init__(True)
        self.echo = echo
        self.readings: dict[str, list[tuple[int, int, int]]] = {}

    def __call__(self, message: str) -> None:
        if self.echo:
            print(message, flush=True)
        match = self.EPOCH.search(message)
        if match:
            cuda = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
            self.readings.setdefault(match.group(1), []).append((int(match.group(2)), tree_rss_bytes(), cuda))

    def drift(self) -> dict:
        """Largest growth of RSS / CUDA memory from a fold's second to its last epoch line (bytes); the
        first epoch is left out because allocator pools fill during it. None with fewer than 3 lines."""
        rss = [r[-1][1] - r[1][1] for r in self.readings.values() if len(r) > 2]
        cuda = [r[-1][2] - r[1][2] for r in self.readings.values() if len(r) > 2]
        return {"rss_drift_bytes": max(rss) if rss else None, "cuda_drift_bytes": max(cuda) if cuda else None,
                "epoch_readings": {label: [(e, rss, c) for e, rss, c in r] for label, r in self.readings.items()}}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU {model}, {cores} cores"


# --------------------------------------------------------------------------------------------------
# Runs


def run_variant(variant: str, config: ExperimentConfig, windows: WindowSet, manifest: FoldManifest,
                echo: bool) -> dict:
    config = copy.deepcopy(config)
    threads_before = torch.get_num_threads()
    if variant == "engine-serial":
        config = updated(config, training={"fold_workers": 1})
    elif variant == "engine-stacked":
        config = updated(config, training={"stack_folds": True})
    elif variant == "engine-per-fold":
        config = updated(config, training={"stack_folds": False})
    if variant == "plain-1thread":
        torch.set_num_threads(1)
    cuda = torch.cuda.is_available() and resolve_device(config.training.device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    memory = EpochMemory(echo)
    load_before = load_average()
    try:
        with PeakSampler() as sampler:
            started = time.perf_counter()
            if variant.startswith("plain"):
                folds = plain_cross_validation(config, windows, manifest, progress=memory)
                plan = {"mode": "plain"}
            else:
                result = cross_validate(config, windows, manifest, progress=memory)
                folds = [fold_metrics(f.test_target, f.predictions["selected"], f.selected_epoch, f.seconds)
                         for f in result.fold_results]
                plan = result.extra.get("engine", {})
            if cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(threads_before)
    return {"variant": variant, "seconds": seconds, "folds": folds, "plan": plan,
            "macro_f1": float(np.mean([f["macro_f1"] for f in folds])),
            "macro_f1_median": float(np.median([f["macro_f1"] for f in folds])),
            "accuracy": float(np.mean([f["accuracy"] for f in folds])),
            "peak_rss_bytes": sampler.peak,
            "peak_cuda_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            **memory.drift(), "load_average_before": load_before, "load_average_after": load_average(),
            "threads": torch.get_num_threads()}


def run_case(case: Case, size: Size, args) -> list[dict]:
    epochs = args.epochs or case.epochs or size.epochs
    folds = args.folds or size.folds
    plain_epochs = min(args.plain_epochs or size.plain_epochs or epochs, epochs)
    windows = synthetic_windows(case.windows)
    manifest = make_fold_manifest(windows.users, windows.target, FoldConfig(n_splits=folds), f"synthetic-{case.windows}")
    variants = [v for v in args.variants if case.plain or not v.startswith("plain")]
    # (variant, epochs): the plain loop may run fewer epochs; then the engine is also run at those epochs.
    runs = []
    for variant in variants:
        short = variant.startswith("plain") and plain_epochs < epochs
        runs.append((variant, plain_epochs if short else epochs))
        if short:
            runs += [(v, plain_epochs) for v in variants if not v.startswith("plain")]
    runs = list(dict.fromkeys(runs))
    print(f"\n== {case.name}: {case.windows:,} windows, {folds} folds, runs {runs}", flush=True)
    warm_up(case, windows, args)
    measured: dict[tuple[str, int], list[dict]] = {run: [] for run in runs}
    for repeat in range(size.repeats if args.repeats is None else args.repeats):
        for variant, run_epochs in runs:
            config = experiment_config(case, folds, run_epochs, args.device)
            outcome = run_variant(variant, config, windows, manifest, args.verbose)
            measured[(variant, run_epochs)].append(outcome)
            per_fold = " ".join(f"{f['macro_f1']:.3f}" for f in outcome["folds"])
            print(f"   repeat {repeat + 1} {variant:<15} {run_epochs:>3} epochs: {outcome['seconds']:8.1f} s  "
                  f"macro-F1 per fold {per_fold}  load "
                  f"{outcome['load_average_before']} -> {outcome['load_average_after']}  "
                  f"({outcome['plan'].get('mode')})", flush=True)
    rows = []
    for (variant, run_epochs), outcomes in measured.items():
        row = dict(outcomes[0])
        row.update(case=case.name, config=case.config, windows=case.windows, n_folds=folds, epochs=run_epochs,
                   seconds=statistics.median(o["seconds"] for o in outcomes),
                   seconds_all=[round(o["seconds"], 3) for o in outcomes],
                   peak_rss_bytes=max(o["peak_rss_bytes"] for o in outcomes),
                   load_averages=[o["load_average_before"] for o in outcomes])
        rows.append(row)
    # Full-run plain time extrapolated from its shorter run; ratios and metric checks.
    for row in rows:
        row["seconds_full"] = row["seconds"] * (epochs / row["epochs"]) if row["variant"].startswith("plain") \
            else row["seconds"]
        row["extrapolated"] = row["variant"].startswith("plain") and row["epochs"] < epochs
    plain = next((r for r in rows if r["variant"] == "plain"), None)
    for row in rows:
        if plain is None or row["variant"].startswith("plain"):
            row.update(ratio=None, ratio_same_epochs=None, metric_gap=None, similar=None)
            continue
        same = row["epochs"] == plain["epochs"]
        row["ratio_same_epochs"] = plain["seconds"] / row["seconds"] if same else None
        row["ratio"] = (plain["seconds_full"] / row["seconds"]) if row["epochs"] == epochs else row["ratio_same_epochs"]
        row["metric_gap"] = abs(row["macro_f1_median"] - plain["macro_f1_median"]) if same else None
        row["similar"] = bool(row["metric_gap"] <= size.tolerance) if same else None
    return rows


def warm_up(case: Case, windows: WindowSet, args) -> None:
    """One untimed epoch of the plain loop and the in-process engine on a slice (lazy initialisation of
    kernels and allocators is then not charged to whichever variant runs first)."""
    small = windows.subset(np.arange(min(len(windows), 1_500)))
    manifest = make_fold_manifest(small.users, small.target, FoldConfig(n_splits=2), "warm-up")
    config = updated(experiment_config(case, 2, 1, args.device), training={"fold_workers": 1})
    plain_cross_validation(config, small, manifest)
    cross_validate(config, small, manifest)


def memory_check(case: Case, size: Size, args) -> dict:
    """The engine (default plan) for several epochs: process-tree RSS (and CUDA memory) at each epoch line."""
    n_windows, folds, epochs = size.memory
    windows = synthetic_windows(n_windows, seed=1)
    manifest = make_fold_manifest(windows.users, windows.target, FoldConfig(n_splits=folds), "memory")
    outcome = run_variant("engine", experiment_config(case, folds, epochs, args.device), windows, manifest,
                          args.verbose)
    readings = outcome["epoch_readings"]
    print(f"\n== memory check ({case.config}, {n_windows:,} windows, {folds} folds x {epochs} epochs, "
          f"{outcome['plan'].get('mode')}): RSS MiB at each epoch line")
    for label, values in readings.items():
        print(f"   {label}: " + " ".join(f"e{e}:{rss / 2**20:.0f}" for e, rss, _ in values)
              + ("  CUDA MiB " + " ".join(f"{c / 2**20:.0f}" for _, _, c in values) if outcome["peak_cuda_bytes"]
                 else ""))
    print(f"   growth from the second to the last epoch line: RSS {_mib(outcome['rss_drift_bytes'])} MiB"
          + (f", CUDA {_mib(outcome['cuda_drift_bytes'])} MiB" if outcome["peak_cuda_bytes"] else ""))
    return {"case": case.config, "windows": n_windows, "folds": folds, "epochs": epochs,
            "rss_drift_bytes": outcome["rss_drift_bytes"], "cuda_drift_bytes": outcome["cuda_drift_bytes"],
            "epoch_readings": readings, "plan": outcome["plan"]}


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def format_table(rows: list[dict]) -> str:
    header = ["case", "windows", "variant", "folds x epochs", "s / CV", "plain/variant", "macro-F1 mean (median)",
              "accuracy", "peak RSS MiB", "peak GPU MiB"]
    lines = []
    for r in rows:
        seconds = f"{r['seconds']:.1f}"
        if r.get("extrapolated"):
            seconds = f"{r['seconds_full']:.1f} (x{r['seconds_full'] / r['seconds']:.0f} of {r['epochs']} ep)"
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}x"
        lines.append([r["case"].split("-")[0], f"{r['windows']:,}", r["variant"], f"{r['n_folds']} x {r['epochs']}",
                      seconds, ratio, f"{r['macro_f1']:.4f} ({r['macro_f1_median']:.4f})", f"{r['accuracy']:.4f}",
                      _mib(r["peak_rss_bytes"]), _mib(r["peak_cuda_bytes"])])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="ci")
    parser.add_argument("--json", help="write all measurements to this file")
    parser.add_argument("--cases", help="comma-separated case names to run, e.g. baseline-12700,C-1000000")
    parser.add_argument("--variants", help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, help="runs per variant (median reported)")
    parser.add_argument("--epochs", type=int, help="override the size's epochs")
    parser.add_argument("--folds", type=int, help="override the size's folds")
    parser.add_argument("--plain-epochs", type=int, help="run the plain loop for fewer epochs and scale its time")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of this process (default: PyTorch's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--verbose", action="store_true", help="print the engine's progress lines")
    parser.add_argument("--no-memory-check", action="store_true", help="skip the RSS-over-epochs check")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    args.variants = args.variants.split(",") if args.variants else size.variants
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if args.threads or size.threads:
        torch.set_num_threads(args.threads or size.threads)
    cases = size.cases
    if args.cases:
        wanted = args.cases.split(",")
        cases = [c for c in cases if c.name in wanted]
        if not cases:
            parser.error(f"no case among {[c.name for c in size.cases]} matches --cases {args.cases}")
    device = resolve_device(args.device)
    started_at = dt.datetime.now().astimezone()
    header = {"size": args.size, "date": started_at.isoformat(timespec="seconds"),
              "device": device_description(device), "torch": torch.__version__, "python": platform.python_version(),
              "threads": torch.get_num_threads(), "load_average_start": load_average(),
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    print(f"engine_speed --size {args.size}  {header['date']}\ndevice: {header['device']}  torch {header['torch']}  "
          f"threads {header['threads']}  load average {header['load_average_start']}", flush=True)
    rows = []
    for case in cases:
        rows += run_case(case, size, args)
    memory = None if args.no_memory_check else memory_check(cases[0], size, args)
    header["load_average_end"] = load_average()
    table = format_table(rows)
    print(f"\n{table}\n")
    checks = [r for r in rows if r.get("similar") is not None]
    failed = [r for r in checks if not r["similar"]]
    for r in checks:
        print(f"metrics {r['case']} {r['variant']}: |median macro-F1 plain - engine| = {r['metric_gap']:.4f} "
              f"({'ok' if r['similar'] else 'NOT similar'}, tolerance {size.tolerance})")
    print(f"load average at the end: {header['load_average_end']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({**header, "tolerance": size.tolerance, "rows": rows, "table": table, "memory_check": memory},
                                              indent=2, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
