"""Sequences: cutting each user's time-ordered check-ins into windows of L past visits plus the next one.

A window starting at visit s holds visits s .. e-1 with e = min(s + L, n - 1) and predicts the category of
visit e. Starts are 0, stride, 2*stride, ...; generation stops after the window that predicts the user's last
visit, so no target is predicted twice by a shorter copy of the same window. Stride L reproduces our users'
non-overlapping protocol (the last, short window is padded); stride 1 uses every transition after the first L.

Windows are stored as POI-index arrays plus one embedding table (9 integers per window instead of 576
floats) and an explicit padding mask: padding is never inferred from all-zero vectors. Position 0 is the
oldest visit; padding sits on the right. A window set cut from check-ins also keeps the check-in rows behind
its windows (`CheckinSequence`), from which `nextpoi_lib.features` computes what lies beyond the window (the
user's history, their own transitions) only when a run asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .data import CheckinTable, DataError, NextParquet


@dataclass(frozen=True)
class CheckinSequence:
    """The check-in rows behind a window set (sorted by user, then time), for features beyond the window."""
    category: np.ndarray  # [n_checkins] int64 class id of every check-in
    poi: np.ndarray  # [n_checkins] int64 POI code of every check-in
    user_starts: np.ndarray  # [n_users] the first row of each user
    user_first_row: np.ndarray  # [N] first row of each window's user
    first_row: np.ndarray  # [N] row of each window's first visit
    last_row: np.ndarray  # [N] row of each window's last observed visit (the row before the target unless masked)

    def subset(self, index: np.ndarray) -> "CheckinSequence":
        return CheckinSequence(self.category, self.poi, self.user_starts, self.user_first_row[index],
                               self.first_row[index], self.last_row[index])


@dataclass
class WindowSet:
    poi_index: np.ndarray  # [N, L] int64 rows of embedding_table; 0 where mask is False
    mask: np.ndarray  # [N, L] bool, True where a visit was observed
    category_index: np.ndarray  # [N, L] int64 class id of each observed visit, -1 where unknown or padding
    hour: np.ndarray  # [N, L] float32 hour of day (fractional)
    weekday: np.ndarray  # [N, L] int64 0 = Monday
    gap_hours: np.ndarray  # [N, L] float32 hours since the user's previous check-in (0 for the first)
    latitude: np.ndarray  # [N, L] float32
    longitude: np.ndarray  # [N, L] float32
    target: np.ndarray  # [N] int64 class id of the next visit
    target_hour: np.ndarray  # [N] float32 (only used by the explicitly named target-time task)
    target_weekday: np.ndarray  # [N] int64
    users: np.ndarray  # [N] str
    classes: list[str]
    embedding_table: np.ndarray  # [P, D] float32
    report: dict = field(default_factory=dict)
    # [N, L] int64 finer category of each observed visit (-1 unknown); None when the data has none.
    subcategory_index: np.ndarray | None = None
    # The check-in rows behind the windows; None for next.parquet windows, which have no check-in sequence.
    sequence: CheckinSequence | None = None
    # Per-window arrays derived from the sequence by nextpoi_lib.features, computed on first use (by name).
    derived: dict = field(default_factory=dict, repr=False, compare=False)
    # [N] the group of each window's user when folds are grouped by a person proxy (set by preparation from the
    # fold manifest); None: every user is its own group. Out-of-fold label statistics keep a group in one part.
    groups: np.ndarray | None = None

    @property
    def owners(self) -> np.ndarray:
        """[N] who a window belongs to for anything split by user: its user's group, or the user itself."""
        return self.users if self.groups is None else self.groups

    def __len__(self) -> int:
        return len(self.target)

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @property
    def has_visit_details(self) -> bool:
        """False for next.parquet windows, which carry embeddings only."""
        return bool((self.category_index[self.mask] >= 0).all()) and self.mask.any()

    def derive(self, name: str, compute, missing_sequence: str) -> np.ndarray:
        """The per-window array `name`, computed from the check-in sequence by `compute(sequence)` on first use
        and kept in `derived`; a window set without a sequence (next.parquet) raises ValueError(missing_sequence)."""
        if name not in self.derived:
            if self.sequence is None:
                raise ValueError(missing_sequence)
            self.derived[name] = compute(self.sequence)
        return self.derived[name]

    def subset(self, index: np.ndarray) -> "WindowSet":
        per_window = {name: getattr(self, name)[index] for name in (
            "poi_index", "mask", "category_index", "hour", "weekday", "gap_hours", "latitude", "longitude",
            "target", "target_hour", "target_weekday", "users")}
        return WindowSet(**per_window, classes=self.classes, embedding_table=self.embedding_table,
                         report=dict(self.report),
                         subcategory_index=None if self.subcategory_index is None else self.subcategory_index[index],
                         sequence=None if self.sequence is None else self.sequence.subset(index),
                         derived={name: values[index] for name, values in self.derived.items()},
                         groups=None if self.groups is None else self.groups[index])


def window_bounds(visit_counts: np.ndarray, length: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For users with `visit_counts` visits: (user position, window start, window end) of every window."""
    users, starts, ends = [], [], []
    for user_position, n in enumerate(visit_counts):
        if n < 2:
            continue
        candidate_starts = np.arange(0, n - 1, stride)
        candidate_ends = np.minimum(candidate_starts + length, n - 1)
        # Keep windows up to and including the first one that predicts the last visit.
        last = int(np.argmax(candidate_ends == n - 1)) if (candidate_ends == n - 1).any() else len(candidate_ends) - 1
        users.append(np.full(last + 1, user_position))
        starts.append(candidate_starts[: last + 1])
        ends.append(candidate_ends[: last + 1])
    if not users:
        return (np.zeros(0, np.int64),) * 3
    return np.concatenate(users), np.concatenate(starts), np.concatenate(ends)


def rare_classes(checkins: CheckinTable, min_class_checkins: int | None) -> dict[str, int]:
    """`dataset.min_class_checkins`: {class: check-in count} of the classes with fewer check-ins (in class-id
    order); empty when the setting is null or every class has enough."""
    if min_class_checkins is None:
        return {}
    counts = np.bincount(checkins.category_index, minlength=len(checkins.classes))
    return {name: int(count) for name, count in zip(checkins.classes, counts) if count < min_class_checkins}


def build_windows(checkins: CheckinTable, embeddings: pd.DataFrame, length: int = 9, stride: int = 1,
                  missing: str = "error", min_class_checkins: int | None = None) -> WindowSet:
    """Cut sorted check-ins into windows; `embeddings` is indexed by poi_id with one column per dimension.

    `missing` decides what happens to visits whose POI has no embedding: "error", "mask" (the position is
    marked unobserved) or "drop_window" (windows containing one are removed). The count is always reported.

    `min_class_checkins`: classes with fewer check-ins stop being targets. Windows predicting them are removed;
    their visits stay observed inputs (POI, time, coordinates) with category id -1, the "unknown category" that
    the input encoder already maps to its padding row, so the target classes keep ids 0..C-1 and every model's
    output layer covers exactly them. The dropped classes, their check-in counts and the removed windows are
    reported.
    """
    frame = checkins.frame
    dropped_classes = rare_classes(checkins, min_class_checkins)
    classes = [name for name in checkins.classes if name not in dropped_classes]
    if dropped_classes and len(classes) < 2:
        raise DataError(f"dataset.min_class_checkins={min_class_checkins} leaves {len(classes)} target class "
                        f"({', '.join(classes) or 'none'}) of {checkins.classes}: nothing to predict. Lower "
                        f"dataset.min_class_checkins or merge classes with dataset.class_map.")
    user_codes, user_names = pd.factorize(frame["user_id"], sort=False)
    # frame is sorted by user, so each user's visits are contiguous.
    visit_counts = np.bincount(user_codes, minlength=len(user_names))
    offsets = np.concatenate([[0], np.cumsum(visit_counts)[:-1]])
    window_user, start, end = window_bounds(visit_counts, length, stride)
    if len(start) == 0:
        raise DataError("No windows could be built: every user has fewer than 2 check-ins.")

    positions = np.arange(length)
    visit = offsets[window_user, None] + start[:, None] + positions[None, :]  # global row of each position
    observed = positions[None, :] < (end - start)[:, None]
    visit = np.where(observed, visit, 0)
    target_row = offsets[window_user] + end
    first_row = offsets[window_user] + start

    # Embedding rows of every check-in; -1 when the POI has no embedding.
    table_ids = pd.Index(embeddings.index.astype(str))
    embedding_row = table_ids.get_indexer(frame["poi_id"].astype(str))
    embedding_table = embeddings.to_numpy(np.float32)
    if not np.isfinite(embedding_table).all():
        raise DataError("The embedding table holds NaN or infinite values. Recompute it or drop those POIs.")
    missing_visit = observed & (embedding_row[visit] < 0)
    n_missing = int(missing_visit.sum())
    dropped_windows = 0
    if n_missing:
        missing_pois = frame["poi_id"].to_numpy()[visit[missing_visit]]
        message = (f"{n_missing} observed visits in windows ({len(set(missing_pois))} distinct POIs, e.g. "
                   f"{sorted(set(missing_pois))[:3]}) have no embedding.")
        if missing == "error":
            raise DataError(message + " Provide embeddings for them, or set embeddings.missing: mask (treat "
                                      "those visits as unobserved) or drop_window.")
        if missing == "mask":
            observed = observed & ~missing_visit
        keep = ~missing_visit.any(axis=1) if missing == "drop_window" else observed.any(axis=1)
        dropped_windows = int((~keep).sum())
        visit, observed, target_row, window_user = visit[keep], observed[keep], target_row[keep], window_user[keep]
        first_row = first_row[keep]

    timestamps = frame["timestamp"]
    hour = (timestamps.dt.hour + timestamps.dt.minute / 60.0).to_numpy(np.float32)
    weekday = timestamps.dt.weekday.to_numpy(np.int64)
    seconds = timestamps.astype("int64").to_numpy() / 1e9 if timestamps.dtype.kind == "M" else timestamps.to_numpy()
    gap = np.zeros(len(frame), np.float32)
    gap[1:] = (np.diff(seconds) / 3600.0).astype(np.float32)
    gap[offsets] = 0.0  # the first check-in of each user has no previous one
    category = checkins.category_index
    rare_target_windows = 0
    if dropped_classes:
        # Old class id -> new one; a dropped class -> -1 (its visits: observed, category unknown).
        new_id = np.array([classes.index(name) if name in classes else -1 for name in checkins.classes], np.int64)
        category = new_id[category]
        keep = category[target_row] >= 0
        rare_target_windows = int((~keep).sum())
        visit, observed, target_row, window_user = visit[keep], observed[keep], target_row[keep], window_user[keep]
        first_row = first_row[keep]
        if not len(target_row):
            raise DataError(f"dataset.min_class_checkins={min_class_checkins} removes every window. Lower it.")
    poi_index = np.where(observed, np.maximum(embedding_row[visit], 0), 0)
    # The check-in row of each window's last observed visit (the row before the target unless it was masked).
    last_row = visit[np.arange(len(visit)), observed.shape[1] - 1 - np.argmax(observed[:, ::-1], axis=1)]

    def per_position(values: np.ndarray, fill) -> np.ndarray:
        return np.where(observed, values[visit], fill).astype(values.dtype)

    subcategory = checkins.subcategory_index
    report = {
        "n_windows": int(len(target_row)),
        "n_users": int(len(np.unique(window_user))),
        "n_checkins": int(len(frame)),
        "dropped_users_min_checkins": checkins.dropped_users,
        "dropped_duplicate_rows": checkins.dropped_duplicate_rows,
        "missing_embedding_visits": n_missing,
        "missing_embedding_policy": missing,
        "dropped_windows_missing_embedding": dropped_windows,
        "padded_windows": int((~observed).any(axis=1).sum()),
        "window_length": length,
        "stride": stride,
    }
    if min_class_checkins is not None:
        report.update({"min_class_checkins": min_class_checkins, "dropped_classes_min_checkins": dropped_classes,
                       "dropped_windows_rare_class": rare_target_windows})
    return WindowSet(
        poi_index=poi_index.astype(np.int64), mask=observed, category_index=np.where(observed, category[visit], -1),
        hour=per_position(hour, 0.0), weekday=per_position(weekday, 0), gap_hours=per_position(gap, 0.0),
        latitude=per_position(frame["latitude"].to_numpy(np.float32), 0.0),
        longitude=per_position(frame["longitude"].to_numpy(np.float32), 0.0),
        target=category[target_row], target_hour=hour[target_row], target_weekday=weekday[target_row],
        users=user_names.to_numpy().astype(str)[window_user], classes=list(classes),
        embedding_table=embedding_table, report=report,
        subcategory_index=None if subcategory is None else np.where(observed, subcategory[visit], -1),
        sequence=CheckinSequence(category=category, poi=pd.factorize(frame["poi_id"], sort=False)[0],
                                 user_starts=offsets, user_first_row=offsets[window_user], first_row=first_row,
                                 last_row=last_row))


def windows_from_next_parquet(next_file: NextParquet, classes: list[str] | None = None,
                              legacy_padding: str = "trailing_zero_rows") -> WindowSet:
    """Windows from our users' precomputed file. It has no mask, no POI ids and no visit details.

    Its writer padded short windows on the right with zero vectors, so with `trailing_zero_rows` the
    trailing all-zero positions are read as padding; zero rows in the middle (POIs that had no embedding,
    a bug of that pipeline) are kept as observed visits and counted in the report.
    """
    features = next_file.features
    n, length, dim = features.shape
    zero_row = ~features.any(axis=2)
    if legacy_padding == "trailing_zero_rows":
        # A position is padding if it and every later position are all-zero.
        trailing = np.flip(np.cumprod(np.flip(zero_row, axis=1), axis=1), axis=1).astype(bool)
        mask = ~trailing
    else:
        mask = np.ones((n, length), bool)
    if not mask.any(axis=1).all():
        raise DataError(f"{int((~mask.any(axis=1)).sum())} windows of the next.parquet file are all zeros. Drop them.")
    labels = pd.Series(next_file.labels)
    if classes is None:
        counts = labels.value_counts()
        classes = sorted(counts.index, key=lambda name: (-counts[name], name))
    unknown = sorted(set(labels) - set(classes))
    if unknown:
        raise DataError(f"next_category values {unknown[:5]} are not in dataset.classes {classes}. Add them to "
                        f"dataset.classes or remove that setting to take the classes from the file.")
    target = pd.Categorical(labels, categories=classes).codes.astype(np.int64)
    zeros = np.zeros((n, length), np.float32)
    return WindowSet(
        poi_index=np.arange(n * length, dtype=np.int64).reshape(n, length), mask=mask,
        category_index=np.full((n, length), -1, np.int64), hour=zeros, weekday=zeros.astype(np.int64),
        gap_hours=zeros, latitude=zeros, longitude=zeros, target=target, target_hour=np.zeros(n, np.float32),
        target_weekday=np.zeros(n, np.int64), users=next_file.users, classes=list(classes),
        embedding_table=features.reshape(n * length, dim),
        report={"n_windows": n, "n_users": int(len(np.unique(next_file.users))), "window_length": length,
                "padded_windows": int((~mask).any(axis=1).sum()),
                "zero_rows_inside_windows": int((zero_row & mask).sum()), "legacy_padding": legacy_padding})
