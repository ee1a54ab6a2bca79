"""`nextpoi run --profile` resolves the config the batch runner resolves, and the one merging the YAML files by
hand gives; an unknown profile is one paragraph and exit 2; `nextpoi report` over fake run folders.

The runs are never trained: `experiment.run_experiment` (what `cli.command_run` calls) is replaced by a function
that records the config it is given.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from nextpoi_lib import cli, experiment, layers
from nextpoi_lib.layers import resolve_profile
from nextpoi_lib.notebook_parameters import experiment_config
from runfixtures import make_fake_run

ROOT = Path(__file__).resolve().parents[1]
PARAMETERS = ROOT / "parameters"
PROFILES = PARAMETERS / "profiles"


# --------------------------------------------------------------------------------------------------
# Helpers, independent of nextpoi_lib.layers


def merged(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def hand_merged(profile_file: Path | None) -> dict:
    """parameters/A.yaml over parameters/baseline.yaml (its `extends:`), the profile file on top."""
    baseline = yaml.safe_load((PARAMETERS / "baseline.yaml").read_text())
    a = yaml.safe_load((PARAMETERS / "A.yaml").read_text())
    assert a.pop("extends") == "baseline.yaml"  # the chain this test reproduces
    data = merged(baseline, a)
    if profile_file is not None:
        data = merged(data, yaml.safe_load(profile_file.read_text()) or {})
    return data


def leaves(data: dict, prefix: tuple = ()):
    for key, value in data.items():
        if isinstance(value, dict):
            yield from leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def at(data: dict, path: tuple):
    for key in path:
        data = data[key]
    return data


@pytest.fixture
def captured(monkeypatch):
    """Configs `nextpoi run` would run; no GPU visible, so 'auto' means cpu."""
    configs = []

    def fake_run_experiment(config, progress=None):
        configs.append(config)
        return Path(config.output.root) / "not-written"

    monkeypatch.setattr(experiment, "run_experiment", fake_run_experiment)
    monkeypatch.setattr(layers, "visible_gpus", lambda: [])
    monkeypatch.chdir(ROOT)
    return configs


# --------------------------------------------------------------------------------------------------
# nextpoi run --profile


PROFILE_CASES = {
    "cpu": PROFILES / "cpu.yaml",
    "auto": PROFILES / "cpu.yaml",  # no GPU visible
    "gpu": PROFILES / "gpu.yaml",
    "path": PROFILES / "cpu.yaml",
}


@pytest.mark.parametrize("case", list(PROFILE_CASES))
def test_run_profile_gives_the_batch_config_and_the_hand_merged_one(case, captured, tmp_path):
    profile_arg = str(PROFILES / "cpu.yaml") if case == "path" else case
    profile_file = PROFILE_CASES[case]
    out = tmp_path / "out"

    assert cli.main(["run", "parameters/A.yaml", "--profile", profile_arg, "--output-root", str(out)]) == 0
    (config,) = captured
    assert not out.exists()  # nothing trained, nothing written

    # (a) What the batch runner validates for the same file and profile (run_batch resolves the profile with
    # the GPUs it sees, then calls experiment_config with the profile path).
    batch_profile = resolve_profile(profile_arg, gpu_visible=False)
    assert batch_profile.resolve() == profile_file.resolve()
    batch_config = experiment_config([PARAMETERS / "A.yaml"], profile=batch_profile, output_root=str(out))
    assert config.to_dict() == batch_config.to_dict()

    # (b) The YAML files merged by hand, the profile last.
    expected = hand_merged(profile_file)
    resolved = config.to_dict()
    for path, value in leaves(expected):
        got = at(resolved, path)
        assert (list(got) if isinstance(got, tuple) else got) == value, path
    assert config.name == "A"
    assert config.profile == profile_file.stem
    assert resolved["profile"] == profile_file.stem
    assert config.output.root == str(out)

    # A few concrete values: A's own, baseline's, and what the profile changes.
    assert config.training.batch_size == 512 and config.model.num_layers == 2 and config.model.model_dim == 64
    assert config.optimizer.weight_decay == pytest.approx(1e-4) and config.scheduler.max_lr == pytest.approx(1e-3)
    if profile_file.stem == "cpu":
        assert config.training.epochs == 8 and list(config.training.seeds) == [0]
        assert config.windows.stride == 9 and config.embeddings.epochs == 40
    else:  # gpu.yaml is empty: the parameter files' own settings
        assert config.training.epochs == 100 and list(config.training.seeds) == [0, 1, 2]
        assert config.windows.stride == 1


def test_run_without_profile_records_none(captured, tmp_path):
    assert cli.main(["run", "parameters/A.yaml", "--output-root", str(tmp_path / "out")]) == 0
    (config,) = captured
    assert config.profile is None
    assert config.training.epochs == 100 and config.windows.stride == 1
    assert config.to_dict() == experiment_config([PARAMETERS / "A.yaml"], output_root=str(tmp_path / "out")).to_dict()


def test_run_with_unknown_profile_is_one_paragraph_and_writes_nothing(captured, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["run", "parameters/A.yaml", "--profile", "nosuch", "--output-root", str(out)])
    stderr = capsys.readouterr().err.strip()
    assert code == 2
    assert captured == []
    assert "\n" not in stderr and "Traceback" not in stderr
    assert stderr.startswith("error: ") and "'nosuch'" in stderr
    known = sorted(p.stem for p in PROFILES.glob("*.yaml"))
    assert {"cpu", "gpu"} <= set(known)
    assert f"one of: {', '.join(known)}" in stderr
    assert not out.exists() or not any(out.rglob("*"))


# --------------------------------------------------------------------------------------------------
# nextpoi report


def test_report_writes_the_named_html_over_complete_runs(tmp_path, capsys):
    root = tmp_path / "outputs"
    make_fake_run(root, run_name="baseline", quality=0.55, rng_seed=0)
    make_fake_run(root, run_name="better", quality=0.80, rng_seed=1)
    make_fake_run(root, run_name="unfinished", status="running")  # not complete: left out
    output = tmp_path / "html" / "mine.html"

    assert cli.main(["report", "--output-root", str(root), "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert f"Report of 2 runs of toy -> {output}" in out
    assert not (root / "report.html").exists()
    html = output.read_text()
    assert html.lstrip().lower().startswith("<!doctype html") or "<html" in html.lower()
    assert "nextpoi report: toy (profile test-cpu)" in html
    assert "baseline" in html and "better" in html and "unfinished" not in html


def test_report_default_output_is_under_the_output_root(tmp_path):
    root = tmp_path / "outputs"
    make_fake_run(root, run_name="baseline")
    assert cli.main(["report", "--output-root", str(root)]) == 0
    assert "nextpoi report: toy" in (root / "report.html").read_text()


def test_report_over_an_empty_root_exits_2(tmp_path, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    make_fake_run(root, run_name="unfinished", status="running")
    assert cli.main(["report", "--output-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"no complete runs under {str(root)!r}" in err
    assert not list(root.rglob("*.html"))


def test_report_refuses_named_incomplete_folders(tmp_path, capsys):
    root = tmp_path / "outputs"
    good = make_fake_run(root, run_name="good")
    bad = make_fake_run(root, run_name="bad", status="running")
    output = tmp_path / "r.html"
    assert cli.main(["report", str(good), str(bad), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "not complete run folders" in err and str(bad) in err and str(good) not in err
    assert not output.exists()


def test_report_refuses_several_datasets_with_one_output(tmp_path, capsys):
    root = tmp_path / "outputs"
    make_fake_run(root, dataset="nyc", run_name="a")
    make_fake_run(root, dataset="tky", run_name="b")
    output = tmp_path / "r.html"
    assert cli.main(["report", "--output-root", str(root), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "several datasets (nyc, tky)" in err
    assert not output.exists()

    # Without --output: one report per dataset, each over its own runs.
    assert cli.main(["report", "--output-root", str(root)]) == 0
    out = capsys.readouterr().out
    for dataset in ("nyc", "tky"):
        path = root / f"report-{dataset}.html"
        assert f"Report of 1 runs of {dataset} -> {path}" in out
        assert f"nextpoi report: {dataset} (profile test-cpu)" in path.read_text()
    assert not (root / "report.html").exists()


def test_report_of_one_dataset_among_several(tmp_path, capsys):
    root = tmp_path / "outputs"
    make_fake_run(root, dataset="nyc", run_name="a")
    make_fake_run(root, dataset="tky", run_name="b")
    output = tmp_path / "r.html"
    assert cli.main(["report", "--output-root", str(root), "--dataset", "tky", "--output", str(output)]) == 0
    assert "Report of 1 runs of tky -> " in capsys.readouterr().out
    text = output.read_text()
    assert "nextpoi report: tky (profile test-cpu)" in text and "nextpoi report: nyc" not in text
    assert cli.main(["report", "--output-root", str(root), "--dataset", "sf", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "no complete runs of dataset 'sf'" in err and "datasets with runs: nyc, tky" in err
