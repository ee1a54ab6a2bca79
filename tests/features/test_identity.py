"""nextpoi_lib.features.identity and the heads' identity tables: vocabularies fitted on a fold's training
windows only, the minimum count, id dropout, the embedding initialisation, the optimiser group, the config
checks and the execution plan."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import embedding_frame
from nextpoi_lib.config import ConfigError, DatasetConfig, FoldConfig, ModelConfig
from nextpoi_lib.data import load_checkins, poi_table
from nextpoi_lib.experiment import load_config
from nextpoi_lib.features.identity import (FIRST_VOCABULARY_ROW, PADDING_ROW, UNSEEN_ROW, fit_vocabulary,
                                           identity_codes)
from nextpoi_lib.folds import Fold, make_fold_manifest
from nextpoi_lib.heads import IdentityEmbedding, build_model, parameter_groups
from nextpoi_lib.progress import Progress
from nextpoi_lib.training.loop import make_optimizer, train_fold
from nextpoi_lib.training.plan import execution_plan
from nextpoi_lib.training.stacked import StackedAdamW, train_folds_stacked
from nextpoi_lib.training.tensors import WindowTensors
from nextpoi_lib.windows import WindowSet, build_windows

# Per user: POIs in visit order (every POI of category Food except where named).
VISITS = {
    "train1": ["p1", "p2", "p1", "p3", "p4", "p5"],  # p1 twice, p2/p3/p4 once, p5 only as the last (target)
    "train2": ["p2", "p6", "p6", "p6", "p1", "p7"],  # p6 three times (one check-in sits in several windows)
    "val": ["p8", "p8", "p8", "p1", "p2", "p9"],  # p8 visited only by the inner-validation user
    "test": ["p9", "p9", "p9", "p2", "p1", "p1"],
}


@pytest.fixture
def toy(tmp_path):
    rows = [{"userid": user, "placeid": poi, "datetime": pd.Timestamp("2012-04-01") + pd.Timedelta(hours=i),
             "latitude": 40.0, "longitude": -74.0, "category": "Food" if poi != "p2" else "Shop",
             "type": f"t_{poi}"}
            for user, pois in VISITS.items() for i, poi in enumerate(pois)]
    path = tmp_path / "toy.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = load_checkins(DatasetConfig(source="checkins", path=str(path), subcategory_column="type"), "toy")
    pois = poi_table(table)["poi_id"].tolist()
    windows = build_windows(table, embedding_frame(pois, dim=4), length=3, stride=1)
    by_user = {user: np.flatnonzero(windows.users == user) for user in VISITS}
    fold = Fold(0, np.concatenate([by_user["train1"], by_user["train2"]]), by_user["val"], by_user["test"],
                ["test"], ["val"])
    return windows, fold, pois


def test_vocabulary_by_hand(toy):
    windows, fold, pois = toy
    # Training visits inside windows (each user's last check-in is only a target): p1 x3 (2 + 1), p2 x2, p3, p4
    # once, p6 x3; p5 and p7 only as targets; p8, p9 only outside the training users.
    expected_counts = {"p1": 3, "p2": 2, "p3": 1, "p4": 1, "p6": 3}
    for min_count in (1, 2, 3, 4):
        vocabulary = fit_vocabulary(windows, "poi_identity", fold.train_index, min_count)
        kept = sorted(poi for poi, count in expected_counts.items() if count >= min_count)
        assert [pois[code] for code in vocabulary.codes] == kept
        assert vocabulary.rows == FIRST_VOCABULARY_ROW + len(kept)
        # Row of each POI: its rank in the vocabulary (sorted by name), or the shared unseen row.
        for code, poi in enumerate(pois):
            expected = FIRST_VOCABULARY_ROW + kept.index(poi) if poi in kept else UNSEEN_ROW
            assert vocabulary.remap[code] == expected, (min_count, poi)


def test_rows_of_windows_and_padding(toy):
    windows, fold, pois = toy
    vocabulary = fit_vocabulary(windows, "poi_identity", fold.train_index, 2)
    codes, size = identity_codes(windows, "poi_identity")
    assert size == len(pois)
    rows = vocabulary.rows_of(codes)
    # The inner-validation user's windows: p8 is unseen (visited by that user only), p1 and p2 have rows.
    names = {"p1": FIRST_VOCABULARY_ROW, "p2": FIRST_VOCABULARY_ROW + 1, "p6": FIRST_VOCABULARY_ROW + 2}
    for window in fold.inner_val_index:
        for position in range(windows.length):
            if not windows.mask[window, position]:
                assert rows[window, position] == PADDING_ROW
                continue
            poi = pois[windows.poi_index[window, position]]
            assert rows[window, position] == names.get(poi, UNSEEN_ROW)
    assert (rows[fold.inner_val_index][windows.mask[fold.inner_val_index]] == UNSEEN_ROW).any()


def test_venue_type_vocabulary_and_unknown_types(toy):
    windows, fold, _ = toy
    vocabulary = fit_vocabulary(windows, "venue_type", fold.train_index, 2)
    types = sorted({f"t_{poi}" for pois in VISITS.values() for poi in pois})
    assert [types[code] for code in vocabulary.codes] == ["t_p1", "t_p2", "t_p6"]
    # An observed visit of unknown type (-1) maps to the unseen row, never to padding.
    windows.subcategory_index[fold.train_index[0], 0] = -1
    codes, size = identity_codes(windows, "venue_type")
    assert codes[fold.train_index[0], 0] == size
    assert vocabulary.rows_of(codes)[fold.train_index[0], 0] == UNSEEN_ROW


def test_id_dropout_only_in_training_mode(toy):
    windows, fold, _ = toy
    vocabulary = fit_vocabulary(windows, "poi_identity", fold.train_index, 1)
    codes = torch.from_numpy(identity_codes(windows, "poi_identity")[0]).repeat(200, 1)
    expected = torch.from_numpy(vocabulary.rows_of(codes.numpy()))
    table = IdentityEmbedding(vocabulary, dim=3, id_dropout=0.3)
    table.eval()
    assert torch.equal(table.rows(codes), expected)
    table.train()
    torch.manual_seed(0)
    rows = table.rows(codes)
    padding = expected == PADDING_ROW
    assert torch.equal(rows[padding], expected[padding])  # padding is never replaced
    changed = rows != expected
    assert (rows[changed] == UNSEEN_ROW).all()
    observed_seen = ~padding & (expected != UNSEEN_ROW)
    share = changed[observed_seen].float().mean().item()
    assert 0.25 < share < 0.35  # about id_dropout of the observed visits
    # The unseen row is trained by the dropped ids; the padding row stays zero without gradient.
    table.table(rows).sum().backward()
    gradient = table.table.weight.grad
    assert gradient[UNSEEN_ROW].abs().sum() > 0 and gradient[PADDING_ROW].abs().sum() == 0
    assert (table.table.weight[PADDING_ROW] == 0).all()
    assert torch.equal(IdentityEmbedding(vocabulary, 3, 0.0).train().rows(codes), expected)


def test_embedding_initialisation_and_weight_decay_group(toy):
    windows, fold, pois = toy
    vocabularies = {"poi_identity": fit_vocabulary(windows, "poi_identity", fold.train_index, 2)}
    config = ModelConfig(name="gru", hidden_dim=8, num_layers=1, identity_dim=4, identity_init="embedding",
                         identity_weight_decay=0.5)
    table = torch.from_numpy(windows.embedding_table)
    model = build_model(config, ["embedding", "poi_identity"], 4, len(windows.classes), windows.length, 0,
                        vocabularies, table)
    weight = model.encoder.identity["poi_identity"].table.weight.detach()
    kept = [pois.index(name) for name in ("p1", "p2", "p6")]
    torch.testing.assert_close(weight[FIRST_VOCABULARY_ROW:], table[kept])
    torch.testing.assert_close(weight[UNSEEN_ROW], table[kept].mean(dim=0))
    with pytest.raises(ConfigError, match="identity_dim=4 must equal the embedding width \\(3\\)"):
        build_model(config, ["embedding", "poi_identity"], 3, len(windows.classes), windows.length, 0, vocabularies,
                    table[:, :3])
    groups = parameter_groups(config, model)
    optimizer = make_optimizer(load_config({"optimizer": {"weight_decay": 0.01}}), groups, torch.device("cpu"))
    decays = [(group["weight_decay"], sum(p.numel() for p in group["params"])) for group in optimizer.param_groups]
    assert decays == [(0.01, sum(p.numel() for p in model.parameters()) - weight.numel()), (0.5, weight.numel())]
    # Without identity tables the optimiser gets the parameters exactly as before (one group).
    plain = build_model(config, ["embedding"], 4, len(windows.classes), windows.length, 0)
    assert len(make_optimizer(load_config({}), parameter_groups(config, plain), torch.device("cpu")).param_groups) == 1


def test_identity_tables_are_drawn_after_the_head(toy):
    """The head's initial weights do not depend on the size of the fold's vocabulary (tables come last)."""
    windows, fold, _ = toy
    config = ModelConfig(name="gru", hidden_dim=8, num_layers=1, identity_dim=5)
    heads = []
    for min_count in (1, 3):
        vocabularies = {"poi_identity": fit_vocabulary(windows, "poi_identity", fold.train_index, min_count)}
        torch.manual_seed(3)
        heads.append(build_model(config, ["category", "poi_identity"], 0, 3, 3, 0, vocabularies))
    small, large = (model.encoder.identity["poi_identity"].table.weight for model in heads)
    assert small.shape[0] != large.shape[0]
    for (name, first), (_, second) in zip(heads[0].head.named_parameters(), heads[1].head.named_parameters()):
        assert torch.equal(first, second), name
    assert torch.equal(heads[0].encoder.category.weight, heads[1].encoder.category.weight)
    torch.manual_seed(3)
    plain = build_model(config, ["category"], 0, 3, 3, 0)
    assert heads[0].encoder.output_dim == plain.encoder.output_dim + 5


def config_of(**sections):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_config(sections)


def test_config_checks():
    config = config_of(windows={"features": ["category", "poi_identity", "venue_type", "user_past"]})
    assert config.model.identity_dim == 32 and config.model.identity_min_count == 2
    assert config.model.identity_dropout == 0.1 and config.model.identity_weight_decay == 0.0
    assert config.model.identity_init == "random"
    parquet = {"source": "next_parquet", "path": "next.parquet"}
    for feature in ("poi_identity", "venue_type", "user_past"):
        with pytest.raises(ConfigError, match=f"lists \\['{feature}'\\].*next.parquet.*dataset.source: checkins"):
            config_of(dataset=parquet, windows={"features": ["embedding", feature]})
    with pytest.raises(ConfigError, match="'venue_type'.*dataset.source='checkins' has none.*subcategory_column"):
        config_of(dataset={"source": "checkins", "path": "c.csv"}, windows={"features": ["venue_type"]})
    config_of(dataset={"source": "checkins", "path": "c.csv", "subcategory_column": "type"},
              windows={"features": ["venue_type"]})
    with pytest.raises(ConfigError, match="identity_dim=32 must equal embeddings.dim=64"):
        config_of(windows={"features": ["embedding", "poi_identity"]}, model={"identity_init": "embedding"})
    with pytest.raises(ConfigError, match="add 'embedding' to windows.features"):
        config_of(windows={"features": ["poi_identity"]}, model={"identity_init": "embedding", "identity_dim": 64})
    config_of(windows={"features": ["embedding", "poi_identity"]}, model={"identity_init": "embedding",
                                                                          "identity_dim": 64})
    for key, value in (("identity_min_count", 0), ("identity_dropout", 1.0), ("identity_weight_decay", -1.0),
                       ("identity_dim", 0)):
        with pytest.raises(ConfigError, match=f"model.{key}="):
            config_of(model={key: value})
    with pytest.raises(ConfigError, match="identity_init"):
        config_of(model={"identity_init": "dgi"})


def identity_windows(n: int = 240, n_pois: int = 40, length: int = 5, seed: int = 0) -> WindowSet:
    """Random windows with padding, POIs and venue types; the next class follows the last POI."""
    rng = np.random.default_rng(seed)
    lengths = np.where(rng.random(n) < 0.3, rng.integers(1, length, n), length)
    mask = np.arange(length)[None, :] < lengths[:, None]
    # Skewed POI popularity: rare POIs fall below the minimum count in some folds only.
    poi = np.where(mask, np.minimum(rng.geometric(0.08, (n, length)) - 1, n_pois - 1), 0)
    zeros = np.zeros((n, length), np.float32)
    return WindowSet(
        poi_index=poi.astype(np.int64), mask=mask, category_index=np.where(mask, poi % 3, -1),
        hour=zeros, weekday=zeros.astype(np.int64), gap_hours=zeros, latitude=zeros, longitude=zeros,
        target=(poi[np.arange(n), lengths - 1] % 4).astype(np.int64), target_hour=np.zeros(n, np.float32),
        target_weekday=np.zeros(n, np.int64), users=np.array([f"u{u:02d}" for u in rng.integers(0, 30, n)]),
        classes=[f"c{i}" for i in range(4)], embedding_table=rng.normal(size=(n_pois, 4)).astype(np.float32),
        subcategory_index=np.where(mask, poi % 11, -1))


def test_stacked_folds_train_identity_tables_as_one_model_per_fold():
    windows = identity_windows()
    manifest = make_fold_manifest(windows.users, windows.target, FoldConfig(n_splits=3), "identity")
    config = config_of(
        windows={"features": ["embedding", "category", "poi_identity", "venue_type"], "length": 5},
        dataset={"source": "checkins", "path": "c.csv", "subcategory_column": "type"},
        embeddings={"dim": 4},
        model={"name": "transformer", "model_dim": 8, "num_heads": 2, "num_layers": 1, "feedforward_dim": 16,
               "dropout": 0.0, "identity_dim": 4, "identity_dropout": 0.0, "identity_weight_decay": 0.05,
               "identity_init": "embedding"},
        optimizer={"weight_decay": 0.01}, scheduler={"name": "onecycle", "max_lr": 0.01},
        folds={"n_splits": 3},
        training={"epochs": 3, "batch_size": 32, "seeds": [0], "progress": False, "device": "cpu",
                  "stack_folds": True})
    sizes = {name: {fit_vocabulary(windows, name, f.train_index, 2).rows for f in manifest.folds}
             for name in ("poi_identity", "venue_type")}
    assert len(sizes["poi_identity"]) > 1  # the folds' tables differ in size: the stacked ones are padded
    plan = execution_plan(config, torch.device("cuda"), manifest)
    assert plan.stack_folds and not plan.notes
    data = WindowTensors(windows, config, torch.device("cpu"))
    quiet = Progress(False)
    stacked = train_folds_stacked(config, data, windows, manifest.folds, 0, quiet, ["a", "b", "c"])
    for fold, result in zip(manifest.folds, stacked):
        reference = train_fold(config, data, windows, fold, 0, quiet, "x")
        assert (result.selected_epoch, result.last_epoch) == (reference.selected_epoch, reference.last_epoch)
        np.testing.assert_allclose(pd.DataFrame(result.curves).to_numpy(float),
                                   pd.DataFrame(reference.curves).to_numpy(float), rtol=1e-4, atol=1e-5)
        for selection in reference.predictions:
            np.testing.assert_array_equal(result.predictions[selection], reference.predictions[selection])
        np.testing.assert_allclose(result.log_probabilities["test"], reference.log_probabilities["test"],
                                   rtol=1e-4, atol=1e-5)


def test_stacked_adamw_second_group_equals_torch_adamw_with_two_groups():
    """The identity tables' own weight decay in the stacked optimiser == a second torch.optim.AdamW group."""
    torch.manual_seed(0)
    rows, width, steps = 2, 30, 5
    columns = torch.zeros(width, dtype=torch.bool)
    columns[10:22] = True
    start = torch.randn(rows, width)
    flat = start.clone().requires_grad_(True)
    optimizer = StackedAdamW(flat, weight_decay=0.01, second_group=(columns, 0.3))
    references = [(torch.nn.Parameter(start[k, ~columns].clone()), torch.nn.Parameter(start[k, columns].clone()))
                  for k in range(rows)]
    torch_optimizers = [torch.optim.AdamW([{"params": [rest]}, {"params": [table], "weight_decay": 0.3}], lr=1.0,
                                          weight_decay=0.01) for rest, table in references]
    for step in range(steps):
        grads = torch.randn(rows, width)
        hyper = [(1e-2 * (1 + k) / (1 + step), 0.9, 0.999) for k in range(rows)]
        for k, (rest, table) in enumerate(references):
            for group in torch_optimizers[k].param_groups:
                group.update(lr=hyper[k][0], betas=hyper[k][1:])
            rest.grad, table.grad = grads[k, ~columns].clone(), grads[k, columns].clone()
            torch_optimizers[k].step()
        flat.grad = grads.clone()
        optimizer.step(torch.tensor(optimizer.coefficients(hyper), dtype=torch.float32))
    for k, (rest, table) in enumerate(references):
        torch.testing.assert_close(flat.detach()[k, ~columns], rest.detach(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(flat.detach()[k, columns], table.detach(), rtol=1e-6, atol=1e-7)
    assert optimizer.columns == StackedAdamW(start.clone(), weight_decay=0.01).columns + 1


def test_the_blended_run_kind_trains_its_head_with_identity_tables(tmp_path, monkeypatch):
    from synthetic import synthetic_config

    from nextpoi_lib.experiment import RUN_KINDS
    from nextpoi_lib.preparation import prepare_data
    from nextpoi_lib.training import loop

    built = []
    original = loop.build_model

    def recording_build_model(*args, **kwargs):
        model = original(*args, **kwargs)
        built.append(sorted(model.encoder.identity))
        return model

    monkeypatch.setattr(loop, "build_model", recording_build_model)
    config = synthetic_config(tmp_path, model={"name": "blended_trees"}, blend={"head": "gru"},
                              windows={"features": ["category", "poi_identity", "user_past"]},
                              training={"epochs": 2, "fold_workers": 1})
    result = RUN_KINDS["blended"].cross_validate(config, prepare_data(config), Progress(False))
    assert built == [["poi_identity"]] * 3  # one head per fold, each with its fold's table
    assert len(result.extra["blend"]["weights"]) == 3
