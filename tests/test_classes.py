"""dataset.class_map (merging raw categories into classes), parameters/classes/gowalla7.yaml, and
dataset.min_class_checkins (rare classes stop being targets, their visits stay inputs)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import embedding_frame, synthetic_checkins
from nextpoi_lib.config import ConfigError, DatasetConfig, from_dict, updated
from nextpoi_lib.data import DataError, load_checkins, load_foursquare_nyc
from nextpoi_lib.experiment import load_config, run_experiment, run_kind_of
from nextpoi_lib.preparation import prepare_data
from nextpoi_lib.windows import build_windows

REPO = Path(__file__).resolve().parents[1]
GOWALLA7 = REPO / "parameters" / "classes" / "gowalla7.yaml"
GOWALLA_CLASSES = ["Community", "Entertainment", "Food", "Nightlife", "Outdoors", "Shopping", "Travel"]


def write(tmp_path, frame):
    path = tmp_path / "c.csv"
    frame.to_csv(path, index=False)
    return path


def quiet(*layers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_config(*layers)


# ---------------------------------------------------------------------------------------------- class_map

def test_class_map_types_and_errors():
    config = from_dict({"dataset": {"class_map": {"Shop": "Store", "Travel": "Store"}}})
    assert config.dataset.class_map == {"Shop": "Store", "Travel": "Store"}
    assert from_dict({}).dataset.class_map is None and from_dict({}).dataset.min_class_checkins is None
    with pytest.raises(ConfigError, match=r"dataset\.class_map=\['Shop'\] must be a mapping"):
        from_dict({"dataset": {"class_map": ["Shop"]}})
    with pytest.raises(ConfigError, match=r"dataset\.class_map\['Shop'\]=3 must be a string"):
        from_dict({"dataset": {"class_map": {"Shop": 3}}})
    with pytest.raises(ConfigError, match=r"dataset\.class_map key=1 must be a string"):
        from_dict({"dataset": {"class_map": {1: "Shop"}}})
    with pytest.raises(ConfigError, match="dataset.class_map is empty"):
        from_dict({"dataset": {"class_map": {}}})
    with pytest.raises(ConfigError, match=r"maps onto \['Store'\].*dataset.classes"):
        from_dict({"dataset": {"class_map": {"Shop": "Store"}, "classes": ["Food", "Shop"]}})


def test_class_map_merges_raw_categories_before_classes_are_derived(tmp_path):
    frame = synthetic_checkins(n_users=6, visits_per_user=12, classes=("Food", "Shop", "Travel", "Bar"))
    path = write(tmp_path, frame)
    config = DatasetConfig(source="checkins", path=str(path), class_map={"Shop": "Errands", "Travel": "Errands"})
    table = load_checkins(config, "toy")
    # Independently: the raw counts, merged by hand.
    raw = frame["category"].value_counts()
    expected = {"Food": raw["Food"], "Bar": raw["Bar"], "Errands": raw["Shop"] + raw["Travel"]}
    assert table.frame["category"].value_counts().to_dict() == expected
    # Classes derived from the mapped names, most frequent first; unmapped names (Food, Bar) keep theirs.
    assert table.classes == sorted(expected, key=lambda name: (-expected[name], name))
    assert table.classes[0] == "Errands"
    # The windows' targets and category inputs speak of the mapped classes.
    windows = build_windows(table, embedding_frame(sorted(table.frame.poi_id.unique())), 9, 1)
    assert windows.classes == table.classes
    targets = pd.Series(np.array(windows.classes)[windows.target])
    assert set(targets) <= set(expected) and "Errands" in set(targets)
    inputs = np.array(windows.classes)[windows.category_index[windows.mask]]
    assert "Shop" not in set(inputs) and "Errands" in set(inputs)


def test_class_map_key_that_is_no_category_is_named(tmp_path):
    path = write(tmp_path, synthetic_checkins(n_users=4))
    config = DatasetConfig(source="checkins", path=str(path), class_map={"Shopp": "Shopping"})
    with pytest.raises(DataError, match=r"dataset.class_map names raw categories \['Shopp'\].*Food"):
        load_checkins(config, "toy")


def test_class_map_onto_fixed_classes_checks_what_is_left(tmp_path):
    path = write(tmp_path, synthetic_checkins(n_users=4))
    # Travel is not mapped and is not one of the fixed classes: refused as before, naming it.
    config = DatasetConfig(source="checkins", path=str(path), class_map={"Shop": "Food"}, classes=["Food"])
    with pytest.raises(DataError, match=r"\['Travel'\].*dataset.classes"):
        load_checkins(config, "toy")


def test_fold_stratification_sees_the_mapped_classes(tmp_path):
    frame = synthetic_checkins(n_users=30, visits_per_user=12, classes=("Food", "Shop", "Travel"))
    path = write(tmp_path, frame)
    base = {"dataset": {"source": "checkins", "path": str(path)}, "windows": {"features": ["category"]},
            "training": {"progress": False}}
    mapped = quiet({**base, "dataset": {**base["dataset"], "class_map": {"Travel": "Shop"}}})
    prepared = prepare_data(mapped)
    assert prepared.windows.classes == ["Shop", "Food"]
    table = load_checkins(mapped.dataset, "toy")
    assert set(table.frame["category"]) == {"Shop", "Food"}
    assert prepared.windows.target.max() == 1


# ---------------------------------------------------------------------------------------------- gowalla7.yaml

def test_gowalla7_layer_loads_with_the_seven_classes_in_order():
    config = quiet(REPO / "parameters" / "baseline.yaml", GOWALLA7)
    assert config.name == "baseline"  # a layer: it names no run
    assert config.dataset.classes == GOWALLA_CLASSES
    raw = yaml.safe_load(GOWALLA7.read_text())["dataset"]["class_map"]
    assert set(raw.values()) == set(GOWALLA_CLASSES)
    # Every root category of the embedded sample is mapped: none would otherwise be outside the 7.
    assert set(raw) == set(load_foursquare_nyc()["category"])


def test_gowalla7_on_the_embedded_data_gives_seven_classes_with_summed_counts(tmp_path):
    config = quiet(REPO / "parameters" / "baseline.yaml", GOWALLA7,
                   {"windows": {"features": ["category"]}, "training": {"progress": False},
                    "output": {"root": str(tmp_path)}})
    table = load_checkins(config.dataset, "foursquare_nyc")
    assert table.classes == GOWALLA_CLASSES
    # Independently with pandas: the raw sample's root categories, summed per Gowalla class by hand.
    raw = pd.read_csv(Path(__import__("nextpoi_lib.data", fromlist=["x"]).foursquare_sample_path()))
    tid_counts = raw.groupby("tid")["tid"].transform("size")
    raw = raw[tid_counts >= config.dataset.min_checkins_per_user]
    counts = raw["root_type"].value_counts()
    by_hand = {
        "Community": counts["Residence"] + counts["Professional & Other Places"] + counts["College & University"],
        "Entertainment": counts["Arts & Entertainment"] + counts["Event"],
        "Food": counts["Food"], "Nightlife": counts["Nightlife Spot"], "Outdoors": counts["Outdoors & Recreation"],
        "Shopping": counts["Shop & Service"], "Travel": counts["Travel & Transport"],
    }
    assert sum(by_hand.values()) == len(raw)
    assert table.frame["category"].value_counts().to_dict() == by_hand
    prepared = prepare_data(config, with_embeddings=False)
    assert prepared.windows.classes == GOWALLA_CLASSES
    assert np.unique(prepared.windows.target).tolist() == list(range(7))


# ---------------------------------------------------------------------------------------------- min_class_checkins

def rare_class_table(tmp_path, n_users=6):
    """Three common classes and one rare one ("Rare", 3 check-ins of one user, late in the sequence)."""
    frame = synthetic_checkins(n_users=n_users, visits_per_user=14)
    rare_rows = frame.index[frame.userid == "u002"][[9, 11, 12]]  # targets of 3 windows, inputs of others
    frame.loc[rare_rows, "category"] = "Rare"
    path = write(tmp_path, frame)
    return frame, path, load_checkins(DatasetConfig(source="checkins", path=str(path)), "toy")


def test_min_class_checkins_is_checked():
    assert from_dict({"dataset": {"min_class_checkins": 5}}).dataset.min_class_checkins == 5
    with pytest.raises(ConfigError, match=r"dataset\.min_class_checkins=0 must be >= 1"):
        from_dict({"dataset": {"min_class_checkins": 0}})
    with pytest.raises(ConfigError, match="dataset.min_class_checkins counts check-ins.*next.parquet"):
        from_dict({"dataset": {"source": "next_parquet", "path": "n.parquet", "min_class_checkins": 5}})


def test_rare_class_stops_being_a_target_and_stays_an_input(tmp_path):
    frame, path, table = rare_class_table(tmp_path)
    embeddings = embedding_frame(sorted(table.frame.poi_id.unique()))
    full = build_windows(table, embeddings, 9, 1)
    assert "Rare" in full.classes
    reduced = build_windows(table, embeddings, 9, 1, min_class_checkins=4)

    # Independently: which windows of the full set predict a Rare visit.
    rare_id = full.classes.index("Rare")
    kept = full.target != rare_id
    assert int((~kept).sum()) == 3
    assert len(reduced) == int(kept.sum())
    assert reduced.classes == [name for name in full.classes if name != "Rare"]
    # The other windows are unchanged: same users, POIs, mask and target names, in the same order.
    assert (reduced.users == full.users[kept]).all()
    assert (reduced.poi_index == full.poi_index[kept]).all() and (reduced.mask == full.mask[kept]).all()
    assert [reduced.classes[t] for t in reduced.target] == [full.classes[t] for t in full.target[kept]]
    # Rare visits stay observed inputs, of unknown category (-1); the others keep their names.
    full_names = np.where(full.category_index[kept] >= 0,
                          np.array(full.classes + [""])[full.category_index[kept]], "")
    reduced_names = np.where(reduced.category_index >= 0,
                             np.array(reduced.classes + [""])[reduced.category_index], "")
    rare_inputs = full.category_index[kept] == rare_id
    assert rare_inputs.any() and reduced.mask[rare_inputs].all()
    assert (reduced.category_index[rare_inputs] == -1).all()
    assert (reduced_names[~rare_inputs] == full_names[~rare_inputs]).all()
    # Reported (and so in manifest.json's windows_report).
    assert reduced.report["dropped_classes_min_checkins"] == {"Rare": 3}
    assert reduced.report["dropped_windows_rare_class"] == 3 and reduced.report["min_class_checkins"] == 4
    assert reduced.report["n_windows"] == len(reduced)
    # The default adds nothing to the report; a threshold nobody falls under drops nothing.
    assert "dropped_classes_min_checkins" not in full.report
    same = build_windows(table, embeddings, 9, 1, min_class_checkins=3)
    assert same.report["dropped_classes_min_checkins"] == {} and len(same) == len(full)
    assert same.classes == full.classes and (same.target == full.target).all()


def test_min_class_checkins_that_leaves_one_class_is_refused(tmp_path):
    _, _, table = rare_class_table(tmp_path)
    embeddings = embedding_frame(sorted(table.frame.poi_id.unique()))
    with pytest.raises(DataError, match="min_class_checkins=1000 leaves 0 target class"):
        build_windows(table, embeddings, 9, 1, min_class_checkins=1000)


def test_prepared_data_reports_dropped_classes_and_refuses_category_readers(tmp_path):
    _, path, _ = rare_class_table(tmp_path, n_users=40)
    config = quiet({"dataset": {"source": "checkins", "path": str(path), "min_class_checkins": 4},
                    "windows": {"features": ["category", "time"]},
                    "training": {"progress": False}, "output": {"root": str(tmp_path / "out")}})
    prepared = prepare_data(config)
    assert "Rare" not in prepared.windows.classes
    assert prepared.windows.report["dropped_classes_min_checkins"] == {"Rare": 3}
    # Models that read the visits' categories (their `reads_visit_categories`) are refused before any work...
    for name in ("gradient_boosting", "markov", "last_category"):
        reader = updated(config, model={"name": name})
        assert run_kind_of(reader).reads_visit_categories(reader)
        with pytest.raises(DataError, match=rf"drops the classes \{{'Rare': 3\}}.*'{name}'.*class_map"):
            run_experiment(reader)
    # A neural head reads them only through the user_past input (counts of the visits' categories).
    gru = updated(config, model={"name": "gru"})
    assert not run_kind_of(gru).reads_visit_categories(gru)
    with_past = updated(config, model={"name": "gru"}, windows={"features": ["category", "time", "user_past"]})
    assert run_kind_of(with_past).reads_visit_categories(with_past)
    with pytest.raises(DataError, match=r"'gru' with windows.features 'user_past'.*remove 'user_past'"):
        run_experiment(with_past)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("manifest.json"))
    # ... the majority class does not read them and runs (its classes: the ones left).
    majority = updated(config, model={"name": "majority"}, name="majority")
    assert not run_kind_of(majority).reads_visit_categories(majority)
    assert "Rare" not in json.loads((run_experiment(majority) / "manifest.json").read_text())["classes"]


def test_a_neural_run_without_the_rare_class_reports_it_in_the_manifest(tmp_path):
    import json

    from nextpoi_lib.experiment import run_experiment
    from synthetic import synthetic_config

    frame = synthetic_checkins(n_users=50, visits_per_user=16, n_pois=30)
    rare_rows = frame.index[frame.userid == "u002"][[10, 12, 13]]
    frame.loc[rare_rows, "category"] = "Rare"
    frame.to_csv(tmp_path / "checkins.csv", index=False)  # synthetic_config reads the file that is there
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = synthetic_config(tmp_path, dataset={"min_class_checkins": 4}, training={"epochs": 1})
        run = run_experiment(config)
    manifest = json.loads((run / "manifest.json").read_text())
    assert sorted(manifest["classes"]) == ["Food", "Shop", "Travel"]
    assert manifest["windows_report"]["dropped_classes_min_checkins"] == {"Rare": 3}
    assert manifest["windows_report"]["dropped_windows_rare_class"] == 3
    assert set(pd.read_csv(run / "per_class.csv")["class"]) == {"Food", "Shop", "Travel"}
