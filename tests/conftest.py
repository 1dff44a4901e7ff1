"""Fixtures shared by every test directory."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Two cores are shared by torch, Ray and Milvus Lite in one run: keep torch from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no code path may reach a model hub from the tests

# The shared helper modules assert on the tests' behalf: rewrite their asserts as in test modules,
# so a failure there shows both sides too (registered before any test module imports them).
pytest.register_assert_rewrite("cli_helpers", "collection_rows", "model_helpers", "serving_helpers", "shared_tests")


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One Ray cluster for every test that needs Ray (Train, Data, Serve, the browser test).

    Starting a cluster costs 10-40 s here, and starting several one after another in one process
    has timed out the raylet's registration on a loaded 2-core machine. Four logical CPUs on two
    cores: two Ray Train workers hold one CPU each and Ray Data's decode tasks need their own.
    Modules that deploy Serve apps shut Serve down, never Ray.
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


def pytest_report_header(config: pytest.Config) -> str:
    from milvus_server import describe_choice

    return f"hivlp integration Milvus: {describe_choice()}"
