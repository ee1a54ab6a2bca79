"""The device choice and what each device supports, on CPU by simulating availability."""

from __future__ import annotations

import pytest
import torch

from nextpoi_lib import devices
from nextpoi_lib.errors import DeviceError


@pytest.fixture
def machine(monkeypatch):
    """Set what this process 'sees': machine(cuda=2, mps=False)."""
    def set_machine(cuda: int = 0, mps: bool = False, bf16: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
        monkeypatch.setattr(devices, "mps_available", lambda: mps)
    return set_machine


@pytest.mark.parametrize("cuda, mps, expected", [(1, True, "cuda"), (0, True, "mps"), (0, False, "cpu"),
                                                 (2, False, "cuda")])
def test_auto_picks_cuda_then_mps_then_cpu(machine, cuda, mps, expected):
    machine(cuda=cuda, mps=mps)
    assert devices.auto_device() == expected
    assert devices.resolve_device("auto") == torch.device(expected)


def test_an_absent_device_is_a_device_error_naming_the_key(machine):
    machine(cuda=0, mps=False)
    with pytest.raises(DeviceError, match=r"training\.device='mps'.*auto or cpu"):
        devices.check_device("mps")
    with pytest.raises(DeviceError, match=r"training\.device='cuda'.*sees none"):
        devices.resolve_device("cuda")
    machine(cuda=1, mps=True)
    devices.check_device("mps")
    devices.check_device("cuda:0")
    with pytest.raises(DeviceError, match=r"GPU number 1, but PyTorch sees 1 CUDA GPU \(cuda:0\)"):
        devices.check_device("cuda:1")


def test_speed_features_only_where_the_device_has_them(machine):
    machine(cuda=1, bf16=True)
    cuda, mps, cpu = torch.device("cuda"), torch.device("mps"), torch.device("cpu")
    assert devices.autocast_dtype(cuda, True) is torch.bfloat16
    assert devices.autocast_dtype(cuda, False) is None
    assert devices.autocast_dtype(mps, True) is None and devices.autocast_dtype(cpu, True) is None
    machine(cuda=1, bf16=False)  # e.g. a V100: no bf16, so float32
    assert devices.autocast_dtype(cuda, True) is None
    assert devices.uses_tf32(cuda, True) and not devices.uses_tf32(cuda, False) and not devices.uses_tf32(mps, True)
    assert devices.fused_adamw(cuda) is True and devices.fused_adamw(mps) is None and devices.fused_adamw(cpu) is None
    assert devices.pin_host_memory(cuda) and not devices.pin_host_memory(mps) and not devices.pin_host_memory(cpu)
    assert devices.device_name(mps) == "Apple MPS" and devices.device_name(cpu) == "cpu"


def test_the_config_accepts_mps_and_the_load_checks_the_machine(machine):
    from nextpoi_lib.experiment import load_config

    machine(cuda=0, mps=True)
    assert load_config({"training": {"device": "mps"}}).training.device == "mps"
    machine(cuda=0, mps=False)
    with pytest.raises(DeviceError, match="training.device='mps'"):
        load_config({"training": {"device": "mps"}})
