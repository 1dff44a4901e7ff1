"""The browser test may skip on a developer's machine (no Chromium), never under CI.

``.ci/run`` sets ``HIVLP_REQUIRE_BROWSER=1`` after trying to install Chromium; with it, a skip of
any test in this directory (setup, call or collection) is reported as a failure that carries the
skip's reason, so a CI run cannot pass without the browser test having run.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

REQUIRE_ENV = "HIVLP_REQUIRE_BROWSER"


def _required() -> bool:
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes")


def _fail_instead_of_skip(report: Any) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"{REQUIRE_ENV}=1 (set by .ci/run): the browser test must run here, but it skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _required() and not hasattr(report, "wasxfail"):
        _fail_instead_of_skip(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _required():
        _fail_instead_of_skip(report)
