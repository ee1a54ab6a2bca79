"""Interactive analysis controls: ipywidgets wiring around `nextpoi_lib.analysis`, nothing more.

`AnalysisApp(outputs_root)` (or `AnalysisApp([run paths])`) shows a run selector, reference run, epoch
selection, aggregate-or-one-fold, class selector and a counts/row-normalised toggle, and redraws the
leaderboard, per-class precision/recall, confusion matrices, training curves and attention when a control
changes. Every table is computed by `analysis.tables` and every figure drawn by `analysis.figures`; run
folders are read by `nextpoi_lib.runfolder`.

Each figure is shown in an `ipywidgets.Output` whose `outputs` hold the figure as a plotly mime bundle
(rendered natively by JupyterLab's plotly extension), and the current `plotly.graph_objects.Figure`
objects are kept in `app.plots`. The callbacks (`on_*_change`) are public methods, so tests can call them
without a browser or kernel and compare `app.plots[...]` before and after. (Output widgets rather than
`FigureWidget`s: plotly 6 FigureWidgets embed a 5 MB JavaScript bundle per widget in a saved notebook's
widget state, and need the extra `anywidget` package.)
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import ipywidgets as W
import plotly.graph_objects as go

from . import runfolder
from .analysis import figures, report, tables

__all__ = ["AnalysisApp"]

_AGGREGATE = "all folds × seeds"
_PLOTLY_MIME = "application/vnd.plotly.v1+json"
PLOTS = ("leaderboard", "per_class", "confusion", "curves", "attention")


def figure_output(fig: go.Figure) -> dict:
    """`fig` as one nbformat display_data output (plotly mime bundle plus a plain-text fallback)."""
    spec = json.loads(fig.to_json())
    spec["config"] = {"displaylogo": False, "responsive": True}
    title = fig.layout.title.text or "plotly figure"
    return {"output_type": "display_data", "metadata": {},
            "data": {_PLOTLY_MIME: spec, "text/plain": f"<Figure: {title}>"}}


class AnalysisApp:
    """Interactive analysis over run folders.

    `source`: an outputs root (every complete run under it is offered; the initial selection is one
    dataset, see `runfolder.select_runs`), one run folder, or a list of run folders.
    """

    def __init__(self, source, *, dataset: str | None = None, selection: str = "selected"):
        self.runs: dict[str, runfolder.Run] = {}
        initial = self._load_source(source, dataset)
        labels = list(self.runs)

        self.run_select = W.SelectMultiple(
            options=labels, value=tuple(initial), rows=min(max(len(labels), 2), 8), description="Runs",
            layout=W.Layout(width="360px"),
        )
        self.reference_select = W.Dropdown(description="Reference", layout=W.Layout(width="300px"))
        self.selection_select = W.Dropdown(description="Epoch", layout=W.Layout(width="240px"))
        self.fold_select = W.Dropdown(description="Folds", layout=W.Layout(width="240px"))
        self.class_select = W.SelectMultiple(description="Classes", rows=6, layout=W.Layout(width="260px"))
        self.normalise_toggle = W.ToggleButtons(
            options=[("Counts", False), ("Row-normalised", True)], value=False, description="Confusion",
        )
        self.curves_select = W.Dropdown(description="Curves of", layout=W.Layout(width="300px"))
        self.message = W.HTML()
        self.leaderboard_html = W.HTML()

        self.plots: dict[str, go.Figure] = {}
        self.outputs: dict[str, W.Output] = {name: W.Output() for name in PLOTS}

        self._busy = False
        self._populate_controls(selection=selection)

        self.run_select.observe(self.on_runs_change, names="value")
        self.reference_select.observe(self.on_reference_change, names="value")
        self.selection_select.observe(self.on_selection_change, names="value")
        self.fold_select.observe(self.on_fold_change, names="value")
        self.class_select.observe(self.on_classes_change, names="value")
        self.normalise_toggle.observe(self.on_normalise_change, names="value")
        self.curves_select.observe(self.on_curves_change, names="value")

        controls = W.HBox([
            self.run_select,
            W.VBox([self.reference_select, self.selection_select, self.fold_select, self.curves_select]),
            self.class_select,
        ])
        self.widget = W.VBox([
            controls, self.message,
            W.HTML("<h3>Leaderboard</h3>"), self.leaderboard_html, self.outputs["leaderboard"],
            W.HTML("<h3>Per-class precision and recall</h3>"), self.outputs["per_class"],
            W.HTML("<h3>Confusion matrices</h3>"), self.normalise_toggle, self.outputs["confusion"],
            W.HTML("<h3>Training curves</h3>"), self.outputs["curves"],
            W.HTML("<h3>Attention</h3>"), self.outputs["attention"],
        ])
        self.refresh()

    # ---------------------------------------------------------------------------------------- setup

    def _load_source(self, source, dataset) -> list[str]:
        if isinstance(source, (str, os.PathLike)) and (Path(source) / "manifest.json").exists():
            paths, initial_paths = [Path(source)], [Path(source)]
        elif isinstance(source, (str, os.PathLike)):
            paths = runfolder.discover_runs(source)
            if not paths:
                raise ValueError(f"no complete runs under {Path(source).resolve()}")
            initial_paths = runfolder.select_runs(source, dataset=dataset)
        else:
            paths = initial_paths = [Path(p) for p in source]
            if not paths:
                raise ValueError("no run folders given")
        loaded = runfolder.load_runs(paths)  # unique labels
        self.runs = {run.label: run for run in loaded}
        by_path = {run.path.resolve(): run.label for run in loaded}
        return [by_path[Path(p).resolve()] for p in initial_paths]

    def _with_busy(self, fn):
        self._busy = True
        try:
            fn()
        finally:
            self._busy = False

    def _populate_controls(self, selection: str | None = None) -> None:
        """Options that depend on the selected runs: reference, epoch selection, folds, classes, curves."""
        def populate():
            runs = self.selected_runs()
            labels = [r.label for r in runs]
            ref = self.reference_select.value
            self.reference_select.options = labels
            if ref not in labels:
                ref = next((r.label for r in runs if r.name == "baseline"), labels[0] if labels else None)
            self.reference_select.value = ref

            sel = selection or self.selection_select.value
            selections = list(dict.fromkeys(s for r in runs for s in r.selections())) or ["selected"]
            self.selection_select.options = selections
            self.selection_select.value = sel if sel in selections else selections[0]

            fold = self.fold_select.value
            folds = sorted({f for r in runs for f in r.folds()})
            self.fold_select.options = [(_AGGREGATE, None)] + [(f"fold {f}", f) for f in folds]
            self.fold_select.value = fold if fold in folds else None

            classes = list(dict.fromkeys(c for r in runs for c in r.classes))
            chosen = [c for c in self.class_select.value if c in classes]
            self.class_select.options = classes
            self.class_select.value = tuple(chosen or classes)

            current = self.curves_select.value
            self.curves_select.options = labels
            self.curves_select.value = current if current in labels else (labels[0] if labels else None)

        self._with_busy(populate)

    # ---------------------------------------------------------------------------------------- state

    def selected_runs(self) -> list[runfolder.Run]:
        return [self.runs[label] for label in self.run_select.value]

    @property
    def fold(self):
        return self.fold_select.value

    @property
    def selection(self) -> str:
        return self.selection_select.value or "selected"

    def _show_error(self, error: Exception | None) -> None:
        self.message.value = "" if error is None else (
            f'<div style="color:#a00"><b>Cannot compare:</b> {html.escape(str(error))}</div>'
        )

    def _comparable(self) -> bool:
        runs = self.selected_runs()
        if not runs:
            self._show_error(ValueError("select at least one run"))
            return False
        try:
            tables.check_comparable(runs)
        except ValueError as error:
            self._show_error(error)
            return False
        self._show_error(None)
        return True

    # ---------------------------------------------------------------------------------------- redraws

    def refresh(self) -> None:
        """Redraw everything (if the selected runs can be compared; otherwise say why)."""
        self._redraw("leaderboard", "per_class", "confusion", "curves", "attention")

    def _redraw(self, *parts: str) -> None:
        if not self._comparable():
            return
        try:
            for part in parts:
                getattr(self, f"update_{part}")()
        except ValueError as error:  # e.g. a fold that one of the runs does not have
            self._show_error(error)

    def _show(self, name: str, fig: go.Figure) -> None:
        self.plots[name] = fig
        self.outputs[name].outputs = (figure_output(fig),)

    def update_leaderboard(self) -> None:
        table = tables.leaderboard(self.selected_runs(), reference=self.reference_select.value,
                                  selection=self.selection)
        notes = "".join(f"<p><b>Note:</b> {html.escape(n)}</p>" for n in table.attrs.get("notes", []))
        self.leaderboard_html.value = notes + report.leaderboard_html(table)
        self.leaderboard_table = table
        self._show("leaderboard", figures.leaderboard_figure(table))

    def update_per_class(self) -> None:
        fig = figures.per_class_figure(self.selected_runs(), classes=list(self.class_select.value),
                                       fold=self.fold, selection=self.selection)
        self._show("per_class", fig)

    def update_confusion(self) -> None:
        fig = figures.confusion_figure(self.selected_runs(), normalise=bool(self.normalise_toggle.value),
                                       fold=self.fold, selection=self.selection)
        self._show("confusion", fig)

    def update_curves(self) -> None:
        label = self.curves_select.value
        if label is None:
            return
        fig = figures.curves_figure(self.runs[label], selection=self.selection)
        self._show("curves", fig)

    def update_attention(self) -> None:
        self._show("attention", figures.attention_figure(self.selected_runs()))

    # ---------------------------------------------------------------------------------------- callbacks
    # Each takes the traitlets change dict (unused) so it can be an observer and be called directly.

    def on_runs_change(self, change=None) -> None:
        if self._busy:
            return
        self._populate_controls()
        self.refresh()

    def on_reference_change(self, change=None) -> None:
        if not self._busy:
            self._redraw("leaderboard")

    def on_selection_change(self, change=None) -> None:
        if not self._busy:
            self._redraw("leaderboard", "per_class", "confusion", "curves")

    def on_fold_change(self, change=None) -> None:
        if not self._busy:
            self._redraw("per_class", "confusion")

    def on_classes_change(self, change=None) -> None:
        if not self._busy:
            self._redraw("per_class")

    def on_normalise_change(self, change=None) -> None:
        if not self._busy:
            self._redraw("confusion")

    def on_curves_change(self, change=None) -> None:
        if not self._busy:
            self._redraw("curves")

    # ---------------------------------------------------------------------------------------- display

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def display(self):
        from IPython.display import display

        display(self.widget)
