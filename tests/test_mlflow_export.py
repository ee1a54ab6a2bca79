"""`nextpoi export mlflow`: one MLflow run per run folder, its numbers equal to the folder's files, idempotent.

Two real run folders (a tiny GRU with curves, a Markov baseline without) are written once for the module and
exported once into one SQLite store at the default place, `<output root>/mlflow.db` (creating the store is the
slow part). Every expected value is read here from the folder's files with pandas / json / yaml.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pandas as pd
import pytest
import yaml

from harness import assert_refused, run_cli, tree_hashes
from nextpoi_lib import mlflow_export
from nextpoi_lib.experiment import run_experiment
from synthetic import synthetic_config

mlflow = pytest.importorskip("mlflow")
from mlflow.entities import ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mlflow")
    gru = run_experiment(synthetic_config(tmp, name="gru", training={"epochs": 3, "seeds": [0]}))
    markov = run_experiment(synthetic_config(tmp, name="markov", model={"name": "markov", "markov_order": 1}))
    root = gru.parent.parent
    uri = mlflow_export.default_tracking_uri(root)
    results = mlflow_export.export_runs([gru, markov], uri)
    return {"root": root, "uri": uri, "client": MlflowClient(tracking_uri=uri), "tmp": tmp,
            "folders": {"gru": gru, "markov": markov}, "results": {r.folder.name: r for r in results}}


def mlflow_run(exported, name):
    return exported["client"].get_run(exported["results"][name].run_id)


def active_runs(client, experiment_name):
    experiment = client.get_experiment_by_name(experiment_name)
    return list(client.search_runs([experiment.experiment_id], run_view_type=ViewType.ACTIVE_ONLY))


def leaves(section, prefix=""):
    """The config's values by dotted key, walked independently of the exporter (class_map stays whole)."""
    for key, value in section.items():
        if isinstance(value, dict) and value and key != "class_map":
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_one_mlflow_run_per_folder_with_the_manifests_tags(exported):
    runs = active_runs(exported["client"], "nextpoi/toy")
    assert sorted(r.info.run_name for r in runs) == ["gru", "markov"]
    assert {r.action for r in exported["results"].values()} == {"created"}
    for name, folder in exported["folders"].items():
        manifest = json.loads((folder / "manifest.json").read_text())
        tags = mlflow_run(exported, name).data.tags
        assert tags["nextpoi.dataset"] == "toy" and tags["nextpoi.run_name"] == name
        assert tags["nextpoi.kind"] == manifest["kind"] and tags["nextpoi.model"] == manifest["model"]
        assert tags["nextpoi.profile"] == str(manifest["profile"])
        assert tags["nextpoi.git_commit"] == str(manifest["git_commit"])
        assert tags["nextpoi.run_folder"] == str(folder.resolve())
    assert mlflow_run(exported, "gru").data.tags["nextpoi.kind"] == "neural"
    assert mlflow_run(exported, "markov").data.tags["nextpoi.kind"] == "baseline"


def test_params_are_the_resolved_config_flattened(exported):
    config = yaml.safe_load((exported["folders"]["gru"] / "config.yaml").read_text())
    params = mlflow_run(exported, "gru").data.params
    expected = dict(leaves(config))
    assert set(params) == set(expected)
    for key, value in expected.items():
        logged = params[key]
        assert (logged == value) if isinstance(value, str) else (json.loads(logged) == value), key
    assert params["training.epochs"] == "3" and params["model.name"] == "gru"


def test_long_values_are_cut_to_mlflows_limit_and_data_keys_stay_one_value():
    flat = mlflow_export.flatten_config({"training": {"seeds": list(range(3000))},
                                         "dataset": {"class_map": {"Shop & Service": "Shopping"}, "name": "x"},
                                         "empty": {}})
    assert len(flat["training.seeds"]) == 6000 and "cut: " in flat["training.seeds"]
    assert flat["training.seeds"].startswith("[0, 1, 2, 3")
    assert json.loads(flat["dataset.class_map"]) == {"Shop & Service": "Shopping"}
    assert flat["dataset.name"] == "x" and flat["empty"] == "{}"


def test_curve_history_of_each_fold_equals_curves_csv_by_epoch(exported):
    curves = pd.read_csv(exported["folders"]["gru"] / "curves.csv")
    run_id = exported["results"]["gru"].run_id
    assert len(curves) == 3 * 3  # 3 folds x 3 epochs
    for (seed, fold), rows in curves.groupby(["seed", "fold"]):
        for column in ("val_macro_f1", "train_loss", "val_loss", "learning_rate"):
            history = exported["client"].get_metric_history(run_id, f"curves/{column}/seed{seed}/fold{fold}")
            by_step = dict(sorted((m.step, m.value) for m in history))
            assert list(by_step) == rows["epoch"].tolist() and len(history) == len(rows)
            assert list(by_step.values()) == pytest.approx(rows[column].tolist(), rel=1e-12)
    assert not any(k.startswith("curves/") for k in mlflow_run(exported, "markov").data.metrics)


def test_fold_and_summary_metrics_equal_the_folders_files(exported):
    for name, folder in exported["folders"].items():
        metrics = mlflow_run(exported, name).data.metrics
        folds = pd.read_csv(folder / "fold_metrics.csv")
        for row in folds.itertuples():
            where = f"seed{row.seed}/fold{row.fold}"
            assert metrics[f"folds/{row.selection}/macro_f1/{where}"] == pytest.approx(row.macro_f1, rel=1e-12)
            assert metrics[f"folds/{row.selection}/accuracy/{where}"] == pytest.approx(row.accuracy, rel=1e-12)
            assert metrics[f"folds/{row.selection}/epoch/{where}"] == row.epoch
        summary = json.loads((folder / "summary.json").read_text())
        for selection in ("selected", "last"):
            assert metrics[f"{selection}/macro_f1_mean"] == pytest.approx(summary[selection]["macro_f1"]["mean"])
            assert metrics[f"{selection}/macro_f1_std"] == pytest.approx(summary[selection]["macro_f1"]["std"])
        assert metrics["macro_f1"] == pytest.approx(folds[folds.selection == "selected"].macro_f1.mean(), rel=1e-12)


def test_per_class_metrics_equal_per_class_csv_for_every_selection(exported):
    per_class = pd.read_csv(exported["folders"]["gru"] / "per_class.csv", keep_default_na=False)
    metrics = mlflow_run(exported, "gru").data.metrics
    assert set(per_class["selection"]) >= {"selected", "last"}
    for row in per_class.itertuples():
        for metric in ("precision", "recall", "f1", "support"):
            key = f"folds/{row.selection}/{metric}/{row[4]}/seed{row.seed}/fold{row.fold}"
            assert metrics[key] == pytest.approx(getattr(row, metric), rel=1e-12), key
    means = per_class.groupby(["selection", "class"])[["precision", "recall", "f1"]].mean()
    for (selection, name), row in means.iterrows():
        for metric in ("precision", "recall", "f1"):
            assert metrics[f"{selection}/{metric}/{name}"] == pytest.approx(row[metric], rel=1e-12)
    summary = json.loads((exported["folders"]["gru"] / "summary.json").read_text())
    for name, values in summary["per_class"].items():
        assert metrics[f"selected/f1/{name}"] == pytest.approx(values["f1"], rel=1e-12)


def test_artifacts_are_the_folders_files(exported):
    client = exported["client"]
    for name, folder in exported["folders"].items():
        run_id = exported["results"][name].run_id

        def listed(path=None):
            for info in client.list_artifacts(run_id, path):
                yield from listed(info.path) if info.is_dir else [info.path]

        assert sorted(listed()) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_second_export_updates_the_same_runs_without_duplicating_anything(exported):
    client, run_id = exported["client"], exported["results"]["gru"].run_id
    history_before = client.get_metric_history(run_id, "curves/val_macro_f1/seed0/fold0")
    again = run_cli("export", "mlflow", "--output-root", exported["root"])  # the default store: <root>/mlflow.db
    assert again.code == 0, again.stderr
    # Exactly the two runs: the artifact copies under <root>/mlartifacts/ are not taken for run folders.
    assert [line.split()[0] for line in again.stdout.splitlines()] == ["updated", "updated", "Browse"]
    assert exported["results"]["gru"].run_id in again.stdout and exported["results"]["markov"].run_id in again.stdout
    assert f"mlflow ui --backend-store-uri {exported['uri']}" in again.stdout
    assert len(active_runs(client, "nextpoi/toy")) == 2
    assert len(client.get_metric_history(run_id, "curves/val_macro_f1/seed0/fold0")) == len(history_before) == 3


def test_a_changed_folder_replaces_its_run_and_the_count_stays(exported, tmp_path):
    folder = tmp_path / "outputs" / "toy" / "gru"
    shutil.copytree(exported["folders"]["gru"], folder)
    args = ("export", "mlflow", folder, "--tracking-uri", exported["uri"], "--experiment", "changed")
    first = run_cli(*args)
    assert first.code == 0 and first.stdout.startswith("created"), first.stderr
    # A rerun: new numbers and a new manifest (finished later).
    summary = json.loads((folder / "summary.json").read_text())
    summary["selected"]["macro_f1"]["mean"] = 0.123
    (folder / "summary.json").write_text(json.dumps(summary))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["finished_at"] = "2030-01-01T00:00:00+00:00"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    second = run_cli(*args)
    assert second.code == 0 and second.stdout.startswith("replaced"), second.stderr
    client = exported["client"]
    (current,) = active_runs(client, "changed")
    assert current.data.metrics["selected/macro_f1_mean"] == 0.123 and current.data.metrics["macro_f1"] == 0.123
    old_id = first.stdout.split("MLflow run ")[1].split()[0]
    assert current.info.run_id != old_id and client.get_run(old_id).info.lifecycle_stage == "deleted"


def test_a_path_that_is_not_a_run_folder_is_refused_before_anything_is_logged(exported, tmp_path):
    not_a_run = tmp_path / "notes"
    not_a_run.mkdir()
    store = tree_hashes(exported["root"] / "mlflow.db")
    result = run_cli("export", "mlflow", exported["folders"]["gru"], not_a_run, "--output-root", exported["root"])
    assert_refused(result, str(not_a_run), "Not a complete run folder", "Nothing was exported")
    assert tree_hashes(exported["root"] / "mlflow.db") == store
    empty = run_cli("export", "mlflow", "--output-root", tmp_path / "nothing-here")
    assert_refused(empty, "No complete runs", str(tmp_path / "nothing-here"))
    assert not (tmp_path / "nothing-here").exists()


def test_missing_mlflow_is_refused_with_the_install_command(exported, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    result = run_cli("export", "mlflow", exported["folders"]["markov"], "--tracking-uri", f"sqlite:///{tmp_path}/x.db")
    assert_refused(result, "pip install 'nextpoi[mlflow]'")
    assert not (tmp_path / "x.db").exists()


def test_a_file_uri_is_allowed_for_the_call_only(exported, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    (result,) = mlflow_export.export_runs([exported["folders"]["markov"]], uri)
    assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    logged = MlflowClient(tracking_uri=uri).get_run(result.run_id).data.metrics
    folds = pd.read_csv(exported["folders"]["markov"] / "fold_metrics.csv")
    assert logged["folds/selected/macro_f1/seed0/fold1"] == pytest.approx(
        folds.query("selection == 'selected' and fold == 1").macro_f1.item(), rel=1e-12)
    flagged = json.loads((exported["folders"]["markov"] / "summary.json").read_text())["collapse"]["flagged"]
    assert logged["collapsed"] == float(flagged)
