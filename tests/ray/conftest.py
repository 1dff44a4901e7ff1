"""Ray fixtures: every module shares the session's one cluster (Ray start-up costs ~10-40 s here).

Four logical CPUs on two real cores: two Ray Train workers hold one CPU each, and Ray Data's
image-decoding tasks need CPUs of their own to be scheduled at all (they time-share the cores).
Worker processes inherit this process's environment (``OMP_NUM_THREADS=1``, ``HF_HUB_OFFLINE=1``
from ``tests/conftest.py``).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_cluster(ray_session: None) -> None:
    """The session's Ray cluster (``tests/conftest.py``), under the name these modules use."""
