"""Behaviour record: the per-fold metrics of a few small runs, kept so a refactor can show it changed nothing.

    python tests/behaviour/record.py --check   # run every config in configs/, compare with expected/ byte for byte
    python tests/behaviour/record.py --write   # (re)record expected/ — only when a change of results is intended

Each config in `configs/` (the smoke run, a reference baseline, trees with every optional feature, trees blended
with a GRU) is run on the embedded data into a temporary output root, one intra-op thread (so the floating-point
reductions are the same on every machine of our kind), and its `fold_metrics.csv`, `per_class.csv` and
`confusion.csv` are compared with the recorded ones. `tests/test_behaviour_unchanged.py` runs `--check`.

The record was first written by the library as it was before the layered restructuring (commit c97ee4a), whose
parameter files spelled the tree options `model.gbt_*`; `legacy_keys` below translates the configs for that
version, the same translation the configuration now applies (with a deprecation message) to old files.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS)

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
EXPECTED = HERE / "expected"
COMPARED_FILES = ("fold_metrics.csv", "per_class.csv", "confusion.csv")


def legacy_keys(layer: dict) -> dict:
    """A config dict in the new sections (trees:, blend:, model.name: blended_trees) spelled for the library
    before the restructuring (model.gbt_*)."""
    layer = {key: (dict(value) if isinstance(value, dict) else value) for key, value in layer.items()}
    model = layer.setdefault("model", {})
    for key, value in (layer.pop("trees", None) or {}).items():
        model[f"gbt_{key}"] = value
    blend = layer.pop("blend", None) or {}
    if "head" in blend:
        model["gbt_blend_head"] = blend["head"]
    if model.get("name") == "blended_trees":
        model["name"] = "gradient_boosting"
    return layer


def run_config(path: Path, output_root: Path) -> Path:
    overrides = {"output": {"root": str(output_root), "overwrite": True}, "training": {"progress": False}}
    try:
        from nextpoi_lib.experiment import run_files
    except ImportError:  # the library before the restructuring
        from nextpoi_lib.config import read_yaml
        from nextpoi_lib.runs import run_files

        return run_files(legacy_keys(read_yaml(path)), overrides=overrides)
    return run_files(path, overrides=overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="compare with expected/ (exit 1 on any difference)")
    mode.add_argument("--write", action="store_true", help="record expected/ anew")
    parser.add_argument("--only", nargs="*", help="config names (stems) to run; default: all")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    differences = []
    with tempfile.TemporaryDirectory(prefix="nextpoi-behaviour-") as root:
        for config in sorted(CONFIGS.glob("*.yaml")):
            if args.only and config.stem not in args.only:
                continue
            run = run_config(config, Path(root))
            for name in COMPARED_FILES:
                expected = EXPECTED / config.stem / name
                produced = (run / name).read_bytes()
                if args.write:
                    expected.parent.mkdir(parents=True, exist_ok=True)
                    expected.write_bytes(produced)
                elif not expected.is_file() or expected.read_bytes() != produced:
                    differences.append(f"{config.stem}/{name}")
            print(f"{config.stem}: {'recorded' if args.write else 'compared'} {', '.join(COMPARED_FILES)}", flush=True)
    if differences:
        print("DIFFERENT from the record: " + ", ".join(differences), file=sys.stderr)
        return 1
    if args.check:
        print("identical to the record: every file of every config")
    return 0


if __name__ == "__main__":
    sys.exit(main())
