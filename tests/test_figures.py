"""Behaviour of nextpoi_lib.figures and nextpoi_lib.widgets against values computed here, independently,
from the run folders' CSV files (pandas/numpy/scipy), never from the code under test."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from nextpoi_lib import figures
from nextpoi_lib.widgets import AnalysisApp
from runfixtures import make_fake_run

CLASSES = ("A", "B", "C")


def fold_rows(run, selection="selected"):
    df = pd.read_csv(run / "fold_metrics.csv")
    return df[df["selection"] == selection].sort_values(["seed", "fold"])


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
    """Two runs, one seed × 5 folds: 5 pairs. Read-only for the tests."""
    root = tmp_path_factory.mktemp("one") / "outputs"
    return (make_fake_run(root, run_name="baseline", quality=0.55, rng_seed=0),
            make_fake_run(root, run_name="better", quality=0.80, rng_seed=1))


@pytest.fixture(scope="module")
def three_seeds(tmp_path_factory):
    """Three runs, 3 seeds × 5 folds: 15 pairs; 'better' is clearly better on every pair. Read-only."""
    root = tmp_path_factory.mktemp("three") / "outputs"
    return (make_fake_run(root, run_name="other", seeds=(0, 1, 2), quality=0.62, rng_seed=2),
            make_fake_run(root, run_name="baseline", seeds=(0, 1, 2), quality=0.55, rng_seed=0),
            make_fake_run(root, run_name="better", seeds=(0, 1, 2), quality=0.80, rng_seed=1))


# ------------------------------------------------------------------------------------------------ leaderboard


@pytest.mark.parametrize("selection", ["selected", "last"])
def test_leaderboard_means_and_stds_equal_numpy_on_fold_metrics(three_seeds, selection):
    table = figures.leaderboard(three_seeds, selection=selection).set_index("run")
    for run in three_seeds:
        rows = fold_rows(run, selection)
        row = table.loc[run.name]
        assert row["n"] == len(rows) == 15
        for metric in ("macro_f1", "accuracy"):
            assert row[f"{metric}_mean"] == pytest.approx(np.mean(rows[metric]), abs=1e-12)
            assert row[f"{metric}_std"] == pytest.approx(np.std(rows[metric], ddof=1), abs=1e-12)
        assert row["macro_f1_min50_mean"] == pytest.approx(np.nanmean(rows["macro_f1_min50"]), abs=1e-12)


def test_leaderboard_agrees_with_summary_json(three_seeds):
    table = figures.leaderboard(three_seeds).set_index("run")
    for run in three_seeds:
        summary = json.loads((run / "summary.json").read_text())["selected"]
        assert table.loc[run.name, "macro_f1_mean"] == pytest.approx(summary["macro_f1"]["mean"])
        assert table.loc[run.name, "macro_f1_std"] == pytest.approx(summary["macro_f1"]["std"])
        assert table.loc[run.name, "n"] == summary["macro_f1"]["n"]


def test_leaderboard_delta_is_difference_of_means_against_reference(three_seeds):
    other, baseline, better = three_seeds
    # Default reference: the run named "baseline", even though it is not first.
    table = figures.leaderboard(three_seeds).set_index("run")
    assert table.attrs["reference"] == "baseline"
    assert bool(table.loc["baseline", "is_reference"])
    for run in three_seeds:
        for metric in ("macro_f1", "accuracy"):
            expected = fold_rows(run)[metric].mean() - fold_rows(baseline)[metric].mean()
            assert table.loc[run.name, f"delta_{metric}"] == pytest.approx(expected, abs=1e-12)
    # Explicit reference.
    table = figures.leaderboard(three_seeds, reference="other").set_index("run")
    assert table.loc["other", "delta_macro_f1"] == 0
    expected = fold_rows(better)["macro_f1"].mean() - fold_rows(other)["macro_f1"].mean()
    assert table.loc["better", "delta_macro_f1"] == pytest.approx(expected, abs=1e-12)


def test_reference_defaults_to_first_run_without_a_baseline(tmp_path):
    root = tmp_path / "outputs"
    runs = [make_fake_run(root, run_name="x", rng_seed=3), make_fake_run(root, run_name="y", rng_seed=4)]
    assert figures.leaderboard(runs).attrs["reference"] == "x"
    with pytest.raises(ValueError, match="reference run 'nope'"):
        figures.leaderboard(runs, reference="nope")


def test_leaderboard_is_sorted_by_macro_f1(three_seeds):
    table = figures.leaderboard(three_seeds)
    assert list(table["run"]) == ["better", "other", "baseline"]
    assert table["macro_f1_mean"].is_monotonic_decreasing


def test_wilcoxon_p_equals_scipy_on_matched_pairs(three_seeds):
    _, baseline, better = three_seeds
    table = figures.leaderboard(three_seeds).set_index("run")
    for run in three_seeds:
        if run == baseline:
            assert pd.isna(table.loc[run.name, "p_wilcoxon"])
            continue
        merged = fold_rows(run).merge(fold_rows(baseline), on=["seed", "fold"], suffixes=("_a", "_b"))
        expected = wilcoxon(merged["macro_f1_a"], merged["macro_f1_b"], alternative="two-sided").pvalue
        assert table.loc[run.name, "n_pairs"] == len(merged) == 15
        assert table.loc[run.name, "p_wilcoxon"] == pytest.approx(expected, rel=1e-12)
    # Better on every one of 15 pairs: exact p = 2 / 2**15.
    assert table.loc["better", "p_wilcoxon"] == pytest.approx(2 / 2**15)


def test_small_n_note_for_five_pairs_and_not_for_fifteen(one_seed, three_seeds):
    five = figures.leaderboard(one_seed).set_index("run")
    assert five.loc["better", "n_pairs"] == 5
    # All five pairs favour 'better', yet the smallest attainable p is 2/2^5 = 0.0625.
    assert five.loc["better", "p_wilcoxon"] == pytest.approx(0.0625)
    assert "too small" in five.loc["better", "note"]
    assert "0.0625" in five.loc["better", "note"]

    fifteen = figures.leaderboard(three_seeds).set_index("run")
    assert fifteen.loc["better", "n_pairs"] == 15
    assert fifteen.loc["better", "p_wilcoxon"] < 0.05
    assert "too small" not in fifteen.loc["better", "note"]
    assert fifteen.loc["baseline", "note"] == "reference"


def test_pairs_only_over_matching_seed_fold(tmp_path):
    root = tmp_path / "outputs"
    baseline = make_fake_run(root, run_name="baseline", seeds=(0, 1, 2), quality=0.5)
    partial = make_fake_run(root, run_name="partial", seeds=(1, 2, 3), quality=0.8, rng_seed=5)
    table = figures.leaderboard([baseline, partial]).set_index("run")
    merged = fold_rows(partial).merge(fold_rows(baseline), on=["seed", "fold"], suffixes=("_a", "_b"))
    assert table.loc["partial", "n_pairs"] == len(merged) == 10
    assert table.loc["partial", "p_wilcoxon"] == pytest.approx(
        wilcoxon(merged["macro_f1_a"], merged["macro_f1_b"]).pvalue)
    assert "only 10 of 15" in table.loc["partial", "note"]


def test_different_fold_manifests_compare_means_but_refuse_paired_test(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="baseline", quality=0.5)
    b = make_fake_run(root, run_name="refolded", quality=0.8, fold_seed=7)
    result = figures.check_comparable([a, b])
    assert not result.paired
    assert any("fold manifests differ" in note for note in result.notes)
    table = figures.leaderboard([a, b]).set_index("run")
    assert pd.isna(table.loc["refolded", "p_wilcoxon"])
    assert "paired test refused" in table.loc["refolded", "note"]
    assert table.loc["refolded", "delta_macro_f1"] == pytest.approx(
        fold_rows(b)["macro_f1"].mean() - fold_rows(a)["macro_f1"].mean())
    assert any("fold manifests differ" in note for note in table.attrs["notes"])


# ------------------------------------------------------------------------------------------------ comparability


def test_check_comparable_refuses_mixed_datasets(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, dataset="toy")
    b = make_fake_run(root, dataset="other")
    with pytest.raises(ValueError, match="different datasets") as excinfo:
        figures.check_comparable([a, b])
    assert "toy" in str(excinfo.value) and "other" in str(excinfo.value)
    with pytest.raises(ValueError, match="different datasets"):
        figures.leaderboard([a, b])


def test_check_comparable_refuses_changed_data(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="a")
    b = make_fake_run(root, run_name="b", data_hash="feedbeef00000000")
    with pytest.raises(ValueError, match="data_hash"):
        figures.check_comparable([a, b])


def test_check_comparable_refuses_incomplete_runs(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="done")
    b = make_fake_run(root, run_name="crashed", status="running")
    with pytest.raises(ValueError, match="incomplete") as excinfo:
        figures.check_comparable([a, b])
    assert "crashed" in str(excinfo.value) and "running" in str(excinfo.value)
    assert "done" not in str(excinfo.value).split("incomplete", 1)[1]


def test_check_comparable_refuses_different_classes(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="a", classes=("A", "B", "C"))
    b = make_fake_run(root, run_name="b", classes=("A", "B", "D"), data_hash=None)
    b_manifest = json.loads((b / "manifest.json").read_text())
    a_manifest = json.loads((a / "manifest.json").read_text())
    b_manifest["data_hash"] = a_manifest["data_hash"]  # same data, other class list: still refused
    (b / "manifest.json").write_text(json.dumps(b_manifest))
    with pytest.raises(ValueError, match="class lists"):
        figures.check_comparable([a, b])


def test_discover_runs_lists_complete_runs_only(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="a")
    make_fake_run(root, run_name="b", status="failed")
    hidden = root / "toy" / ".c.partial-1"
    hidden.mkdir()
    (hidden / "manifest.json").write_text(json.dumps({"status": "complete"}))
    (root / "toy" / "empty").mkdir()
    d = make_fake_run(root, dataset="zeta", run_name="d")
    assert figures.discover_runs(root) == [a, d]
    assert figures.discover_runs(tmp_path / "nothing") == []


def test_select_runs_limits_to_one_dataset(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, dataset="toy", run_name="a")
    b = make_fake_run(root, dataset="toy", run_name="b")
    c = make_fake_run(root, dataset="zeta", run_name="a")
    assert figures.select_runs(root, dataset="toy") == [a, b]
    assert figures.select_runs(root, ["toy/a", "b"]) == [a, b]
    assert figures.select_runs(root, ["a"], dataset="zeta") == [c]
    with pytest.raises(ValueError, match="several datasets"):
        figures.select_runs(root, ["a"])
    with pytest.raises(ValueError, match="no complete run named 'zz'"):
        figures.select_runs(root, ["zz"])
    assert len({figures.load_run(p).dataset for p in figures.select_runs(root)}) == 1


def test_load_run_keeps_class_names_as_text(tmp_path):
    run = make_fake_run(tmp_path / "outputs", classes=("NA", "1", "None"))
    loaded = figures.load_run(run)
    assert loaded.classes == ["NA", "1", "None"]
    assert set(loaded.per_class["class"]) == {"NA", "1", "None"}
    assert figures.confusion_counts(run).index.tolist() == ["NA", "1", "None"]


# ------------------------------------------------------------------------------------------------ per class


def per_class_expected(run, fold=None):
    df = pd.read_csv(run / "per_class.csv", keep_default_na=False)
    df = df[df["selection"] == "selected"]
    if fold is not None:
        df = df[df["fold"] == fold]
    return df.groupby("class")[["precision", "recall"]].agg(["mean", "std"])


def bars(fig, run_name, axis):
    (trace,) = [t for t in fig.data if t.name == run_name and (t.xaxis or "x") == axis]
    return dict(zip(trace.x, trace.y)), dict(zip(trace.x, trace.error_y.array))


@pytest.mark.parametrize("fold", [None, 3])
def test_per_class_figure_bar_heights_equal_per_class_means(three_seeds, fold):
    fig = figures.per_class_figure(three_seeds, fold=fold)
    for run in three_seeds:
        expected = per_class_expected(run, fold)
        for axis, metric in (("x", "precision"), ("x2", "recall")):
            heights, errors = bars(fig, run.name, axis)
            assert list(heights) == list(CLASSES)
            for cls in CLASSES:
                assert heights[cls] == pytest.approx(expected.loc[cls, (metric, "mean")], abs=1e-12)
                assert errors[cls] == pytest.approx(expected.loc[cls, (metric, "std")], abs=1e-12)
    assert ("fold 3" in fig.layout.title.text) == (fold == 3)


def test_per_class_figure_class_filter_and_table(three_seeds):
    fig = figures.per_class_figure(three_seeds, classes=["C", "A"])
    assert all(list(t.x) == ["C", "A"] for t in fig.data)
    table = figures.per_class_table(three_seeds, "selected")
    assert len(table) == 3 * len(CLASSES)
    row = table[(table["run"] == "better") & (table["class"] == "B")].iloc[0]
    expected = per_class_expected(three_seeds[2])
    assert row["recall_mean"] == pytest.approx(expected.loc["B", ("recall", "mean")])
    assert row["n"] == 15
    with pytest.raises(ValueError, match="no fold 9"):
        figures.per_class_table(three_seeds, "selected", fold=9)


# ------------------------------------------------------------------------------------------------ confusion


def counts_expected(run, fold=None):
    df = pd.read_csv(run / "confusion.csv", keep_default_na=False)
    df = df[df["selection"] == "selected"]
    if fold is not None:
        df = df[df["fold"] == fold]
    m = df.pivot_table(index="true_class", columns="predicted_class", values="count", aggfunc="sum")
    return m.loc[list(CLASSES), list(CLASSES)].to_numpy(dtype=float)


@pytest.mark.parametrize("fold", [None, 1])
def test_confusion_figure_counts_and_difference(one_seed, fold):
    a, b = one_seed
    fig = figures.confusion_figure([a, b], normalise=False, fold=fold)
    assert len(fig.data) == 3
    za, zb, zdiff = (np.asarray(t.z, dtype=float) for t in fig.data)
    np.testing.assert_array_equal(za, counts_expected(a, fold))
    np.testing.assert_array_equal(zb, counts_expected(b, fold))
    np.testing.assert_array_equal(zdiff, zb - za)
    assert fig.data[2].name == "better − baseline"


def test_confusion_figure_row_normalised_and_difference(one_seed):
    a, b = one_seed
    fig = figures.confusion_figure([a, b], normalise=True)
    za, zb, zdiff = (np.asarray(t.z, dtype=float) for t in fig.data)
    ca, cb = counts_expected(a), counts_expected(b)
    np.testing.assert_allclose(za, ca / ca.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(zb, cb / cb.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(za.sum(axis=1), 1.0)
    np.testing.assert_allclose(zdiff, zb - za)


def test_confusion_figure_buttons_carry_both_views(one_seed):
    a, b = one_seed
    fig = figures.confusion_figure([a, b], normalise=False, buttons=True)
    (menu,) = fig.layout.updatemenus
    counts, shares = menu.buttons
    assert (counts.label, shares.label) == ("Counts", "Row-normalised")
    np.testing.assert_array_equal(np.asarray(counts.args[0]["z"][2], float),
                                  counts_expected(b) - counts_expected(a))
    ca = counts_expected(a)
    np.testing.assert_allclose(np.asarray(shares.args[0]["z"][0], float), ca / ca.sum(axis=1, keepdims=True))


def test_confusion_single_run_has_no_difference(one_seed):
    fig = figures.confusion_figure([one_seed[0]], normalise=False)
    assert len(fig.data) == 1


# ------------------------------------------------------------------------------------------------ curves, attention


def test_curves_figure_per_fold(tmp_path):
    run = make_fake_run(tmp_path / "outputs", seeds=(0,))
    curves = pd.read_csv(run / "curves.csv")
    fig = figures.curves_figure(run)
    loss = [t for t in fig.data if t.xaxis in (None, "x") and t.name == "fold 2"][0]
    expected = curves[curves["fold"] == 2].sort_values("epoch")
    np.testing.assert_allclose(np.asarray(loss.y, float), expected["train_loss"])
    lr = [t for t in fig.data if t.xaxis == "x3" and t.name == "fold 2"][0]
    np.testing.assert_allclose(np.asarray(lr.y, float), expected["learning_rate"])
    assert {t.name for t in fig.data if t.showlegend} == {f"fold {k}" for k in range(5)}
    only = figures.curves_figure(run, folds=[0, 1])
    assert {t.legendgroup for t in only.data} == {"fold 0", "fold 1"}


def test_curves_figure_empty_for_baseline(tmp_path):
    run = make_fake_run(tmp_path / "outputs", run_name="markov", kind="baseline")
    fig = figures.curves_figure(run)
    assert len(fig.data) == 0
    assert "No training curves" in fig.layout.annotations[0].text


def test_attention_figure_means_and_empty_case(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="baseline", seeds=(0, 1))
    b = make_fake_run(root, run_name="markov", kind="baseline")
    fig = figures.attention_figure([a, b])
    (trace,) = fig.data
    expected = pd.read_csv(a / "attention.csv").groupby("position")["weight"].mean()
    np.testing.assert_allclose(np.asarray(trace.y, float), expected.to_numpy())
    assert "markov" in fig.layout.title.text
    empty = figures.attention_figure([b])
    assert len(empty.data) == 0
    assert "None of the selected runs has attention" in empty.layout.annotations[0].text


# ------------------------------------------------------------------------------------------------ widgets


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


def test_seed_free_runs_pair_each_fold_once(tmp_path):
    """Two deterministic runs with 3 identical seeds give 5 independent pairs, not 15."""
    import json as _json

    from nextpoi_lib.figures import leaderboard
    from runfixtures import make_fake_run

    paths = [make_fake_run(tmp_path, run_name=name, seeds=(0, 1, 2), quality=q, rng_seed=r)
             for name, q, r in (("reference_run", 0.5, 1), ("other_run", 0.7, 2))]
    for path in paths:
        manifest = _json.loads((path / "manifest.json").read_text())
        manifest["seed_dependent"] = False
        (path / "manifest.json").write_text(_json.dumps(manifest))
    table = leaderboard(paths, reference="reference_run").set_index("run")
    assert table.loc["other_run", "n_pairs"] == 5


def test_seed_dependence_of_older_run_folders_follows_their_kind(tmp_path):
    """Run folders written before manifests carried seed_dependent: baselines pair each fold once."""
    import json as _json

    from nextpoi_lib.figures import leaderboard
    from runfixtures import make_fake_run

    paths = [make_fake_run(tmp_path, run_name=name, seeds=(0, 1, 2), quality=q, rng_seed=r)
             for name, q, r in (("reference_run", 0.5, 1), ("other_run", 0.7, 2))]
    for kind, expected_pairs in (("baseline", 5), ("neural", 15)):
        for path in paths:
            manifest = _json.loads((path / "manifest.json").read_text())
            manifest.pop("seed_dependent", None)
            manifest["kind"] = kind
            (path / "manifest.json").write_text(_json.dumps(manifest))
        table = leaderboard(paths, reference="reference_run").set_index("run")
        assert table.loc["other_run", "n_pairs"] == expected_pairs, kind
        assert ("paired once each" in table.loc["other_run", "note"]) == (kind == "baseline")


def test_seed_dependent_run_against_a_deterministic_one_pairs_fold_means(tmp_path):
    """A neural run (3 seeds) against a baseline that ignores the seed: 5 pairs of (mean over seeds, baseline)."""
    import json as _json

    import pandas as _pd
    from scipy.stats import wilcoxon

    from nextpoi_lib.figures import leaderboard
    from runfixtures import make_fake_run

    paths = [make_fake_run(tmp_path, run_name=name, seeds=(0, 1, 2), quality=q, rng_seed=r)
             for name, q, r in (("reference_run", 0.5, 1), ("other_run", 0.7, 2))]
    manifest = _json.loads((paths[0] / "manifest.json").read_text())
    manifest["seed_dependent"] = False
    (paths[0] / "manifest.json").write_text(_json.dumps(manifest))
    table = leaderboard(paths, reference="reference_run").set_index("run")
    assert table.loc["other_run", "n_pairs"] == 5 and "one run ignores the seed" in table.loc["other_run", "note"]
    rows = [_pd.read_csv(path / "fold_metrics.csv").query("selection == 'selected'") for path in paths]
    reference = rows[0].groupby("fold").macro_f1.mean().sort_index()  # its seeds are copies in a real run
    other = rows[1].groupby("fold").macro_f1.mean().sort_index()
    assert table.loc["other_run", "p_wilcoxon"] == pytest.approx(wilcoxon(other, reference).pvalue)
