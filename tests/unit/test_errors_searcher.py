"""The Searcher tells an outage from other errors by type, against a real ``milvus-lite server``.

The deployment's class is used directly (``Searcher.func_or_class``, no Ray cluster): the point is
its error handling, which runs the same inside a replica.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import ConnectionOptions
from hivlp_milvus.errors import CollectionNotFoundError, FilterError, MilvusUnavailableError
from hivlp_milvus.ids import row_id
from hivlp_milvus.model import create_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from milvus_server import LiteServer  # noqa: E402

CAPTIONS = ["a red circle", "a blue square", "two green triangles"]


def _rows(model: Any) -> list[dict[str, Any]]:
    emb = model.embed_texts(CAPTIONS).numpy()
    return [
        {
            "id": row_id(str(i), "text"),
            "key": str(i),
            "modality": "text",
            "reference": caption,
            "attributes": {},
            "vec_low": emb.low[i],
            "vec_high": emb.high[i],
        }
        for i, caption in enumerate(CAPTIONS)
    ]


def test_searcher_maps_errors_by_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.encoders
    import serving.searcher as searcher_module

    monkeypatch.setattr(searcher_module, "RECONNECT_EVERY_S", 0.0)  # reconnect on the next call
    # The replica's thread count comes from its Ray context; asking for it here would start Ray.
    monkeypatch.setattr(serving.encoders, "torch_threads_for_replica", lambda: 1)
    model = create_model("micro", texts=CAPTIONS, seed=0)
    model.save_pretrained(tmp_path / "model")
    server = LiteServer(str(tmp_path / "data")).start()
    try:
        options = ConnectionOptions(uri=server.uri, retries=1)
        col = HierarchicalCollection.create("s", connection=options, model=model)
        rows = _rows(model)
        col.upsert(rows)
        searcher = searcher_module.Searcher.func_or_class(
            str(tmp_path / "model"), "./ignored.db", "s", connection=options
        )
        low, high = np.asarray(rows[1]["vec_low"]), np.asarray(rows[1]["vec_high"])

        assert searcher.search(low, high, limit=1)["hits"][0]["key"] == "1"
        # The user's bad filter is their error (422), and Milvus stays "up".
        with pytest.raises(FilterError):
            searcher.search(low, high, limit=1, filter="key ==== 1")
        assert searcher.ping()["count"] == len(rows)

        server.kill()  # an outage: typed, remembered, and a quick 503 on every call
        with pytest.raises(MilvusUnavailableError, match="stopped answering") as info:
            searcher.search(low, high, limit=1)
        assert info.value.code == 2
        with pytest.raises(MilvusUnavailableError, match="unreachable"):  # remembered: reconnecting
            searcher.ping()

        server.start()  # same port and data: the replica reconnects (and reloads) by itself
        assert searcher.search(low, high, limit=1)["hits"][0]["key"] == "1"

        # A collection released under the replica (as a restarted Milvus forgets loads) cannot answer
        # until reloaded: an outage of that collection, healed by the reconnect.
        options.connect().release_collection("s")
        with pytest.raises(MilvusUnavailableError) as info:
            searcher.search(low, high, limit=1)
        assert info.value.code == 101
        assert searcher.search(low, high, limit=1)["hits"][0]["key"] == "1"

        # A collection dropped under the replica is "not found", not an outage.
        HierarchicalCollection.open("s", connection=options).drop()
        with pytest.raises(CollectionNotFoundError):
            searcher.search(low, high, limit=1)
        with pytest.raises(CollectionNotFoundError, match="no longer exists"):  # /healthz says so, not "ok"
            searcher.ping()
        searcher.check_health()  # but the replica is healthy: replacing it would not bring the collection back
    finally:
        server.stop()
