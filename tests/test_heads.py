import numpy as np
import pytest
import torch

from nextpoi_lib.config import ModelConfig
from nextpoi_lib.heads import MODEL_REGISTRY, build_model, last_valid_step

HEAD_CONFIGS = {
    "transformer": ModelConfig(name="transformer", model_dim=16, num_layers=2, num_heads=4, feedforward_dim=32),
    "gru": ModelConfig(name="gru", hidden_dim=16, num_layers=2),
    "lstm": ModelConfig(name="lstm", hidden_dim=16, num_layers=2),
    "hybrid": ModelConfig(name="hybrid", hidden_dim=16, num_layers=1, num_heads=2),
    "wide_gru": ModelConfig(name="wide_gru", hidden_dim=16, num_layers=2),
}


def batch(b=5, length=6, dim=8):
    torch.manual_seed(0)
    x = torch.randn(b, length, dim)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, 1:] = False
    return x, mask


def test_last_valid_step_matches_a_loop():
    x, mask = batch()
    gathered = last_valid_step(x, mask)
    for row in range(len(x)):
        last = int(mask[row].nonzero().max())
        torch.testing.assert_close(gathered[row], x[row, last])


@pytest.mark.parametrize("name", sorted(MODEL_REGISTRY))
def test_heads_ignore_padding_and_share_the_signature(name):
    assert set(HEAD_CONFIGS) == set(MODEL_REGISTRY)
    torch.manual_seed(0)
    head = MODEL_REGISTRY[name].from_config(HEAD_CONFIGS[name], input_dim=8, num_classes=3, max_length=6).eval()
    x, mask = batch()
    logits = head(x, mask)
    assert logits.shape == (5, 3)
    changed = x.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 8) * 100  # garbage in the padding
    torch.testing.assert_close(head(changed, mask), logits, rtol=1e-5, atol=1e-5)
    if MODEL_REGISTRY[name].returns_attention:
        _, attention = head(x, mask, return_attention=True)
        torch.testing.assert_close(attention.sum(dim=1), torch.ones(5))
        assert (attention[~mask] == 0).all()
    else:
        with pytest.raises(ValueError, match="no attention weights"):
            head(x, mask, return_attention=True)


def test_declared_capabilities():
    # Attention pooling: the Transformer and the hybrid; torch.vmap batches the Transformer only (RNN kernels
    # have no batching rule; tests/training/test_equivalence.py checks the stacked path equals the per-fold one).
    assert {name for name, head in MODEL_REGISTRY.items() if head.returns_attention} == {"transformer", "hybrid"}
    assert {name for name, head in MODEL_REGISTRY.items() if head.stackable} == {"transformer"}
    assert {name: head.attention_width_key for name, head in MODEL_REGISTRY.items()} == {
        "transformer": "model_dim", "gru": None, "lstm": None, "hybrid": "hidden_dim", "wide_gru": None}


def test_the_wide_gru_classifier_reads_the_last_visit_inputs_directly():
    # With the recurrent weights at zero the GRU's state is the same for every window (zero), so a plain GRU
    # predicts one class; the wide head still sees the last visit's inputs and fits XOR of two of them,
    # which no linear function of its inputs can.
    torch.manual_seed(0)
    n, length = 256, 4
    x = torch.randn(n, length, 3)
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[::2, 2:] = False  # the last observed visit is position 1 for half the windows
    last = last_valid_step(x, mask)
    target = ((last[:, 0] > 0) ^ (last[:, 1] > 0)).long()
    accuracy = {}
    for name in ("gru", "wide_gru"):
        torch.manual_seed(0)
        head = MODEL_REGISTRY[name](input_dim=3, num_classes=2, max_length=length, hidden_dim=32, num_layers=1,
                                    dropout=0.0)
        for parameter in head.rnn.parameters():
            parameter.data.zero_()
            parameter.requires_grad_(False)
        optimiser = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=0.03)
        for _ in range(300):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(head(x, mask), target).backward()
            optimiser.step()
        accuracy[name] = float((head(x, mask).argmax(dim=1) == target).float().mean())
    assert accuracy["gru"] == pytest.approx(float(torch.bincount(target).max()) / n)  # the majority class only
    assert accuracy["wide_gru"] > 0.95


def test_causal_transformer_differs_from_bidirectional_with_same_weights():
    config = HEAD_CONFIGS["transformer"]
    torch.manual_seed(0)
    bidirectional = MODEL_REGISTRY["transformer"].from_config(config, 8, 3, 6).eval()
    causal = MODEL_REGISTRY["transformer"](8, 3, 6, 16, 2, 4, 32, 0.1, causal=True).eval()
    causal.load_state_dict(bidirectional.state_dict())
    x, mask = batch()
    single = mask.clone()
    single[:] = False
    single[:, 0] = True
    # With only the first visit observed both see the same thing ...
    torch.testing.assert_close(causal(x, single), bidirectional(x, single), rtol=1e-5, atol=1e-5)
    # ... with more visits, the causal one cannot look ahead.
    assert not torch.allclose(causal(x, mask), bidirectional(x, mask))


def test_feature_sets_build_the_declared_input_width():
    model = build_model(HEAD_CONFIGS["gru"], ["embedding", "category", "time"], embedding_dim=8, num_classes=3,
                        max_length=6, numeric_dim=5)
    assert model.encoder.output_dim == 8 + 32 + 5
    category = torch.tensor([[0, 2, -1]])
    encoded = model.encoder(torch.zeros(1, 3, 8), category, torch.zeros(1, 3, 5))
    assert encoded.shape == (1, 3, 45) and (encoded[0, 2, 8:40] == 0).all()  # unknown category -> zero row


def test_identity_and_numeric_inputs_in_the_encoder():
    """poi_identity and venue_type add identity_dim each; rows come from each model's own vocabulary."""
    from nextpoi_lib.features.identity import Vocabulary

    vocabularies = {name: Vocabulary(remap=np.array([2, 1, 3, 1, 1, 0]), codes=np.array([0, 2]))
                    for name in ("poi_identity", "venue_type")}
    config = ModelConfig(name="gru", hidden_dim=16, num_layers=1, identity_dim=4)
    model = build_model(config, ["category", "poi_identity", "venue_type"], 0, 3, 6, 2, vocabularies).eval()
    assert model.encoder.output_dim == 32 + 4 + 4 + 2
    codes = torch.tensor([[0, 1, 2, 4, 5]])  # a seen code, an unseen one, a seen one, unknown, padding
    encoded = model.encoder(torch.zeros(1, 5, 0), torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5, 2),
                            {"poi_identity": codes, "venue_type": codes})
    table = model.encoder.identity["poi_identity"].table.weight
    torch.testing.assert_close(encoded[0, :, 32:36], table[[2, 1, 3, 1, 0]])
    assert (encoded[0, 4, 32:40] == 0).all() and (encoded[0, :, 40:] == 1).all()


def identity_windows(n_users: int = 45, per_user: int = 12, n_pois: int = 24, length: int = 3, seed: int = 0):
    """Windows whose next category is a fixed function of the last POI's identity, while every visit's category
    and coordinates are random: only the POI's identity tells the class."""
    from nextpoi_lib.windows import WindowSet

    rng = np.random.default_rng(seed)
    n, classes = n_users * per_user, 4
    poi_class = rng.permutation(np.arange(n_pois) % classes)
    poi = rng.integers(0, n_pois, (n, length))
    mask = np.ones((n, length), bool)
    zeros = np.zeros((n, length), np.float32)
    return WindowSet(
        poi_index=poi.astype(np.int64), mask=mask, category_index=rng.integers(0, classes, (n, length)),
        hour=zeros, weekday=zeros.astype(np.int64), gap_hours=zeros, latitude=rng.random((n, length)).astype(
            np.float32), longitude=rng.random((n, length)).astype(np.float32),
        target=poi_class[poi[:, -1]].astype(np.int64), target_hour=np.zeros(n, np.float32),
        target_weekday=np.zeros(n, np.int64), users=np.repeat([f"u{u:03d}" for u in range(n_users)], per_user),
        classes=[f"c{i}" for i in range(classes)], embedding_table=np.zeros((n_pois, 0), np.float32))


def test_a_gru_learns_the_next_category_from_poi_identity():
    import warnings

    from sklearn.metrics import f1_score

    from nextpoi_lib.config import FoldConfig
    from nextpoi_lib.experiment import load_config
    from nextpoi_lib.folds import make_fold_manifest
    from nextpoi_lib.training import cross_validate

    windows = identity_windows()
    manifest = make_fold_manifest(windows.users, windows.target, FoldConfig(n_splits=3), "identity")
    scores = {}
    for features in (["category", "coordinates"], ["category", "coordinates", "poi_identity"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = load_config({
                "windows": {"length": 3, "features": features}, "folds": {"n_splits": 3},
                "model": {"name": "gru", "hidden_dim": 16, "num_layers": 1, "dropout": 0.0, "identity_dim": 8,
                          "identity_min_count": 1},
                "scheduler": {"name": "constant"}, "optimizer": {"learning_rate": 0.02, "weight_decay": 0.0},
                "training": {"epochs": 15, "batch_size": 64, "seeds": [0], "progress": False, "device": "cpu",
                             "fold_workers": 1}})
        result = cross_validate(config, windows, manifest)
        scores[features[-1]] = np.mean([f1_score(r.test_target, r.predictions["selected"], average="macro")
                                        for r in result.fold_results])
    assert scores["coordinates"] < 0.4  # about chance (4 classes): nothing but the POI tells the class
    assert scores["poi_identity"] > 0.9
