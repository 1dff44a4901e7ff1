"""How many Ray Data encoder actors to start, and what each asks Ray for, from what is *free*.

Asking for a whole GPU per actor while Ray Serve holds the GPU leaves the actor pool pending
forever. So the request is sized from ``ray.available_resources()`` (a snapshot: another job can
still take them): whole GPUs while enough are free, a fraction of one when only a fraction is, and
a :class:`ConfigError` saying what holds them when none is free.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from hivlp_milvus.errors import ConfigError

# Ray schedules GPU fractions in 1/10,000ths; two decimals keep a sum of shares under the free amount.
_GPU_STEP = 0.01


@dataclass(frozen=True)
class EncoderPlan:
    """The encoder actor pool: at most ``actors`` actors, each asking for ``num_gpus`` and ``num_cpus``."""

    actors: int
    num_gpus: float
    num_cpus: float = 1.0

    @property
    def device(self) -> str:
        """Where each actor encodes: ``cuda`` when it holds a GPU share, else ``cpu``."""
        return "cuda" if self.num_gpus > 0 else "cpu"


def plan_encoders(
    available: Mapping[str, float],
    total: Mapping[str, float],
    *,
    device: str = "auto",
    num_workers: int | None = None,
) -> EncoderPlan:
    """Size the encoder pool from the free (``ray.available_resources()``) and total resources.

    ``device="auto"`` encodes on GPUs when the cluster has any. ``num_workers`` caps the actors
    (default: one per free GPU, else half the free CPUs); GPU actors share the free GPUs when it
    exceeds them, and one actor takes a fraction when only a fraction of a GPU is free.

    Raises:
        ConfigError: a GPU encode was asked for and no GPU share is free, or no CPU is free.
    """
    free_cpus = float(available.get("CPU", 0.0))
    if free_cpus < 1:
        raise ConfigError(
            f"no CPU is free in the Ray cluster ({free_cpus:g} of {float(total.get('CPU', 0)):g}) for an encoder "
            "actor; wait for running jobs to finish or add nodes"
        )
    want_gpu = device.startswith("cuda") or (device == "auto" and float(total.get("GPU", 0)) > 0)
    if not want_gpu:
        return EncoderPlan(actors=num_workers or max(1, int(free_cpus) // 2), num_gpus=0.0)
    total_gpus, free_gpus = float(total.get("GPU", 0.0)), float(available.get("GPU", 0.0))
    if total_gpus <= 0:
        raise ConfigError(
            f"device={device!r} but the Ray cluster has no GPU; use device='cpu' (--device cpu) or add a GPU node"
        )
    if free_gpus < _GPU_STEP:
        raise ConfigError(
            f"the Ray cluster has {total_gpus:g} GPU(s) but none is free (Ray Serve replicas or a training "
            "run hold them), so encoder actors would wait forever; stop what holds them, give Serve "
            "fractional GPUs, or encode on CPUs with device='cpu' (--device cpu)"
        )
    # One CPU per actor, and one left for Ray Data's read / explode tasks.
    cpu_cap = max(1, int(free_cpus) - 1)
    # Every actor gets at least one step of a GPU, or fewer actors are started.
    steps = math.floor(round(free_gpus / _GPU_STEP, 6))
    actors = max(1, min(int(free_gpus) if num_workers is None else num_workers, cpu_cap, steps))
    share = min(1.0, math.floor(round(steps / actors, 6)) * _GPU_STEP)
    return EncoderPlan(actors=actors, num_gpus=round(share, 2))
