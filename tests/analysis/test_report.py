"""nextpoi_lib.analysis.report. The static HTML report: self-contained (plotly.js inline, nothing fetched) and, in a real headless
Chromium, rendered without errors with working plotly buttons."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from plotly.offline import get_plotlyjs

from nextpoi_lib.analysis import report as analysis_report
from runfixtures import make_fake_run

REPO = Path(__file__).resolve().parent.parent.parent
TEST_OUTPUT = REPO / "test-output"
CHROMIUM = os.environ.get("NEXTPOI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROFILE_NOTE = "Produced by the test-cpu profile on a 2-core machine."


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report") / "outputs"
    return [
        make_fake_run(root, run_name="baseline", seeds=(0, 1), quality=0.55),
        make_fake_run(root, run_name="better", seeds=(0, 1), quality=0.75, rng_seed=1),
        make_fake_run(root, run_name="markov", seeds=(0, 1), quality=0.6, rng_seed=2, kind="baseline"),
    ]


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    return analysis_report.write_report(runs, tmp_path_factory.mktemp("html") / "report.html",
                                        title="Toy comparison", profile_note=PROFILE_NOTE)


# Figures in the report of `runs`: leaderboard, per-class, confusion, one curves figure per run, attention.
N_FIGURES = 3 + 3 + 1


def test_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.I), "the report loads a script from elsewhere"
    assert not re.search(r"<script[^>]*\bsrc\s*=\s*[\"']?https?://", text, re.I)
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?://", text, re.I)
    assert not re.search(r"@import\s+url\(\s*[\"']?https?://", text, re.I)
    bundle = get_plotlyjs()
    assert text.count(bundle) == 1, "plotly.js should be embedded exactly once"
    assert text.replace(bundle, "").count("Plotly.newPlot(") == N_FIGURES


def test_report_contents(report, runs):
    text = report.read_text(encoding="utf-8")
    assert "<title>Toy comparison</title>" in text
    assert PROFILE_NOTE in text
    assert "test-cpu" in text  # each run's manifest profile
    leaderboard = re.search(r'<table class="leaderboard">.*?</table>', text, re.S).group(0)
    assert leaderboard.count("<tr") == 1 + len(runs)
    for name in ("baseline", "better", "markov"):
        assert f"<td>{name}</td>" in leaderboard
    for div in ("fig-leaderboard", "fig-per-class", "fig-confusion", "fig-curves-0", "fig-curves-2",
                "fig-attention"):
        assert f'id="{div}"' in text
    # The class list every run used, read from the run folders' manifests.
    classes = {tuple(json.loads((r / "manifest.json").read_text())["classes"]) for r in runs}
    assert len(classes) == 1
    (class_list,) = classes
    assert (f'<p class="classes">Every run predicts the same {len(class_list)} classes: '
            f'<b>{", ".join(class_list)}</b>.</p>') in text


def test_report_is_written_atomically_and_replaced(runs, tmp_path):
    target = tmp_path / "out" / "report.html"
    target.parent.mkdir()
    target.write_text("old")
    path = analysis_report.write_report(runs[:2], target)
    assert path == target
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.html"], "temporary file left behind"


def test_report_refuses_runs_that_cannot_be_compared(runs, tmp_path):
    other = make_fake_run(tmp_path / "outputs", dataset="elsewhere", run_name="x")
    target = tmp_path / "report.html"
    with pytest.raises(ValueError, match="different datasets"):
        analysis_report.write_report([runs[0], other], target)
    assert not target.exists()


def test_report_reads_old_hybrid_runs_as_blended(runs, tmp_path):
    # Same dataset, classes and folds as `runs` (the fake data depends on nothing else): comparable.
    old = make_fake_run(tmp_path / "outputs", run_name="old_blend", seeds=(0, 1), rng_seed=3, kind="hybrid")
    text = analysis_report.write_report([runs[0], old], tmp_path / "report.html").read_text(encoding="utf-8")
    for table in ("leaderboard", "runs"):
        rows = re.search(rf'<table class="{table}">.*?</table>', text, re.S).group(0)
        assert "<td>blended</td>" in rows and "<td>hybrid</td>" not in rows


def test_leaderboard_html_formats_the_table(runs):
    from nextpoi_lib.analysis import tables

    table = tables.leaderboard(runs)
    html = analysis_report.leaderboard_html(table)
    assert html.count("<tr") == 1 + len(runs) and html.count('<tr class="reference">') == 1
    best = table.iloc[0]
    assert f"<td>{best.macro_f1_mean:.4f} ± {best.macro_f1_std:.4f}</td>" in html


def test_profile_note_names_the_profiles_and_their_description(runs, tmp_path):
    note = analysis_report.profile_note(runs[:2])
    assert note == "Runs baseline, better: profile 'test-cpu'."
    cpu = make_fake_run(tmp_path / "outputs", run_name="quick", profile="cpu")
    note = analysis_report.profile_note([runs[0], cpu])
    assert "Runs baseline: profile 'test-cpu'." in note
    assert "Runs quick: profile 'cpu' (" in note and "Quick CPU pass of the real experiments" in note
    assert note.endswith("These runs come from different profiles: compare them with care.")


# ------------------------------------------------------------------------------------------------ browser


def launch_chromium(playwright):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set NEXTPOI_CHROMIUM)")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


HEATMAP_TEXT = """() => {
  const gd = document.getElementById('fig-confusion');
  return Array.from(gd.querySelectorAll('.hm .heatmap-label text')).map(t => t.textContent);
}"""


@pytest.mark.browser
def test_report_renders_in_chromium(report, runs):
    sync_api = pytest.importorskip("playwright.sync_api")
    TEST_OUTPUT.mkdir(exist_ok=True)
    problems = []
    with sync_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri())
            page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot').length >= {N_FIGURES} && "
                                   f"document.querySelectorAll('.plotly .main-svg').length >= {N_FIGURES}",
                                   timeout=60_000)
            assert page.locator(".js-plotly-plot").count() == N_FIGURES
            assert page.locator(".plotly .main-svg").count() >= N_FIGURES
            assert page.locator("table.leaderboard tbody tr").count() == len(runs)
            # Every bar of the leaderboard and per-class figures was drawn.
            assert page.locator("#fig-per-class .point").count() == 2 * 3 * len(runs)

            before = page.evaluate(HEATMAP_TEXT)
            # 3 runs + difference, 3 × 3 cells each: integer counts (signed in the difference).
            assert len(before) == 4 * 9 and all(re.fullmatch(r"[+-]?\d+", t) for t in before), before
            z_before = page.evaluate("document.getElementById('fig-confusion').data[0].z")
            page.locator("#fig-confusion .updatemenu-button", has_text="Row-normalised").click()
            page.wait_for_function("document.getElementById('fig-confusion').layout.title.text.includes('row-normalised')",
                                   timeout=10_000)
            after = page.evaluate(HEATMAP_TEXT)
            z_after = page.evaluate("document.getElementById('fig-confusion').data[0].z")
            assert after != before
            assert len(after) == 4 * 9 and all(re.fullmatch(r"[+-]?[01]\.\d\d", t) for t in after), after
            np.testing.assert_allclose(np.sum(z_after, axis=1), 1.0)
            z = np.asarray(z_before, dtype=float)
            np.testing.assert_allclose(z_after, z / z.sum(axis=1, keepdims=True))
            page.screenshot(path=str(TEST_OUTPUT / "report.png"), full_page=True)
        finally:
            browser.close()
    assert not problems, "\n".join(problems)
    outside = [u for u in requests if not u.startswith("file://") and not u.startswith("data:")]
    assert not outside, f"the report fetched {outside}"


# ----------------------------------------------------------- collapsed runs and the reference methods


@pytest.fixture(scope="module")
def grid_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid-report") / "outputs"
    return {
        "baseline": make_fake_run(root, run_name="baseline", quality=0.55),
        "A": make_fake_run(root, run_name="A", rng_seed=3, collapse_to="C"),
        "markov": make_fake_run(root, run_name="markov", kind="baseline", quality=0.65, rng_seed=5),
    }


def _row(html_text, run):
    (row,) = [r for r in re.findall(r"<tr[^>]*>.*?</tr>", html_text, re.S) if re.match(rf"<tr[^>]*><td>{run}</td>", r)]
    return row


def test_leaderboard_html_shows_the_collapse_and_the_reference_deltas(grid_runs):
    import pandas as pd

    from nextpoi_lib.analysis import tables

    html_text = analysis_report.leaderboard_html(tables.leaderboard(list(grid_runs.values())))
    assert "<th>Δ baseline</th>" in html_text and "<th>Δ best reference</th>" in html_text
    row = _row(html_text, "A")
    assert row.startswith('<tr class="collapsed">')
    assert "⚠ collapsed: " in row and "&#x27;C&#x27; takes 100.0% of all predictions" in row
    assert "never predicted (A, B)" in row
    for run in ("baseline", "markov"):
        assert "⚠" not in _row(html_text, run)
    means = {n: pd.read_csv(p / "fold_metrics.csv").query("selection == 'selected'")["macro_f1"].mean()
             for n, p in grid_runs.items()}
    cells = re.findall(r"<td>(.*?)</td>", row)
    assert f"{means['A'] - means['baseline']:+.4f}" in cells
    assert f"{means['A'] - means['markov']:+.4f}" in cells


def test_report_explains_collapsed_runs(grid_runs, tmp_path):
    path = analysis_report.write_report(list(grid_runs.values()), tmp_path / "report.html")
    text = path.read_text(encoding="utf-8")
    assert "⚠ collapsed:</b> 1 run(s) — A —" in text
    assert "best reference method" in text and "<b>markov</b>" in text
    # The leaderboard section states the pairing rule once, in its explanatory paragraph.
    section = text.split("<h2>Leaderboard</h2>", 1)[1].split("<h2>", 1)[0]
    rule = "Paired tests pair fold means: each run&#x27;s metric is averaged over its seeds within a fold"
    assert section.count(rule) == 1 and "0.0625 with 5 folds" in section
    assert "matched (seed, fold) pairs" not in section


def test_leaky_runs_are_labelled_in_the_leaderboard_and_the_report(tmp_path):
    import json

    from nextpoi_lib.analysis import tables

    root = tmp_path / "outputs"
    clean = make_fake_run(root, run_name="baseline", quality=0.55)
    leaky = make_fake_run(root, run_name="leaky_run", quality=0.9, rng_seed=2)
    collapsed_leaky = make_fake_run(root, run_name="both", rng_seed=3, collapse_to="C")
    for path in (leaky, collapsed_leaky):
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["config"] = {"embeddings": {"source": "transition_graph_all_users"}}
        (path / "manifest.json").write_text(json.dumps(manifest))
    html_text = analysis_report.leaderboard_html(tables.leaderboard([clean, leaky, collapsed_leaky]))
    label = "⚠ leaky: POI embeddings trained on all users&#x27; transitions, including the test users&#x27;"
    row = _row(html_text, "leaky_run")
    assert row.startswith('<tr class="leaky">') and label in row and "collapsed" not in row
    row = _row(html_text, "both")
    assert row.startswith('<tr class="collapsed leaky">')
    assert row.index("⚠ collapsed: ") < row.index(label)
    assert "⚠" not in _row(html_text, "baseline")
    text = analysis_report.write_report([clean, leaky, collapsed_leaky], tmp_path / "r.html").read_text(encoding="utf-8")
    assert f"<b>{label}</b>: 2 run(s) — leaky_run, both —" in text
    assert "⚠ collapsed:</b> 1 run(s) — both —" in text


@pytest.mark.filterwarnings("ignore:optimizer.learning_rate")
def test_main_job_runs_the_reference_methods_in_the_same_batch():
    """nextpoi.sh main: baseline + A-D and the four reference methods in one `nextpoi batch` call under
    `--profile auto`; under the cpu profile the references get the grid's windows, folds and seed."""
    from nextpoi_lib.experiment import load_config

    script = (REPO / "nextpoi.sh").read_text()
    main = re.search(r"^  main\)\n(.*?)^    exit \$status ;;", script, re.S | re.M).group(1)
    batches = [" ".join(c.replace("\\\n", " ").split()) for c in re.findall(r"nextpoi batch (.*?)\|\|", main, re.S)]
    assert len(batches) == 1
    (batch,) = batches
    layer = "parameters/classes/gowalla7.yaml"
    files = [w for w in batch.split() if w.endswith(".yaml") and w != layer]
    references = [f"parameters/baselines/{n}.yaml" for n in ("majority", "last_category", "markov",
                                                              "gradient_boosting")]
    grid = ["parameters/baseline.yaml"] + [f"parameters/{x}.yaml" for x in "ABCD"]
    assert files == grid + references and "--profile auto" in batch
    assert all((REPO / f).is_file() for f in files)
    # Every run of the main job predicts our users' 7 classes, in a dataset folder of its own, and the report
    # covers that folder.
    assert f"--layer {layer}" in batch
    assert "nextpoi report --dataset foursquare_nyc_gowalla7 " in main
    users = load_config(REPO / grid[0], REPO / layer, profile="cpu", gpu_visible=False)
    assert users.dataset_name() == "foursquare_nyc_gowalla7" and len(users.dataset.classes) == 7
    for f in references:
        config = load_config(REPO / f, REPO / layer, profile="cpu", gpu_visible=False)
        assert config.dataset == users.dataset
        assert (config.windows.length, config.windows.stride) == (users.windows.length, users.windows.stride) == (9, 9)
        assert config.training.seeds == users.training.seeds == [0]
        assert config.folds == users.folds
