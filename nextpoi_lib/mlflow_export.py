"""Export run folders to MLflow (`nextpoi export mlflow`): one MLflow run per run folder, found again on the next
export, so exporting twice never duplicates a run.

What one MLflow run holds (names: README "Browse runs in MLflow"):

* **parameters**: the resolved `config.yaml`, flattened to dotted keys (`training.epochs`); lists and other
  non-text values as JSON; a mapping whose keys are data rather than names (`dataset.class_map`, with keys such
  as "Shop & Service" that MLflow refuses in a key) stays one JSON value; a value longer than MLflow's limit
  (6000 characters) is cut and says so; the full file is an artifact.
* **metrics**: the curves per seed and fold stepped by epoch (`curves/val_macro_f1/seed0/fold1`), the fold
  metrics (`folds/selected/macro_f1/seed0/fold1`), the summary (`selected/macro_f1_mean`, `..._std`, and
  `macro_f1` / `accuracy` for the selected epoch), per-class precision / recall / F1 per selection, as the mean
  over folds × seeds (`selected/f1/Food`) and per fold (`folds/selected/f1/Food/seed0/fold1`, with `support`).
  Every metric carries the run's `finished_at` as its timestamp, so logging the same folder again writes rows
  identical to the stored ones (the SQL store keeps one of each).
* **artifacts**: every file of the folder. **tags**: `nextpoi.dataset`, `kind`, `profile`, `git_commit`,
  `model`, `run_name`, `run_folder` (absolute path), the manifest's hashes, and the two that make the export
  idempotent:
  `nextpoi.folder_id` (a hash of "<dataset>/<run name>": which MLflow run stands for this folder in the
  experiment) and `nextpoi.fingerprint` (a hash of every file of the folder and of this export's format).

A second export of an unchanged folder **updates** the same MLflow run (same run id; tags and artifacts are
written again, which also completes an export that was interrupted). A folder that changed — a rerun with
`--overwrite`, a notebook moved in — is **replaced**: MLflow refuses to change a logged parameter, so a new
MLflow run is written and the old one is marked deleted once the new one is complete (`mlflow gc` removes it
for good). Runs are looked up within one experiment, by default `nextpoi/<dataset>`.

MLflow is an optional extra (`pip install 'nextpoi[mlflow]'`, the client package mlflow-skinny); it is imported
only here, only when exporting. The default store is SQLite, `<output root>/mlflow.db`: MLflow 3 refuses its
plain file store unless MLFLOW_ALLOW_FILE_STORE=true, which is set for the call when a `file:` URI is given.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence
from urllib.parse import urlparse


from .errors import UserError
from .runfolder import CURVE_COLUMNS, Run, discover_runs, dotted_keys, is_complete, load_run

INSTALL_HINT = "pip install 'nextpoi[mlflow]'"
DEFAULT_STORE_FILE = "mlflow.db"
# Part of every fingerprint: a change to what the export writes (names, encodings) replaces the runs exported
# before it instead of clashing with their logged parameters.
EXPORT_FORMAT = "1"
# MLflow's limits (mlflow.utils.validation), repeated so that flattening needs no MLflow import.
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_KEY_LENGTH = 250
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
FOLD_METRICS = ("accuracy", "macro_f1", "macro_f1_min50", "epoch", "n_test")
CLASS_METRICS = ("precision", "recall", "f1")
SUMMARY_METRICS = ("macro_f1", "accuracy", "macro_f1_min50")
# MLflow accepts these characters in metric, parameter and tag keys (colons only off Windows: left out here).
_KEY_SEGMENT = re.compile(r"^[\w.\- ]+$")
_NOT_IN_SEGMENT = re.compile(r"[^\w.\- ]")


class MlflowExportError(UserError):
    """The run folders or the MLflow store named for an export cannot be used, or MLflow is not installed."""


@dataclass(frozen=True)
class ExportedRun:
    """One run folder's export: which MLflow run holds it now and what happened to it."""

    folder: Path
    key: str  # "<dataset>/<run name>"
    experiment: str
    run_id: str
    action: str  # "created", "updated" (same MLflow run) or "replaced" (a new one; `replaced_run_ids` deleted)
    replaced_run_ids: tuple[str, ...] = ()

    def line(self) -> str:
        replaced = f" (replaces {', '.join(self.replaced_run_ids)}, now deleted)" if self.replaced_run_ids else ""
        return f"{self.action:<8} {self.key}: MLflow run {self.run_id} in experiment {self.experiment!r}{replaced}"


# --------------------------------------------------------------------------------------------------
# What is exported (pure: no MLflow needed)


def default_tracking_uri(output_root: str | os.PathLike) -> str:
    """`sqlite:///<output root>/mlflow.db`, absolute (MLflow 3 recommends SQLite over its file store)."""
    return "sqlite:///" + str((Path(output_root) / DEFAULT_STORE_FILE).resolve())


def is_file_store(tracking_uri: str) -> bool:
    """A `file:` URI or a plain path: MLflow's file store, which MLflow 3 refuses unless allowed."""
    scheme = urlparse(tracking_uri).scheme
    return scheme == "file" or scheme == "" or (len(scheme) == 1 and os.name == "nt")  # "C:\..." on Windows


def check_run_folders(folders: Sequence[str | os.PathLike]) -> None:
    """Raise MlflowExportError naming every path that is not a complete run folder."""
    bad = [str(p) for p in folders if not is_complete(Path(p))]
    if bad:
        raise MlflowExportError(
            f"Not a complete run folder (a folder <output root>/<dataset>/<run name>/ whose manifest.json says "
            f"status complete): {', '.join(repr(p) for p in bad)}. Nothing was exported. Name run folders written "
            f"by nextpoi run / nextpoi batch, or name none to export every complete run under --output-root.")


def run_folders_to_export(run_dirs: Sequence[str | os.PathLike], output_root: str | os.PathLike) -> list[Path]:
    """The run folders named (each must be a complete run folder), or every complete run under `output_root`.
    Raises MlflowExportError naming every path that is not one, before anything is exported."""
    if run_dirs:
        folders = [Path(p) for p in run_dirs]
        check_run_folders(folders)
        return folders
    folders = discover_runs(output_root)
    if not folders:
        raise MlflowExportError(
            f"No complete runs under the output root {str(output_root)!r}. Nothing was exported. Run experiments "
            f"first (nextpoi batch parameters/*.yaml), choose the folder that holds them with --output-root, or name "
            f"run folders.")
    return folders


def _key_segment(text: str) -> str:
    """`text` made usable between slashes of an MLflow key ("Shop & Service" -> "Shop _ Service")."""
    segment = _NOT_IN_SEGMENT.sub("_", str(text)).strip() or "_"
    return "_" if set(segment) == {"."} else segment  # "." and ".." would read as paths


def class_segments(classes: Sequence[str]) -> dict[str, str]:
    """Each class name's key segment, unique among the classes (a clash after cleaning gets "_2", "_3", ...)."""
    segments: dict[str, str] = {}
    taken: set[str] = set()
    for name in classes:
        segment = base = _key_segment(name)
        count = 1
        while segment in taken:
            count += 1
            segment = f"{base}_{count}"
        taken.add(segment)
        segments[str(name)] = segment
    return segments


def param_value(value: object) -> str:
    """A parameter's text: strings as they are, anything else as JSON (true, null, [0, 1], 0.0001); cut to
    MLflow's limit with a note when longer (the full value is in the config.yaml artifact)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) <= MAX_PARAM_VALUE_LENGTH:
        return text
    note = f" ... [cut: {len(text)} characters; full value in the artifact config.yaml]"
    return text[: MAX_PARAM_VALUE_LENGTH - len(note)] + note


def flatten_config(config: Mapping, prefix: str = "") -> dict[str, str]:
    """The config as MLflow parameters: nested sections become dotted keys (`model.hidden_dim`); a mapping whose
    keys MLflow would refuse in a key (class names in `dataset.class_map`) and an empty one stay one JSON value."""
    flat = dotted_keys(config, prefix, descend=lambda mapping: bool(mapping) and all(_KEY_SEGMENT.match(str(k))
                                                                                       for k in mapping))
    return {name[:MAX_KEY_LENGTH]: param_value(value) for name, value in flat.items()}


def _milliseconds(stamp: object) -> int | None:
    try:
        return int(dt.datetime.fromisoformat(str(stamp)).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


def run_metrics(run: Run) -> list[tuple[str, float, int]]:
    """(key, value, step) of every metric of the run folder (module docstring for the names)."""
    metrics: list[tuple[str, float, int]] = []
    curves = run.curves
    for column in CURVE_COLUMNS[3:]:
        if column not in curves.columns:
            continue
        for row in curves[["seed", "fold", "epoch", column]].itertuples(index=False):
            metrics.append((f"curves/{column}/seed{int(row.seed)}/fold{int(row.fold)}", float(row[3]), int(row.epoch)))
    for row in run.fold_metrics.to_dict("records"):
        where = f"seed{int(row['seed'])}/fold{int(row['fold'])}"
        for metric in FOLD_METRICS:
            if metric in row:  # NaN too (macro_f1_min50 without a class of 50 windows): MLflow stores NaN
                metrics.append((f"folds/{_key_segment(row['selection'])}/{metric}/{where}", float(row[metric]), 0))
    summary = run.summary or {}
    for selection, block in summary.items():
        if selection in ("per_class", "collapse") or not isinstance(block, Mapping):
            continue
        for metric in SUMMARY_METRICS:
            stats = block.get(metric) or {}
            for stat in ("mean", "std"):
                if stat in stats and stats[stat] is not None:
                    metrics.append((f"{_key_segment(selection)}/{metric}_{stat}", float(stats[stat]), 0))
    selected = summary.get("selected") or {}
    for metric in ("macro_f1", "accuracy"):  # headline columns of MLflow's run table
        if (selected.get(metric) or {}).get("mean") is not None:
            metrics.append((metric, float(selected[metric]["mean"]), 0))
    per_class = run.per_class
    if len(per_class):
        segments = class_segments(list(dict.fromkeys([*run.classes, *per_class["class"].astype(str)])))
        for row in per_class.to_dict("records"):
            where = f"{segments[str(row['class'])]}/seed{int(row['seed'])}/fold{int(row['fold'])}"
            for metric in (*CLASS_METRICS, "support"):
                metrics.append((f"folds/{_key_segment(row['selection'])}/{metric}/{where}", float(row[metric]), 0))
        means = per_class.groupby([per_class["selection"].astype(str), per_class["class"].astype(str)],
                                  sort=False)[list(CLASS_METRICS)].mean()
        for (selection, name), row in means.iterrows():
            for metric in CLASS_METRICS:
                metrics.append((f"{_key_segment(selection)}/{metric}/{segments[name]}", float(row[metric]), 0))
    collapse = run.collapse
    metrics.append(("collapsed", 1.0 if collapse.get("flagged") else 0.0, 0))
    return [(key[:MAX_KEY_LENGTH], value, step) for key, value, step in metrics]


def folder_key(run: Run) -> str:
    return f"{run.dataset}/{run.name}"


def folder_id(run: Run) -> str:
    """Which MLflow run stands for this run folder: a hash of "<dataset>/<run name>" (safe in a search filter)."""
    return hashlib.sha256(folder_key(run).encode()).hexdigest()[:32]


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """A hash of every file of the folder (path and content) and of the export format: changes when it is rerun."""
    folder = Path(folder)
    digest = hashlib.sha256(f"nextpoi-mlflow-export {EXPORT_FORMAT}\n".encode())
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\n".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def run_tags(run: Run, fingerprint: str) -> dict[str, str]:
    manifest = run.manifest
    tags = {
        "nextpoi.folder_id": folder_id(run),
        "nextpoi.folder_key": folder_key(run),
        "nextpoi.fingerprint": fingerprint,
        "nextpoi.run_folder": str(run.path.resolve()),
        "nextpoi.dataset": run.dataset,
        "nextpoi.run_name": run.name,
        "nextpoi.kind": run.kind,
        "nextpoi.profile": str(manifest.get("profile", "")),
        "nextpoi.git_commit": str(manifest.get("git_commit", "")),
        "nextpoi.model": str(manifest.get("model", "")),
        "nextpoi.task": str(manifest.get("task", "")),
        "nextpoi.data_hash": str(manifest.get("data_hash", "")),
        "nextpoi.fold_manifest_hash": str(run.fold_manifest_hash or ""),
        "nextpoi.finished_at": str(manifest.get("finished_at", "")),
        "nextpoi.collapse": str(run.collapse.get("reason", "")),
    }
    if manifest.get("git_commit"):
        tags["mlflow.source.git.commit"] = str(manifest["git_commit"])  # MLflow's UI shows this one
    return {key: value[:MAX_TAG_VALUE_LENGTH] for key, value in tags.items()}


def ui_hint(tracking_uri: str) -> str:
    allow = "MLFLOW_ALLOW_FILE_STORE=true " if is_file_store(tracking_uri) else ""
    return (f"Browse them: {allow}mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}  (the UI server needs "
            f"the full package: pip install mlflow)")


# --------------------------------------------------------------------------------------------------
# Writing to MLflow


def import_mlflow():
    """The `mlflow` module, or a MlflowExportError saying how to install it."""
    try:
        import mlflow  # noqa: F401
        from mlflow.tracking import MlflowClient  # noqa: F401
    except ImportError as error:
        raise MlflowExportError(
            f"MLflow is not installed ({error}), and `nextpoi export mlflow` needs it. Nothing was exported. Install "
            f"the optional extra: {INSTALL_HINT} (the client, mlflow-skinny; the UI server needs pip install "
            f"mlflow).") from error
    return mlflow


@contextlib.contextmanager
def _file_store_allowed(tracking_uri: str) -> Iterator[None]:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE=true: set for this call only."""
    if not is_file_store(tracking_uri):
        yield
        return
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


def _artifact_location(tracking_uri: str) -> str | None:
    """Where new experiments keep artifacts: beside a local SQLite file (MLflow would otherwise use ./mlruns of
    the current folder); elsewhere the store's own default."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite" and tracking_uri.startswith("sqlite:///") and ":memory:" not in tracking_uri:
        return str(Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts")
    return None


def _experiment_id(client, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=_artifact_location(tracking_uri))
    if experiment.lifecycle_stage != "active":
        raise MlflowExportError(
            f"The MLflow experiment {name!r} in {tracking_uri!r} is deleted. Nothing was exported. Restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}), or export into another "
            f"experiment with --experiment NAME.")
    return experiment.experiment_id


def _log_run(client, run_id: str, run: Run, tags: Mapping[str, str]) -> None:
    from mlflow.entities import Metric, Param, RunTag

    timestamp = _milliseconds(run.manifest.get("finished_at")) or 0
    params = [Param(key, value) for key, value in flatten_config(run.config or {}).items()]
    for start in range(0, len(params), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=params[start:start + PARAMS_PER_BATCH])
    tag_list = [RunTag(key, value) for key, value in tags.items()]
    for start in range(0, len(tag_list), PARAMS_PER_BATCH):
        client.log_batch(run_id, tags=tag_list[start:start + PARAMS_PER_BATCH])
    metrics = [Metric(key, value, timestamp, step) for key, value, step in run_metrics(run)]
    for start in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + METRICS_PER_BATCH])
    client.log_artifacts(run_id, str(run.path))
    client.set_terminated(run_id, "FINISHED", end_time=timestamp or None)


def export_runs(folders: Sequence[str | os.PathLike], tracking_uri: str, experiment: str | None = None,
                report: Callable[[str], None] | None = None) -> list[ExportedRun]:
    """Export each complete run folder as one MLflow run into `tracking_uri` (module docstring: what is logged,
    how a second export updates or replaces it). `experiment` None: `nextpoi/<dataset>` per run. `report` gets
    one line per exported run as it is done. Every folder is checked before anything is logged."""
    check_run_folders(folders)
    import_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    runs = [load_run(p) for p in folders]
    exported: list[ExportedRun] = []
    with _file_store_allowed(tracking_uri):
        try:
            client = MlflowClient(tracking_uri=tracking_uri)
            experiment_ids = {name: _experiment_id(client, name, tracking_uri)
                              for name in dict.fromkeys(experiment or f"nextpoi/{r.dataset}" for r in runs)}
        except (MlflowException, OSError) as error:
            raise MlflowExportError(
                f"Could not open the MLflow tracking store {tracking_uri!r}: {error}. Nothing was exported. Check "
                f"the --tracking-uri (e.g. sqlite:///path/to/mlflow.db in an existing folder, or http://host:5000 "
                f"of a running server).") from error
        for run in runs:
            name = experiment or f"nextpoi/{run.dataset}"
            exported.append(_export_one(client, experiment_ids[name], name, run))
            if report:
                report(exported[-1].line())
    return exported


def _export_one(client, experiment_id: str, experiment: str, run: Run) -> ExportedRun:
    fingerprint = folder_fingerprint(run.path)
    tags = run_tags(run, fingerprint)
    # The id is hex, so it needs no quoting in MLflow's filter language (a run name could hold a quote).
    found = client.search_runs([experiment_id],
                               filter_string=f"tags.`nextpoi.folder_id` = '{tags['nextpoi.folder_id']}'")
    same = [r for r in found if r.data.tags.get("nextpoi.fingerprint") == fingerprint]
    if same:
        run_id, action = same[0].info.run_id, "updated"
    else:
        created = client.create_run(experiment_id, start_time=_milliseconds(run.manifest.get("started_at")),
                                    run_name=run.name)
        run_id, action = created.info.run_id, "replaced" if found else "created"
    _log_run(client, run_id, run, tags)
    # Older MLflow runs of this folder go only once the current one is complete: an interrupted export leaves
    # one run too many (the next export removes it), never none.
    stale = tuple(r.info.run_id for r in found if r.info.run_id != run_id)
    for old in stale:
        client.delete_run(old)
    return ExportedRun(run.path, folder_key(run), experiment, run_id, action, stale)
