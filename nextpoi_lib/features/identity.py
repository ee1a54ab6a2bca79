"""Identity inputs of the neural heads: which POI (`poi_identity`) and which venue type (`venue_type`) a visit was.

Each visit gets a code: its POI's row of the POI table (`windows.poi_index`: the embedding table's row, or with
embeddings off the POI code table's row) or its finer category (`windows.subcategory_index`). Codes are
sorted by the POI / venue-type name (the tables are built sorted), so a code's rank among the training
POIs does not depend on anyone else's data.

A `Vocabulary` is fitted per fold from the observed visits of that fold's TRAINING windows only
(`fold.train_index`; never inner-validation or test windows): an id visited at least `min_count` times
there gets its own row; every other id — visited only by inner-validation or test users, too rarely, or of
unknown venue type — maps to the one shared UNSEEN row. Rows: 0 = padding (zero, never trained), 1 =
unseen, 2.. = the vocabulary in code order. Row ids therefore depend on the training users' visits only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..windows import WindowSet

IDENTITY_FEATURES = ("poi_identity", "venue_type")
PADDING_ROW, UNSEEN_ROW, FIRST_VOCABULARY_ROW = 0, 1, 2


def identity_codes(windows: WindowSet, name: str) -> tuple[np.ndarray, int]:
    """([N, L] int64 codes, S): an id's code in 0..S-1 for an observed visit of known id, S for an observed
    visit of unknown id (a venue type the data lacks), S + 1 for padding."""
    if name == "poi_identity":
        ids, size = windows.poi_index, int(windows.embedding_table.shape[0])
    elif name == "venue_type":
        if windows.subcategory_index is None:
            raise ValueError("venue_type needs a finer category per visit, and these windows have none.")
        ids = windows.subcategory_index
        size = int(ids.max()) + 1 if ids.size and ids.max() >= 0 else 0
    else:
        raise ValueError(f"unknown identity feature {name!r}; valid: {', '.join(IDENTITY_FEATURES)}")
    codes = np.where(ids >= 0, ids, size)
    return np.where(windows.mask, codes, size + 1).astype(np.int64), size


@dataclass(frozen=True)
class Vocabulary:
    """One fold's vocabulary of one identity feature: `remap[code]` is the table row of a code (S + 2 entries),
    `codes[i]` the code of row FIRST_VOCABULARY_ROW + i."""
    remap: np.ndarray
    codes: np.ndarray

    @property
    def rows(self) -> int:
        """Rows of the table this vocabulary indexes (padding + unseen + one per vocabulary id)."""
        return FIRST_VOCABULARY_ROW + len(self.codes)

    def rows_of(self, codes: np.ndarray) -> np.ndarray:
        return self.remap[codes]


def visit_counts(windows: WindowSet, codes: np.ndarray, size: int, index: np.ndarray) -> np.ndarray:
    """[S] how many distinct check-ins of each id the windows `index` hold as observed visits. With stride-1
    windows one check-in sits in up to L windows; it counts once (a window set without a check-in sequence
    counts observed positions)."""
    picked = codes[index]
    observed = picked < size
    if windows.sequence is None:
        return np.bincount(picked[observed], minlength=size)[:size]
    rows = windows.sequence.first_row[index, None] + np.arange(windows.length)[None, :]
    _, first = np.unique(rows[observed], return_index=True)
    return np.bincount(picked[observed][first], minlength=size)[:size]


def fit_vocabulary(windows: WindowSet, name: str, train_index: np.ndarray, min_count: int) -> Vocabulary:
    """The vocabulary of `name` fitted on the training windows `train_index` only (see the module docstring)."""
    codes, size = identity_codes(windows, name)
    counts = visit_counts(windows, codes, size, np.asarray(train_index, dtype=np.int64))
    kept = np.flatnonzero(counts >= max(min_count, 1))
    remap = np.full(size + 2, UNSEEN_ROW, np.int64)
    remap[kept] = FIRST_VOCABULARY_ROW + np.arange(len(kept))
    remap[size + 1] = PADDING_ROW
    return Vocabulary(remap=remap, codes=kept.astype(np.int64))


def fold_vocabularies(windows: WindowSet, features: list[str], train_index: np.ndarray,
                      min_count: int) -> dict[str, Vocabulary]:
    """{feature: Vocabulary} for the identity features named in `features`, fitted on `train_index`."""
    return {name: fit_vocabulary(windows, name, train_index, min_count) for name in IDENTITY_FEATURES
            if name in features}
