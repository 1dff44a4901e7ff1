"""One Ray cluster per test module: Ray start-up costs ~10-40 s on a shared 2-core machine.

Four logical CPUs on two real cores: two Ray Train workers hold one CPU each, and Ray Data's
image-decoding tasks need CPUs of their own to be scheduled at all (they time-share the cores).
Worker processes inherit this process's environment (``OMP_NUM_THREADS=1``, ``HF_HUB_OFFLINE=1``
from ``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    import ray

    if ray.is_initialized():  # left over by a module that did not shut its cluster down
        ray.shutdown()
    ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()
