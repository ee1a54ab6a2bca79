# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.18.1
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Analysis of finished runs
#
# Compares complete run folders (`outputs/<dataset>/<run-name>/`, see `docs/run-folder.md`) of one dataset:
# leaderboard with paired tests, per-class precision and recall, confusion matrices, training curves and
# attention weights, then an interactive explorer. Every number comes from the run folders, read by
# `nextpoi_lib.runfolder`; every table is computed by `nextpoi_lib.analysis.tables` and every figure drawn from
# it by `nextpoi_lib.analysis.figures`. This notebook only calls them and shows the results.
#
# Run it with papermill, e.g.
# `papermill notebooks/analysis.ipynb out.ipynb -p outputs_root outputs -k python3`.

# %% tags=["parameters"]
outputs_root = "outputs"
run_names = []  # empty: every complete run under outputs_root (one dataset); or names like "baseline"
dataset = ""  # empty: the only dataset, or the one with the most recently finished run
reference = ""  # empty: the run named "baseline" if present, else the first
selection = "selected"  # which epoch's metrics: "selected", "last" or "calibrated"

# %%
import plotly.io as pio
from IPython.display import HTML, display

from nextpoi_lib import runfolder
from nextpoi_lib.analysis import figures, report, tables
from nextpoi_lib.widgets import AnalysisApp

# The plotly mimetype renders natively in JupyterLab; the inline-HTML fallback (plotly.js embedded once)
# makes the figures visible in papermill output opened elsewhere, offline.
pio.renderers.default = "plotly_mimetype+notebook"

run_paths = runfolder.select_runs(outputs_root, run_names, dataset or None)
runs = runfolder.load_runs(run_paths)
comparability = tables.check_comparable(runs)
print(f"{len(runs)} runs of dataset {runs[0].dataset!r}:")
display(tables.runs_table(runs))
for note in comparability.notes:
    print("Note:", note)

# %% [markdown]
# ## Leaderboard
#
# Mean ± std over fold × seed. Δ against the reference run; Wilcoxon p from a two-sided paired test over fold
# means (each run averaged over its seeds within a fold, one pair per fold: the folds are the independent units,
# so with 5 folds no p is below 2/2^5 = 0.0625; the `note` column says so).

# %%
table = tables.leaderboard(runs, reference=reference or None, selection=selection)
display(HTML(report.leaderboard_html(table)))
figures.leaderboard_figure(table).show()

# %% [markdown]
# ## Per-class precision and recall

# %%
figures.per_class_figure(runs, selection=selection).show()

# %% [markdown]
# ## Confusion matrices
#
# Summed over fold × seed; the buttons switch between counts and row-normalised shares.

# %%
figures.confusion_figure(runs, normalise=False, selection=selection, buttons=True).show()

# %% [markdown]
# ## Training curves

# %%
for run in runs:
    figures.curves_figure(run, selection=selection).show()

# %% [markdown]
# ## Attention

# %%
figures.attention_figure(runs).show()

# %% [markdown]
# ## Tuning studies
#
# Optuna studies of `nextpoi tune` stored beside these runs (`<dataset>/.tuning/<study>.db`): trials per state,
# the best inner-validation macro-F1 and its parameters, then the optimisation history, parameter importances
# and slices, read from the stored study by `nextpoi_lib.tuning`.

# %%
from nextpoi_lib import tuning

studies = sorted({study for path in run_paths for study in tuning.discover_studies(path.parent)})
print(f"{len(studies)} tuning studies" + ("" if studies else " (nextpoi tune stores them in <dataset>/.tuning/)"))
for storage, study_name in studies:
    print(tuning.study_summary(storage, study_name))
    for figure in tuning.study_figures(storage, study_name).values():
        figure.show()

# %% [markdown]
# ## Interactive explorer
#
# Needs a live kernel: pick runs, reference, epoch selection, one fold or all, classes, and counts or
# row-normalised confusion matrices.

# %%
app = AnalysisApp(run_paths, selection=selection)
app.display()
