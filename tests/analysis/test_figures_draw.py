"""Drawing of nextpoi_lib.analysis.figures: every figure shows the numbers of its table. Bar heights, heatmap
cells and curve points are checked against values computed here from the run folders' CSV files, and
against the `tables` function each figure draws from."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nextpoi_lib.analysis import figures, tables
from runfixtures import CLASSES, bars, counts_expected, make_fake_run, per_class_expected


# ------------------------------------------------------------------------------------------------ per class


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


def test_per_class_figure_class_filter(three_seeds):
    fig = figures.per_class_figure(three_seeds, classes=["C", "A"])
    assert all(list(t.x) == ["C", "A"] for t in fig.data)


# ------------------------------------------------------------------------------------------------ confusion


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




# ------------------------------------------------------------------------------------------------ figure = table


@pytest.mark.parametrize("selection", ["selected", "last"])
def test_leaderboard_figure_draws_the_leaderboard_table(three_seeds, selection):
    table = tables.leaderboard(three_seeds, selection=selection)
    for fig in (figures.leaderboard_figure(table), figures.leaderboard_figure(three_seeds, selection=selection)):
        f1, accuracy = fig.data
        assert list(f1.x) == list(accuracy.x) == table["run"].tolist() == ["better", "other", "baseline"]
        assert list(f1.y) == table["macro_f1_mean"].tolist()
        assert list(f1.error_y.array) == table["macro_f1_std"].tolist()
        assert list(accuracy.y) == table["accuracy_mean"].tolist()
        assert list(accuracy.error_y.array) == table["accuracy_std"].tolist()
        assert list(f1.customdata) == table["n"].tolist()
        assert f"({selection} epoch)" in fig.layout.title.text


@pytest.mark.parametrize("fold", [None, 3])
def test_per_class_figure_draws_the_per_class_table(three_seeds, fold):
    table = tables.per_class_table(three_seeds, "selected", fold).set_index(["run", "class"])
    fig = figures.per_class_figure(three_seeds, fold=fold)
    for run in three_seeds:
        for axis, metric in (("x", "precision"), ("x2", "recall")):
            heights, errors = bars(fig, run.name, axis)
            for cls in CLASSES:
                assert heights[cls] == table.loc[(run.name, cls), f"{metric}_mean"]
                assert errors[cls] == table.loc[(run.name, cls), f"{metric}_std"]


@pytest.mark.parametrize("normalise", [False, True])
def test_confusion_figure_draws_the_confusion_panels(one_seed, normalise):
    panels = tables.confusion_panels(one_seed, normalise=normalise)
    fig = figures.confusion_figure(one_seed, normalise=normalise)
    assert [t.name for t in fig.data] == [p.title for p in panels]
    for trace, panel in zip(fig.data, panels):
        np.testing.assert_array_equal(np.asarray(trace.z, float), panel.matrix)
        assert trace.coloraxis == ("coloraxis2" if panel.difference else "coloraxis")


def test_curves_and_attention_figures_draw_their_tables(tmp_path):
    root = tmp_path / "outputs"
    run = make_fake_run(root, run_name="baseline", seeds=(0,))
    curves = tables.training_curves(run)
    fig = figures.curves_figure(run)
    for fold, d in curves.mean.groupby("fold"):
        (f1,) = [t for t in fig.data if t.xaxis == "x2" and t.name == f"fold {fold}"]
        assert list(f1.y) == d["val_macro_f1"].tolist()
        (star,) = [t for t in fig.data if t.name == f"fold {fold} selected epoch"]
        chosen = curves.selected.set_index("fold").loc[fold]
        assert (star.x[0], star.y[0]) == (chosen["epoch"], chosen["val_macro_f1"])

    other = make_fake_run(root, run_name="other", seeds=(0, 1), rng_seed=4)
    table = tables.attention_table([run, other])
    fig = figures.attention_figure([run, other])
    assert [t.name for t in fig.data] == ["baseline", "other"]
    for trace in fig.data:
        rows = table[table["run"] == trace.name]
        assert list(trace.y) == rows["mean"].tolist()
        assert list(trace.error_y.array) == rows["std"].tolist()
