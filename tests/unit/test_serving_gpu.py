"""An encoder replica given a GPU that CUDA cannot use fails at start, saying why (no silent CPU).

Real: this machine's torch has no usable GPU, so ``resolve_device("cuda")`` refuses for a real
reason. Where a GPU is usable the refusal cannot happen, and the test is skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hivlp_milvus.device import resolve_device
from hivlp_milvus.errors import ConfigError
from hivlp_milvus.model import create_model


def _cuda_reason() -> str | None:
    try:
        resolve_device("cuda")
    except ConfigError as exc:
        return str(exc)
    return None


@pytest.fixture
def checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import serving.encoders

    # The replica's thread count comes from its Ray context; asking for it here would start Ray.
    monkeypatch.setattr(serving.encoders, "torch_threads_for_replica", lambda: 1)
    create_model("micro", texts=["a red circle"], seed=0).save_pretrained(tmp_path / "model")
    return str(tmp_path / "model")


def test_gpu_asked_for_but_unusable_fails_the_replica_with_the_reason(checkpoint: str) -> None:
    from serving.encoders import ImageEncoder, TextEncoder, load_model

    reason = _cuda_reason()
    if reason is None:
        pytest.skip("CUDA is usable here: an encoder given a GPU uses it")
    for encoder in (TextEncoder, ImageEncoder):
        with pytest.raises(ConfigError) as info:
            encoder.func_or_class(checkpoint, 8, 0.01, True)  # use_gpu, as the builder passes for num_gpus > 0
        message = str(info.value)
        assert reason in message  # resolve_device's own words: why CUDA cannot be used
        assert "num_gpus=0" in message  # and what to do
    assert str(load_model(checkpoint, use_gpu=False).device) == "cpu"  # no GPU asked: the CPU, as before
