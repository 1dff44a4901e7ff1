"""Fixtures shared by every test directory."""

from __future__ import annotations

import os

import pytest

# Two cores are shared by torch, Ray and Milvus Lite in one run: keep torch from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no code path may reach a model hub from the tests


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)


def pytest_report_header(config: pytest.Config) -> str:
    from milvus_server import describe_choice

    return f"hivlp integration Milvus: {describe_choice()}"
