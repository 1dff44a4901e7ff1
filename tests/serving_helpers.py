"""Helpers shared by the Ray Serve test modules (tests/ray/test_serving.py, tests/ray/test_faults.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(what: str, check: Callable[[], Any], deadline_s: float) -> Any:
    """Poll ``check`` until it returns something truthy and return that; fail after ``deadline_s``.

    The tests wait for an event (a batch formed, a replica replaced) rather than sleep a fixed time:
    the deadline only bounds a hang, so it can be generous on a loaded machine.
    """
    deadline = time.monotonic() + deadline_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.05)
    return value
