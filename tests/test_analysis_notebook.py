"""notebooks/analysis.ipynb: executes under papermill over fake runs, and works interactively in JupyterLab
(driven through headless Chromium: run all cells, change a widget control, see the plot change)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import nbformat
import pytest

from runfixtures import make_fake_run

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "analysis.ipynb"
TEST_OUTPUT = REPO / "test-output"
CHROMIUM = os.environ.get("NEXTPOI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def two_runs(root: Path) -> list[Path]:
    return [make_fake_run(root, run_name="baseline", quality=0.55),
            make_fake_run(root, run_name="better", quality=0.75, rng_seed=1)]


# ------------------------------------------------------------------------------------------------ papermill


def test_analysis_notebook_executes_under_papermill(tmp_path):
    root = tmp_path / "outputs"
    two_runs(root)
    # Another dataset, finished earlier: left out (the notebook analyses the most recent dataset).
    make_fake_run(root, dataset="older", run_name="elsewhere", finished_at="2024-06-01T00:00:00+00:00")
    executed = tmp_path / "analysis-out.ipynb"
    result = subprocess.run(
        [sys.executable, "-m", "papermill", str(NOTEBOOK), str(executed), "-p", "outputs_root", str(root),
         "-k", "python3", "--no-progress-bar"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    nb = nbformat.read(executed, as_version=4)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]

    titles = [o.data[PLOTLY_MIME]["layout"]["title"]["text"] for o in outputs if PLOTLY_MIME in o.get("data", {})]
    for prefix in ("Leaderboard", "Per-class precision and recall", "Confusion matrices", "Attention"):
        assert sum(t.startswith(prefix) for t in titles) == 1, (prefix, titles)
    assert sorted(t for t in titles if t.startswith("Training curves")) == [
        "Training curves: baseline", "Training curves: better"]
    # Each figure also carries an HTML fallback (plotly.js inlined once) for viewers without the plotly renderer.
    assert all("text/html" in o.data for o in outputs if PLOTLY_MIME in o.get("data", {}))

    html = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    (table,) = [h for h in html if 'class="leaderboard"' in h]
    assert table.count("<tr") == 1 + 2
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "2 runs of dataset 'toy'" in text and "elsewhere" not in text
    # The runs' table (analysis.tables.runs_table) is displayed, not built in the notebook.
    (runs_table,) = [h for h in html if 'class="dataframe"' in h]
    assert "baseline" in runs_table and "better" in runs_table and "elsewhere" not in runs_table
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), \
        "the interactive AnalysisApp was not displayed"
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)


# ------------------------------------------------------------------------------------------------ JupyterLab


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def wait_until(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except (OSError, urllib.error.URLError, ValueError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


@pytest.fixture
def jupyterlab(tmp_path):
    """A JupyterLab server on a free port over a folder holding the notebook and two fake runs, with its
    own (isolated) settings; always stopped at the end, kernels first."""
    work = tmp_path / "lab"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / "analysis.ipynb")
    two_runs(work / "outputs")
    config = tmp_path / "jupyter"
    settings = config / "lab-settings"
    # Render every cell (no virtual scrolling, so the widget cell is in the DOM) and no news/update checks.
    for path, values in {
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                             "checkForUpdates": False},
    }.items():
        (settings / path).parent.mkdir(parents=True, exist_ok=True)
        (settings / path).write_text(json.dumps(values))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        JUPYTER_CONFIG_DIR=str(config / "config"),
        JUPYTERLAB_SETTINGS_DIR=str(settings),
        JUPYTERLAB_WORKSPACES_DIR=str(config / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(config / "runtime"),
        PYTHONWARNINGS="ignore::DeprecationWarning",
    )
    port = free_port()
    log_path = tmp_path / "jupyterlab.log"
    log = open(log_path, "w")
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
               "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
               "--ServerApp.port_retries=0", f"--notebook-dir={work}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        log.flush()
        return log_path.read_text(errors="replace")[-3000:]

    try:
        def answering():
            if process.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {process.returncode}:\n{log_tail()}")
            return get_json(f"{url}/api/status")

        wait_until(answering, 60, "JupyterLab to answer")
        yield {"url": url, "work": work, "log": log_tail}
    finally:
        try:
            for kernel in get_json(f"{url}/api/kernels"):
                request = urllib.request.Request(f"{url}/api/kernels/{kernel['id']}", method="DELETE")
                urllib.request.urlopen(request, timeout=10).close()
        except (OSError, ValueError):
            pass
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the server's own process group (start_new_session)
                process.wait(timeout=10)
        log.close()


CONFUSION_WIDGET_TEXT = """() => {
  for (const plot of document.querySelectorAll('.widget-output .js-plotly-plot')) {
    const title = plot.querySelector('.gtitle');
    if (title && title.textContent.startsWith('Confusion')) {
      return {title: title.textContent,
              cells: Array.from(plot.querySelectorAll('.hm .heatmap-label text')).map(t => t.textContent)};
    }
  }
  return null;
}"""


def notebook_state(page, url: str) -> str:
    """One line per code cell (prompt, start of its output text) and the kernels' states, for failure reports."""
    lines = []
    try:
        for index, cell in enumerate(page.locator(".jp-Notebook .jp-CodeCell").all()):
            prompt = cell.locator(".jp-InputPrompt").first.inner_text(timeout=5_000).strip()
            output = " ".join(cell.locator(".jp-Cell-outputArea").first.inner_text(timeout=5_000).split())
            lines.append(f"  code cell {index}: prompt {prompt!r} output {output[:160]!r}")
    except Exception as error:  # a report, not a check: say what could not be read
        lines.append(f"  (cells could not be read: {error})")
    try:
        kernels = [(k["execution_state"], k["connections"]) for k in get_json(f"{url}/api/kernels")]
    except (OSError, ValueError) as error:
        kernels = f"unknown ({error})"
    return "kernels (state, connections): " + f"{kernels}\n" + "\n".join(lines)


def delete_kernels(url: str) -> None:
    for kernel in get_json(f"{url}/api/kernels"):
        request = urllib.request.Request(f"{url}/api/kernels/{kernel['id']}", method="DELETE")
        urllib.request.urlopen(request, timeout=10).close()
    for session in get_json(f"{url}/api/sessions"):
        request = urllib.request.Request(f"{url}/api/sessions/{session['id']}", method="DELETE")
        urllib.request.urlopen(request, timeout=10).close()


def open_and_run_all(browser, url: str, console_errors: list, page_errors: list):
    """Open the notebook in a new page, Run All once its kernel is connected, and wait until the AnalysisApp's
    confusion matrix is drawn. Returns (page, toggle); raises AssertionError with what each cell shows."""
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{url}/lab/tree/analysis.ipynb")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=60_000)

    # Run All only once the notebook's kernel is started and connected: clicking earlier races the
    # session start (a kernel picker dialog, or a second kernel that drops the queued cells).
    def kernel_ready():
        sessions = [s for s in get_json(f"{url}/api/sessions") if s["path"].endswith("analysis.ipynb")]
        kernels = get_json(f"{url}/api/kernels")
        return (len(sessions) == 1 and len(kernels) == 1 and kernels[0]["execution_state"] == "idle"
                and kernels[0]["connections"] >= 1)

    wait_until(kernel_ready, 60, "the notebook's kernel to start and connect")
    page.wait_for_function("Array.from(document.querySelectorAll('.jp-StatusBar-TextItem'))"
                           ".some(e => /\\|\\s*Idle/.test(e.textContent))", timeout=30_000)

    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator('li[data-command="runmenu:run-all"]').click()

    toggle = page.locator(".widget-toggle-buttons button", has_text="Row-normalised")
    widget_cell = page.locator(".jp-Notebook .jp-CodeCell").last
    try:
        rendered_or_race = toggle.or_(widget_cell.get_by_text("Error displaying widget: model not found"))
        rendered_or_race.first.wait_for(state="visible", timeout=90_000)
        if not toggle.is_visible():
            # A known JupyterLab/ipywidgets start-up race (jupyter-widgets/ipywidgets#3549, #3823): the
            # widget manager's first state request to a fresh kernel can cross the cell that creates the
            # widgets. A user re-runs the cell; so does this test, once (in place), then asks for the full app.
            console_errors[:] = [m for m in console_errors if "model not found" not in m]
            widget_cell.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Control+Enter")  # run in place: no new cell below
            toggle.wait_for(state="visible", timeout=60_000)
        page.wait_for_function(f"(() => {{ const r = ({CONFUSION_WIDGET_TEXT})(); "
                               "return r && r.cells.length >= 27; })()", timeout=30_000)
    except Exception as error:
        widget_cell.scroll_into_view_if_needed()
        page.screenshot(path=str(TEST_OUTPUT / "jupyterlab-failure.png"))
        raise AssertionError(f"the AnalysisApp widgets did not render ({type(error).__name__}; "
                             f"test-output/jupyterlab-failure.png); {notebook_state(page, url)}") from None
    return page, toggle


@pytest.mark.browser
def test_analysis_notebook_in_jupyterlab(jupyterlab):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set NEXTPOI_CHROMIUM)")
    TEST_OUTPUT.mkdir(exist_ok=True)
    (TEST_OUTPUT / "jupyterlab-failure.txt").unlink(missing_ok=True)
    url = jupyterlab["url"]
    page_errors, console_errors = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            try:
                page, toggle = open_and_run_all(browser, url, console_errors, page_errors)
            except AssertionError as first:
                # Run All can stall in a fresh kernel for reasons outside this project (ipython/ipykernel#1471:
                # random Run-All freezes with ipykernel 7; we pin 6.x, but the test must not block every
                # change on a stall). Once, as a user would: a new kernel and a new page, then every check as
                # before. The first attempt's report is kept in test-output/jupyterlab-failure.txt.
                (TEST_OUTPUT / "jupyterlab-failure.txt").write_text(f"{first}\nserver log:\n{jupyterlab['log']()}")
                warnings.warn(f"first JupyterLab attempt failed, retried once with a new kernel: {first}; "
                              f"console errors {console_errors[-5:]}; page errors {page_errors[-5:]}")
                for context in browser.contexts:
                    context.close()
                delete_kernels(url)
                console_errors.clear()
                page_errors.clear()
                try:
                    page, toggle = open_and_run_all(browser, url, console_errors, page_errors)
                except AssertionError as second:
                    raise AssertionError(f"server log:\n{jupyterlab['log']()}\nbrowser console errors: "
                                         f"{console_errors[-5:]}\nfirst attempt: {first}\n"
                                         f"second attempt: {second}") from None

            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [t for t in errors.all_inner_texts() if "Error" in t or "Traceback" in t]
            assert not tracebacks, tracebacks
            static_plots = page.evaluate("Array.from(document.querySelectorAll('.jp-RenderedPlotly.js-plotly-plot'))"
                                         ".filter(e => !e.closest('.widget-output')).length")
            assert static_plots >= 6, f"only {static_plots} static plotly outputs rendered"
            page.screenshot(path=str(TEST_OUTPUT / "jupyterlab-run-all.png"))

            before = page.evaluate(CONFUSION_WIDGET_TEXT)
            assert "counts" in before["title"]
            assert all(re.fullmatch(r"[+-]?\d+", t) for t in before["cells"]), before
            toggle.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.screenshot(path=str(TEST_OUTPUT / "jupyterlab-widget-counts.png"))

            toggle.click()
            page.wait_for_function(f"(() => {{ const r = ({CONFUSION_WIDGET_TEXT})(); "
                                   "return r && r.title.includes('row-normalised') && r.cells.length >= 27; })()",
                                   timeout=30_000)
            after = page.evaluate(CONFUSION_WIDGET_TEXT)
            assert after["cells"] != before["cells"]
            assert all(re.fullmatch(r"[+-]?[01]\.\d\d", t) for t in after["cells"]), after
            toggle.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.screenshot(path=str(TEST_OUTPUT / "jupyterlab-widget-normalised.png"))
        finally:
            browser.close()
    assert not page_errors, page_errors
    assert not console_errors, console_errors
