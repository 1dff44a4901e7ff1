"""GPU requests of a training run: busy GPUs are an error (Ray Train would wait forever), missing ones a warning.

The resource figures are what ``ray.cluster_resources()`` / ``ray.available_resources()`` report
on a GPU cluster; this machine has none, so the decision is tested on the figures themselves.
"""

from __future__ import annotations

import re

import pytest

from training.config import load_config
from training.trainer import gpu_shortfall


def test_enough_free_gpus_start() -> None:
    assert gpu_shortfall(total=2, free=2, needed=2) is None
    assert gpu_shortfall(total=1, free=0.5, needed=0.5) is None


@pytest.mark.parametrize(("total", "free", "needed"), [(1, 0, 1), (1, 0.5, 1), (4, 1, 2)])
def test_gpus_held_by_another_job_are_busy(total: float, free: float, needed: float) -> None:
    message = gpu_shortfall(total, free, needed)
    assert message is not None
    assert message.startswith("busy:")
    assert "serve shutdown" in message
    assert "scaling.use_gpu=false" in message
    # Every override the message advises is one the config accepts.
    for override in re.findall(r"\b(?:scaling|optim)\.[\w.]+=[\w.]+", message):
        load_config("quickstart", ["scaling.use_gpu=true", override])


@pytest.mark.parametrize(("total", "free", "needed"), [(0, 0, 1), (1, 1, 2)])
def test_gpus_the_cluster_lacks_are_missing(total: float, free: float, needed: float) -> None:
    message = gpu_shortfall(total, free, needed)
    assert message is not None
    assert message.startswith("missing:")
