import pytest
import torch

from nextpoi_lib.config import ModelConfig
from nextpoi_lib.heads import MODEL_REGISTRY, build_model, last_valid_step

HEAD_CONFIGS = {
    "transformer": ModelConfig(name="transformer", model_dim=16, num_layers=2, num_heads=4, feedforward_dim=32),
    "gru": ModelConfig(name="gru", hidden_dim=16, num_layers=2),
    "lstm": ModelConfig(name="lstm", hidden_dim=16, num_layers=2),
    "hybrid": ModelConfig(name="hybrid", hidden_dim=16, num_layers=1, num_heads=2),
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
        "transformer": "model_dim", "gru": None, "lstm": None, "hybrid": "hidden_dim"}


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
