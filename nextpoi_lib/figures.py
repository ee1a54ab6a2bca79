"""Reading run folders for analysis, and the tables and figures built from them.

This module owns everything that turns finished run folders (`outputs/<dataset>/<run-name>/`, see
docs/run-folder.md) into things a person looks at: the leaderboard, per-class precision/recall,
confusion matrices, training curves, attention weights, and a self-contained static HTML report.

Everything here is a plain function that takes run folders (paths, or `Run` objects already loaded with
`load_run`) and returns a pandas table or a plotly figure; nothing here draws widgets (that is
`nextpoi_lib.widgets`) and nothing here computes metrics from predictions — the numbers come from the
run folder as written.

Aggregates are over fold × seed pairs: mean and standard deviation (ddof=1), `n` the number of pairs.
Paired comparisons match (seed, fold) pairs and use a two-sided Wilcoxon signed-rank test; with `n`
non-zero differences the smallest attainable p is 2/2^n, so with 5 pairs or fewer no difference can
reach p < 0.05, and the leaderboard says so rather than let a reader read too much into the p column.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.subplots import make_subplots

__all__ = [
    "Run",
    "Comparability",
    "load_run",
    "load_runs",
    "discover_runs",
    "select_runs",
    "check_comparable",
    "leaderboard",
    "leaderboard_figure",
    "per_class_table",
    "per_class_figure",
    "confusion_counts",
    "confusion_figure",
    "curves_figure",
    "attention_figure",
    "leaderboard_html",
    "write_report",
]

COMPLETE = "complete"
METRICS = ("macro_f1", "accuracy", "macro_f1_min50")
ALPHA = 0.05
PALETTE = qualitative.Plotly

_CURVE_COLUMNS = ["seed", "fold", "epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "learning_rate"]
_FOLD_COLUMNS = ["seed", "fold", "selection", "epoch", "accuracy", "macro_f1", "macro_f1_min50", "n_test"]
_CLASS_COLUMNS = ["seed", "fold", "selection", "class", "precision", "recall", "f1", "support"]
_CONFUSION_COLUMNS = ["seed", "fold", "selection", "true_class", "predicted_class", "count"]
_ATTENTION_COLUMNS = ["seed", "fold", "position", "weight"]


# --------------------------------------------------------------------------------------------------
# Loading


@dataclass
class Run:
    """One run folder, parsed. Missing files load as empty tables (or None), so an incomplete folder can
    still be loaded and reported as incomplete by `check_comparable`."""

    path: Path
    manifest: dict
    config: dict | None
    fold_manifest: dict | None
    summary: dict | None
    curves: pd.DataFrame
    fold_metrics: pd.DataFrame
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    attention: pd.DataFrame | None = None
    label: str = field(default="")

    def __post_init__(self):
        if not self.label:
            self.label = self.name

    @property
    def name(self) -> str:
        return str(self.manifest.get("run_name") or self.path.name)

    @property
    def dataset(self) -> str:
        return str(self.manifest.get("dataset") or self.path.parent.name)

    @property
    def status(self) -> str:
        return str(self.manifest.get("status", "missing manifest"))

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    @property
    def classes(self) -> list[str]:
        classes = self.manifest.get("classes")
        if classes:
            return [str(c) for c in classes]
        # Fall back on the order of appearance in per_class.csv.
        return list(dict.fromkeys(self.per_class["class"].astype(str)))

    @property
    def fold_manifest_hash(self) -> str | None:
        value = self.manifest.get("fold_manifest_hash")
        if value is None and self.fold_manifest:
            value = self.fold_manifest.get("hash")
        return value

    @property
    def has_attention(self) -> bool:
        return self.attention is not None and not self.attention.empty

    def selections(self) -> list[str]:
        return list(dict.fromkeys(self.fold_metrics["selection"].astype(str)))

    def folds(self) -> list[int]:
        return sorted(int(f) for f in self.fold_metrics["fold"].dropna().unique())


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _read_yaml(path: Path) -> dict | None:
    if not path.exists():
        return None
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _read_csv(path: Path, columns: list[str], text_columns: Sequence[str] = ()) -> pd.DataFrame | None:
    """Read a contract CSV: text columns stay strings (a class called "NA" stays "NA"), the rest numeric."""
    if not path.exists():
        return None
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        df = pd.DataFrame(columns=columns)
    for column in df.columns:
        if column not in text_columns:
            df[column] = pd.to_numeric(df[column], errors="coerce")
    for column in ("seed", "fold", "epoch", "position", "count", "support", "n_test"):
        if column in df.columns and df[column].notna().all() and len(df):
            df[column] = df[column].astype(int)
    return df


def load_run(path) -> Run:
    """Parse one run folder. Accepts a path (str or Path) or returns a `Run` unchanged."""
    if isinstance(path, Run):
        return path
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist")
    manifest = _read_json(path / "manifest.json") or {"status": "missing manifest"}

    def table(name, columns, text=()):
        df = _read_csv(path / name, columns, text)
        return pd.DataFrame(columns=columns) if df is None else df

    attention = _read_csv(path / "attention.csv", _ATTENTION_COLUMNS)
    return Run(
        path=path,
        manifest=manifest,
        config=_read_yaml(path / "config.yaml"),
        fold_manifest=_read_json(path / "fold_manifest.json"),
        summary=_read_json(path / "summary.json"),
        curves=table("curves.csv", _CURVE_COLUMNS),
        fold_metrics=table("fold_metrics.csv", _FOLD_COLUMNS, ("selection",)),
        per_class=table("per_class.csv", _CLASS_COLUMNS, ("selection", "class")),
        confusion=table("confusion.csv", _CONFUSION_COLUMNS, ("selection", "true_class", "predicted_class")),
        attention=attention,
    )


def _manifest_status(run_dir: Path) -> str | None:
    try:
        return str((_read_json(run_dir / "manifest.json") or {}).get("status"))
    except (OSError, ValueError):
        return None


def discover_runs(outputs_root) -> list[Path]:
    """Complete run folders under `outputs_root` (`<root>/<dataset>/<run-name>/`), sorted by dataset and
    name. Folders under a temporary (hidden) name and runs whose manifest status is not "complete" are
    left out. `outputs_root` may also be one dataset folder."""
    root = Path(outputs_root)
    if not root.is_dir():
        return []
    candidates = {p.parent for p in root.glob("*/*/manifest.json")} | {p.parent for p in root.glob("*/manifest.json")}
    runs = [
        d for d in candidates
        if not any(part.startswith(".") for part in d.relative_to(root).parts) and _manifest_status(d) == COMPLETE
    ]
    return sorted(runs, key=lambda d: (d.parent.name, d.name))


def select_runs(outputs_root, run_names: Iterable[str] = (), dataset: str | None = None) -> list[Path]:
    """The complete runs to analyse together, limited to one dataset.

    `run_names` empty means every complete run of the dataset. Names may be `run` or `dataset/run`.
    `dataset` None (or "") means: the only dataset present, or — when several are — the dataset of the
    most recently finished run. Raises ValueError when nothing matches.
    """
    paths = discover_runs(outputs_root)
    if not paths:
        raise ValueError(f"no complete runs under {Path(outputs_root).resolve()}")
    runs = {p: load_run(p) for p in paths}
    run_names = [str(n) for n in (run_names or [])]
    if run_names:
        chosen = []
        for name in run_names:
            matches = [
                p for p, r in runs.items()
                if name in (r.name, f"{r.dataset}/{r.name}", p.name) and (not dataset or r.dataset == dataset)
            ]
            if not matches:
                known = ", ".join(f"{r.dataset}/{r.name}" for r in runs.values())
                raise ValueError(f"no complete run named {name!r} under {outputs_root} (found: {known})")
            if len(matches) > 1:
                where = ", ".join(runs[p].dataset for p in matches)
                raise ValueError(f"run name {name!r} exists in several datasets ({where}); write it as dataset/run")
            chosen.append(matches[0])
        datasets = {runs[p].dataset for p in chosen}
        if len(datasets) > 1:
            raise ValueError(f"the runs named come from different datasets: {sorted(datasets)}")
        return chosen
    datasets = sorted({r.dataset for r in runs.values()})
    if dataset:
        if dataset not in datasets:
            raise ValueError(f"no complete runs for dataset {dataset!r} under {outputs_root} (datasets: {datasets})")
    elif len(datasets) == 1:
        dataset = datasets[0]
    else:
        latest = max(runs.values(), key=lambda r: str(r.manifest.get("finished_at") or ""))
        dataset = latest.dataset
    return [p for p, r in runs.items() if r.dataset == dataset]


def load_runs(runs) -> list[Run]:
    """Load run folders (paths or `Run`s; one or a list) and give each a label unique among them: the run
    name, or `dataset/name` when names repeat. `Run` objects given are copied, never relabelled in place."""
    if isinstance(runs, (str, os.PathLike, Run)):
        runs = [runs]
    loaded = [dataclasses.replace(r) if isinstance(r, Run) else load_run(r) for r in runs]
    seen: dict[str, int] = {}
    names = [r.name for r in loaded]
    for run in loaded:
        label = run.name if names.count(run.name) == 1 else f"{run.dataset}/{run.name}"
        if label in seen:
            seen[label] += 1
            label = f"{label} ({seen[label]})"
        else:
            seen[label] = 1
        run.label = label
    return loaded


# --------------------------------------------------------------------------------------------------
# Comparability


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
    return bool(run.manifest.get("seed_dependent", run.manifest.get("kind") != "baseline"))


def _paired(run: Run, ref: Run, selection: str, metric: str):
    a = _rows(run, selection)[["seed", "fold", metric]]
    b = _rows(ref, selection)[["seed", "fold", metric]]
    merged = a.merge(b, on=["seed", "fold"], suffixes=("_run", "_ref")).dropna().sort_values(["seed", "fold"])
    if not (seed_dependent(run) and seed_dependent(ref)):
        # A run that draws no random numbers repeats the same folds under every seed: counting the copies as
        # separate pairs would fake a larger n. Average the other run over its seeds and pair each fold once.
        merged = merged.groupby("fold", as_index=False)[[f"{metric}_run", f"{metric}_ref"]].mean()
    return merged[f"{metric}_run"].to_numpy(float), merged[f"{metric}_ref"].to_numpy(float)


def leaderboard(runs, reference=None, selection: str = "selected", metric: str = "macro_f1") -> pd.DataFrame:
    """One row per run, best macro-F1 first.

    Columns: run, model, kind, profile, n, macro_f1_mean/std, accuracy_mean/std, macro_f1_min50_mean,
    delta_macro_f1 and delta_accuracy (mean minus the reference's mean), n_pairs (matched (seed, fold)
    pairs), p_wilcoxon (two-sided, on `metric` over the matched pairs), is_reference, note.
    `reference` is a run name, label, index or path; default the run named "baseline", else the first.
    The table's `attrs` carry `reference`, `selection`, `metric` and the comparability `notes`.
    """
    from scipy.stats import wilcoxon

    runs = load_runs(runs)
    comparability = check_comparable(runs)
    ref = _resolve_reference(runs, reference)
    ref_rows = _rows(ref, selection)
    rows = []
    for run in runs:
        data = _rows(run, selection)
        row = {
            "run": run.label,
            "model": run.manifest.get("model"),
            "kind": run.manifest.get("kind"),
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
        row["n_pairs"] = np.nan
        row["p_wilcoxon"] = np.nan
        notes = []
        if data.empty:
            notes.append(f"no rows for selection {selection!r}")
        if run is ref:
            row["is_reference"] = True
            notes.append("reference")
        else:
            row["is_reference"] = False
            if run.fold_manifest_hash is None or run.fold_manifest_hash != ref.fold_manifest_hash:
                notes.append("fold manifest differs from the reference's: paired test refused")
            else:
                x, y = _paired(run, ref, selection, metric)
                n_all = max(len(data), len(ref_rows))
                row["n_pairs"] = len(x)
                if len(x) == 0:
                    notes.append("no matching (seed, fold) pairs with the reference: paired test refused")
                else:
                    if not seed_dependent(run) and not seed_dependent(ref):
                        notes.append(f"both runs ignore the seed: {len(x)} folds paired once each")
                    elif not (seed_dependent(run) and seed_dependent(ref)):
                        notes.append(f"one run ignores the seed: {len(x)} folds paired once each, the other "
                                     f"run averaged over its seeds")
                    elif len(x) < n_all:
                        notes.append(f"only {len(x)} of {n_all} (seed, fold) pairs match the reference")
                    diff = x - y
                    n_nonzero = int(np.count_nonzero(diff))
                    if n_nonzero == 0:
                        notes.append("identical to the reference on every pair: no test")
                    else:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            row["p_wilcoxon"] = float(wilcoxon(x, y, alternative="two-sided").pvalue)
                        p_min = min_attainable_p(n_nonzero)
                        if p_min > ALPHA:
                            notes.append(
                                f"n={n_nonzero} pairs too small: smallest attainable p is "
                                f"2/2^{n_nonzero} = {p_min:.3g} > {ALPHA}, no difference can be significant"
                            )
        row["note"] = "; ".join(notes)
        rows.append(row)
    columns = [
        "run", "model", "kind", "profile", "n", "macro_f1_mean", "macro_f1_std", "accuracy_mean", "accuracy_std",
        "macro_f1_min50_mean", "delta_macro_f1", "delta_accuracy", "n_pairs", "p_wilcoxon", "is_reference", "note",
    ]
    table = pd.DataFrame(rows, columns=columns)
    table = table.sort_values("macro_f1_mean", ascending=False, kind="stable", na_position="last")
    table = table.reset_index(drop=True)
    table["n_pairs"] = table["n_pairs"].astype("Int64")
    table.attrs.update(
        reference=ref.label, selection=selection, metric=metric, notes=list(comparability.notes),
        paired=comparability.paired,
    )
    return table


def leaderboard_figure(runs_or_table, reference=None, selection: str = "selected") -> go.Figure:
    """Macro-F1 and accuracy per run (mean ± std over fold × seed), in leaderboard order."""
    table = runs_or_table if isinstance(runs_or_table, pd.DataFrame) else leaderboard(runs_or_table, reference, selection)
    fig = go.Figure()
    for i, (metric, label) in enumerate((("macro_f1", "macro-F1"), ("accuracy", "accuracy"))):
        fig.add_trace(go.Bar(
            x=table["run"].tolist(),
            y=table[f"{metric}_mean"].tolist(),
            error_y=dict(type="data", array=table[f"{metric}_std"].tolist(), visible=True),
            name=label,
            marker_color=PALETTE[i],
            customdata=table["n"].tolist(),
            hovertemplate=f"%{{x}}<br>{label}: %{{y:.4f}} ± %{{error_y.array:.4f}}<br>n=%{{customdata}}<extra></extra>",
        ))
    sel = table.attrs.get("selection", selection)
    fig.update_layout(
        title=f"Leaderboard: mean ± std over fold × seed ({sel} epoch)",
        barmode="group", height=380, yaxis=dict(title="score", range=[0, 1]), xaxis=dict(title="run"),
        legend=dict(orientation="h", y=1.02, yanchor="bottom", x=1, xanchor="right"),
    )
    return fig


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


def _none_for_nan(values) -> list:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in values]


def _scope(fold) -> str:
    return "all folds × seeds" if fold is None else f"fold {fold}"


def per_class_figure(runs, classes=None, fold=None, selection: str = "selected") -> go.Figure:
    """Grouped bars, one group per class and one bar per run: precision (left) and recall (right).
    Aggregate means with std error bars over fold × seed, or one fold (std over its seeds)."""
    runs = load_runs(runs)
    table = per_class_table(runs, selection, fold)
    all_classes = runs[0].classes if runs else []
    classes = [str(c) for c in (classes if classes is not None and len(classes) else all_classes)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Precision", "Recall"), horizontal_spacing=0.08)
    for i, run in enumerate(runs):
        t = table[table["run"] == run.label].set_index("class").reindex(classes)
        color = PALETTE[i % len(PALETTE)]
        for col, metric in enumerate(("precision", "recall"), start=1):
            fig.add_trace(go.Bar(
                x=classes,
                y=t[f"{metric}_mean"].tolist(),
                error_y=dict(type="data", array=_none_for_nan(t[f"{metric}_std"].tolist()), visible=True),
                name=run.label, legendgroup=run.label, showlegend=(col == 1), marker_color=color,
                offsetgroup=str(i),
                hovertemplate=f"{run.label}<br>%{{x}}: {metric} %{{y:.3f}}<extra></extra>",
            ), row=1, col=col)
    fig.update_yaxes(range=[0, 1])
    fig.update_xaxes(title_text="class", type="category")
    fig.update_layout(
        title=f"Per-class precision and recall ({_scope(fold)}, {selection} epoch)",
        barmode="group", height=420,
        legend=dict(orientation="h", y=-0.2, yanchor="top", x=0),
    )
    return fig


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


def _matrix_text(matrix: np.ndarray, normalise: bool, signed: bool) -> list[list[str]]:
    if normalise:
        fmt = "{:+.2f}" if signed else "{:.2f}"
    else:
        fmt = "{:+d}" if signed else "{:d}"
    return [[fmt.format(float(v) if normalise else int(v)) for v in row] for row in matrix]


def confusion_figure(runs, normalise: bool = False, fold=None, selection: str = "selected",
                     buttons: bool = False) -> go.Figure:
    """Confusion matrices side by side (heatmaps; counts, or rows normalised to sum to 1), and with two
    or more runs a difference matrix (second run minus first). `buttons=True` adds plotly buttons that
    switch between counts and row-normalised in the browser, with no kernel (used by the report)."""
    runs = load_runs(runs)
    if not runs:
        return _empty_figure("Confusion matrices", "No runs selected.")
    classes = runs[0].classes
    counts = [confusion_counts(r, selection, fold).to_numpy() for r in runs]
    with_diff = len(runs) >= 2

    def matrices(norm: bool):
        mats = [_row_normalise(c) if norm else c for c in counts]
        if with_diff:
            mats.append(mats[1] - mats[0])
        return mats

    def texts(norm: bool):
        mats = matrices(norm)
        return [_matrix_text(m, norm, signed=with_diff and i == len(mats) - 1) for i, m in enumerate(mats)]

    titles = [r.label for r in runs] + ([f"{runs[1].label} − {runs[0].label}"] if with_diff else [])
    n_panels = len(titles)
    k = len(classes)
    n_cols = min(n_panels, 3 if k <= 12 else 2 if k <= 20 else 1)
    n_rows = math.ceil(n_panels / n_cols)
    panel = max(230, k * (60 if k <= 6 else 34))  # pixels per heatmap side
    # Room between rows for the (rotated, possibly long) predicted-class labels, axis title and subplot title.
    below = 120 if k <= 6 else 240
    height = n_rows * (panel + below) + 130
    # Same classes on every panel: only the first column shows the true-class labels.
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=titles, shared_yaxes=True,
                        horizontal_spacing=0.06 if k <= 6 else 0.04, vertical_spacing=below / height)
    show_text = k <= 15
    for i, (z, text) in enumerate(zip(matrices(normalise), texts(normalise))):
        is_diff = with_diff and i == n_panels - 1
        fig.add_trace(go.Heatmap(
            z=np.asarray(z).tolist(), x=classes, y=classes, text=text,
            texttemplate="%{text}" if show_text else None,
            textfont=dict(size=12 if k <= 6 else 9),
            coloraxis="coloraxis2" if is_diff else "coloraxis",
            name=titles[i],
            hovertemplate=f"{titles[i]}<br>true %{{y}}<br>predicted %{{x}}<br>%{{text}}<extra></extra>",
        ), row=i // n_cols + 1, col=i % n_cols + 1)
    fig.update_xaxes(title_text="predicted", type="category", automargin=True)
    fig.update_yaxes(type="category", autorange="reversed", automargin=True)
    fig.update_yaxes(title_text="true", col=1)

    def colorbar_titles(norm: bool):
        return ("row share", "Δ row share") if norm else ("count", "Δ count")

    def title(norm: bool):
        kind = "row-normalised" if norm else "counts"
        return f"Confusion matrices ({kind}; {_scope(fold)}, {selection} epoch)"

    bar, diff_bar = colorbar_titles(normalise)
    layout = dict(
        title=title(normalise),
        height=height,
        coloraxis=dict(colorscale="Blues", colorbar=dict(title=dict(text=bar), len=0.45, y=0.78, yanchor="middle")),
    )
    if with_diff:
        layout["coloraxis2"] = dict(
            colorscale="RdBu", cmid=0,
            colorbar=dict(title=dict(text=diff_bar), len=0.45, y=0.22, yanchor="middle"),
        )
    fig.update_layout(**layout)
    if buttons:
        def button(label, norm):
            bar, diff_bar = colorbar_titles(norm)
            layout_update = {"title.text": title(norm), "coloraxis.colorbar.title.text": bar}
            if with_diff:
                layout_update["coloraxis2.colorbar.title.text"] = diff_bar
            return dict(
                label=label, method="update",
                args=[{"z": [np.asarray(m).tolist() for m in matrices(norm)], "text": texts(norm)}, layout_update],
            )

        fig.update_layout(
            updatemenus=[dict(
                type="buttons", direction="right", active=1 if normalise else 0, showactive=True,
                # 45 px above the plot area (updatemenu y is in plot-area fractions), below the title.
                x=0, xanchor="left", y=1 + 45 / (height - 130 - 80), yanchor="bottom",
                buttons=[button("Counts", False), button("Row-normalised", True)],
            )],
            margin=dict(t=130, b=80),
            title=dict(y=1 - 12 / height, yanchor="top"),  # title on top, then the buttons, then the plots
        )
    return fig


# --------------------------------------------------------------------------------------------------
# Curves and attention


def _empty_figure(title: str, message: str, height: int = 300) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        title=title, height=height,
        xaxis=dict(visible=False), yaxis=dict(visible=False),
        annotations=[dict(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                          font=dict(size=14))],
    )
    return fig


def curves_figure(run, folds=None, selection: str = "selected") -> go.Figure:
    """Per fold: train (solid) and validation (dashed) loss, validation macro-F1 and learning rate against
    epoch. With several seeds each fold's curve is the mean over seeds. With one seed a marker shows the
    epoch chosen on the inner validation users."""
    run = load_run(run)
    title = f"Training curves: {run.label}"
    curves = run.curves
    if folds is not None:
        folds = [int(f) for f in ([folds] if isinstance(folds, (int, np.integer)) else folds)]
        curves = curves[curves["fold"].isin(folds)]
    if curves.empty:
        reason = "a baseline without epochs" if run.manifest.get("kind") == "baseline" else "curves.csv is empty"
        return _empty_figure(title, f"No training curves for {run.label} ({reason}).")
    n_seeds = curves["seed"].nunique()
    if n_seeds > 1:
        title += f" (mean over {n_seeds} seeds)"
    mean = curves.groupby(["fold", "epoch"], as_index=False).mean(numeric_only=True)
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.07, subplot_titles=(
        "Loss (train solid, validation dashed)", "Validation macro-F1", "Learning rate"))
    chosen = _rows(run, selection)
    for i, (fold, d) in enumerate(mean.groupby("fold")):
        color = PALETTE[i % len(PALETTE)]
        group = f"fold {fold}"
        # Markers too, so that a run of one or two epochs is still visible.
        common = dict(legendgroup=group, line=dict(color=color), mode="lines+markers", marker=dict(size=4))
        fig.add_trace(go.Scatter(x=d["epoch"], y=d["train_loss"], name=group, showlegend=True, **common), 1, 1)
        fig.add_trace(go.Scatter(x=d["epoch"], y=d["val_loss"], name=f"{group} validation", showlegend=False,
                                 line=dict(color=color, dash="dash"), mode="lines+markers", marker=dict(size=4),
                                 legendgroup=group), 1, 1)
        fig.add_trace(go.Scatter(x=d["epoch"], y=d["val_macro_f1"], name=group, showlegend=False, **common), 1, 2)
        fig.add_trace(go.Scatter(x=d["epoch"], y=d["learning_rate"], name=group, showlegend=False, **common), 1, 3)
        if n_seeds == 1:
            epoch = chosen.loc[chosen["fold"] == fold, "epoch"].dropna()
            if len(epoch):
                e = int(epoch.iloc[0])
                y = d.loc[d["epoch"] == e, "val_macro_f1"]
                if len(y):
                    fig.add_trace(go.Scatter(
                        x=[e], y=[float(y.iloc[0])], mode="markers", legendgroup=group, showlegend=False,
                        marker=dict(color=color, size=10, symbol="star"), name=f"{group} selected epoch",
                    ), 1, 2)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="macro-F1", row=1, col=2)
    fig.update_yaxes(title_text="learning rate", exponentformat="e", rangemode="tozero", row=1, col=3)
    fig.update_layout(title=title, height=360)
    return fig


def attention_figure(runs) -> go.Figure:
    """Mean attention pooling weight per window position (0 = oldest visit) with std over fold × seed, for
    the runs that have attention.csv; an annotated empty figure when none has."""
    runs = load_runs(runs)
    title = "Attention: mean pooling weight per window position"
    with_attention = [r for r in runs if r.has_attention]
    if not with_attention:
        return _empty_figure(title, "None of the selected runs has attention weights (attention.csv).")
    fig = go.Figure()
    for i, run in enumerate(runs):
        if not run.has_attention:
            continue
        stats = run.attention.groupby("position")["weight"].agg(["mean", "std", "count"]).reset_index()
        fig.add_trace(go.Scatter(
            x=stats["position"], y=stats["mean"], mode="lines+markers", name=run.label,
            line=dict(color=PALETTE[i % len(PALETTE)]),
            error_y=dict(type="data", array=_none_for_nan(stats["std"].tolist()), visible=True),
            hovertemplate=f"{run.label}<br>position %{{x}}: %{{y:.4f}}<extra></extra>",
        ))
    missing = [r.label for r in runs if not r.has_attention]
    if missing:
        title += f" (no attention: {', '.join(missing)})"
    fig.update_layout(title=title, height=360, xaxis=dict(title="window position (0 = oldest visit)", dtick=1),
                      yaxis=dict(title="mean weight"))
    return fig


# --------------------------------------------------------------------------------------------------
# Report


def _fmt(value, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    return format(value, spec)


def leaderboard_html(table: pd.DataFrame) -> str:
    """The leaderboard as an HTML table (class `leaderboard`, one body row per run)."""
    head = ["run", "model", "kind", "n", "macro-F1", "accuracy", "macro-F1 (classes ≥50)",
            "Δ macro-F1", "Δ accuracy", "pairs", "Wilcoxon p", "note"]
    out = ['<table class="leaderboard">', "<thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for row in table.itertuples(index=False):
        cells = [
            row.run, row.model, row.kind, str(row.n),
            f"{_fmt(row.macro_f1_mean)} ± {_fmt(row.macro_f1_std)}",
            f"{_fmt(row.accuracy_mean)} ± {_fmt(row.accuracy_std)}",
            _fmt(row.macro_f1_min50_mean),
            _fmt(row.delta_macro_f1, "+.4f"), _fmt(row.delta_accuracy, "+.4f"),
            "–" if pd.isna(row.n_pairs) else str(int(row.n_pairs)),
            _fmt(row.p_wilcoxon, ".3g"), row.note,
        ]
        cls = ' class="reference"' if row.is_reference else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c if c is not None else '–'))}</td>" for c in cells)
                   + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _runs_html(runs: list[Run]) -> str:
    head = ["run", "dataset", "model", "kind", "task", "profile", "device", "seeds", "folds", "finished",
            "duration (s)", "commit", "folder"]
    out = ['<table class="runs"><thead><tr>'] + [f"<th>{h}</th>" for h in head] + ["</tr></thead><tbody>"]
    for r in runs:
        m = r.manifest
        device = str(m.get("device", "–")) + (f" ({m['device_name']})" if m.get("device_name") else "")
        cells = [r.label, r.dataset, m.get("model"), m.get("kind"), m.get("task"), m.get("profile"), device,
                 ", ".join(map(str, m.get("seeds") or [])), m.get("n_folds"), m.get("finished_at"),
                 m.get("duration_seconds"), str(m.get("git_commit") or "")[:10], str(r.path)]
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c if c is not None else '–'))}</td>" for c in cells)
                   + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr.reference td { background: #eef5ff; }
.note { color: #555; font-size: .9em; } .figure { margin: .8em 0 1.5em 0; }
"""


def _figure_div(fig: go.Figure, div_id: str) -> str:
    height = fig.layout.height or 450
    return '<div class="figure">' + pio.to_html(
        fig, full_html=False, include_plotlyjs=False, div_id=div_id, default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    ) + "</div>"


def write_report(run_paths, output_path, title: str = "nextpoi analysis report", profile_note: str | None = None,
                 reference=None, selection: str = "selected") -> Path:
    """Write one self-contained HTML file (plotly.js inlined, no network needed) with the runs' details and
    profile, the leaderboard, per-class precision/recall, confusion matrices (buttons switch counts /
    row-normalised), every run's training curves and attention. Written atomically. Returns the path."""
    from plotly.offline import get_plotlyjs

    runs = load_runs(run_paths)
    table = leaderboard(runs, reference=reference, selection=selection)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)

    profiles = sorted({str(r.manifest.get("profile") or "none recorded") for r in runs})
    devices = sorted({str(r.manifest.get("device") or "not recorded") for r in runs})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">Dataset <b>{html.escape(runs[0].dataset)}</b>; {len(runs)} runs; generated '
        f"{html.escape(_dt.datetime.now().astimezone().isoformat(timespec='seconds'))}.</p>",
        "<h2>Profile and runs</h2>",
    ]
    if profile_note:
        parts.append(f"<p>{html.escape(profile_note)}</p>")
    parts.append(f"<p>Profiles in the runs' manifests: <b>{html.escape(', '.join(profiles))}</b>; devices: "
                 f"<b>{html.escape(', '.join(devices))}</b>.</p>")
    parts.append(_runs_html(runs))

    parts.append("<h2>Leaderboard</h2>")
    parts.append(
        f'<p class="note">Selection: {html.escape(selection)} epoch. Mean ± std (ddof=1) over fold × seed; '
        f"Δ against the reference run <b>{html.escape(table.attrs['reference'])}</b>; Wilcoxon: two-sided "
        "signed-rank test over matched (seed, fold) pairs.</p>"
    )
    for note in table.attrs.get("notes", []):
        parts.append(f'<p class="note"><b>Note:</b> {html.escape(note)}</p>')
    parts.append(leaderboard_html(table))
    parts.append(_figure_div(leaderboard_figure(table), "fig-leaderboard"))

    parts.append("<h2>Per-class precision and recall</h2>")
    parts.append(_figure_div(per_class_figure(runs, selection=selection), "fig-per-class"))

    parts.append("<h2>Confusion matrices</h2>")
    parts.append('<p class="note">Summed over fold × seed. Use the buttons above the plot to switch between '
                 "counts and row-normalised shares.</p>")
    parts.append(_figure_div(confusion_figure(runs, normalise=False, selection=selection, buttons=True),
                             "fig-confusion"))

    parts.append("<h2>Training curves</h2>")
    for i, run in enumerate(runs):
        parts.append(_figure_div(curves_figure(run, selection=selection), f"fig-curves-{i}"))

    parts.append("<h2>Attention</h2>")
    parts.append(_figure_div(attention_figure(runs), "fig-attention"))
    parts.append("</body></html>")

    fd, tmp = tempfile.mkstemp(prefix=f".{output_path.name}.", suffix=".tmp", dir=output_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(parts))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(tmp, output_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return output_path
