"""The run folder: its format written and read in one place (docs/run-folder.md).

A run folder `<output root>/<dataset>/<run name>/` holds the config, the fold manifest, per-fold metrics,
per-class precision/recall/F1, confusion counts, curves, attention weights and a manifest whose `status` is
"complete" only once every file is in place: `write_run` writes into a hidden temporary folder and renames it
into place, so a crashed run never looks complete; a write that fails (disk full, file too large) leaves no
temporary folder, keeps an earlier complete run of that name and is raised as one `OutputError`. Before any
work `check_output_writable` probes that the output root, the dataset folder and (when used) the embedding
cache can be written, and `remove_stale_temporaries` removes the temporaries of killed runs of that name (those
whose process is gone). `load_run` / `discover_runs` / `select_runs` read folders back for the analysis; the
column lists below are the contract both sides use.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import pandas as pd

from .config import ExperimentConfig
from .errors import OutputError
from .metrics import fold_report
from .preparation import embedding_cache_directory
from .results import CrossValidationResult

COMPLETE = "complete"
SELECTIONS = ("selected", "last", "calibrated")
CURVE_COLUMNS = ["seed", "fold", "epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "learning_rate"]
FOLD_COLUMNS = ["seed", "fold", "selection", "epoch", "accuracy", "macro_f1", "macro_f1_min50", "n_test"]
CLASS_COLUMNS = ["seed", "fold", "selection", "class", "precision", "recall", "f1", "support"]
CONFUSION_COLUMNS = ["seed", "fold", "selection", "true_class", "predicted_class", "count"]
ATTENTION_COLUMNS = ["seed", "fold", "position", "weight"]
# Run kinds of older folders, read under today's names ("hybrid" was the trees blended with a neural head).
LEGACY_KINDS = {"hybrid": "blended"}


# --------------------------------------------------------------------------------------------------
# Writing


class RunExistsError(FileExistsError):
    """A complete run with this name exists and overwriting was not asked for."""


def run_directory(config: ExperimentConfig) -> Path:
    return Path(config.output.root) / config.dataset_name() / config.name


def is_complete(path: Path) -> bool:
    manifest = Path(path) / "manifest.json"
    try:
        return json.loads(manifest.read_text()).get("status") == "complete"
    except (OSError, ValueError):
        return False


def check_run_target(config: ExperimentConfig) -> Path:
    """Fail before any work if the run would overwrite a complete run without being asked to."""
    target = run_directory(config)
    if target.exists() and not config.output.overwrite:
        state = "A complete run" if is_complete(target) else "A folder that is not a complete run"
        raise RunExistsError(f"{state} already exists at {str(target)!r}. Give this experiment another name "
                             f"(name: ... in the parameter file), delete that folder, or pass --overwrite "
                             f"(output.overwrite: true) to replace it.")
    return target


def result_tables(result: CrossValidationResult, classes: list[str]) -> dict[str, pd.DataFrame]:
    fold_rows, class_rows, confusion_rows, curve_rows, attention_rows = [], [], [], [], []
    for fold in result.fold_results:
        curve_rows.extend(fold.curves)
        for selection, predicted in fold.predictions.items():
            report = fold_report(fold.test_target, predicted, classes)
            epoch = fold.selected_epoch if selection != "last" else fold.last_epoch
            fold_rows.append({"seed": fold.seed, "fold": fold.fold, "selection": selection, "epoch": epoch,
                              "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                              "macro_f1_min50": report["macro_f1_min50"], "n_test": report["n_test"]})
            per_class = report["per_class"].assign(seed=fold.seed, fold=fold.fold, selection=selection)
            class_rows.append(per_class)
            for true_index, row in enumerate(report["confusion"]):
                for predicted_index, count in enumerate(row):
                    confusion_rows.append((fold.seed, fold.fold, selection, classes[true_index],
                                           classes[predicted_index], int(count)))
        if fold.attention is not None:
            attention_rows.extend({"seed": fold.seed, "fold": fold.fold, "position": position, "weight": float(w)}
                                  for position, w in enumerate(fold.attention))
    return {
        "fold_metrics": pd.DataFrame(fold_rows),
        "per_class": pd.concat(class_rows, ignore_index=True)[CLASS_COLUMNS],
        "confusion": pd.DataFrame(confusion_rows, columns=CONFUSION_COLUMNS),
        "curves": pd.DataFrame(curve_rows, columns=CURVE_COLUMNS),
        "attention": pd.DataFrame(attention_rows, columns=ATTENTION_COLUMNS),
    }


# A run "collapsed" when its selected-epoch predictions, pooled over folds x seeds, are one class almost always
# or leave out many of the classes the test windows contain (docs/run-folder.md, summary.json's `collapse`).
COLLAPSE_TOP_SHARE = 0.9  # flagged when one class takes more than this share of all predictions
COLLAPSE_NEVER_PREDICTED_SHARE = 0.5  # ... or when this share (or more) of the classes with targets is never predicted


def collapse(confusion: pd.DataFrame, per_class: pd.DataFrame | None = None, classes: Sequence[str] | None = None,
             selection: str = "selected") -> dict:
    """The collapse rule, on one run's tables: predicted counts per class are the column sums of the confusion
    counts of `selection` pooled over folds x seeds; the classes with test targets are those with support (from
    `per_class` when given, else the confusion rows' sums). Returns `{"flagged", "reason", "top_class",
    "top_share", "never_predicted"}`; `reason` is one sentence when flagged, else ""."""
    rows = confusion[confusion["selection"].astype(str) == selection] if len(confusion) else confusion
    true_class = rows["true_class"].astype(str) if len(rows) else pd.Series(dtype=str)
    predicted_class = rows["predicted_class"].astype(str) if len(rows) else pd.Series(dtype=str)
    counts = pd.to_numeric(rows["count"], errors="coerce").fillna(0) if len(rows) else pd.Series(dtype=float)
    predicted = counts.groupby(predicted_class.to_numpy()).sum()
    if per_class is not None and len(per_class):
        chosen = per_class[per_class["selection"].astype(str) == selection]
        support = pd.to_numeric(chosen["support"], errors="coerce").fillna(0).groupby(
            chosen["class"].astype(str).to_numpy()).sum()
    else:
        support = counts.groupby(true_class.to_numpy()).sum()
    if classes is None:
        classes = list(dict.fromkeys([*support.index, *predicted.index]))
    classes = [str(c) for c in classes]
    predicted = predicted.reindex(classes, fill_value=0)
    support = support.reindex(classes, fill_value=0)
    total = float(predicted.sum())
    result = {"flagged": False, "reason": "", "top_class": None, "top_share": None, "never_predicted": []}
    if total <= 0:
        return result
    top_class = str(predicted.idxmax())
    top_share = float(predicted.max() / total)
    with_targets = [c for c in classes if support[c] > 0]
    never = [c for c in with_targets if predicted[c] == 0]
    result.update(top_class=top_class, top_share=top_share, never_predicted=never)
    reasons = []
    if top_share > COLLAPSE_TOP_SHARE:
        reasons.append(f"class {top_class!r} takes {top_share:.1%} of all predictions (more than "
                       f"{COLLAPSE_TOP_SHARE:.0%})")
    if with_targets and len(never) >= COLLAPSE_NEVER_PREDICTED_SHARE * len(with_targets):
        reasons.append(f"{len(never)} of the {len(with_targets)} classes with test targets are never predicted ("
                       + ", ".join(never) + ")")
    if reasons:
        result["flagged"] = True
        result["reason"] = f"Predictions of the {selection} epoch, pooled over folds × seeds: " + "; ".join(reasons) + "."
    return result


def summarise(fold_metrics: pd.DataFrame, per_class: pd.DataFrame, confusion: pd.DataFrame | None = None) -> dict:
    """Mean and std (ddof=1) over all fold x seed pairs, per selection; with `confusion`, the collapse check of
    the selected epoch (`collapse`)."""
    summary: dict = {}
    for selection, group in fold_metrics.groupby("selection", sort=False):
        summary[selection] = {
            metric: {"mean": float(group[metric].mean()), "std": float(group[metric].std(ddof=1))
                     if len(group) > 1 else 0.0, "n": int(group[metric].notna().sum())}
            for metric in ("macro_f1", "accuracy", "macro_f1_min50")}
    selected = per_class[per_class["selection"] == "selected"]
    summary["per_class"] = {name: {metric: float(group[metric].mean()) for metric in ("precision", "recall", "f1")}
                            for name, group in selected.groupby("class", sort=False)}
    if confusion is not None:
        classes = list(dict.fromkeys(per_class["class"].astype(str))) if len(per_class) else None
        summary["collapse"] = collapse(confusion, per_class, classes)
    return summary


def write_run(target: Path, result: CrossValidationResult, classes: list[str], config_yaml: str,
              fold_manifest: dict, manifest: dict) -> Path:
    """Write every file of a complete run into a temporary folder, then rename it into place at `target`.
    `manifest` is the run's description (docs/run-folder.md); `status: complete` is added here.

    A failure on the way (disk full, file too large, ...) leaves no temporary folder and keeps an earlier complete
    run of that name as it was; an OSError reaches the caller as an OutputError naming the folder and the cause."""
    temporary = target.parent / f".{target.name}.partial-{os.getpid()}-{int(time.time() * 1000)}"
    replaced = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.mkdir()
        tables = result_tables(result, classes)
        for name, table in tables.items():
            if name == "attention" and table.empty:
                continue
            table.to_csv(temporary / f"{name}.csv", index=False)
        summary = summarise(tables["fold_metrics"], tables["per_class"], tables["confusion"])
        (temporary / "summary.json").write_text(json.dumps(summary, indent=2))
        (temporary / "config.yaml").write_text(config_yaml)
        (temporary / "fold_manifest.json").write_text(json.dumps(fold_manifest))
        manifest = {"status": COMPLETE, **manifest}
        (temporary / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if target.exists():
            # Only reached with output.overwrite (checked before any work): swap, then delete the old run.
            replaced = target.parent / f".{target.name}.replaced-{os.getpid()}-{int(time.time() * 1000)}"
            target.rename(replaced)
        temporary.rename(target)
    except BaseException as error:
        shutil.rmtree(temporary, ignore_errors=True)
        if replaced is not None and replaced.exists() and not target.exists():
            try:
                replaced.rename(target)  # the earlier complete run goes back where it was
            except OSError:
                pass  # then the next run of this name puts it back (remove_stale_temporaries)
        if isinstance(error, OSError):
            raise OutputError(write_failure_message(target, error)) from error
        raise
    if replaced is not None:
        # The new run is in place; an old copy that cannot be deleted now is removed by the next run of this name.
        shutil.rmtree(replaced, ignore_errors=True)
    return target


def _cause(error: OSError) -> str:
    code = getattr(error, "errno", None)
    text = os.strerror(code) if code else (str(error) or type(error).__name__)
    name = errno.errorcode.get(code) if code else None
    return f"{text} ({name})" if name else text


def _fix(error: OSError) -> str:
    code = getattr(error, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free some space on that disk (or choose another output root with --output-root / output.root)"
    if code == errno.EFBIG:
        return ("raise the file-size limit (ulimit -f) or choose an output root on another file system "
                "(--output-root / output.root)")
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make that folder writable, or choose another output root (--output-root / output.root)"
    return "fix the cause or choose another output root (--output-root / output.root)"


def write_failure_message(target: Path, error: OSError) -> str:
    if is_complete(target):
        kept = "the earlier complete run there is kept as it was"
    elif target.exists():
        kept = "the folder there is kept as it was"
    else:
        kept = "no run folder was left there"
    return (f"Could not write the run folder {str(target)!r}: {_cause(error)}. Nothing of this run was kept and "
            f"{kept}. To run it again, {_fix(error)}.")


# --------------------------------------------------------------------------------------------------
# Checks before any work: the output side can be written


def _write_probe(path: Path) -> None:
    """Create `path` with a few bytes, flushed to the file system (tests replace this to simulate faults)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, b"nextpoi write probe\n")
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_folder_writable(folder: Path, what: str) -> None:
    """Raise OutputError unless `folder` (or, when it does not exist yet, the folder it would be created in) is a
    folder this process can write to: probed by creating and deleting a small hidden file."""
    folder = Path(folder)
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        where = "" if existing == folder else f" (it would be created inside {str(existing)!r})"
        raise OutputError(f"The {what} {str(folder)!r} cannot be used{where}: {str(existing)!r} is a regular "
                          f"file, not a folder. Nothing was run. Choose another output root (--output-root / "
                          f"output.root), or move that file away.")
    probe = existing / f".nextpoi-write-probe-{os.getpid()}-{int(time.time() * 1000)}"
    try:
        _write_probe(probe)
    except OSError as error:
        where = "" if existing == folder else f" (it would be created inside {str(existing)!r})"
        raise OutputError(f"The {what} {str(folder)!r} cannot be written{where}: {_cause(error)}. Nothing was "
                          f"run. To run it, {_fix(error)}.") from error
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def check_output_writable(config: ExperimentConfig, uses_embedding_cache: bool) -> None:
    """Before any work: the output root and the run's dataset folder (and the embedding cache when the run
    computes DGI embeddings) can be created and written; raises OutputError naming the path and the fix."""
    root = Path(config.output.root)
    dataset_folder = run_directory(config).parent
    check_folder_writable(root, "output root")
    if dataset_folder.exists() or _nearest_existing(dataset_folder) != _nearest_existing(root):
        check_folder_writable(dataset_folder, "dataset folder")
    if uses_embedding_cache:
        check_folder_writable(embedding_cache_directory(config), "embedding cache folder")


# --------------------------------------------------------------------------------------------------
# Temporaries of killed runs


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|replaced)-(?P<pid>\d+)(?:-(?P<ms>\d+))?$")


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (the current process included)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    except OSError:
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporary folders (`.NAME.partial-PID-MS`, `.NAME.replaced-PID-MS`) that runs of this name left
    when they were killed, i.e. whose process is no longer alive; a live run's temporaries are left alone. An
    earlier complete run that a killed run had moved aside (and not replaced) is put back at `target`.
    Returns the folders removed or restored."""
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return []
    handled = []
    for entry in sorted(parent.iterdir()):
        match = _TEMPORARY.match(entry.name)
        if not match or match["name"] != target.name or not entry.is_dir():
            continue
        # Folders of older versions, .NAME.replaced-MS, name no process: left by a run that did not finish.
        pid = 0 if match["kind"] == "replaced" and match["ms"] is None else int(match["pid"])
        if process_alive(pid):
            continue
        try:
            if match["kind"] == "replaced" and not target.exists() and is_complete(entry):
                entry.rename(target)
            else:
                shutil.rmtree(entry)
        except OSError:
            continue
        handled.append(entry)
    return handled



# --------------------------------------------------------------------------------------------------
# Reading


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
    def kind(self) -> str:
        """"neural", "baseline" (reference baselines and trees) or "blended" (trees + a neural head)."""
        kind = str(self.manifest.get("kind") or "")
        return LEGACY_KINDS.get(kind, kind)

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
    def collapse(self) -> dict:
        """summary.json's `collapse` (the collapse check of the selected epoch); computed with the same rule
        from confusion.csv and per_class.csv for folders written before summaries had it."""
        stored = (self.summary or {}).get("collapse")
        if isinstance(stored, dict) and "flagged" in stored:
            return stored
        return collapse(self.confusion, self.per_class, self.classes)

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


# Settings that do not change what a run computes: where it is written, whether to replace it, its log lines.
_NOT_COMPARED = ("output", "training.progress")


def dotted_keys(data: Mapping, prefix: str = "", descend: Callable[[Mapping], bool] = bool) -> dict[str, object]:
    """A nested mapping as {dotted key: value} (`model.hidden_dim`); a nested mapping for which `descend` is false
    (by default: an empty one) stays one value under its own key."""
    flat: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and descend(value):
            flat.update(dotted_keys(value, f"{name}.", descend))
        else:
            flat[name] = value
    return flat


def stored_config_differences(run_dir: Path, config: ExperimentConfig) -> list[str]:
    """The dotted keys whose values differ between a complete run folder's `config.yaml` and `config`, as
    'key: stored -> now' lines (empty when the folder holds a run of this very configuration). A stored config
    that cannot be read is one difference. Output location, overwrite and progress settings are not compared."""
    import warnings

    from .config import ConfigError, from_dict

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an older folder's deprecated spellings: read, compared translated
            stored = from_dict(_read_yaml(run_dir / "config.yaml") or {}).to_dict()
    except (ConfigError, OSError, ValueError, TypeError) as error:
        return [f"its config.yaml cannot be read by this version ({error})"]
    before, now = dotted_keys(stored), dotted_keys(config.to_dict())

    def compared(key: str) -> bool:
        return not any(key == skip or key.startswith(f"{skip}.") for skip in _NOT_COMPARED)

    return [f"{key}: {before.get(key, '(unset)')!r} -> {now.get(key, '(unset)')!r}"
            for key in sorted(set(before) | set(now)) if compared(key) and before.get(key) != now.get(key)]


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

    attention = _read_csv(path / "attention.csv", ATTENTION_COLUMNS)
    return Run(
        path=path,
        manifest=manifest,
        config=_read_yaml(path / "config.yaml"),
        fold_manifest=_read_json(path / "fold_manifest.json"),
        summary=_read_json(path / "summary.json"),
        curves=table("curves.csv", CURVE_COLUMNS),
        fold_metrics=table("fold_metrics.csv", FOLD_COLUMNS, ("selection",)),
        per_class=table("per_class.csv", CLASS_COLUMNS, ("selection", "class")),
        confusion=table("confusion.csv", CONFUSION_COLUMNS, ("selection", "true_class", "predicted_class")),
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


