"""Neural heads and the model registry.

Every head has one signature: `forward(x, mask, return_attention=False) -> logits` with x [B, L, F] and
mask [B, L] (True = observed visit); heads with attention pooling return `(logits, attention)` when asked,
attention [B, L] summing to 1 over observed positions. `InputEncoder` turns a window batch into x according
to the feature set of the parameter file. Adding a head is one class and one line in MODEL_REGISTRY.

What a head can do is declared on its class, read by the training package and the config checks:
`returns_attention` (it pools with attention weights it can return), `stackable` (`torch.vmap` can batch its
forward and backward over stacked folds: tested equal to the per-fold path) and `attention_width_key` (the
model key whose width `num_heads` must divide, for heads with multi-head attention).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ModelConfig


def last_valid_step(sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sequence [B, L, H] -> [B, H] at each row's last observed position, without a Python loop."""
    length = mask.shape[1]
    positions = torch.arange(length, device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1).clamp(min=0)
    return sequence.gather(1, last.view(-1, 1, 1).expand(-1, 1, sequence.shape[2])).squeeze(1)


class AttentionPooling(nn.Module):
    """Masked softmax over positions of a learned score; returns pooled [B, H] and weights [B, L]."""

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Linear(width, 1)

    def forward(self, sequence: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.score(sequence).squeeze(-1).float()
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        pooled = torch.einsum("bl,blh->bh", weights.to(sequence.dtype), sequence)
        return pooled, weights


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table


class TransformerHead(nn.Module):
    """Our users' head: projection, positional encoding, Transformer encoder, masked attention pooling."""
    returns_attention = True
    stackable = True
    attention_width_key = "model_dim"

    def __init__(self, input_dim: int, num_classes: int, max_length: int, model_dim: int = 64, num_layers: int = 4,
                 num_heads: int = 8, feedforward_dim: int = 256, dropout: float = 0.1, causal: bool = False):
        super().__init__()
        self.causal = causal
        self.input_projection = nn.Linear(input_dim, model_dim)
        self.register_buffer("positions", sinusoidal_positions(max_length, model_dim), persistent=False)
        layer = nn.TransformerEncoderLayer(model_dim, num_heads, feedforward_dim, dropout, batch_first=True)
        # Nested tensors would change the computed function between train and eval; keep it dense.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.pooling = AttentionPooling(model_dim)
        self.classifier = nn.Sequential(nn.LayerNorm(model_dim), nn.Dropout(dropout), nn.Linear(model_dim, num_classes))

    @classmethod
    def from_config(cls, config: ModelConfig, input_dim: int, num_classes: int, max_length: int) -> "TransformerHead":
        return cls(input_dim, num_classes, max_length, config.model_dim, config.num_layers, config.num_heads,
                   config.feedforward_dim, config.dropout, config.causal)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_attention: bool = False):
        length = x.shape[1]
        hidden = self.input_projection(x) + self.positions[:length]
        # Boolean like the padding mask (True = may not attend), so PyTorch combines them without warning.
        causal_mask = (torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=1)
                       if self.causal else None)
        # A causal row whose visible keys are all padding would be empty; padding sits on the right, so
        # every position sees at least position 0, which is always observed.
        hidden = self.encoder(hidden, mask=causal_mask, src_key_padding_mask=~mask)
        pooled, weights = self.pooling(hidden, mask)
        logits = self.classifier(pooled)
        return (logits, weights) if return_attention else logits


class RecurrentHead(nn.Module):
    """GRU or LSTM over the window; classifies the hidden state at the last observed visit."""
    returns_attention = False
    stackable = False  # RNN kernels have no vmap batching rule
    attention_width_key: str | None = None

    cell = nn.GRU

    def __init__(self, input_dim: int, num_classes: int, max_length: int, hidden_dim: int = 256, num_layers: int = 2,
                 dropout: float = 0.3):
        super().__init__()
        self.rnn = self.cell(input_dim, hidden_dim, num_layers, batch_first=True,
                             dropout=dropout if num_layers > 1 else 0.0)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes))

    @classmethod
    def from_config(cls, config: ModelConfig, input_dim: int, num_classes: int, max_length: int) -> "RecurrentHead":
        return cls(input_dim, num_classes, max_length, config.hidden_dim, config.num_layers, config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_attention: bool = False):
        # Padding is on the right, so the state at the last observed step has seen no padding.
        sequence, _ = self.rnn(x)
        logits = self.classifier(last_valid_step(sequence, mask))
        if return_attention:
            raise ValueError(f"{type(self).__name__} has no attention weights.")
        return logits


class GRUHead(RecurrentHead):
    cell = nn.GRU


class LSTMHead(RecurrentHead):
    cell = nn.LSTM


class HybridHead(nn.Module):
    """GRU, then multi-head self-attention over its states, then masked attention pooling."""
    returns_attention = True
    stackable = False  # its GRU has no vmap batching rule
    attention_width_key = "hidden_dim"

    def __init__(self, input_dim: int, num_classes: int, max_length: int, hidden_dim: int = 256, num_layers: int = 1,
                 num_heads: int = 4, dropout: float = 0.3):
        super().__init__()
        self.rnn = nn.GRU(input_dim, hidden_dim, num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.attention = nn.MultiheadAttention(hidden_dim, num_heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(hidden_dim)
        self.pooling = AttentionPooling(hidden_dim)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes))

    @classmethod
    def from_config(cls, config: ModelConfig, input_dim: int, num_classes: int, max_length: int) -> "HybridHead":
        return cls(input_dim, num_classes, max_length, config.hidden_dim, config.num_layers, config.num_heads,
                   config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_attention: bool = False):
        sequence, _ = self.rnn(x)
        attended, _ = self.attention(sequence, sequence, sequence, key_padding_mask=~mask, need_weights=False)
        hidden = self.norm(sequence + attended)
        pooled, weights = self.pooling(hidden, mask)
        logits = self.classifier(pooled)
        return (logits, weights) if return_attention else logits


MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "transformer": TransformerHead,
    "gru": GRUHead,
    "lstm": LSTMHead,
    "hybrid": HybridHead,
}


class InputEncoder(nn.Module):
    """Builds x [B, L, F] from a window batch according to the feature set.

    embedding: the frozen POI embedding of each visit; category: a learned embedding of the visit's
    category; time and coordinates: precomputed numeric features (see `features.sequence.numeric_features`).
    """

    def __init__(self, features: list[str], embedding_dim: int, num_classes: int, category_embedding_dim: int,
                 numeric_dim: int):
        super().__init__()
        self.use_embedding = "embedding" in features
        self.category = (nn.Embedding(num_classes + 1, category_embedding_dim, padding_idx=num_classes)
                         if "category" in features else None)
        self.num_classes = num_classes
        self.output_dim = ((embedding_dim if self.use_embedding else 0)
                           + (category_embedding_dim if self.category is not None else 0) + numeric_dim)

    def forward(self, embedded: torch.Tensor, category: torch.Tensor, numeric: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.use_embedding:
            parts.append(embedded)
        if self.category is not None:
            # -1 (unknown / padding) maps to the padding row, which stays zero.
            parts.append(self.category(torch.where(category < 0, self.num_classes, category)))
        if numeric.shape[-1]:
            parts.append(numeric)
        return torch.cat(parts, dim=-1)


class SequenceClassifier(nn.Module):
    """Input encoder + head; the unit the training loops train."""

    def __init__(self, encoder: InputEncoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, embedded, category, numeric, mask, return_attention: bool = False):
        return self.head(self.encoder(embedded, category, numeric), mask, return_attention=return_attention)


def build_model(config: ModelConfig, features: list[str], embedding_dim: int, num_classes: int, max_length: int,
                numeric_dim: int) -> SequenceClassifier:
    encoder = InputEncoder(features, embedding_dim, num_classes, config.category_embedding_dim, numeric_dim)
    head = MODEL_REGISTRY[config.name].from_config(config, encoder.output_dim, num_classes, max_length)
    return SequenceClassifier(encoder, head)
