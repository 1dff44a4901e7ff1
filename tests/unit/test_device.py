"""Device choice: ``auto`` / ``cpu`` / ``cuda`` with the CUDA probes replaced (no GPU here).

The fakes stand in for hardware that cannot be produced on this machine (a GPU, an old GPU, a
CUDA-less build); the decision logic under them is the real code.
"""

from __future__ import annotations

import pytest
import torch

from hivlp_milvus import device as device_mod
from hivlp_milvus.device import check_training_precision, inference_dtype, resolve_device
from hivlp_milvus.errors import ConfigError


def test_cpu_and_auto_on_this_machine():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU; the no-GPU message is not produced")
def test_cuda_without_gpu_says_why():
    with pytest.raises(ConfigError, match="cannot be used") as err:
        resolve_device("cuda")
    assert "device='cpu'" in str(err.value)


@pytest.mark.parametrize(("device", "match"), [("tpu", "unknown device"), ("cuda:x", "cuda:N")])
def test_unknown_device_is_an_error(device, match):
    with pytest.raises(ConfigError, match=match):
        resolve_device(device)


def _fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int, capability: tuple[int, int], bf16: bool) -> None:
    """A GPU that is not here: visible devices, their compute capability and native bf16."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")


def test_auto_takes_a_usable_gpu(monkeypatch):
    _fake_cuda(monkeypatch, 2, (8, 0), bf16=True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="only 2 GPU"):
        resolve_device("cuda:2")


def test_old_gpu_is_refused_and_auto_falls_back(monkeypatch):
    _fake_cuda(monkeypatch, 1, (6, 1), bf16=False)
    with pytest.raises(ConfigError, match="compute capability 6.1"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_cpu_only_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ConfigError, match="no CUDA support"):
        resolve_device("cuda")


def test_mixed_precision_choice(monkeypatch):
    assert inference_dtype("cpu") is None
    _fake_cuda(monkeypatch, 1, (8, 0), bf16=True)
    assert inference_dtype("cuda") is torch.bfloat16
    check_training_precision("bf16", "cuda")  # native bf16: accepted
    _fake_cuda(monkeypatch, 1, (8, 0), bf16=False)  # a GPU without native bf16
    assert inference_dtype("cuda") is torch.float16
    with pytest.raises(ConfigError, match="no native bf16"):
        check_training_precision("bf16", "cuda")
    check_training_precision("fp32", "cuda")
    # bf16 on the CPU depends on this CPU's instructions: test_training_precision.py covers both cases.
    assert device_mod.DEVICE_CHOICES[0] == "auto"
