"""Plotly figures of finished runs, drawn only from the tables of `nextpoi_lib.analysis.tables`.

This module owns how the analysis looks: the leaderboard bars, per-class precision/recall bars, confusion
heatmaps (with the buttons that switch counts / row shares in the browser), training curves and attention
weights. A figure function accepts run folders (paths or `Run`s) or, for the leaderboard, the table itself,
asks `tables` for the numbers and draws them; no number is computed here, so a figure always shows exactly
what its table says. Nothing here draws widgets (that is `nextpoi_lib.widgets`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..runfolder import load_runs
from . import tables

__all__ = ["leaderboard_figure", "per_class_figure", "confusion_figure", "curves_figure", "attention_figure"]

PALETTE = qualitative.Plotly


def _none_for_nan(values) -> list:
    return [None if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in values]


def _scope(fold) -> str:
    return "all folds × seeds" if fold is None else f"fold {fold}"


def _empty_figure(title: str, message: str, height: int = 300) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(
        title=title, height=height,
        xaxis=dict(visible=False), yaxis=dict(visible=False),
        annotations=[dict(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                          font=dict(size=14))],
    )
    return fig


# --------------------------------------------------------------------------------------------------
# Leaderboard and per class


def leaderboard_figure(runs_or_table, reference=None, selection: str = "selected") -> go.Figure:
    """Macro-F1 and accuracy per run (mean ± std over fold × seed), in leaderboard order. Takes the
    `tables.leaderboard` table, or runs to build it from."""
    if isinstance(runs_or_table, pd.DataFrame):
        table = runs_or_table
    else:
        table = tables.leaderboard(runs_or_table, reference, selection)
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


def per_class_figure(runs, classes=None, fold=None, selection: str = "selected") -> go.Figure:
    """Grouped bars, one group per class and one bar per run: precision (left) and recall (right).
    Aggregate means with std error bars over fold × seed, or one fold (std over its seeds)."""
    runs = load_runs(runs)
    table = tables.per_class_table(runs, selection, fold)
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


def _matrix_text(matrix: np.ndarray, normalise: bool, signed: bool) -> list[list[str]]:
    if normalise:
        fmt = "{:+.2f}" if signed else "{:.2f}"
    else:
        fmt = "{:+d}" if signed else "{:d}"
    return [[fmt.format(float(v) if normalise else int(v)) for v in row] for row in matrix]


def confusion_figure(runs, normalise: bool = False, fold=None, selection: str = "selected",
                     buttons: bool = False) -> go.Figure:
    """Confusion matrices side by side (heatmaps of `tables.confusion_panels`: counts, or rows normalised
    to sum to 1), and with two or more runs a difference matrix (second run minus first). `buttons=True`
    adds plotly buttons that switch between counts and row-normalised in the browser, with no kernel (used
    by the report)."""
    runs = load_runs(runs)
    if not runs:
        return _empty_figure("Confusion matrices", "No runs selected.")
    classes = runs[0].classes
    views = {norm: tables.confusion_panels(runs, norm, selection, fold)
             for norm in ((False, True) if buttons else (normalise,))}

    def matrices(norm: bool):
        return [p.matrix for p in views[norm]]

    def texts(norm: bool):
        return [_matrix_text(p.matrix, norm, signed=p.difference) for p in views[norm]]

    panels = views[normalise]
    with_diff = any(p.difference for p in panels)
    titles = [p.title for p in panels]
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
    for i, (p, text) in enumerate(zip(panels, texts(normalise))):
        fig.add_trace(go.Heatmap(
            z=np.asarray(p.matrix).tolist(), x=classes, y=classes, text=text,
            texttemplate="%{text}" if show_text else None,
            textfont=dict(size=12 if k <= 6 else 9),
            coloraxis="coloraxis2" if p.difference else "coloraxis",
            name=p.title,
            hovertemplate=f"{p.title}<br>true %{{y}}<br>predicted %{{x}}<br>%{{text}}<extra></extra>",
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


def curves_figure(run, folds=None, selection: str = "selected") -> go.Figure:
    """Per fold: train (solid) and validation (dashed) loss, validation macro-F1 and learning rate against
    epoch, from `tables.training_curves`. With several seeds each fold's curve is the mean over seeds. With
    one seed a marker shows the epoch chosen on the inner validation users."""
    curves = tables.training_curves(run, folds, selection)
    run = curves.run
    title = f"Training curves: {run.label}"
    if curves.mean.empty:
        reason = "a baseline without epochs" if run.kind == "baseline" else "curves.csv is empty"
        return _empty_figure(title, f"No training curves for {run.label} ({reason}).")
    if curves.n_seeds > 1:
        title += f" (mean over {curves.n_seeds} seeds)"
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.07, subplot_titles=(
        "Loss (train solid, validation dashed)", "Validation macro-F1", "Learning rate"))
    chosen = curves.selected.set_index("fold")
    for i, (fold, d) in enumerate(curves.mean.groupby("fold")):
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
        if fold in chosen.index:
            point = chosen.loc[fold]
            fig.add_trace(go.Scatter(
                x=[int(point["epoch"])], y=[float(point["val_macro_f1"])], mode="markers", legendgroup=group,
                showlegend=False, marker=dict(color=color, size=10, symbol="star"), name=f"{group} selected epoch",
            ), 1, 2)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="loss", row=1, col=1)
    fig.update_yaxes(title_text="macro-F1", row=1, col=2)
    fig.update_yaxes(title_text="learning rate", exponentformat="e", rangemode="tozero", row=1, col=3)
    fig.update_layout(title=title, height=360)
    return fig


def attention_figure(runs) -> go.Figure:
    """Mean attention pooling weight per window position (0 = oldest visit) with std over fold × seed
    (`tables.attention_table`), for the runs that have attention.csv; an annotated empty figure when none
    has."""
    runs = load_runs(runs)
    title = "Attention: mean pooling weight per window position"
    table = tables.attention_table(runs)
    if table.empty:
        return _empty_figure(title, "None of the selected runs has attention weights (attention.csv).")
    fig = go.Figure()
    for i, run in enumerate(runs):  # colour by the run's place among all selected runs
        if not run.has_attention:
            continue
        stats = table[table["run"] == run.label]
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
