"""Fake run folders that follow docs/run-folder.md, for tests that read runs.

`make_fake_run` writes a complete `outputs/<dataset>/<run-name>/` folder with internally consistent
numbers: for every seed × fold × selection the true and predicted labels are drawn first, and the
confusion counts, per-class precision/recall/F1, fold metrics and summary are all computed from those
labels with scikit-learn, so every file agrees with every other.

What depends on what, as in real runs:

* the data (`data_hash`), the fold manifest (`fold_manifest_hash`) and each fold's test labels depend
  only on the dataset, the classes, `n_folds` and `fold_seed` — two fake runs on the same dataset share
  folds and test sets, so they can be paired;
* the predictions depend on `rng_seed`, the seed, the fold, the selection and `quality` (the
  probability that a prediction is correct), so runs differ only in their predictions.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

MIN_SUPPORT = 50  # macro_f1_min50: macro-F1 over the classes with at least this many test windows


def _stable_int(*parts) -> int:
    """A seed derived from the parts, stable across processes (unlike hash())."""
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode()).hexdigest()
    return int(digest[:8], 16)


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _fold_manifest(dataset: str, n_folds: int, fold_seed: int, data_hash: str) -> dict:
    """Shaped like nextpoi_lib.folds.FoldManifest.to_json (user-grouped folds)."""
    rng = np.random.default_rng(_stable_int("users", dataset, n_folds, fold_seed))
    n_users = 12 * n_folds
    users = [f"u{i:03d}" for i in rng.permutation(n_users)]
    folds = []
    for k in range(n_folds):
        test_users = sorted(users[k::n_folds])
        rest = [u for u in users if u not in test_users]
        inner_val = sorted(rest[: max(1, round(len(rest) * 0.15))])
        folds.append({
            "fold": k,
            "n_train": int(rng.integers(800, 1200)),
            "n_inner_val": int(rng.integers(120, 200)),
            "n_test": int(rng.integers(150, 300)),
            "test_users": test_users,
            "inner_val_users": inner_val,
        })
    digest = _sha({"data": data_hash, "strategy": "user_grouped", "n_splits": n_folds, "seed": fold_seed,
                   "test": [f["test_users"] for f in folds], "inner": [f["inner_val_users"] for f in folds]})
    return {"strategy": "user_grouped", "n_splits": n_folds, "seed": fold_seed, "inner_val_fraction": 0.15,
            "hash": digest[:16], "folds": folds}


def _test_labels(dataset: str, classes: tuple, fold: dict, fold_seed: int) -> np.ndarray:
    """True class ids of one fold's test windows: imbalanced (class i ∝ 1/(i+1)), same for every run."""
    k = len(classes)
    rng = np.random.default_rng(_stable_int("labels", dataset, list(classes), fold["fold"], fold_seed))
    p = 1.0 / np.arange(1, k + 1)
    p /= p.sum()
    return rng.choice(k, size=fold["n_test"], p=p)


def _predict(y_true: np.ndarray, k: int, quality: float, rng: np.random.Generator) -> np.ndarray:
    """Correct with probability ≈ quality (varying a little per class), otherwise a uniformly wrong class."""
    per_class_quality = np.clip(quality + rng.normal(0, 0.05, size=k), 0.0, 1.0)
    correct = rng.random(len(y_true)) < per_class_quality[y_true]
    shift = rng.integers(1, k, size=len(y_true)) if k > 1 else np.zeros(len(y_true), dtype=int)
    return np.where(correct, y_true, (y_true + shift) % k)


def _metrics(y_true, y_pred, k: int):
    labels = list(range(k))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    big = [c for c in labels if support[c] >= MIN_SUPPORT]
    f1_min50 = (
        float(f1_score(y_true, y_pred, labels=big, average="macro", zero_division=0)) if big else float("nan")
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "macro_f1_min50": f1_min50,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "confusion": confusion_matrix(y_true, y_pred, labels=labels),
    }


def _curves(seed: int, fold: int, n_epochs: int, quality: float, rng: np.random.Generator) -> pd.DataFrame:
    epochs = np.arange(1, n_epochs + 1)
    train_loss = 1.1 * np.exp(-epochs / 4) + 0.3 + rng.normal(0, 0.01, n_epochs)
    val_loss = 1.0 * np.exp(-epochs / 5) + 0.45 + 0.01 * np.maximum(epochs - 6, 0) + rng.normal(0, 0.01, n_epochs)
    val_f1 = quality * (1 - np.exp(-epochs / 2.0)) - 0.015 * np.maximum(epochs - 5, 0)
    val_f1 = np.clip(val_f1 + rng.normal(0, 0.01, n_epochs), 0, 1)
    val_acc = np.clip(val_f1 + 0.05 + rng.normal(0, 0.005, n_epochs), 0, 1)
    lr = 1e-3 * 0.5 * (1 + np.cos(np.pi * (epochs - 1) / n_epochs))
    return pd.DataFrame({
        "seed": seed, "fold": fold, "epoch": epochs,
        "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc,
        "val_macro_f1": val_f1, "learning_rate": lr,
    })


def _stats(values) -> dict:
    """Mean and std (ddof=1; 0.0 for a single value, as nextpoi_lib.runs writes it) and n non-missing."""
    values = pd.Series(values, dtype=float)
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "n": int(values.notna().sum()),
    }


def make_fake_run(
    root,
    dataset: str = "toy",
    run_name: str = "baseline",
    seeds=(0,),
    n_folds: int = 5,
    classes=("A", "B", "C"),
    quality: float = 0.6,
    with_attention: bool = True,
    rng_seed: int = 0,
    *,
    fold_seed: int = 0,
    kind: str = "neural",
    model: str | None = None,
    profile: str = "test-cpu",
    n_epochs: int = 8,
    window: int = 8,
    with_calibrated: bool = False,
    status: str = "complete",
    data_hash: str | None = None,
    finished_at: str = "2025-01-01T00:01:00+00:00",
    collapse_to: str | None = None,
) -> Path:
    """Write `<root>/<dataset>/<run_name>/` following docs/run-folder.md and return its path.

    `root` plays the role of `outputs/`. `kind="baseline"` writes an empty curves.csv, no attention and
    no epochs. `status` other than "complete" writes the manifest with that status (a run that did not
    finish). `data_hash` overrides the hash derived from the dataset (to fake changed data). `collapse_to` (a
    class name) makes every prediction of every selection that class, like a run that collapsed. summary.json
    has no `collapse` key, like folders written before it existed.
    """
    root = Path(root)
    classes = tuple(str(c) for c in classes)
    seeds = [int(s) for s in seeds]
    k = len(classes)
    if kind == "baseline":
        with_attention = False
    model = model or ("markov" if kind == "baseline" else "transformer")

    data_hash = data_hash or _sha({"dataset": dataset, "classes": list(classes)})[:16]
    fold_manifest = _fold_manifest(dataset, n_folds, fold_seed, data_hash)

    selections = ["selected", "last"] + (["calibrated"] if with_calibrated else [])
    curves, fold_rows, class_rows, confusion_rows, attention_rows = [], [], [], [], []
    for seed in seeds:
        for fold in fold_manifest["folds"]:
            f = fold["fold"]
            y_true = _test_labels(dataset, classes, fold, fold_seed)
            rng = np.random.default_rng(_stable_int("run", rng_seed, seed, f))
            if kind == "neural":
                c = _curves(seed, f, n_epochs, quality, rng)
                curves.append(c)
                selected_epoch = int(c.loc[c["val_macro_f1"].idxmax(), "epoch"])
            for selection in selections:
                q = quality - (0.03 if selection == "last" else 0.0) + (0.02 if selection == "calibrated" else 0.0)
                if kind == "baseline" and selection == "last":
                    y_pred = pred_selected  # one fit, no epochs: last is the selected model
                else:
                    sel_rng = np.random.default_rng(_stable_int("pred", rng_seed, seed, f, selection))
                    y_pred = _predict(y_true, k, q, sel_rng)
                if collapse_to is not None:
                    y_pred = np.full(len(y_true), classes.index(str(collapse_to)))
                if selection == "selected":
                    pred_selected = y_pred
                m = _metrics(y_true, y_pred, k)
                if kind == "neural":
                    epoch = n_epochs if selection == "last" else selected_epoch
                else:
                    epoch = 0  # baselines have no epochs; nextpoi_lib.baselines reports epoch 0
                fold_rows.append({
                    "seed": seed, "fold": f, "selection": selection, "epoch": epoch,
                    "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                    "macro_f1_min50": m["macro_f1_min50"], "n_test": int(len(y_true)),
                })
                for ci, name in enumerate(classes):
                    class_rows.append({
                        "seed": seed, "fold": f, "selection": selection, "class": name,
                        "precision": float(m["precision"][ci]), "recall": float(m["recall"][ci]),
                        "f1": float(m["f1"][ci]), "support": int(m["support"][ci]),
                    })
                    for cj, pred_name in enumerate(classes):
                        confusion_rows.append({
                            "seed": seed, "fold": f, "selection": selection, "true_class": name,
                            "predicted_class": pred_name, "count": int(m["confusion"][ci, cj]),
                        })
            if with_attention:
                w = np.exp(np.linspace(-1.0, 0.5, window) + rng.normal(0, 0.1, window))
                w /= w.sum()
                attention_rows += [
                    {"seed": seed, "fold": f, "position": p, "weight": float(w[p])} for p in range(window)
                ]

    curve_cols = ["seed", "fold", "epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "learning_rate"]
    curves_df = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=curve_cols)
    fold_df = pd.DataFrame(fold_rows)
    class_df = pd.DataFrame(class_rows)
    confusion_df = pd.DataFrame(confusion_rows)

    summary = {}
    for selection in selections:
        rows = fold_df[fold_df["selection"] == selection]
        summary[selection] = {metric: _stats(rows[metric]) for metric in ("macro_f1", "accuracy", "macro_f1_min50")}
    selected_classes = class_df[class_df["selection"] == "selected"]
    summary["per_class"] = {
        name: {
            metric: float(selected_classes.loc[selected_classes["class"] == name, metric].mean())
            for metric in ("precision", "recall", "f1")
        }
        for name in classes
    }

    # Shaped like nextpoi_lib.config.ExperimentConfig.to_dict() (a subset of its sections).
    config = {
        "name": run_name,
        "description": "fake run for tests",
        "profile": profile,
        "dataset": {"source": "checkins", "path": f"data/{dataset}.csv", "name": dataset, "classes": list(classes)},
        "windows": {"length": window, "stride": 1, "features": ["embedding", "category", "time"],
                    "target_time_features": False},
        "folds": {"n_splits": n_folds, "strategy": "user_grouped", "inner_val_fraction": 0.15, "seed": fold_seed},
        "model": {"name": model},
        "loss": {"name": "cross_entropy", "class_weights": "none"},
        "optimizer": {"name": "adamw", "learning_rate": 1e-4, "weight_decay": 1e-2},
        "scheduler": {"name": "onecycle", "max_lr": 1e-2},
        "training": {"epochs": n_epochs, "batch_size": 1024, "seeds": seeds, "device": "cpu",
                     "bias_calibration": with_calibrated},
        "output": {"root": str(root), "overwrite": False},
    }
    manifest = {
        "status": status,
        "run_name": run_name,
        "dataset": dataset,
        "task": "next_category",
        "package_version": "0.1.0",
        "git_commit": "0" * 40,
        "torch_version": "2.0.0+cpu",
        "sklearn_version": "1.7.2",
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "device": "cpu",
        "device_name": "test CPU",
        "profile": profile,
        "data_hash": data_hash,
        "fold_manifest_hash": fold_manifest["hash"],
        "seeds": seeds,
        "classes": list(classes),
        "n_windows": int(sum(f["n_test"] for f in fold_manifest["folds"])),
        "n_folds": n_folds,
        "started_at": "2025-01-01T00:00:00+00:00",
        "finished_at": finished_at,
        "duration_seconds": 60.0,
        "model": model,
        "kind": kind,
        "windows_report": {"n_windows": int(sum(f["n_test"] for f in fold_manifest["folds"])),
                           "n_users": 12 * n_folds, "window_length": window},
        "features": config["windows"]["features"],
        "selected_epochs": [
            {"seed": int(r["seed"]), "fold": int(r["fold"]), "epoch": int(r["epoch"])}
            for r in fold_rows if r["selection"] == "selected"
        ],
    }

    # Built under a temporary name next to the final folder, then renamed into place (as the contract says).
    final = root / dataset / run_name
    tmp = root / dataset / f".{run_name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (tmp / "fold_manifest.json").write_text(json.dumps(fold_manifest, indent=2))
    curves_df.to_csv(tmp / "curves.csv", index=False)
    fold_df.to_csv(tmp / "fold_metrics.csv", index=False)
    class_df.to_csv(tmp / "per_class.csv", index=False)
    confusion_df.to_csv(tmp / "confusion.csv", index=False)
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
    if with_attention:
        pd.DataFrame(attention_rows).to_csv(tmp / "attention.csv", index=False)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


# --------------------------------------------------------------------------------------------------
# Runs shared by the analysis and widget tests, and the numbers they expect, computed here with
# pandas from the CSV files — never by the code under test.

CLASSES = ("A", "B", "C")


def one_seed_runs(root) -> tuple[Path, Path]:
    """Two runs, one seed × 5 folds: 5 pairs."""
    return (make_fake_run(root, run_name="baseline", quality=0.55, rng_seed=0),
            make_fake_run(root, run_name="better", quality=0.80, rng_seed=1))


def three_seed_runs(root) -> tuple[Path, Path, Path]:
    """Three runs, 3 seeds × 5 folds: 15 pairs; 'better' is clearly better on every pair."""
    return (make_fake_run(root, run_name="other", seeds=(0, 1, 2), quality=0.62, rng_seed=2),
            make_fake_run(root, run_name="baseline", seeds=(0, 1, 2), quality=0.55, rng_seed=0),
            make_fake_run(root, run_name="better", seeds=(0, 1, 2), quality=0.80, rng_seed=1))


def fold_rows(run, selection="selected") -> pd.DataFrame:
    df = pd.read_csv(Path(run) / "fold_metrics.csv")
    return df[df["selection"] == selection].sort_values(["seed", "fold"])


def per_class_expected(run, fold=None) -> pd.DataFrame:
    df = pd.read_csv(Path(run) / "per_class.csv", keep_default_na=False)
    df = df[df["selection"] == "selected"]
    if fold is not None:
        df = df[df["fold"] == fold]
    return df.groupby("class")[["precision", "recall"]].agg(["mean", "std"])


def counts_expected(run, fold=None, classes=CLASSES) -> np.ndarray:
    df = pd.read_csv(Path(run) / "confusion.csv", keep_default_na=False)
    df = df[df["selection"] == "selected"]
    if fold is not None:
        df = df[df["fold"] == fold]
    m = df.pivot_table(index="true_class", columns="predicted_class", values="count", aggfunc="sum")
    return m.loc[list(classes), list(classes)].to_numpy(dtype=float)


def bars(fig, run_name, axis):
    """Bar heights and error bars, by class, of one run's trace on one x axis of a per-class figure."""
    (trace,) = [t for t in fig.data if t.name == run_name and (t.xaxis or "x") == axis]
    return dict(zip(trace.x, trace.y)), dict(zip(trace.x, trace.error_y.array))
