"""Where a model runs: ``resolve_device("auto" | "cpu" | "cuda" | "cuda:N")`` and its mixed precision.

``"auto"`` takes CUDA when torch sees a usable GPU and the CPU otherwise. An explicit ``"cuda"``
that cannot be honoured is an error that says why (no CUDA build, no driver, a GPU older than
the build supports), never a silent fall back to the CPU: a user who asked for the GPU would
otherwise wait hours for a CPU run without knowing.

The pinned torch (2.14.x from PyPI) is a CUDA 13 build: it needs an NVIDIA driver for CUDA 13
and a GPU of compute capability 7.5 (Turing) or newer. Nothing in this module has run on a GPU
here (the development machines have none); the choice logic is tested with the CUDA probes
replaced (``tests/unit/test_device.py``).
"""

from __future__ import annotations

from typing import Any

from hivlp_milvus.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# Oldest compute capability the pinned CUDA 13 torch build ships kernels for.
MIN_CUDA_CAPABILITY = (7, 5)


def _cuda_problem(index: int = 0) -> str | None:
    """Why CUDA device ``index`` cannot be used, or ``None`` when it can."""
    import torch

    if torch.version.cuda is None:
        return "this torch build has no CUDA support (install the CUDA build of torch 2.14)"
    if not torch.cuda.is_available():
        return (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: check `nvidia-smi`, "
            "that the NVIDIA driver supports this CUDA version, and CUDA_VISIBLE_DEVICES"
        )
    count = torch.cuda.device_count()
    if index >= count:
        return f"cuda:{index} asked for, but only {count} GPU(s) are visible"
    capability = torch.cuda.get_device_capability(index)
    if tuple(capability) < MIN_CUDA_CAPABILITY:
        return (
            f"GPU {index} has compute capability {capability[0]}.{capability[1]}; this torch build needs "
            f"{MIN_CUDA_CAPABILITY[0]}.{MIN_CUDA_CAPABILITY[1]} or newer"
        )
    return None


def resolve_device(device: Any = "auto") -> Any:
    """Turn a device request into a ``torch.device``.

    Args:
        device: ``"auto"`` (CUDA when usable, else CPU), ``"cpu"``, ``"cuda"`` / ``"cuda:N"``, or a
            ``torch.device``.

    Returns:
        The ``torch.device`` to put the model on.

    Raises:
        ConfigError: the request is not a device, or CUDA was asked for and cannot be used (the
            message says why).
    """
    import torch

    if isinstance(device, torch.device):
        device = str(device)
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if _cuda_problem(0) is None else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        try:
            index = int(text.split(":", 1)[1]) if ":" in text else 0
        except ValueError:
            raise ConfigError(f"device {device!r}: expected cuda:N with an integer N") from None
        problem = _cuda_problem(index)
        if problem is not None:
            raise ConfigError(f"device {device!r} cannot be used: {problem}; use device='cpu' to run on the CPU")
        return torch.device(f"cuda:{index}")
    raise ConfigError(f"unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")


def inference_dtype(device: Any) -> Any:
    """The autocast dtype that is safe for inference on ``device``, or ``None`` for full float32.

    bf16 on GPUs that run it natively (Ampere and newer); fp16 on older CUDA GPUs (the towers'
    activations stay well inside its range, and the heads normalise in float32); the CPU keeps
    float32 (CPU autocast is slower than float32 on most CPUs this runs on).
    """
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if _native_bf16(device) else torch.float16


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products and convolutions natively (AVX512-BF16 or AMX).

    oneDNN then runs CPU autocast's bf16 kernels several times faster than emulated bf16; without
    these instructions CPU bf16 is slower than float32.
    """
    import torch

    cpu = torch.cpu
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own CPUID probes
    return torch.backends.mkldnn.is_available() and any(bool(getattr(cpu, p, lambda: False)()) for p in probes)


def _native_bf16(device: Any) -> bool:
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return device.type == "cpu" and cpu_has_native_bf16()


def check_training_precision(precision: str, device: Any) -> None:
    """Refuse a training precision that ``device`` cannot run natively.

    Raises:
        ConfigError: ``bf16`` on a GPU without native bf16 (pre-Ampere) or on a CPU without
            AVX512-BF16 / AMX, where emulated bf16 is several times slower than float32: say so
            instead of training slowly. (``auto`` is never refused: it falls back to float32.)
    """
    import torch

    device = torch.device(device)
    if precision != "bf16" or _native_bf16(device):
        return
    if device.type == "cuda":
        raise ConfigError(
            f"optim.precision=bf16, but {torch.cuda.get_device_name(device)} has no native bf16 (it needs an "
            "Ampere or newer GPU); set optim.precision=fp32 (or auto)"
        )
    raise ConfigError(
        "optim.precision=bf16, but this CPU has no native bf16 (AVX512-BF16 or AMX instructions); "
        "set optim.precision=fp32 (or auto, which picks bf16 only where it runs natively)"
    )


def training_autocast_dtype(precision: str, device: Any) -> Any:
    """The autocast dtype a training step runs in on ``device``, or ``None`` for full float32.

    ``bf16``: bfloat16 (refused by :func:`check_training_precision` where it is not native);
    ``auto``: bfloat16 where ``device`` runs it natively (an Ampere or newer GPU, a CPU with
    AVX512-BF16 or AMX), float32 elsewhere; ``fp32``: float32.
    """
    import torch

    device = torch.device(device)
    if precision == "bf16" or (precision == "auto" and _native_bf16(device)):
        return torch.bfloat16
    return None
