"""Windows as tensors on the training device, gathered per batch, and where they are kept.

Windows live on the device as POI-index tensors plus one embedding table, gathered per batch, so no
DataLoader and no host-to-device copy sit on the hot path; a dataset too large for device memory falls back
to host-resident tensors with a message.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import ExperimentConfig
from ..devices import pin_host_memory
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
        if self.storage_device != self.device:
            out = {name: t.to(self.device, non_blocking=True) for name, t in out.items()}
        return out
