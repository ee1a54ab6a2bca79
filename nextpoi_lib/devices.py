"""Devices: which accelerator a run uses and what that device supports.

`training.device: auto` picks a CUDA GPU, then Apple's MPS (the Apple-silicon laptops our users ran their
seed experiments on), then the CPU. The speed features are used only where the device has them: bf16
autocast and TF32 matmuls on CUDA GPUs that support them, the fused AdamW kernel and pinned host memory on
CUDA; MPS trains in float32 (its autocast is float16-only on the PyTorch we pin, which would need loss scaling).
Everything asks here instead of testing `device.type == "cuda"` itself; tests simulate availability by
monkeypatching `cuda_available` / `mps_available`.
"""

from __future__ import annotations

import re

import torch

from .errors import DeviceError

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def cuda_available() -> bool:
    return torch.cuda.is_available()


def cuda_device_count() -> int:
    return torch.cuda.device_count() if cuda_available() else 0


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def auto_device() -> str:
    """The device `auto` means on this machine: cuda, else mps, else cpu."""
    if cuda_available():
        return "cuda"
    if mps_available():
        return "mps"
    return "cpu"


def check_device(name: str) -> None:
    """`training.device` against this machine; raises DeviceError naming the key and the fix."""
    if name in ("auto", "cpu"):
        return
    if name == "mps":
        if not mps_available():
            raise DeviceError("training.device='mps' asks for Apple's Metal GPU, but PyTorch sees none here "
                              "(torch.backends.mps.is_available() is False). Set training.device: auto or cpu.")
        return
    count = cuda_device_count()
    if count == 0:
        raise DeviceError(f"training.device={name!r} asks for a CUDA GPU, but PyTorch sees none on this machine "
                          f"(torch.cuda.is_available() is False). Set training.device: auto (the GPU when there "
                          f"is one, else the CPU) or cpu, or run on a machine with a CUDA GPU.")
    index = int(name.split(":")[1]) if ":" in name else 0
    if index >= count:
        raise DeviceError(f"training.device={name!r} asks for GPU number {index}, but PyTorch sees {count} CUDA "
                          f"GPU{'s' if count != 1 else ''} (cuda:0{f' .. cuda:{count - 1}' if count > 1 else ''}). "
                          f"Set training.device to one of them, cuda, auto or cpu.")


def resolve_device(name: str) -> torch.device:
    """The torch device for `training.device` (checked with `check_device`)."""
    check_device(name)
    return torch.device(auto_device() if name == "auto" else name)


def device_name(device: torch.device) -> str:
    """What the manifest records: the GPU's name, "Apple MPS", or "cpu"."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return "cpu"


def autocast_dtype(device: torch.device, mixed_precision: bool) -> torch.dtype | None:
    """The autocast dtype to train with: bfloat16 on CUDA GPUs that support it (fp32 master weights and loss),
    None (float32) elsewhere or when mixed precision is off."""
    if mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def uses_tf32(device: torch.device, mixed_precision: bool) -> bool:
    """TF32 for float32 matmuls: on CUDA with mixed precision on."""
    return device.type == "cuda" and mixed_precision


def fused_adamw(device: torch.device) -> bool | None:
    """True for the fused AdamW kernel (CUDA); None: PyTorch's default elsewhere."""
    return True if device.type == "cuda" else None


def pin_host_memory(device: torch.device) -> bool:
    """Whether host tensors copied to `device` each batch should be pinned (page-locked): for CUDA only."""
    return device.type == "cuda"
