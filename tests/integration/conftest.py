"""The integration suite talks to a real Milvus over the network, exactly as a deployment does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from milvus_server import MilvusEndpoint, milvus_endpoint


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[MilvusEndpoint]:
    with milvus_endpoint() as endpoint:
        yield endpoint
