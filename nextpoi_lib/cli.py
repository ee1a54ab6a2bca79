"""Command line: `nextpoi run`, `nextpoi batch`, `nextpoi report`.

Known errors (bad parameters, bad data, an existing run) print one paragraph and exit with status 2;
nothing is written in that case.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .config import ConfigError
from .data import DataError


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


def command_run(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runs import run_experiment

    layers = list(args.parameter_files)
    if args.profile:
        layers.append(args.profile)
    config = load_config(*layers, overrides=_config_overrides(args))
    if args.profile:
        config.profile = Path(args.profile).stem
    run_experiment(config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nextpoi", description="Next-POI category prediction workbench.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="Cross-validate one experiment (layered parameter files, later wins).")
    run.add_argument("parameter_files", nargs="+", help="YAML parameter files, e.g. parameters/A.yaml")
    run.add_argument("--profile", help="a parameters/profiles/*.yaml file applied last (e.g. a quick CPU pass)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing complete run of the same name")
    run.add_argument("--output-root", help="folder for run folders (default: outputs)")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(handler=command_run)

    try:
        from .batch import add_batch_commands
    except ImportError:  # the notebook side is optional for the core library
        pass
    else:
        add_batch_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default", UserWarning)
    try:
        return args.handler(args)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
