"""Behaviour of nextpoi_lib.analysis.tables against values computed here, independently, from the run
folders' CSV files (pandas/numpy/scipy), never from the code under test."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from nextpoi_lib.analysis import tables
from nextpoi_lib.runfolder import load_run
from runfixtures import CLASSES, counts_expected, fold_rows, make_fake_run, per_class_expected


# ------------------------------------------------------------------------------------------------ leaderboard


@pytest.mark.parametrize("selection", ["selected", "last"])
def test_leaderboard_means_and_stds_equal_numpy_on_fold_metrics(three_seeds, selection):
    table = tables.leaderboard(three_seeds, selection=selection).set_index("run")
    for run in three_seeds:
        rows = fold_rows(run, selection)
        row = table.loc[run.name]
        assert row["n"] == len(rows) == 15
        for metric in ("macro_f1", "accuracy"):
            assert row[f"{metric}_mean"] == pytest.approx(np.mean(rows[metric]), abs=1e-12)
            assert row[f"{metric}_std"] == pytest.approx(np.std(rows[metric], ddof=1), abs=1e-12)
        assert row["macro_f1_min50_mean"] == pytest.approx(np.nanmean(rows["macro_f1_min50"]), abs=1e-12)


def test_leaderboard_agrees_with_summary_json(three_seeds):
    table = tables.leaderboard(three_seeds).set_index("run")
    for run in three_seeds:
        summary = json.loads((run / "summary.json").read_text())["selected"]
        assert table.loc[run.name, "macro_f1_mean"] == pytest.approx(summary["macro_f1"]["mean"])
        assert table.loc[run.name, "macro_f1_std"] == pytest.approx(summary["macro_f1"]["std"])
        assert table.loc[run.name, "n"] == summary["macro_f1"]["n"]


def test_leaderboard_delta_is_difference_of_means_against_reference(three_seeds):
    other, baseline, better = three_seeds
    # Default reference: the run named "baseline", even though it is not first.
    table = tables.leaderboard(three_seeds).set_index("run")
    assert table.attrs["reference"] == "baseline"
    assert bool(table.loc["baseline", "is_reference"])
    for run in three_seeds:
        for metric in ("macro_f1", "accuracy"):
            expected = fold_rows(run)[metric].mean() - fold_rows(baseline)[metric].mean()
            assert table.loc[run.name, f"delta_{metric}"] == pytest.approx(expected, abs=1e-12)
    # Explicit reference.
    table = tables.leaderboard(three_seeds, reference="other").set_index("run")
    assert table.loc["other", "delta_macro_f1"] == 0
    expected = fold_rows(better)["macro_f1"].mean() - fold_rows(other)["macro_f1"].mean()
    assert table.loc["better", "delta_macro_f1"] == pytest.approx(expected, abs=1e-12)


def test_reference_defaults_to_first_run_without_a_baseline(tmp_path):
    root = tmp_path / "outputs"
    runs = [make_fake_run(root, run_name="x", rng_seed=3), make_fake_run(root, run_name="y", rng_seed=4)]
    assert tables.leaderboard(runs).attrs["reference"] == "x"
    with pytest.raises(ValueError, match="reference run 'nope'"):
        tables.leaderboard(runs, reference="nope")


def test_leaderboard_is_sorted_by_macro_f1(three_seeds):
    table = tables.leaderboard(three_seeds)
    assert list(table["run"]) == ["better", "other", "baseline"]
    assert table["macro_f1_mean"].is_monotonic_decreasing


def fold_means(run, selection="selected", metric="macro_f1"):
    """The run's metric per fold, averaged over its seeds, read from fold_metrics.csv here."""
    return fold_rows(run, selection).groupby("fold")[metric].mean()


def test_wilcoxon_p_equals_scipy_on_fold_means(three_seeds):
    """3 seeds × 5 folds: the 5 folds are paired once each, on each run's mean over its seeds in the fold."""
    _, baseline, better = three_seeds
    table = tables.leaderboard(three_seeds).set_index("run")
    for run in three_seeds:
        if run == baseline:
            assert pd.isna(table.loc[run.name, "p_wilcoxon"])
            continue
        merged = pd.concat([fold_means(run), fold_means(baseline)], axis=1, join="inner", keys=["a", "b"])
        expected = wilcoxon(merged["a"], merged["b"], alternative="two-sided").pvalue
        assert table.loc[run.name, "n_pairs"] == len(merged) == 5
        assert table.loc[run.name, "p_wilcoxon"] == pytest.approx(expected, rel=1e-12)
        assert "5 fold means paired" in table.loc[run.name, "note"]
    # Better on every one of the 5 folds: exact p = 2 / 2**5, the floor of 5 folds, not 2 / 2**15.
    assert table.loc["better", "p_wilcoxon"] == pytest.approx(2 / 2**5) == tables.min_attainable_p(5)


def test_small_n_note_for_five_folds_whatever_the_seeds(one_seed, three_seeds):
    for runs in (one_seed, three_seeds):
        table = tables.leaderboard(runs).set_index("run")
        assert table.loc["better", "n_pairs"] == 5
        # All five folds favour 'better', yet the smallest attainable p is 2/2^5 = 0.0625.
        assert table.loc["better", "p_wilcoxon"] == pytest.approx(0.0625)
        assert "too small" in table.loc["better", "note"] and "0.0625" in table.loc["better", "note"]
        assert table.loc["baseline", "note"] == "reference"
        assert table.attrs["pairing"] == tables.PAIRING_RULE and tables.PAIRING_RULE in table.attrs["notes"]
    assert "fold means" in tables.PAIRING_RULE and "0.0625" in tables.PAIRING_RULE


def test_more_folds_can_reach_significance(tmp_path):
    """With 10 folds (one seed) better on every fold: p = 2/2^10 < 0.05 and no small-n note."""
    root = tmp_path / "outputs"
    runs = [make_fake_run(root, run_name="baseline", seeds=(0,), n_folds=10, quality=0.3),
            make_fake_run(root, run_name="better", seeds=(0,), n_folds=10, quality=0.95, rng_seed=2)]
    means = [fold_means(run) for run in runs]
    assert (means[1] > means[0]).all()
    table = tables.leaderboard(runs).set_index("run")
    assert table.loc["better", "n_pairs"] == 10
    assert table.loc["better", "p_wilcoxon"] == pytest.approx(2 / 2**10)
    assert "too small" not in table.loc["better", "note"]


def test_runs_with_other_seeds_pair_their_own_fold_means(tmp_path):
    root = tmp_path / "outputs"
    baseline = make_fake_run(root, run_name="baseline", seeds=(0, 1, 2), quality=0.5)
    partial = make_fake_run(root, run_name="partial", seeds=(1, 2, 3), quality=0.8, rng_seed=5)
    table = tables.leaderboard([baseline, partial]).set_index("run")
    assert table.loc["partial", "n_pairs"] == 5
    expected = wilcoxon(fold_means(partial).sort_index(), fold_means(baseline).sort_index()).pvalue
    assert table.loc["partial", "p_wilcoxon"] == pytest.approx(expected)
    assert "seeds differ (1, 2, 3 vs the reference's 0, 1, 2)" in table.loc["partial", "note"]


def test_pairs_only_over_folds_both_runs_have(tmp_path):
    root = tmp_path / "outputs"
    baseline = make_fake_run(root, run_name="baseline", seeds=(0, 1), quality=0.5)
    partial = make_fake_run(root, run_name="partial", seeds=(0, 1), quality=0.8, rng_seed=5)
    rows = pd.read_csv(partial / "fold_metrics.csv")
    rows[rows["fold"] != 4].to_csv(partial / "fold_metrics.csv", index=False)  # fold 4 lost
    table = tables.leaderboard([baseline, partial]).set_index("run")
    assert table.loc["partial", "n_pairs"] == 4
    kept = fold_means(baseline).drop(4).sort_index()
    assert table.loc["partial", "p_wilcoxon"] == pytest.approx(wilcoxon(fold_means(partial).sort_index(), kept).pvalue)
    assert "only 4 of 5 folds" in table.loc["partial", "note"]


def test_different_fold_manifests_compare_means_but_refuse_paired_test(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="baseline", quality=0.5)
    b = make_fake_run(root, run_name="refolded", quality=0.8, fold_seed=7)
    result = tables.check_comparable([a, b])
    assert not result.paired
    assert any("fold manifests differ" in note for note in result.notes)
    table = tables.leaderboard([a, b]).set_index("run")
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
        tables.check_comparable([a, b])
    assert "toy" in str(excinfo.value) and "other" in str(excinfo.value)
    with pytest.raises(ValueError, match="different datasets"):
        tables.leaderboard([a, b])


def test_check_comparable_refuses_changed_data(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="a")
    b = make_fake_run(root, run_name="b", data_hash="feedbeef00000000")
    with pytest.raises(ValueError, match="data_hash"):
        tables.check_comparable([a, b])


def test_check_comparable_refuses_incomplete_runs(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="done")
    b = make_fake_run(root, run_name="crashed", status="running")
    with pytest.raises(ValueError, match="incomplete") as excinfo:
        tables.check_comparable([a, b])
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
        tables.check_comparable([a, b])


def test_load_run_keeps_class_names_as_text(tmp_path):
    run = make_fake_run(tmp_path / "outputs", classes=("NA", "1", "None"))
    loaded = load_run(run)
    assert loaded.classes == ["NA", "1", "None"]
    assert set(loaded.per_class["class"]) == {"NA", "1", "None"}
    assert tables.confusion_counts(run).index.tolist() == ["NA", "1", "None"]


def test_seed_free_runs_pair_each_fold_once(tmp_path):
    """Two deterministic runs with 3 identical seeds give 5 independent pairs, not 15."""
    import json as _json

    from nextpoi_lib.analysis.tables import leaderboard
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

    from nextpoi_lib.analysis.tables import leaderboard
    from runfixtures import make_fake_run

    paths = [make_fake_run(tmp_path, run_name=name, seeds=(0, 1, 2), quality=q, rng_seed=r)
             for name, q, r in (("reference_run", 0.5, 1), ("other_run", 0.7, 2))]
    for kind, expected_pairs in (("baseline", 5), ("neural", 5)):
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

    from nextpoi_lib.analysis.tables import leaderboard
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


# ------------------------------------------------------------------------------------------------ per class


def test_per_class_table(three_seeds):
    table = tables.per_class_table(three_seeds, "selected")
    assert len(table) == 3 * len(CLASSES)
    row = table[(table["run"] == "better") & (table["class"] == "B")].iloc[0]
    expected = per_class_expected(three_seeds[2])
    assert row["recall_mean"] == pytest.approx(expected.loc["B", ("recall", "mean")])
    assert row["n"] == 15
    with pytest.raises(ValueError, match="no fold 9"):
        tables.per_class_table(three_seeds, "selected", fold=9)


@pytest.mark.parametrize("fold", [None, 3])
def test_per_class_table_means_and_stds_equal_pandas(three_seeds, fold):
    table = tables.per_class_table(three_seeds, "selected", fold=fold).set_index(["run", "class"])
    for run in three_seeds:
        expected = per_class_expected(run, fold)
        for cls in CLASSES:
            for metric in ("precision", "recall"):
                assert table.loc[(run.name, cls), f"{metric}_mean"] == pytest.approx(
                    expected.loc[cls, (metric, "mean")], abs=1e-12)
                assert table.loc[(run.name, cls), f"{metric}_std"] == pytest.approx(
                    expected.loc[cls, (metric, "std")], abs=1e-12)


# ------------------------------------------------------------------------------------------------ confusion


@pytest.mark.parametrize("fold", [None, 1])
def test_confusion_panels_counts_shares_and_difference(one_seed, fold):
    a, b = one_seed
    ca, cb = counts_expected(a, fold), counts_expected(b, fold)
    counts = tables.confusion_panels([a, b], normalise=False, fold=fold)
    assert [(p.title, p.difference) for p in counts] == [("baseline", False), ("better", False),
                                                         ("better − baseline", True)]
    np.testing.assert_array_equal(counts[0].matrix, ca)
    np.testing.assert_array_equal(counts[1].matrix, cb)
    np.testing.assert_array_equal(counts[2].matrix, cb - ca)
    np.testing.assert_array_equal(tables.confusion_counts(a, fold=fold).to_numpy(), ca)
    shares = tables.confusion_panels([a, b], normalise=True, fold=fold)
    np.testing.assert_allclose(shares[0].matrix, ca / ca.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(shares[1].matrix, cb / cb.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(shares[2].matrix, shares[1].matrix - shares[0].matrix)
    assert len(tables.confusion_panels([a])) == 1


# ------------------------------------------------------------------------------------------------ curves, attention


def test_training_curves_mean_over_seeds_and_selected_epoch(tmp_path):
    root = tmp_path / "outputs"
    three = make_fake_run(root, run_name="three", seeds=(0, 1, 2))
    curves = pd.read_csv(three / "curves.csv")
    result = tables.training_curves(three, folds=[1, 2])
    assert result.n_seeds == 3 and result.selected.empty
    expected = curves[curves["fold"].isin([1, 2])].groupby(["fold", "epoch"]).mean().reset_index()
    for column in ("train_loss", "val_loss", "val_macro_f1", "learning_rate"):
        np.testing.assert_allclose(result.mean[column].to_numpy(float), expected[column].to_numpy(float))

    one = make_fake_run(root, run_name="one", seeds=(0,))
    result = tables.training_curves(one)
    assert result.n_seeds == 1
    chosen = fold_rows(one).set_index("fold")["epoch"]
    curves = pd.read_csv(one / "curves.csv")
    for row in result.selected.itertuples():
        assert row.epoch == chosen[row.fold]
        at = curves[(curves["fold"] == row.fold) & (curves["epoch"] == row.epoch)]["val_macro_f1"]
        assert row.val_macro_f1 == pytest.approx(float(at.iloc[0]))
    assert sorted(result.selected["fold"]) == list(range(5))
    assert tables.training_curves(make_fake_run(root, run_name="markov", kind="baseline")).mean.empty


def test_attention_table_per_position(tmp_path):
    root = tmp_path / "outputs"
    a = make_fake_run(root, run_name="baseline", seeds=(0, 1))
    b = make_fake_run(root, run_name="markov", kind="baseline")
    table = tables.attention_table([a, b])
    assert set(table["run"]) == {"baseline"}
    expected = pd.read_csv(a / "attention.csv").groupby("position")["weight"].agg(["mean", "std", "count"])
    np.testing.assert_allclose(table["mean"].to_numpy(float), expected["mean"].to_numpy())
    np.testing.assert_allclose(table["std"].to_numpy(float), expected["std"].to_numpy())
    assert table["count"].tolist() == expected["count"].tolist() == [10] * 8
    assert tables.attention_table([b]).empty


# ------------------------------------------------------------------------------------------------ runs, old folders


def test_runs_table_describes_each_run(three_seeds):
    table = tables.runs_table(three_seeds)
    assert table["run"].tolist() == ["other", "baseline", "better"]
    row = table.iloc[0]
    assert (row["dataset"], row["model"], row["kind"], row["profile"]) == ("toy", "transformer", "neural", "test-cpu")
    assert row["seeds"] == "0, 1, 2" and row["folds"] == 5 and row["device"] == "cpu (test CPU)"


def test_old_hybrid_run_folders_are_analysed_as_blended(tmp_path):
    """Run folders written when the trees blended with a neural head were kind "hybrid" still load, compare
    and pair; they read as kind "blended" and, like any non-baseline run, as seed dependent."""
    root = tmp_path / "outputs"
    baseline = make_fake_run(root, run_name="baseline", seeds=(0, 1, 2), quality=0.5)
    old = make_fake_run(root, run_name="old_blend", seeds=(0, 1, 2), quality=0.7, rng_seed=3, kind="hybrid")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.pop("seed_dependent", None)
    (old / "manifest.json").write_text(json.dumps(manifest))
    run = load_run(old)
    assert run.manifest["kind"] == "hybrid" and run.kind == "blended"
    assert tables.seed_dependent(run)
    table = tables.leaderboard([baseline, old]).set_index("run")
    assert table.loc["old_blend", "kind"] == "blended"
    assert table.loc["old_blend", "n_pairs"] == 5
    assert tables.runs_table([old]).loc[0, "kind"] == "blended"


# ------------------------------------------------------------------- collapse flag and reference deltas


@pytest.fixture(scope="module")
def grid_and_references(tmp_path_factory):
    """The main job in small: the users' baseline, a run that predicts the smallest class ("C", class i ∝
    1/(i+1)) for every window, a good run, and two reference methods (kind "baseline"), one of them majority."""
    root = tmp_path_factory.mktemp("grid") / "outputs"
    return {
        "baseline": make_fake_run(root, run_name="baseline", seeds=(0, 1), quality=0.55),
        "A": make_fake_run(root, run_name="A", seeds=(0, 1), rng_seed=3, collapse_to="C"),
        "B": make_fake_run(root, run_name="B", seeds=(0, 1), quality=0.8, rng_seed=4),
        "majority": make_fake_run(root, run_name="majority", seeds=(0, 1), kind="baseline", model="majority",
                                  collapse_to="A"),
        "markov": make_fake_run(root, run_name="markov", seeds=(0, 1), kind="baseline", quality=0.65, rng_seed=5),
    }


def test_leaderboard_flags_runs_that_predict_one_class(grid_and_references):
    table = tables.leaderboard(list(grid_and_references.values())).set_index("run")
    assert "flag" in table.columns
    for name in ("baseline", "B", "markov"):
        assert table.loc[name, "flag"] == ""
    for name, cls in (("A", "C"), ("majority", "A")):
        flag = table.loc[name, "flag"]
        assert f"'{cls}'" in flag and "100.0%" in flag
        others = ", ".join(c for c in CLASSES if c != cls)
        assert f"2 of the 3 classes with test targets are never predicted ({others})" in flag
    # The collapsed run's macro-F1, by hand with scikit-learn on its pooled labels, is what the page shows.
    from sklearn.metrics import f1_score
    per_fold = []
    confusion = pd.read_csv(grid_and_references["A"] / "confusion.csv")
    for _, d in confusion[confusion["selection"] == "selected"].groupby(["seed", "fold"]):
        y_true = np.repeat(d["true_class"].to_numpy(), d["count"].to_numpy())
        per_fold.append(f1_score(y_true, ["C"] * len(y_true), labels=list(CLASSES), average="macro",
                                 zero_division=0))
    assert table.loc["A", "macro_f1_mean"] == pytest.approx(np.mean(per_fold))


def test_leaderboard_deltas_to_baseline_and_best_reference(grid_and_references):
    table = tables.leaderboard(list(grid_and_references.values())).set_index("run")
    means = {name: fold_rows(path)["macro_f1"].mean() for name, path in grid_and_references.items()}
    best_reference = max(("majority", "markov"), key=means.get)
    assert best_reference == "markov"
    assert table.attrs["baseline"] == "baseline" and table.attrs["best_reference"] == "markov"
    for name in grid_and_references:
        assert table.loc[name, "delta_to_baseline"] == pytest.approx(means[name] - means["baseline"], abs=1e-12)
        assert table.loc[name, "delta_to_best_reference"] == pytest.approx(means[name] - means[best_reference],
                                                                           abs=1e-12)
    assert table.loc["markov", "delta_to_best_reference"] == 0


def test_leaderboard_deltas_are_missing_without_baseline_or_references(grid_and_references):
    runs = [grid_and_references[n] for n in ("A", "B")]
    table = tables.leaderboard(runs)
    assert table["delta_to_baseline"].isna().all() and table["delta_to_best_reference"].isna().all()
    assert table.attrs["baseline"] is None and table.attrs["best_reference"] is None


# ------------------------------------------------------------------- leaky POI embeddings


def _edit_manifest(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_leaderboard_labels_runs_with_leaky_embeddings(tmp_path):
    """Leaky when the manifest's resolved config, or config.yaml, says embeddings.source:
    transition_graph_all_users, or the manifest says embeddings.leaky: true; the collapse flag stays beside it."""
    import yaml

    root = tmp_path / "outputs"
    clean = make_fake_run(root, run_name="baseline", seeds=(0, 1), quality=0.55)
    by_manifest_config = make_fake_run(root, run_name="by_config", seeds=(0, 1), quality=0.7, rng_seed=2)
    _edit_manifest(by_manifest_config, config={"embeddings": {"source": "transition_graph_all_users"}})
    by_flag = make_fake_run(root, run_name="by_flag", seeds=(0, 1), quality=0.7, rng_seed=3)
    _edit_manifest(by_flag, embeddings={"leaky": True})
    by_yaml = make_fake_run(root, run_name="by_yaml", seeds=(0, 1), rng_seed=4, collapse_to="C")
    config = yaml.safe_load((by_yaml / "config.yaml").read_text()) or {}
    config["embeddings"] = {**(config.get("embeddings") or {}), "source": "transition_graph_all_users"}
    (by_yaml / "config.yaml").write_text(yaml.safe_dump(config))
    spatial = make_fake_run(root, run_name="spatial", seeds=(0, 1), quality=0.6, rng_seed=5)
    _edit_manifest(spatial, config={"embeddings": {"source": "dgi"}}, embeddings={"leaky": False})

    table = tables.leaderboard([clean, by_manifest_config, by_flag, by_yaml, spatial]).set_index("run")
    label = "leaky: POI embeddings trained on all users' transitions, including the test users'"
    assert table["leaky"].to_dict() == {"baseline": False, "by_config": True, "by_flag": True, "by_yaml": True,
                                        "spatial": False}
    for name in ("by_config", "by_flag"):
        assert table.loc[name, "flag"] == label and table.loc[name, "collapsed"] == ""
    assert table.loc["baseline", "flag"] == table.loc["spatial", "flag"] == ""
    # Collapsed and leaky: both labels, the collapse first.
    collapse_reason = table.loc["by_yaml", "collapsed"]
    assert "'C' takes 100.0%" in collapse_reason
    assert table.loc["by_yaml", "flag"] == f"collapsed: {collapse_reason}; {label}"
