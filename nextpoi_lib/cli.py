"""Command line: `nextpoi run`, `nextpoi batch`, `nextpoi report`.

`run` and `batch` resolve their parameters with the same rules (`layers.resolve_layers`, through
`experiment.load_config`), the rules the experiment notebook uses too: parameter files left to right, then the
profile (None, "auto", a name such as "cpu", or a path), then the command's options.

Known errors (bad parameters, bad data, an existing run) print one paragraph and exit with status 2;
nothing is written in that case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from .errors import UserError

PROFILE_HELP = ("a parameters/profiles file applied last: a path, a name (cpu, gpu), or 'auto': gpu when a CUDA "
                "GPU is visible, else cpu")


# --------------------------------------------------------------------------------------------------
# nextpoi run


def _config_overrides(args: argparse.Namespace) -> dict:
    overrides: dict = {}
    if getattr(args, "overwrite", False):
        overrides.setdefault("output", {})["overwrite"] = True
    if getattr(args, "output_root", None):
        overrides.setdefault("output", {})["root"] = args.output_root
    if getattr(args, "quiet", False):
        overrides.setdefault("training", {})["progress"] = False
    if getattr(args, "device", None):
        overrides.setdefault("training", {})["device"] = args.device
    return overrides


def run_config(args: argparse.Namespace):
    """The config `nextpoi run` runs for its parsed arguments."""
    from .experiment import load_config

    return load_config(*args.parameter_files, profile=args.profile or None, overrides=_config_overrides(args))


def command_run(args: argparse.Namespace) -> int:
    from .experiment import run_experiment

    run_experiment(run_config(args))
    return 0


# --------------------------------------------------------------------------------------------------
# nextpoi batch


def command_batch(args: argparse.Namespace) -> int:
    from .batch import run_batch

    summary = run_batch(args.parameter_files, profile=args.profile, output_root=args.output_root or "outputs",
                        workers=args.workers, backend=args.backend, ray_address=args.ray_address,
                        cell_timeout=args.cell_timeout or None, kernel_name=args.kernel, overwrite=args.overwrite,
                        progress=True, progress_bars=False if args.no_progress_bars else None,
                        layers=args.layer)
    return 0 if summary.ok else 1


# --------------------------------------------------------------------------------------------------
# nextpoi tune


def command_tune(args: argparse.Namespace) -> int:
    from .tuning import run_nested, run_study

    config = run_config(args)  # the same layering as `nextpoi run`; the tune section comes with the files
    if args.nested:
        run_nested(config, trials=args.trials)
    else:
        run_study(config, trials=args.trials, best_output=args.best_output)
    return 0


# --------------------------------------------------------------------------------------------------
# nextpoi report


def command_report(args: argparse.Namespace) -> int:
    from .analysis.report import profile_note, write_report
    from .runfolder import discover_runs, is_complete

    output_root = Path(args.output_root or "outputs")
    if args.run_dirs:
        run_paths = [Path(p) for p in args.run_dirs]
        incomplete = [str(p) for p in run_paths if not is_complete(p)]
        if incomplete:
            print(f"error: not complete run folders (no manifest.json with status complete): {', '.join(incomplete)}.",
                  file=sys.stderr)
            return 2
    else:
        run_paths = discover_runs(output_root)
        if not run_paths:
            print(f"error: no complete runs under {str(output_root)!r}. Run experiments first (nextpoi batch "
                  f"parameters/*.yaml), or name run folders.", file=sys.stderr)
            return 2
    by_dataset: dict[str, list[Path]] = {}
    for path in run_paths:
        dataset = json.loads((path / "manifest.json").read_text()).get("dataset") or path.parent.name
        by_dataset.setdefault(dataset, []).append(path)
    if args.dataset:
        if args.dataset not in by_dataset:
            print(f"error: no complete runs of dataset {args.dataset!r} under {str(output_root)!r}; datasets with "
                  f"runs: {', '.join(sorted(by_dataset)) or 'none'}.", file=sys.stderr)
            return 2
        by_dataset = {args.dataset: by_dataset[args.dataset]}
    if args.output and len(by_dataset) > 1:
        print(f"error: the runs come from several datasets ({', '.join(sorted(by_dataset))}); a report covers one. "
              f"Name the run folders of one dataset, or leave out --output to get one report per dataset.",
              file=sys.stderr)
        return 2
    for dataset, paths in sorted(by_dataset.items()):
        if args.output:
            output = Path(args.output)
        elif len(by_dataset) == 1:
            output = output_root / "report.html"
        else:
            output = output_root / f"report-{dataset}.html"
        note = profile_note(paths)
        profiles = sorted({str(json.loads((p / "manifest.json").read_text()).get("profile")) for p in paths})
        title = f"nextpoi report: {dataset} (profile {', '.join(profiles)})"
        write_report(paths, output, title=title, profile_note=note)
        print(f"Report of {len(paths)} runs of {dataset} -> {output}")
        print(note)
    return 0


# --------------------------------------------------------------------------------------------------
# nextpoi export mlflow


def command_export_mlflow(args: argparse.Namespace) -> int:
    from .mlflow_export import default_tracking_uri, export_runs, run_folders_to_export, ui_hint

    output_root = Path(args.output_root or "outputs")
    folders = run_folders_to_export(args.run_dirs, output_root)  # refuses a path that is not a run, first
    tracking_uri = args.tracking_uri or default_tracking_uri(output_root)
    export_runs(folders, tracking_uri, experiment=args.experiment, report=print)
    print(ui_hint(tracking_uri))
    return 0


# --------------------------------------------------------------------------------------------------
# The parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextpoi", description="Next-POI category prediction workbench.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a user error too (also NEXTPOI_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="Cross-validate one experiment (layered parameter files, later wins).")
    run.add_argument("parameter_files", nargs="+", help="YAML parameter files, e.g. parameters/A.yaml")
    run.add_argument("--profile", help=PROFILE_HELP)
    run.add_argument("--overwrite", action="store_true", help="replace an existing complete run of the same name")
    run.add_argument("--output-root", help="folder for run folders (default: outputs)")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(handler=command_run)

    batch = commands.add_parser(
        "batch", help="Execute the experiment notebook once per parameter file (resumable, failures isolated).",
        description="Execute notebooks/experiment.ipynb once per parameter file with papermill. Complete runs are "
                    "skipped; a failing experiment is recorded (batch-summary.json, its notebook under "
                    "<output-root>/<dataset>/.failed/) and the others still run. Exit status 1 when any failed.")
    batch.add_argument("parameter_files", nargs="+", help="YAML parameter files, e.g. parameters/A.yaml")
    batch.add_argument("--profile", help=PROFILE_HELP)
    batch.add_argument("--layer", action="append", default=[], metavar="FILE",
                       help="a parameter layer applied after every file and before the profile, e.g. "
                            "parameters/classes/gowalla7.yaml (repeatable; keeps each file's run name)")
    batch.add_argument("--workers", type=int, help="parallel executions (default: number of visible GPUs, 1 on CPU)")
    batch.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="local worker pool, or Ray tasks (pip install ray)")
    batch.add_argument("--ray-address", help="address of an existing Ray cluster (default: start a local one)")
    batch.add_argument("--cell-timeout", type=int, default=3600,
                       help="seconds one notebook cell may run (default 3600; 0: no limit)")
    batch.add_argument("--output-root", help="folder for run folders (default: outputs)")
    batch.add_argument("--overwrite", action="store_true", help="re-run and replace complete runs")
    batch.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    batch.add_argument("--no-progress-bars", action="store_true",
                       help="no live progress line per running experiment (the plain start/end lines stay); bars "
                            "are also off when the output is not a terminal or the environment variable CI is set")
    batch.set_defaults(handler=command_batch)

    tune = commands.add_parser(
        "tune", help="Search the file's tune.space with Optuna on inner-validation users (resumable study).",
        description="Run (or resume) an Optuna study over the parameter files' tune.space, stored in SQLite under "
                    "<output-root>/<dataset>/.tuning/<study>.db. A trial is scored by the inner-validation macro-F1 "
                    "of the folds tune.folds (never a test fold); the best configuration is written as a parameter "
                    "file. --nested: one study per outer fold, each fold's choice evaluated on its own test fold, "
                    "written as one run folder.")
    tune.add_argument("parameter_files", nargs="+", help="YAML parameter files with a tune: section")
    tune.add_argument("--trials", type=int, help="trials to add to the study (default: tune.trials)")
    tune.add_argument("--nested", action="store_true",
                      help="one study per outer fold; writes the run folder <study>-nested")
    tune.add_argument("--profile", help=PROFILE_HELP)
    tune.add_argument("--output-root", help="folder for studies and run folders (default: outputs)")
    tune.add_argument("--best-output", help="where to write the best configuration (default: "
                                            "<output-root>/<dataset>/.tuning/<study>.best.yaml)")
    tune.add_argument("--overwrite", action="store_true", help="--nested: replace an existing complete run")
    tune.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    tune.add_argument("--quiet", action="store_true", help="no progress lines")
    tune.set_defaults(handler=command_tune)

    report = commands.add_parser("report", help="Write the HTML report over complete runs.",
                                 description="Write a self-contained HTML report (leaderboard, per-class metrics, "
                                             "confusion matrices, curves) over the complete runs, saying which "
                                             "profile produced them.")
    report.add_argument("run_dirs", nargs="*", help="run folders (default: every complete run under --output-root)")
    report.add_argument("--output-root", help="folder holding the run folders (default: outputs)")
    report.add_argument("--output", help="HTML file to write (default: <output-root>/report.html)")
    report.add_argument("--dataset", help="only the runs of this dataset folder (e.g. foursquare_nyc_gowalla7)")
    report.set_defaults(handler=command_report)

    export = commands.add_parser("export", help="Export run folders to another tool (mlflow).")
    export_targets = export.add_subparsers(dest="export_target", required=True)
    export_mlflow = export_targets.add_parser(
        "mlflow", help="Log each run folder as one MLflow run (needs pip install 'nextpoi[mlflow]').",
        description="Log each complete run folder as one MLflow run: the resolved config as parameters, curves as "
                    "metric steps per seed and fold, fold, summary and per-class metrics, the folder's files as "
                    "artifacts, tags from the manifest. Exporting again updates the same MLflow run (a rerun folder "
                    "replaces it), never duplicates it. Needs pip install 'nextpoi[mlflow]'; browse with "
                    "mlflow ui --backend-store-uri URI (the UI needs the full pip install mlflow).")
    export_mlflow.add_argument("run_dirs", nargs="*",
                               help="run folders (default: every complete run under --output-root)")
    export_mlflow.add_argument("--output-root", help="folder holding the run folders (default: outputs)")
    export_mlflow.add_argument("--tracking-uri",
                               help="MLflow tracking URI (default: sqlite:///<output-root>/mlflow.db; any URI works: "
                                    "sqlite:///..., http://host:5000, file:... with MLFLOW_ALLOW_FILE_STORE set "
                                    "for the call)")
    export_mlflow.add_argument("--experiment", help="MLflow experiment (default: nextpoi/<dataset> for each run)")
    export_mlflow.set_defaults(handler=command_export_mlflow)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default", UserWarning)
    try:
        return args.handler(args)
    except (UserError, FileExistsError, FileNotFoundError) as error:
        # A user's mistake: one paragraph, no traceback (unless asked for with --debug / NEXTPOI_DEBUG=1).
        if args.debug or os.environ.get("NEXTPOI_DEBUG") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
