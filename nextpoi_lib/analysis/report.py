"""The static HTML report over finished runs: one self-contained file, readable offline.

This module owns the report `nextpoi report` writes (`write_report`): the runs' details and profile, the
leaderboard as an HTML table (`leaderboard_html`, also shown by the notebook and the widgets) with its
figure, per-class precision/recall, confusion matrices, every run's training curves and attention. The
numbers come from `nextpoi_lib.analysis.tables`, the figures from `nextpoi_lib.analysis.figures`; this
module only formats and lays them out. `profile_note` says which profile produced the runs.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from ..layers import parameters_file
from ..runfolder import Run, load_runs
from . import figures, tables

__all__ = ["leaderboard_html", "profile_note", "write_report"]


def _fmt(value, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    return format(value, spec)


COLLAPSED = "⚠ collapsed: "
LEAKY = "⚠ " + tables.LEAKY_FLAG


def leaderboard_html(table: pd.DataFrame) -> str:
    """The leaderboard as an HTML table (class `leaderboard`, one body row per run). A run whose predictions
    collapsed (the table's `collapsed`) gets the row class `collapsed` and "⚠ collapsed: <reason>" in its note;
    one whose POI embeddings saw the test users' transitions (`leaky`) the row class `leaky` and `LEAKY`."""
    head = ["run", "model", "kind", "n", "macro-F1", "accuracy", "macro-F1 (classes ≥50)",
            "Δ macro-F1", "Δ accuracy", "Δ baseline", "Δ best reference", "pairs", "Wilcoxon p", "note"]
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
            _fmt(getattr(row, "delta_to_baseline", None), "+.4f"),
            _fmt(getattr(row, "delta_to_best_reference", None), "+.4f"),
            "–" if pd.isna(row.n_pairs) else str(int(row.n_pairs)),
            _fmt(row.p_wilcoxon, ".3g"),
        ]
        collapsed = getattr(row, "collapsed", "") or ""
        leaky = bool(getattr(row, "leaky", False))
        note = row.note if isinstance(row.note, str) else ""
        flags = ([COLLAPSED + collapsed] if collapsed else []) + ([LEAKY] if leaky else [])
        if flags:
            note = "; ".join(flags) + (f" ({note})" if note else "")
        cells.append(note)
        classes = ((["reference"] if row.is_reference else []) + (["collapsed"] if collapsed else [])
                   + (["leaky"] if leaky else []))
        cls = f' class="{" ".join(classes)}"' if classes else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c if c is not None else '–'))}</td>" for c in cells)
                   + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _runs_html(runs: list[Run]) -> str:
    head = ["run", "dataset", "model", "kind", "task", "profile", "device", "seeds", "folds", "finished",
            "duration (s)", "commit", "folder"]
    out = ['<table class="runs"><thead><tr>'] + [f"<th>{h}</th>" for h in head] + ["</tr></thead><tbody>"]
    for cells in tables.runs_table(runs).itertuples(index=False):
        out.append("<tr>" + "".join(f"<td>{html.escape(str(c if c is not None else '–'))}</td>" for c in cells)
                   + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def profile_note(run_paths: Sequence[str | os.PathLike]) -> str:
    """Which profile produced the runs, from their manifests, with the profile file's own description."""
    by_profile: dict[str | None, list[str]] = {}
    for path in run_paths:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
        by_profile.setdefault(manifest.get("profile"), []).append(manifest.get("run_name") or Path(path).name)
    parts = []
    for name, names in by_profile.items():
        runs_text = ", ".join(names)
        if not name:
            parts.append(f"Runs {runs_text}: no profile (the parameter files' own settings).")
            continue
        description = ""
        profile_file = parameters_file(Path("profiles") / f"{name}.yaml")
        if profile_file.is_file():
            comments = [line.lstrip("#").strip() for line in profile_file.read_text().splitlines()
                        if line.startswith("#")]
            description = " ".join(c for c in comments if c)
        parts.append(f"Runs {runs_text}: profile {name!r}" + (f" ({profile_file})" if profile_file.is_file() else "")
                     + (f" -- {description}" if description else "."))
    if len(by_profile) > 1:
        parts.append("These runs come from different profiles: compare them with care.")
    return " ".join(parts)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .9em; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr.reference td { background: #eef5ff; }
tr.collapsed td { background: #fff3e0; } tr.collapsed td:last-child { color: #a04000; font-weight: bold; }
tr.leaky td { background: #fdecea; } tr.leaky td:last-child { color: #a01010; font-weight: bold; }
.note { color: #555; font-size: .9em; } .figure { margin: .8em 0 1.5em 0; }
"""


def _figure_div(fig: go.Figure, div_id: str) -> str:
    height = fig.layout.height or 450
    return '<div class="figure">' + pio.to_html(
        fig, full_html=False, include_plotlyjs=False, div_id=div_id, default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    ) + "</div>"


def _write_atomically(text: str, output_path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{output_path.name}.", suffix=".tmp", dir=output_path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a report is meant to be shared
        os.replace(tmp, output_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_report(run_paths, output_path, title: str = "nextpoi analysis report", profile_note: str | None = None,
                 reference=None, selection: str = "selected") -> Path:
    """Write one self-contained HTML file (plotly.js inlined, no network needed) with the runs' details and
    profile, the leaderboard, per-class precision/recall, confusion matrices (buttons switch counts /
    row-normalised), every run's training curves and attention. Written atomically. Returns the path."""
    from plotly.offline import get_plotlyjs

    runs = load_runs(run_paths)
    table = tables.leaderboard(runs, reference=reference, selection=selection)
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
    # The leaderboard refuses runs with different class lists, so every run here predicts these classes.
    parts.append(f'<p class="classes">Every run predicts the same {len(runs[0].classes)} classes: '
                 f"<b>{html.escape(', '.join(runs[0].classes))}</b>.</p>")
    parts.append(_runs_html(runs))

    parts.append("<h2>Leaderboard</h2>")
    parts.append(
        f'<p class="note">Selection: {html.escape(selection)} epoch. Mean ± std (ddof=1) over fold × seed; '
        f"Δ against the reference run <b>{html.escape(table.attrs['reference'])}</b>; Wilcoxon: two-sided "
        "signed-rank test over the folds, pairs = folds. " + html.escape(tables.PAIRING_RULE)
        + " Δ baseline: macro-F1 minus the run named "
        f"<b>{html.escape(str(table.attrs.get('baseline') or 'baseline (none here)'))}</b>; Δ best reference: macro-F1 "
        "minus the best reference method (kind <i>baseline</i>: majority, last category, Markov, boosted trees) "
        f"<b>{html.escape(str(table.attrs.get('best_reference') or '(none here)'))}</b>, the floor a model has to "
        "beat.</p>"
    )
    explanations = {
        # column: (bold label, what follows it, what the flag means)
        "collapsed": (html.escape(COLLAPSED.strip()), " ",
                      "predict (almost) one class for every window, or never predict half the classes (the row's "
                      "note says which). The majority reference does so by design; a trained model flagged like it "
                      "learnt no more than the class frequencies under these settings, which is why its macro-F1 is "
                      "near zero — the workbench did not fail."),
        "leaky": (html.escape(LEAKY), ": ",
                  "use POI embeddings trained on every user's visit transitions (embeddings.source: "
                  "transition_graph_all_users), so the next visit of a test window leaks into its last visit's "
                  "vector. Their scores are inflated and are not comparable with the other runs."),
    }
    for column, (label, separator, explanation) in explanations.items():
        flagged = table[table[column].astype(bool)] if column in table else table.iloc[0:0]
        if len(flagged):
            parts.append(f'<p class="note"><b>{label}</b>{separator}{len(flagged)} run(s) — '
                         + html.escape(", ".join(flagged["run"].astype(str))) + f" — {explanation}</p>")
    for note in table.attrs.get("notes", []):
        if note == table.attrs.get("pairing"):
            continue  # the pairing rule is stated in the paragraph above
        parts.append(f'<p class="note"><b>Note:</b> {html.escape(note)}</p>')
    parts.append(leaderboard_html(table))
    parts.append(_figure_div(figures.leaderboard_figure(table), "fig-leaderboard"))

    parts.append("<h2>Per-class precision and recall</h2>")
    parts.append(_figure_div(figures.per_class_figure(runs, selection=selection), "fig-per-class"))

    parts.append("<h2>Confusion matrices</h2>")
    parts.append('<p class="note">Summed over fold × seed. Use the buttons above the plot to switch between '
                 "counts and row-normalised shares.</p>")
    parts.append(_figure_div(figures.confusion_figure(runs, normalise=False, selection=selection, buttons=True),
                             "fig-confusion"))

    parts.append("<h2>Training curves</h2>")
    for i, run in enumerate(runs):
        parts.append(_figure_div(figures.curves_figure(run, selection=selection), f"fig-curves-{i}"))

    parts.append("<h2>Attention</h2>")
    parts.append(_figure_div(figures.attention_figure(runs), "fig-attention"))

    # Tuning studies (`nextpoi tune`) stored beside these runs: <dataset>/.tuning/<study>.db.
    if any((Path(path).parent / ".tuning").glob("*.db") for path in run_paths):
        from ..tuning import discover_studies, study_figures, study_summary

        parts.append("<h2>Tuning studies</h2>")
        parts.append('<p class="note">Optuna studies of <code>nextpoi tune</code>: every trial is scored on the '
                     "inner-validation users of the folds named (never a test fold); nested studies (one per outer "
                     "fold) are named <i>&lt;study&gt;.nested-fold&lt;k&gt;</i>.</p>")
        studies = sorted({study for path in run_paths for study in discover_studies(Path(path).parent)})
        for i, (storage, name) in enumerate(studies):
            summary = study_summary(storage, name)
            objective = summary["objective"]
            best = ("no complete trial" if summary["best_value"] is None else
                    f"best {summary['best_value']:.4f} (trial {summary['best_trial']}): "
                    + ", ".join(f"{k}={v!r}" for k, v in summary["best_params"].items()))
            parts.append(f"<h3>{html.escape(name)}</h3><p>{summary['trials']} trials ("
                         + html.escape(", ".join(f"{n} {s}" for s, n in sorted(summary["states"].items())))
                         + f"); {html.escape(best)}. Objective: {html.escape(str(objective.get('metric', '–')))}, "
                         f"folds {html.escape(str(objective.get('folds', '–')))}, seeds "
                         f"{html.escape(str(objective.get('seeds', '–')))}; stored in "
                         f"{html.escape(str(storage))}.</p>")
            if summary["trials"]:
                for key, figure in study_figures(storage, name).items():
                    parts.append(_figure_div(figure, f"fig-study-{i}-{key}"))
    parts.append("</body></html>")

    _write_atomically("\n".join(parts), output_path)
    return output_path
