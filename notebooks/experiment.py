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
# # One experiment
#
# Cross-validates one experiment and writes its run folder `<output_root>/<dataset>/<run-name>/` with the same
# files as `nextpoi run` (see `docs/run-folder.md`; the code path is the same, `experiment.run_experiment`),
# then shows the fold summary, the training curves and the confusion matrix. It trains on the GPU when one is
# visible and on the CPU otherwise; `manifest.json` records the device.
#
# From the repository root:
#
# ```
# papermill notebooks/experiment.ipynb out.ipynb -f parameters/smoke.yaml -k python3
# papermill notebooks/experiment.ipynb out.ipynb -f parameters/A.yaml -p profile cpu -k python3
# papermill notebooks/experiment.ipynb out.ipynb -y "parameter_files: [parameters/C.yaml]" -k python3
# nextpoi batch parameters/baseline.yaml parameters/A.yaml --profile auto   # once per file, resumable
# ```
#
# `-f FILE` injects the file's top-level keys (`name`, `dataset`, `model`, `training`, ..., `extends`) as the
# variables below, and resolves to exactly the configuration `nextpoi run FILE` would run. The source of truth
# is `notebooks/experiment.py` (Jupytext percent format); regenerate the notebook with
# `jupytext --to ipynb notebooks/experiment.py`.

# %%
from pathlib import Path

import pandas as pd
import plotly.io as pio
from IPython.display import display

from nextpoi_lib import experiment, notebook_parameters, runfolder
from nextpoi_lib.analysis import figures

# The plotly mimetype renders natively in JupyterLab; the inline-HTML fallback (plotly.js embedded once) keeps
# the figures visible offline in the executed notebook opened elsewhere.
pio.renderers.default = "plotly_mimetype+notebook"

# Lets the configuration cell see which parameters papermill injects after the parameters cell.
notebook_parameters.watch_injected_parameters()

# %% tags=["parameters"]
# How the values combine, later wins: library defaults <- parameter_files <- extends <- the sections below
# <- profile <- output_root / overwrite. When papermill injects any section (name ... output, e.g. with
# -f FILE), only the injected sections count, as in a parameter file given to `nextpoi run`. The tiny
# CPU-sized sections below are used only when no section is injected and neither parameter_files nor
# extends is set (`-p profile cpu` or `-p output_root D` alone keep them).
parameter_files = []  # YAML parameter files layered left to right, loaded first (the batch runner passes one)
extends = None  # a parameter file's `extends:` value (a name or a list), resolved relative to parameters/
profile = None  # a parameters/profiles file applied last: a path, "cpu", "gpu", or "auto" (gpu when a GPU is visible)
output_root = None  # folder for run folders; None: the config's output.root ("outputs")
overwrite = False  # True: replace an existing complete run of the same name

name = "notebook"
description = "Tiny CPU-sized default of the experiment notebook."
dataset = {"source": "foursquare_nyc"}
embeddings = {"epochs": 20}
windows = {"length": 9, "stride": 9, "features": ["embedding"]}
folds = {"n_splits": 5}
model = {"name": "transformer", "num_layers": 1, "num_heads": 4, "model_dim": 32, "feedforward_dim": 64}
trees = {}  # the gradient-boosted trees (model.name: gradient_boosting or blended_trees)
blend = {}  # model.name: blended_trees: the neural head blended with the trees
loss = {"name": "cross_entropy", "class_weights": "balanced"}
optimizer = {"weight_decay": 1.0e-4}
scheduler = {"name": "onecycle", "max_lr": 3.0e-3, "pct_start": 0.3, "div_factor": 10.0, "final_div_factor": 100.0}
training = {"epochs": 3, "batch_size": 256, "seeds": [0], "device": "auto"}
output = {}
tune = {}  # nextpoi tune only (the search space, README "Tune"); ignored by a run

# %% [markdown]
# ## Configuration
#
# The fully resolved configuration (every default filled in); `config.yaml` in the run folder holds the same.

# %%
# NBVAL_CHECK_OUTPUT
resolved = notebook_parameters.notebook_config(globals())
config = resolved.config
print(resolved.describe())

# %% [markdown]
# ## Cross-validation
#
# Prepares windows and user-grouped folds, trains every seed × fold (or fits the reference baseline), and
# writes the run folder atomically. An existing complete run of the same name stops here unless `overwrite`.

# %%
# NBVAL_IGNORE_OUTPUT
# Progress lines and timings differ from one execution to the next.
run_path = experiment.run_experiment(config)

# %%
# NBVAL_IGNORE_OUTPUT
# Device, timings and versions differ between machines and executions.
run = runfolder.load_run(run_path)
manifest = run.manifest
print(f"Run {manifest['run_name']} ({manifest['kind']}, model {manifest['model']}) on {manifest['device']} "
      f"({manifest['device_name']}), profile {manifest['profile']}, {manifest['duration_seconds']:.0f}s, "
      f"finished {manifest['finished_at']}")

# %%
# NBVAL_CHECK_OUTPUT
print(f"Run folder {run_path.name}/:", ", ".join(sorted(p.name for p in Path(run_path).iterdir())))
print(f"{manifest['n_windows']} windows, {manifest['n_folds']} folds, seeds {manifest['seeds']}, "
      f"classes {', '.join(manifest['classes'])}")

# %% [markdown]
# ## Fold summary
#
# Test-fold metrics per seed × fold at the epoch selected on the inner validation users, then mean ± std
# (ddof=1) over all fold × seed pairs for each selection (`summary.json`).

# %%
# NBVAL_CHECK_OUTPUT
columns = ["seed", "fold", "epoch", "accuracy", "macro_f1", "macro_f1_min50", "n_test"]
fold_table = run.fold_metrics[run.fold_metrics["selection"] == "selected"][columns].reset_index(drop=True)
display(fold_table.round(4))
summary_table = pd.DataFrame([{"selection": selection, "metric": metric, "mean": values["mean"], "std": values["std"],
                               "n": values["n"]}
                              for selection, metrics in run.summary.items() if selection not in ("per_class", "collapse")
                              for metric, values in metrics.items()])
display(summary_table.round(4))

# %% [markdown]
# ## Training curves

# %%
# NBVAL_IGNORE_OUTPUT
# Plotly output carries random element ids.
figures.curves_figure(run).show()

# %% [markdown]
# ## Confusion matrix
#
# Summed over fold × seed at the selected epoch, rows normalised to the share of each true class.

# %%
# NBVAL_IGNORE_OUTPUT
figures.confusion_figure([run], normalise=True).show()
