"""One training micro-batch's forward pass and loss, in the precision the device runs natively.

Shared by the Ray Train loop (``training.loop``), the fusion fine-tune
(``training.fusion_finetune``) and the benchmarks' in-process loop, so all three take the same
step: autocast (``hivlp_milvus.device.training_autocast_dtype``), channels-last pixels and the
attention kernel choice on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["forward_loss", "mixed_precision"]


@contextlib.contextmanager
def mixed_precision(dtype: Any, device_type: str) -> Iterator[None]:
    """Autocast in ``dtype`` on ``device_type`` (``None``: float32, nothing changes).

    bf16 on the CPU also takes the math attention kernel: the CPU flash-attention kernel's bf16
    backward was ~6x slower than its float32 one (torch 2.14.1; with it a bf16 step of tiny was
    1.5x faster than float32, with the math kernel 2.0x).
    """
    if dtype is None:
        yield
        return
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    math_attention = sdpa_kernel([SDPBackend.MATH]) if device_type == "cpu" else contextlib.nullcontext()
    with torch.autocast(device_type=device_type, dtype=dtype), math_attention:
        yield


def forward_loss(
    model: Any,
    loss_fn: Any,
    batch: dict[str, Any],
    input_ids: Any,
    attention_mask: Any,
    *,
    step: int,
    dtype: Any = None,
) -> Any:
    """One micro-batch's forward pass and loss (a ``LossOutput``), in autocast ``dtype`` when given.

    The loss runs inside autocast too, as open_clip's does: the ``itm`` term runs the fusion block
    on the towers' bf16 token states (outside, its float32 weights meet bf16 inputs and fail). The
    loss keeps its logits and softmaxes in float32. On the CPU the pixels go in channels-last
    (NHWC) layout, which oneDNN's convolutions run faster.
    """
    import torch

    pixels = batch["pixel_values"]
    if pixels.device.type == "cpu":
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    with mixed_precision(dtype, pixels.device.type):
        out = model(pixels, input_ids, attention_mask)
        return loss_fn(out, groups=batch["group"], step=step)
