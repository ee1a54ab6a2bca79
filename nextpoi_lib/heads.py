"""Neural heads and the model registry.

Every head has one signature: `forward(x, mask, return_attention=False) -> logits` with x [B, L, F] and
mask [B, L] (True = observed visit); heads with attention pooling return `(logits, attention)` when asked,
attention [B, L] summing to 1 over observed positions. `InputEncoder` turns a window batch into x according
to the feature set of the parameter file (with `poi_identity` / `venue_type` it holds one trainable table per
identity feature over the fold's vocabulary, `build_model(..., vocabularies)`; `parameter_groups` gives those
tables their own AdamW weight decay). Adding a head is one class and one line in MODEL_REGISTRY.

What a head can do is declared on its class, read by the training package and the config checks:
`returns_attention` (it pools with attention weights it can return), `stackable` (`torch.vmap` can batch its
forward and backward over stacked folds: tested equal to the per-fold path) and `attention_width_key` (the
model key whose width `num_heads` must divide, for heads with multi-head attention).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import ConfigError, ModelConfig
from .features.identity import FIRST_VOCABULARY_ROW, IDENTITY_FEATURES, PADDING_ROW, UNSEEN_ROW, Vocabulary


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


class WideGRUHead(RecurrentHead):
    """A GRU whose classifier also sees the last observed visit's inputs (wide and deep).

    The per-window inputs (user_past, place_statistics) and the last visit's own vectors reach the classifier
    directly instead of only through the recurrent state, and a hidden layer of `hidden_dim` units lets them
    interact with it, the way the trees combine their columns: MLP([state at the last visit, inputs there])."""
    cell = nn.GRU

    def __init__(self, input_dim: int, num_classes: int, max_length: int, hidden_dim: int = 256, num_layers: int = 2,
                 dropout: float = 0.3):
        super().__init__(input_dim, num_classes, max_length, hidden_dim, num_layers, dropout)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim + input_dim, hidden_dim),
                                        nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden_dim, num_classes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, return_attention: bool = False):
        if return_attention:
            raise ValueError(f"{type(self).__name__} has no attention weights.")
        sequence, _ = self.rnn(x)
        joined = torch.cat([last_valid_step(sequence, mask), last_valid_step(x, mask)], dim=-1)
        return self.classifier(joined)


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
    "wide_gru": WideGRUHead,
}


class IdentityEmbedding(nn.Module):
    """A trainable table over one fold's vocabulary (`features.identity`): visit codes -> rows -> vectors.

    The fold's code -> row map is a buffer, so the model carries its own vocabulary. Row 0 (padding) stays zero
    and gets no gradient; row 1 is the shared unseen row. In training mode each observed visit's row is replaced
    by the unseen row with probability `id_dropout`, which also trains that row for ids the fold never saw."""

    def __init__(self, vocabulary: Vocabulary, dim: int, id_dropout: float, initial: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("remap", torch.from_numpy(vocabulary.remap.copy()), persistent=False)
        self.table = nn.Embedding(vocabulary.rows, dim, padding_idx=PADDING_ROW)
        self.id_dropout = id_dropout
        if initial is not None:
            # initial: [S, dim] a vector per code (the POIs' DGI vectors); the unseen row starts at their mean
            # over the vocabulary, the "average training POI".
            with torch.no_grad():
                vectors = initial[torch.from_numpy(vocabulary.codes)].float()
                self.table.weight[FIRST_VOCABULARY_ROW:] = vectors
                self.table.weight[UNSEEN_ROW] = vectors.mean(dim=0) if len(vectors) else 0.0

    def rows(self, codes: torch.Tensor) -> torch.Tensor:
        rows = self.remap[codes]
        if self.training and self.id_dropout > 0:
            dropped = (torch.rand(rows.shape, device=rows.device) < self.id_dropout) & (rows != PADDING_ROW)
            rows = torch.where(dropped, torch.full_like(rows, UNSEEN_ROW), rows)
        return rows

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.table(self.rows(codes))


class InputEncoder(nn.Module):
    """Builds x [B, L, F] from a window batch according to the feature set.

    embedding: the frozen POI embedding of each visit; category: a learned embedding of the visit's
    category; time, coordinates and user_past: precomputed numeric features (see
    `features.sequence.numeric_features`); poi_identity and venue_type: trainable tables over the fold's
    vocabularies (`IdentityEmbedding`, added by `build_model` after the head is built, so that the head's
    initial weights do not depend on the size of the fold's vocabulary); place_statistics: one vector per
    window fitted per fold (`features.place_statistics`, `window_inputs` [B, K]), repeated at every observed
    position (zero on padding) after the numeric inputs.
    """

    def __init__(self, features: list[str], embedding_dim: int, num_classes: int, category_embedding_dim: int,
                 numeric_dim: int, identity_dim: int = 0, window_input_dim: int = 0):
        super().__init__()
        self.window_input_dim = window_input_dim
        self.use_embedding = "embedding" in features
        self.category = (nn.Embedding(num_classes + 1, category_embedding_dim, padding_idx=num_classes)
                         if "category" in features else None)
        self.num_classes = num_classes
        self.identity_names = [name for name in IDENTITY_FEATURES if name in features]
        self.identity = nn.ModuleDict()
        self.output_dim = ((embedding_dim if self.use_embedding else 0)
                           + (category_embedding_dim if self.category is not None else 0) + numeric_dim
                           + identity_dim * len(self.identity_names) + window_input_dim)

    def forward(self, embedded: torch.Tensor, category: torch.Tensor, numeric: torch.Tensor,
                identity: dict[str, torch.Tensor] | None = None, window_inputs: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        if self.use_embedding:
            parts.append(embedded)
        if self.category is not None:
            # -1 (unknown / padding) maps to the padding row, which stays zero.
            parts.append(self.category(torch.where(category < 0, self.num_classes, category)))
        for name in self.identity_names:
            parts.append(self.identity[name](identity[name]))
        if numeric.shape[-1]:
            parts.append(numeric)
        if self.window_input_dim:
            if window_inputs is None or mask is None:
                raise ValueError("This encoder takes per-window inputs (place_statistics): pass window_inputs "
                                 "[B, K] and the mask [B, L].")
            parts.append(window_inputs[:, None, :] * mask[..., None].to(window_inputs.dtype))
        return torch.cat(parts, dim=-1)


class SequenceClassifier(nn.Module):
    """Input encoder + head; the unit the training loops train."""

    def __init__(self, encoder: InputEncoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, embedded, category, numeric, mask, return_attention: bool = False,
                identity: dict[str, torch.Tensor] | None = None, window_inputs: torch.Tensor | None = None):
        encoded = self.encoder(embedded, category, numeric, identity, window_inputs=window_inputs, mask=mask)
        return self.head(encoded, mask, return_attention=return_attention)


def build_model(config: ModelConfig, features: list[str], embedding_dim: int, num_classes: int, max_length: int,
                numeric_dim: int, vocabularies: dict[str, Vocabulary] | None = None,
                embedding_table: torch.Tensor | None = None, window_input_dim: int = 0) -> SequenceClassifier:
    """Encoder + head. `vocabularies`: the fold's vocabulary of each identity feature in `features`
    (`features.identity.fold_vocabularies`); `embedding_table`: the POI vectors that `identity_init: embedding`
    copies into the poi_identity table; `window_input_dim`: the width of the per-window inputs
    (`WindowTensors.window_input_dim`, place_statistics)."""
    identity_names = [name for name in IDENTITY_FEATURES if name in features]
    missing = [name for name in identity_names if name not in (vocabularies or {})]
    if missing:
        raise ValueError(f"build_model needs the fold's vocabulary of {missing} (features.identity.fold_vocabularies)")
    encoder = InputEncoder(features, embedding_dim, num_classes, config.category_embedding_dim, numeric_dim,
                           config.identity_dim if identity_names else 0, window_input_dim)
    head = MODEL_REGISTRY[config.name].from_config(config, encoder.output_dim, num_classes, max_length)
    # The identity tables draw their initial values after the head's: no other weight depends on their sizes.
    for name in identity_names:
        initial = None
        if name == "poi_identity" and config.identity_init == "embedding":
            if embedding_table is None or embedding_table.shape[1] != config.identity_dim:
                width = None if embedding_table is None else embedding_table.shape[1]
                raise ConfigError(f"model.identity_init='embedding' copies each POI's embedding into its "
                                  f"poi_identity row, so model.identity_dim={config.identity_dim} must equal the "
                                  f"embedding width ({width}): set model.identity_dim: {width} (and keep "
                                  f"'embedding' in windows.features), or use model.identity_init: random.")
            initial = embedding_table.detach().cpu()
        encoder.identity[name] = IdentityEmbedding(vocabularies[name], config.identity_dim, config.identity_dropout,
                                                   initial)
    return SequenceClassifier(encoder, head)


def parameter_groups(config: ModelConfig, model: nn.Module):
    """The optimiser's parameters: `model.parameters()` as they are, or with identity tables two AdamW groups,
    the tables with their own weight decay (`model.identity_weight_decay`)."""
    identity = [p for name, p in model.named_parameters() if ".identity." in f".{name}"]
    if not identity:
        return model.parameters()
    chosen = {id(p) for p in identity}
    rest = [p for p in model.parameters() if id(p) not in chosen]
    return [{"params": rest}, {"params": identity, "weight_decay": config.identity_weight_decay}]
