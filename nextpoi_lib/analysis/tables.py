"""The numbers of the analysis, computed once from finished run folders: every table a figure draws.

This module owns the comparability rules (`check_comparable`), the leaderboard with its paired Wilcoxon
tests, the per-class table, confusion counts and the panels of the confusion figure (counts or row shares,
and the difference of two runs), the training curves averaged over seeds and the attention weights per
window position. Each function takes run folders (paths, or `Run`s loaded by `nextpoi_lib.runfolder`) and
returns a pandas table (or a small dataclass of tables); nothing here draws (that is
`nextpoi_lib.analysis.figures`) and nothing here computes metrics from predictions — the per-fold numbers
come from the run folder as written.

Aggregates are over fold × seed pairs: mean and standard deviation (ddof=1), `n` the number of pairs.
Paired comparisons pair FOLD MEANS (`PAIRING_RULE`): each run's metric is averaged over its seeds within a
fold, and the folds present in both runs are paired, for every pair of runs. The folds are the independent
units (the test users differ); seeds of one fold share those users, so pairing fold × seed rows would
count each fold several times and make p too small. The test is a two-sided Wilcoxon signed-rank test;
with `n` non-zero differences the smallest attainable p is 2/2^n (`min_attainable_p`), so with 5 folds
no difference can reach p < 0.05 (0.0625 at best), and the leaderboard says so rather than let a reader
read too much into the p column.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..runfolder import Run, load_run, load_runs

__all__ = [
    "runs_table",
    "Comparability",
    "check_comparable",
    "leaderboard",
    "per_class_table",
    "confusion_counts",
    "ConfusionPanel",
    "confusion_panels",
    "TrainingCurves",
    "training_curves",
    "attention_table",
    "min_attainable_p",
    "seed_dependent",
    "leaky_embeddings",
    "PAIRING_RULE",
    "LEAKY_FLAG",
]

METRICS = ("macro_f1", "accuracy", "macro_f1_min50")
ALPHA = 0.05


# --------------------------------------------------------------------------------------------------
# The runs, and whether they can be compared


RUNS_COLUMNS = ["run", "dataset", "model", "kind", "task", "profile", "device", "seeds", "folds", "finished",
                "duration_seconds", "commit", "folder"]


def runs_table(runs) -> pd.DataFrame:
    """One row per run: what its manifest says about it (model, kind under today's names, task, profile,
    device, seeds, folds, when it finished, how long it took, commit) and its folder. Values are kept as
    they are (object columns), a missing one is None."""
    rows = []
    for r in load_runs(runs):
        m = r.manifest
        device = str(m.get("device", "–")) + (f" ({m['device_name']})" if m.get("device_name") else "")
        rows.append([r.label, r.dataset, m.get("model"), r.kind or None, m.get("task"), m.get("profile"), device,
                     ", ".join(map(str, m.get("seeds") or [])), m.get("n_folds"), m.get("finished_at"),
                     m.get("duration_seconds"), str(m.get("git_commit") or "")[:10], str(r.path)])
    return pd.DataFrame(rows, columns=RUNS_COLUMNS, dtype=object)



@dataclass
class Comparability:
    """What `check_comparable` found: comparisons are allowed; `paired` says whether paired tests are."""

    paired: bool
    notes: list[str] = field(default_factory=list)


def check_comparable(runs) -> Comparability:
    """Refuse (ValueError) runs that cannot be compared: incomplete, from different datasets or data, or
    with different class lists. Different fold manifests are allowed, but paired tests are refused."""
    runs = load_runs(runs)
    if not runs:
        raise ValueError("no runs given")
    problems = []
    incomplete = [r for r in runs if not r.complete]
    if incomplete:
        problems.append(
            "incomplete runs (manifest status is not 'complete'): "
            + ", ".join(f"{r.label} at {r.path} (status: {r.status})" for r in incomplete)
        )
    datasets = {r.dataset for r in runs}
    if len(datasets) > 1:
        problems.append(
            "runs come from different datasets: " + ", ".join(f"{r.label}: {r.dataset}" for r in runs)
        )
    hashes = {r.manifest.get("data_hash") for r in runs}
    if len(datasets) == 1 and len(hashes) > 1:
        problems.append(
            "runs used different data (data_hash differs): "
            + ", ".join(f"{r.label}: {str(r.manifest.get('data_hash'))[:12]}" for r in runs)
        )
    class_lists = {tuple(r.classes) for r in runs}
    if len(class_lists) > 1:
        problems.append(
            "runs have different class lists: " + "; ".join(f"{r.label}: {r.classes}" for r in runs)
        )
    if problems:
        raise ValueError("runs are not comparable — " + "; ".join(problems))
    notes = []
    fold_hashes = {r.fold_manifest_hash for r in runs}
    paired = len(fold_hashes) == 1 and None not in fold_hashes
    if not paired:
        notes.append(
            "fold manifests differ ("
            + ", ".join(f"{r.label}: {str(r.fold_manifest_hash)[:12]}" for r in runs)
            + "): means can be compared, paired tests are refused"
        )
    tasks = {r.manifest.get("task") for r in runs}
    if len(tasks) > 1:
        notes.append("runs differ in task: " + ", ".join(f"{r.label}: {r.manifest.get('task')}" for r in runs))
    return Comparability(paired=paired, notes=notes)


# --------------------------------------------------------------------------------------------------
# Leaderboard


def _resolve_reference(runs: list[Run], reference) -> Run:
    if reference is None:
        for run in runs:
            if run.name == "baseline":
                return run
        return runs[0]
    if isinstance(reference, Run):
        reference = reference.path
    if isinstance(reference, int) and not isinstance(reference, bool):
        return runs[reference]
    for run in runs:
        if isinstance(reference, os.PathLike):
            if Path(reference).resolve() == run.path.resolve():
                return run
        elif str(reference) in (run.label, run.name, f"{run.dataset}/{run.name}"):
            return run
    raise ValueError(f"reference run {reference!r} is not among the runs: {[r.label for r in runs]}")


def _rows(run: Run, selection: str) -> pd.DataFrame:
    return run.fold_metrics[run.fold_metrics["selection"] == selection]


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")


def min_attainable_p(n: int) -> float:
    """Smallest two-sided p of an exact Wilcoxon signed-rank test on n non-zero differences."""
    return 2.0 / 2.0**n if n > 0 else 1.0


def seed_dependent(run: Run) -> bool:
    """Whether the run's seeds give different results; run folders written before the manifest said so are
    judged by their kind (reference baselines draw no random numbers)."""
    return bool(run.manifest.get("seed_dependent", run.kind != "baseline"))


PAIRING_RULE = (
    "Paired tests pair fold means: each run's metric is averaged over its seeds within a fold, then the folds "
    "both runs have are paired (one pair per fold, for every pair of runs). Seeds of a fold share its test "
    "users, so they are not independent replicates. With n folds the smallest attainable two-sided p of the "
    "exact Wilcoxon signed-rank test is 2/2^n: 0.0625 with 5 folds, so no difference can reach p < 0.05 there."
)


def _fold_means(run: Run, selection: str, metric: str) -> pd.Series:
    """The run's metric per fold, averaged over its seeds (rows without a value left out)."""
    rows = _rows(run, selection)[["fold", metric]].dropna()
    return rows.groupby("fold")[metric].mean()


def _paired(run: Run, ref: Run, selection: str, metric: str):
    """Fold means of the run and the reference over the folds both have, in fold order (`PAIRING_RULE`)."""
    merged = pd.concat([_fold_means(run, selection, metric).rename("run"),
                        _fold_means(ref, selection, metric).rename("ref")], axis=1, join="inner").sort_index()
    return merged["run"].to_numpy(float), merged["ref"].to_numpy(float)


def _seeds(run: Run, selection: str) -> list[int]:
    return sorted(int(seed) for seed in _rows(run, selection)["seed"].dropna().unique())


def _paired_test(row: dict, notes: list[str], run: Run, ref: Run, selection: str, metric: str) -> None:
    """Fill the row's n_pairs and p_wilcoxon against the reference, and say why when there is no test."""
    from scipy.stats import wilcoxon

    if run.fold_manifest_hash is None or run.fold_manifest_hash != ref.fold_manifest_hash:
        notes.append("fold manifest differs from the reference's: paired test refused")
        return
    x, y = _paired(run, ref, selection, metric)
    n_folds = max(len(_fold_means(run, selection, metric)), len(_fold_means(ref, selection, metric)))
    row["n_pairs"] = len(x)
    if len(x) == 0:
        notes.append("no fold in common with the reference: paired test refused")
        return
    seeds, ref_seeds = _seeds(run, selection), _seeds(ref, selection)
    if not seed_dependent(run) and not seed_dependent(ref):
        notes.append(f"both runs ignore the seed: {len(x)} folds paired once each")
    elif not (seed_dependent(run) and seed_dependent(ref)):
        notes.append(f"one run ignores the seed: {len(x)} folds paired once each, the other "
                     f"run averaged over its seeds")
    else:
        notes.append(f"{len(x)} fold means paired (each run averaged over its seeds in a fold)")
        if seeds != ref_seeds:
            notes.append(f"seeds differ ({', '.join(map(str, seeds))} vs the reference's "
                         f"{', '.join(map(str, ref_seeds))}): each fold mean is over the run's own seeds")
    if len(x) < n_folds:
        notes.append(f"only {len(x)} of {n_folds} folds match the reference")
    diff = x - y
    n_nonzero = int(np.count_nonzero(diff))
    if n_nonzero == 0:
        notes.append("identical to the reference on every pair: no test")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row["p_wilcoxon"] = float(wilcoxon(x, y, alternative="two-sided").pvalue)
    p_min = min_attainable_p(n_nonzero)
    if p_min > ALPHA:
        notes.append(
            f"n={n_nonzero} fold pairs too small: smallest attainable p is "
            f"2/2^{n_nonzero} = {p_min:.3g} > {ALPHA}, no difference can be significant"
        )


LEADERBOARD_COLUMNS = [
    "run", "model", "kind", "profile", "n", "macro_f1_mean", "macro_f1_std", "accuracy_mean", "accuracy_std",
    "macro_f1_min50_mean", "delta_macro_f1", "delta_accuracy", "delta_to_baseline", "delta_to_best_reference",
    "n_pairs", "p_wilcoxon", "is_reference", "note", "flag", "collapsed", "leaky",
]
# The embeddings source that trains POI vectors on every user's visit transitions, the test users' included:
# the next visit leaks into the last visit's vector (domain brief: about 29 points of inflation).
LEAKY_EMBEDDINGS_SOURCE = "transition_graph_all_users"
LEAKY_FLAG = "leaky: POI embeddings trained on all users' transitions, including the test users'"
# The kind of the reference methods (majority, last category, Markov, boosted trees): the floor to beat.
REFERENCE_KIND = "baseline"


def _macro_f1_mean(run: Run, selection: str) -> float:
    values = _rows(run, selection)["macro_f1"].dropna().to_numpy(float)
    return float(values.mean()) if len(values) else float("nan")


def leaky_embeddings(run: Run) -> bool:
    """Whether the run's POI embeddings saw the test users' transitions: its manifest says
    `embeddings.leaky: true`, or its resolved config (the manifest's `config`, else config.yaml) has
    `embeddings.source: transition_graph_all_users`."""
    stated = run.manifest.get("embeddings")
    if isinstance(stated, dict) and stated.get("leaky") is True:
        return True
    for config in (run.manifest.get("config"), run.config):
        embeddings = config.get("embeddings") if isinstance(config, dict) else None
        if isinstance(embeddings, dict) and embeddings.get("source") == LEAKY_EMBEDDINGS_SOURCE:
            return True
    return False


def leaderboard(runs, reference=None, selection: str = "selected", metric: str = "macro_f1") -> pd.DataFrame:
    """One row per run, best macro-F1 first.

    Columns: run, model, kind, profile, n, macro_f1_mean/std, accuracy_mean/std, macro_f1_min50_mean,
    delta_macro_f1 and delta_accuracy (mean minus the reference's mean), delta_to_baseline (macro-F1 mean
    minus that of the run named "baseline"; NaN without one), delta_to_best_reference (macro-F1 mean minus
    the best run of kind "baseline", the reference methods; NaN without one), n_pairs (paired folds),
    p_wilcoxon (two-sided, on `metric` over the folds' means over seeds: `PAIRING_RULE`), is_reference, note,
    flag (empty, or "; "-joined labels: "collapsed: <why>" when the run's selected-epoch predictions collapsed,
    `Run.collapse`, and `LEAKY_FLAG` when its POI embeddings saw the test users' transitions), collapsed (the
    collapse reason, or empty) and leaky (bool, `leaky_embeddings`).
    `kind` is the run kind under today's names (an old folder's "hybrid" reads "blended").
    `reference` is a run name, label, index or path; default the run named "baseline", else the first.
    The table's `attrs` carry `reference`, `selection`, `metric`, the `notes` (comparability, then the
    pairing rule), `pairing` (`PAIRING_RULE`), `baseline` and `best_reference` (labels, or None).
    """
    runs = load_runs(runs)
    comparability = check_comparable(runs)
    ref = _resolve_reference(runs, reference)
    ref_rows = _rows(ref, selection)
    named_baseline = next((r for r in runs if r.name == "baseline"), None)
    baseline_mean = _macro_f1_mean(named_baseline, selection) if named_baseline is not None else float("nan")
    references = [(r, _macro_f1_mean(r, selection)) for r in runs if r.kind == REFERENCE_KIND]
    references = [(r, m) for r, m in references if not np.isnan(m)]
    best_reference, best_reference_mean = max(references, key=lambda rm: rm[1]) if references else (None, float("nan"))
    rows = []
    for run in runs:
        data = _rows(run, selection)
        row = {
            "run": run.label,
            "model": run.manifest.get("model"),
            "kind": run.kind or None,  # None, as before, when the manifest names no kind
            "profile": run.manifest.get("profile"),
            "n": int(len(data)),
        }
        for m in METRICS:
            values = data[m].dropna().to_numpy(float) if m in data else np.array([])
            row[f"{m}_mean"] = float(values.mean()) if len(values) else float("nan")
            if m != "macro_f1_min50":
                row[f"{m}_std"] = _std(values)
        for m in ("macro_f1", "accuracy"):
            ref_mean = ref_rows[m].mean() if len(ref_rows) else float("nan")
            row[f"delta_{m}"] = row[f"{m}_mean"] - ref_mean
        row["delta_to_baseline"] = row["macro_f1_mean"] - baseline_mean
        row["delta_to_best_reference"] = row["macro_f1_mean"] - best_reference_mean
        row["n_pairs"] = np.nan
        row["p_wilcoxon"] = np.nan
        notes = []
        if data.empty:
            notes.append(f"no rows for selection {selection!r}")
        row["is_reference"] = run is ref
        if run is ref:
            notes.append("reference")
        else:
            _paired_test(row, notes, run, ref, selection, metric)
        row["note"] = "; ".join(notes)
        collapsed = run.collapse
        row["collapsed"] = str(collapsed.get("reason") or "collapsed") if collapsed.get("flagged") else ""
        row["leaky"] = leaky_embeddings(run)
        row["flag"] = "; ".join(([f"collapsed: {row['collapsed']}"] if row["collapsed"] else [])
                                + ([LEAKY_FLAG] if row["leaky"] else []))
        rows.append(row)
    table = pd.DataFrame(rows, columns=LEADERBOARD_COLUMNS)
    table = table.sort_values("macro_f1_mean", ascending=False, kind="stable", na_position="last")
    table = table.reset_index(drop=True)
    table["n_pairs"] = table["n_pairs"].astype("Int64")
    table.attrs.update(
        reference=ref.label, selection=selection, metric=metric,
        notes=list(comparability.notes) + ([PAIRING_RULE] if len(runs) > 1 else []), pairing=PAIRING_RULE,
        paired=comparability.paired,
        baseline=named_baseline.label if named_baseline is not None else None,
        best_reference=best_reference.label if best_reference is not None else None,
    )
    return table


# --------------------------------------------------------------------------------------------------
# Per class


def _check_fold(run: Run, fold) -> None:
    if fold is not None and int(fold) not in run.folds():
        raise ValueError(f"run {run.label} has no fold {fold} (folds: {run.folds()})")


def per_class_table(runs, selection: str = "selected", fold=None) -> pd.DataFrame:
    """Per run and class: precision, recall and F1 mean and std over fold × seed (or, with `fold`, over
    the seeds of that fold), mean support and n. Classes in manifest order."""
    runs = load_runs(runs)
    rows = []
    for run in runs:
        _check_fold(run, fold)
        data = run.per_class[run.per_class["selection"] == selection]
        if fold is not None:
            data = data[data["fold"] == int(fold)]
        for cls in run.classes:
            d = data[data["class"] == cls]
            row = {"run": run.label, "class": cls, "n": int(len(d))}
            for m in ("precision", "recall", "f1"):
                values = d[m].dropna().to_numpy(float)
                row[f"{m}_mean"] = float(values.mean()) if len(values) else float("nan")
                row[f"{m}_std"] = _std(values)
            row["support_mean"] = float(d["support"].mean()) if len(d) else float("nan")
            rows.append(row)
    columns = ["run", "class", "n", "precision_mean", "precision_std", "recall_mean", "recall_std",
               "f1_mean", "f1_std", "support_mean"]
    return pd.DataFrame(rows, columns=columns)


# --------------------------------------------------------------------------------------------------
# Confusion


def confusion_counts(run, selection: str = "selected", fold=None) -> pd.DataFrame:
    """Confusion counts (rows true class, columns predicted class, manifest order) summed over fold × seed,
    or over the seeds of one fold."""
    run = load_run(run)
    _check_fold(run, fold)
    data = run.confusion[run.confusion["selection"] == selection]
    if fold is not None:
        data = data[data["fold"] == int(fold)]
    classes = run.classes
    matrix = data.pivot_table(index="true_class", columns="predicted_class", values="count", aggfunc="sum")
    matrix = matrix.reindex(index=classes, columns=classes).fillna(0).astype(int)
    matrix.index.name, matrix.columns.name = "true_class", "predicted_class"
    return matrix


def _row_normalise(matrix: np.ndarray) -> np.ndarray:
    sums = matrix.sum(axis=1, keepdims=True).astype(float)
    return np.divide(matrix, sums, out=np.zeros(matrix.shape, dtype=float), where=sums > 0)


@dataclass(frozen=True)
class ConfusionPanel:
    """One heatmap of the confusion figure: a run's matrix, or the difference of two runs' matrices."""

    title: str
    matrix: np.ndarray  # rows true class, columns predicted class, in the classes' order
    difference: bool = False


def confusion_panels(runs, normalise: bool = False, selection: str = "selected", fold=None) -> list[ConfusionPanel]:
    """One panel per run (counts summed over fold × seed or one fold's seeds; with `normalise`, each row
    divided by its sum, an empty row all zeros), and with two or more runs a last panel: the second run's
    matrix minus the first's."""
    runs = load_runs(runs)
    counts = [confusion_counts(r, selection, fold).to_numpy() for r in runs]
    panels = [ConfusionPanel(r.label, _row_normalise(c) if normalise else c) for r, c in zip(runs, counts)]
    if len(runs) >= 2:
        panels.append(ConfusionPanel(f"{runs[1].label} − {runs[0].label}",
                                     panels[1].matrix - panels[0].matrix, difference=True))
    return panels


# --------------------------------------------------------------------------------------------------
# Curves and attention


@dataclass
class TrainingCurves:
    """What the curves figure draws for one run."""

    run: Run
    mean: pd.DataFrame  # per fold and epoch: the curves.csv columns, mean over seeds
    n_seeds: int
    selected: pd.DataFrame  # fold, epoch, val_macro_f1 of the epoch chosen (only with one seed; else empty)


def training_curves(run, folds=None, selection: str = "selected") -> TrainingCurves:
    """A run's curves per fold and epoch, averaged over its seeds (optionally only `folds`), and with one
    seed the epoch `selection` chose on the inner validation users with its validation macro-F1."""
    run = load_run(run)
    curves = run.curves
    if folds is not None:
        folds = [int(f) for f in ([folds] if isinstance(folds, (int, np.integer)) else folds)]
        curves = curves[curves["fold"].isin(folds)]
    n_seeds = int(curves["seed"].nunique())
    mean = curves.groupby(["fold", "epoch"], as_index=False).mean(numeric_only=True)
    chosen_rows = []
    if n_seeds == 1:
        chosen = _rows(run, selection)
        for fold, d in mean.groupby("fold"):
            epoch = chosen.loc[chosen["fold"] == fold, "epoch"].dropna()
            if len(epoch):
                e = int(epoch.iloc[0])
                y = d.loc[d["epoch"] == e, "val_macro_f1"]
                if len(y):
                    chosen_rows.append({"fold": fold, "epoch": e, "val_macro_f1": float(y.iloc[0])})
    selected = pd.DataFrame(chosen_rows, columns=["fold", "epoch", "val_macro_f1"])
    return TrainingCurves(run=run, mean=mean, n_seeds=n_seeds, selected=selected)


def attention_table(runs) -> pd.DataFrame:
    """Per run with attention.csv and window position (0 = oldest visit): mean, std (ddof=1) and count of
    the pooling weight over fold × seed. Runs without attention have no rows."""
    frames = []
    for run in load_runs(runs):
        if not run.has_attention:
            continue
        stats = run.attention.groupby("position")["weight"].agg(["mean", "std", "count"]).reset_index()
        frames.append(stats.assign(run=run.label))
    columns = ["run", "position", "mean", "std", "count"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
