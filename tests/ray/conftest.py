"""Ray fixtures: every module shares the session's one cluster (Ray start-up costs ~10-40 s here).

Four logical CPUs on two real cores: two Ray Train workers hold one CPU each, and Ray Data's
image-decoding tasks need CPUs of their own to be scheduled at all (they time-share the cores).
Worker processes inherit this process's environment (``OMP_NUM_THREADS=1``, ``HF_HUB_OFFLINE=1``
from ``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def ray_cluster(ray_session: None) -> None:
    """The session's Ray cluster (``tests/conftest.py``), under the name these modules use."""


@pytest.fixture(scope="module")
def serve_collection() -> Callable[..., tuple[Any, Any]]:
    """``serve_collection(tmp, records, name, uri, config="micro") -> (model, ingest report)``, for a Serve app.

    Saves the untrained ``config`` model (vocabulary from the captions, seed 0) to ``tmp / "model"``
    and ingests ``records`` into collection ``name`` at ``uri`` (nothing may fail), then closes the
    client (and releases a Lite ``.db``) so the app's Searcher replica can open the collection.
    """
    from milvus_lite.server_manager import server_manager_instance

    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.connection import is_server_uri
    from hivlp_milvus.ingest import ingest
    from hivlp_milvus.model import create_model

    def make(tmp: Path, records: list[Any], name: str, uri: str, config: Any = "micro") -> tuple[Any, Any]:
        model = create_model(config, texts=[c for r in records for c in r.captions], seed=0)
        model.save_pretrained(tmp / "model")
        col = HierarchicalCollection.create(name, uri=uri, model=model)
        report = ingest(records, collection=col, model=model, progress=False)
        assert not report.failed, str(report)
        col.client.close()
        if not is_server_uri(uri):
            server_manager_instance.release_server(uri)  # Milvus Lite is single-process
        return model, report

    return make
