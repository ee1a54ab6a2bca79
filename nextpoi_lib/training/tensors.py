"""Windows as tensors on the training device, gathered per batch, and where they are kept.

Windows live on the device as POI-index tensors plus one embedding table, gathered per batch, so no
DataLoader and no host-to-device copy sit on the hot path; a dataset too large for device memory falls back
to host-resident tensors with a message.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import ConfigError, ExperimentConfig
from ..devices import pin_host_memory
from ..features.identity import IDENTITY_FEATURES, identity_codes
from ..features.place_statistics import place_statistics_width
from ..features.sequence import numeric_features
from ..windows import WindowSet

# Windows are kept on an accelerator when they need at most this share of its free memory.
DEVICE_MEMORY_SHARE = 0.5


def device_free_memory(device: torch.device) -> int | None:
    """Free bytes on an accelerator; None for the host (no limit is checked there). Tests monkeypatch this."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return None


def storage_device_for(needed_bytes: int, device: torch.device,
                       free_bytes: int | None) -> tuple[torch.device, str | None]:
    """Where windows needing `needed_bytes` are kept: on `device`, or on the host (with the message to log)."""
    if free_bytes is None or needed_bytes <= DEVICE_MEMORY_SHARE * free_bytes:
        return device, None
    return torch.device("cpu"), (
        f"Windows need {needed_bytes / 2**30:.1f} GiB, more than half of the {free_bytes / 2**30:.1f} GiB free on "
        f"{device}: keeping them in host memory and copying each batch (slower, same result).")


class WindowTensors:
    """Windows as tensors on the training device (or on the host when they do not fit)."""

    def __init__(self, windows: WindowSet, config: ExperimentConfig, device: torch.device, log=print):
        numeric = numeric_features(windows, config.windows.features, config.windows.target_time_features)
        use_embedding = "embedding" in config.windows.features
        table = windows.embedding_table if use_embedding else np.zeros((1, 0), np.float32)
        host = {
            "poi_index": torch.from_numpy(windows.poi_index if use_embedding else np.zeros_like(windows.poi_index)),
            "category": torch.from_numpy(windows.category_index),
            "numeric": torch.from_numpy(numeric),
            "mask": torch.from_numpy(windows.mask),
            "target": torch.from_numpy(windows.target),
        }
        # Identity inputs travel as per-visit codes; each fold's model maps them to its own vocabulary's rows.
        self.identity_names = [name for name in IDENTITY_FEATURES if name in config.windows.features]
        for name in self.identity_names:
            if name == "venue_type" and windows.subcategory_index is None:
                raise ConfigError("windows.features lists 'venue_type', and these windows carry no finer category: "
                                  "set dataset.subcategory_column (check-in tables), or remove 'venue_type' from "
                                  "windows.features.")
            host[name] = torch.from_numpy(identity_codes(windows, name)[0])
        # Per-window inputs fitted per fold (place_statistics): set by the training loop for each fold through
        # use_fold_window_inputs; only their width is known here.
        self.window_input_dim = 0
        if "place_statistics" in config.windows.features:
            if windows.subcategory_index is None:
                raise ConfigError("windows.features lists 'place_statistics', whose venue-type half needs a finer "
                                  "category per check-in, and these windows carry none: set "
                                  "dataset.subcategory_column (check-in tables), or remove 'place_statistics' from "
                                  "windows.features.")
            self.window_input_dim = place_statistics_width(len(windows.classes))
        self.window_inputs: torch.Tensor | None = None
        # What the current window inputs were fitted on (the fold's training rows), so a fold's evaluation
        # after its training reuses them instead of fitting them again.
        self.window_inputs_fitted_on: bytes | None = None
        self.window_count = len(windows)
        self.table = torch.from_numpy(np.ascontiguousarray(table))
        needed = sum(t.numel() * t.element_size() for t in host.values()) + self.table.numel() * 4
        self.device = device
        self.storage_device, message = storage_device_for(needed, device, device_free_memory(device))
        # True when the windows could not be kept on the training device (each batch is copied to it).
        self.host_resident = message is not None
        if message:
            log(message)
        pin = self.storage_device.type == "cpu" and pin_host_memory(device)
        self.tensors = {name: (t.pin_memory() if pin else t.to(self.storage_device)) for name, t in host.items()}
        self.table = self.table.pin_memory() if pin else self.table.to(self.storage_device)
        self.numeric_dim = numeric.shape[-1]
        self.embedding_dim = self.table.shape[1]

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        index = index.to(self.storage_device)
        poi_index = self.tensors["poi_index"][index]
        out = {
            "embedded": self.table[poi_index] if self.embedding_dim else
            torch.zeros((*poi_index.shape, 0), device=self.storage_device),
            "category": self.tensors["category"][index],
            "numeric": self.tensors["numeric"][index],
            "mask": self.tensors["mask"][index],
            "target": self.tensors["target"][index],
        }
        for name in self.identity_names:
            out[name] = self.tensors[name][index]
        if self.window_input_dim:
            if self.window_inputs is None:
                raise ValueError("The feature set has per-fold window inputs (place_statistics), and no fold's "
                                 "were set: call use_fold_window_inputs with the fold's array before batching.")
            out["window_inputs"] = self.window_inputs[index]
        if self.storage_device != self.device:
            out = {name: t.to(self.device, non_blocking=True) for name, t in out.items()}
        return out

    def use_embedding_table(self, table: np.ndarray) -> None:
        """Gather from `table` from now on: a fold's own [P, D] POI table (embeddings.source transition_graph),
        rows in the order of windows.embedding_table. Kept where the current table is; raises ValueError when
        its shape differs (another POI order or dimension would silently mean other POIs)."""
        if tuple(np.shape(table)) != tuple(self.table.shape):
            raise ValueError(f"The fold's embedding table has shape {tuple(np.shape(table))}, but the windows "
                             f"gather from a table of shape {tuple(self.table.shape)} (POIs x dimensions): build it "
                             f"over the same POI rows and embeddings.dim.")
        self.table = self._stored(table)

    def use_fold_window_inputs(self, values: np.ndarray, fitted_on: bytes | None = None) -> None:
        """Return `values` ([N, K] float32, one row per window: a fold's place_statistics) under "window_inputs"
        in every batch from now on (`fitted_on`: what they were fitted on, kept as window_inputs_fitted_on).
        Kept where the other tensors are; raises ValueError when the shape is not (windows, the feature set's
        width)."""
        expected = (self.window_count, self.window_input_dim)
        if not self.window_input_dim or tuple(np.shape(values)) != expected:
            raise ValueError(f"The fold's window inputs have shape {tuple(np.shape(values))}, but these windows "
                             f"take {expected} (windows x the width of place_statistics; width 0 means the "
                             f"feature set has none).")
        self.window_inputs = self._stored(values)
        self.window_inputs_fitted_on = fitted_on

    def _stored(self, values: np.ndarray) -> torch.Tensor:
        """A float32 copy of a per-fold array, kept where the other tensors are (pinned host memory when they
        stay on the host of an accelerator)."""
        new = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        pin = self.storage_device.type == "cpu" and pin_host_memory(self.device)
        return new.pin_memory() if pin else new.to(self.storage_device)
