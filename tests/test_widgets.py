"""nextpoi_lib.widgets.AnalysisApp: its callbacks redraw the figures with the controls' values, checked
against values computed here from the run folders' CSV files; no browser or kernel needed."""

from __future__ import annotations

import numpy as np
import pytest

from nextpoi_lib.widgets import AnalysisApp
from runfixtures import bars, counts_expected, make_fake_run, per_class_expected


def z_of(app, index=0):
    return np.asarray(app.plots["confusion"].data[index].z, dtype=float)


def test_widget_normalise_callback_changes_the_figure(one_seed):
    root = one_seed[0].parent.parent
    app = AnalysisApp(root)
    assert app.run_select.value == ("baseline", "better")
    before = z_of(app)
    np.testing.assert_array_equal(before, counts_expected(one_seed[0]))

    # The callback does the work: detach it, change the control, nothing happens; call it, the figure changes.
    app.normalise_toggle.unobserve(app.on_normalise_change, names="value")
    app.normalise_toggle.value = True
    np.testing.assert_array_equal(z_of(app), before)
    app.on_normalise_change({"name": "value", "old": False, "new": True})
    after = z_of(app)
    np.testing.assert_allclose(after, before / before.sum(axis=1, keepdims=True))
    assert "row-normalised" in app.plots["confusion"].layout.title.text
    # The Output widget shows the same figure.
    shown = app.outputs["confusion"].outputs[0]["data"]["application/vnd.plotly.v1+json"]
    np.testing.assert_allclose(np.asarray(shown["data"][0]["z"], float), after)


def test_widget_controls_trigger_callbacks(three_seeds):
    root = three_seeds[0].parent.parent
    app = AnalysisApp(root)
    # Toggle through the observer.
    before = z_of(app)
    app.normalise_toggle.value = True
    assert not np.array_equal(z_of(app), before)

    # One fold: per-class bars become that fold's means.
    app.fold_select.value = 2
    heights, _ = bars(app.plots["per_class"], "better", "x")
    expected = per_class_expected(three_seeds[2], fold=2)
    assert heights["A"] == pytest.approx(expected.loc["A", ("precision", "mean")])
    np.testing.assert_allclose(
        z_of(app, 0).sum(axis=1), np.ones(3))  # still normalised, now fold 2
    # Classes.
    app.class_select.value = ("B",)
    assert all(list(t.x) == ["B"] for t in app.plots["per_class"].data)
    # Reference run.
    app.reference_select.value = "other"
    assert app.leaderboard_table.attrs["reference"] == "other"
    assert app.leaderboard_table.set_index("run").loc["other", "delta_macro_f1"] == 0
    assert "<table" in app.leaderboard_html.value
    # Runs: two selected -> two heatmaps and a difference.
    app.run_select.value = ("baseline", "better")
    assert len(app.plots["confusion"].data) == 3
    assert app.reference_select.options == ("baseline", "better")
    assert app.reference_select.value == "baseline"
    # Curves of another run.
    app.curves_select.value = "better"
    assert "better" in app.plots["curves"].layout.title.text


def test_widget_reports_incomparable_selection(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, dataset="toy", run_name="a")
    b = make_fake_run(root, dataset="zeta", run_name="b", rng_seed=3)
    app = AnalysisApp([a, b])
    assert "different datasets" in app.message.value
    app.run_select.value = ("a",)
    assert app.message.value == ""
    assert len(app.plots["confusion"].data) == 1
