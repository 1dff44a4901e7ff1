"""The Searcher tells an outage from other errors by type, against a real ``milvus-lite server``.

The deployment's class is used directly (``Searcher.func_or_class``, no Ray cluster): the point is
its error handling, which runs the same inside a replica.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collection_rows import row
from milvus_server import LiteServer

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import ConnectionOptions
from hivlp_milvus.errors import CollectionNotFoundError, FilterError, MilvusUnavailableError
from hivlp_milvus.model import create_model

CAPTIONS = ["a red circle", "a blue square", "two green triangles"]


def _rows(model: Any) -> list[dict[str, Any]]:
    emb = model.embed_texts(CAPTIONS).numpy()
    return [row(str(i), "text", emb.low[i], emb.high[i], reference=c) for i, c in enumerate(CAPTIONS)]


def test_searcher_maps_errors_by_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import serving.encoders
    import serving.searcher as searcher_module

    monkeypatch.setattr(searcher_module, "RECONNECT_EVERY_S", 0.0)  # reconnect on the next call
    # The replica's thread count comes from its Ray context; asking for it here would start Ray.
    monkeypatch.setattr(serving.encoders, "torch_threads_for_replica", lambda: 1)
    model = create_model("micro", texts=CAPTIONS, seed=0)
    model.save_pretrained(tmp_path / "model")
    runner = asyncio.Runner()  # Searcher.search is a coroutine (it batches concurrent callers)
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

        def search(*args: Any, **kwargs: Any) -> Any:
            return runner.run(searcher.search(*args, **kwargs))

        assert search(low, high, limit=1)["hits"][0]["key"] == "1"
        # The user's bad filter is their error (422), and Milvus stays "up".
        with pytest.raises(FilterError):
            search(low, high, limit=1, filter="key ==== 1")
        assert searcher.ping()["count"] == len(rows)

        server.kill()  # an outage: typed, remembered, and a quick 503 on every call
        with pytest.raises(MilvusUnavailableError, match="stopped answering") as info:
            search(low, high, limit=1)
        assert info.value.code == 2
        with pytest.raises(MilvusUnavailableError, match="unreachable"):  # remembered: reconnecting
            searcher.ping()

        server.start()  # same port and data: the replica reconnects (and reloads) by itself
        assert search(low, high, limit=1)["hits"][0]["key"] == "1"

        # A collection released under the replica (as a restarted Milvus forgets loads) cannot answer
        # until reloaded: an outage of that collection, healed by the reconnect.
        options.connect().release_collection("s")
        with pytest.raises(MilvusUnavailableError) as info:
            search(low, high, limit=1)
        assert info.value.code == 101
        assert search(low, high, limit=1)["hits"][0]["key"] == "1"

        # A collection dropped under the replica is "not found", not an outage.
        HierarchicalCollection.open("s", connection=options).drop()
        with pytest.raises(CollectionNotFoundError):
            search(low, high, limit=1)
        with pytest.raises(CollectionNotFoundError, match="no longer exists"):  # /healthz says so, not "ok"
            searcher.ping()
        searcher.check_health()  # but the replica is healthy: replacing it would not bring the collection back
    finally:
        server.stop()
        runner.close()


def _batching_searcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **options: Any) -> tuple[Any, list[Any]]:
    """A Searcher over 60 text rows in Milvus Lite, and those rows (with their vectors)."""
    import serving.encoders
    import serving.searcher as searcher_module

    monkeypatch.setattr(serving.encoders, "torch_threads_for_replica", lambda: 1)
    captions = [f"{c} number {i}" for i in range(20) for c in CAPTIONS]
    model = create_model("micro", texts=captions, seed=0)
    model.save_pretrained(tmp_path / "model")
    emb = model.embed_texts(captions).numpy()
    rows = [
        row(str(i), "text", emb.low[i], emb.high[i], reference=c, attributes={"group": i % 3})
        for i, c in enumerate(captions)
    ]
    db = str(tmp_path / "b.db")
    HierarchicalCollection.create("b", uri=db, model=model).upsert(rows)
    searcher = searcher_module.Searcher.func_or_class(str(tmp_path / "model"), db, "b", **options)
    return searcher, rows


def test_concurrent_searches_are_batched_and_equal_single_client_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    searcher, rows = _batching_searcher(tmp_path, monkeypatch)
    # Three parameter groups: a batch only ever holds queries of one group.
    kinds = [
        {"limit": 5, "modality": "text"},
        {"limit": 3, "coarse_limit": 20, "modality": "all"},
        {"limit": 4, "filter": "key in {keys}", "filter_params": {"keys": [str(i) for i in range(0, 60, 2)]}},
    ]
    calls = [(rows[i], kinds[i % 3]) for i in range(0, 60, 2)]

    async def one(row: dict[str, Any], kw: dict[str, Any]) -> Any:
        return await searcher.search(np.asarray(row["vec_low"]), np.asarray(row["vec_high"]), **kw)

    async def sequential() -> list[Any]:
        return [await one(row, kw) for row, kw in calls]

    async def concurrent() -> list[Any]:
        return await asyncio.gather(*(one(row, kw) for row, kw in calls))

    alone = asyncio.run(sequential())
    assert searcher.batch_stats()["batches"] == len(calls)  # one client: one query per search
    together = asyncio.run(concurrent())
    stats = searcher.batch_stats()
    batches = stats["batches"] - len(calls)
    assert batches < len(calls) / 3, f"{len(calls)} concurrent queries ran in {batches} searches"
    assert max(r["batch_size"] for r in together) > 1
    for single, batched in zip(alone, together, strict=True):
        # Ids, order and fields are identical. Scores Milvus computes (the coarse ANN scores, and the
        # fine scores when a small collection is answered by one exact search) may round the last
        # float32 bit differently on Milvus' multi-query path.
        assert batched["plan"] == single["plan"]
        assert [_without_scores(h) for h in batched["hits"]] == [_without_scores(h) for h in single["hits"]]
        for key in ("score", "coarse_score"):
            pairs = [(h[key], s[key]) for h, s in zip(batched["hits"], single["hits"], strict=True)]
            assert all(a == pytest.approx(b, rel=1e-6, abs=1e-6) for a, b in pairs)
    filtered = [r for r, (_, kw) in zip(together, calls, strict=True) if "filter" in kw]
    assert filtered
    assert {h["key"] for r in filtered for h in r["hits"]} <= {str(i) for i in range(0, 60, 2)}


def _without_scores(hit: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in hit.items() if k not in ("score", "coarse_score")}


def test_a_failing_batch_fails_only_its_callers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hivlp_milvus.errors import DimensionMismatchError

    searcher, rows = _batching_searcher(tmp_path, monkeypatch)
    low, high = np.asarray(rows[4]["vec_low"]), np.asarray(rows[4]["vec_high"])

    async def run() -> list[Any]:
        return await asyncio.gather(
            searcher.search(low, high, limit=2),
            searcher.search(low, high, limit=2, filter="key ==== 1"),  # a group whose batch fails
            searcher.search(low[:-1], high, limit=2),  # wrong dims: never batched with good queries
            searcher.search(low, high, limit=2),
            searcher.search(low, high, limit=2, filter="key ==== 1"),
            return_exceptions=True,
        )

    good, bad_filter, bad_dims, good2, bad_filter2 = asyncio.run(run())
    assert good["hits"][0]["key"] == good2["hits"][0]["key"] == "4"
    assert isinstance(bad_filter, FilterError)
    assert isinstance(bad_filter2, FilterError)
    assert isinstance(bad_dims, DimensionMismatchError)


def test_batching_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    searcher, rows = _batching_searcher(tmp_path, monkeypatch, batch_queries=False)

    async def run() -> list[Any]:
        return await asyncio.gather(
            *(searcher.search(np.asarray(r["vec_low"]), np.asarray(r["vec_high"]), limit=3) for r in rows[:8])
        )

    results = asyncio.run(run())
    assert [r["batch_size"] for r in results] == [1] * 8
    assert [r["hits"][0]["key"] for r in results] == [str(i) for i in range(8)]
    assert searcher.batch_stats()["enabled"] is False


def test_batcher_serves_every_caller_and_survives_a_cancelled_one() -> None:
    from serving.search_batcher import QueryBatcher

    seen: list[list[int]] = []
    delay = {"s": 0.01}

    async def run_batch(key: Any, items: list[int]) -> list[int]:
        seen.append(list(items))
        await asyncio.sleep(delay["s"])
        return [key * 1000 + i for i in items]

    async def main() -> None:
        batcher = QueryBatcher(run_batch, max_batch_size=4, max_inflight=2)
        calls = [batcher.submit(i % 3, i) for i in range(50)]
        assert await asyncio.gather(*calls) == [(i % 3) * 1000 + i for i in range(50)]
        assert max(len(b) for b in seen) == 4  # capped, yet every caller was served
        assert all(len({i % 3 for i in b}) == 1 for b in seen)  # one key per batch
        assert batcher.items == 50
        assert batcher.batches < 50
        # A caller whose drain runs a batch holding others' queries goes away mid-batch: they still
        # get their answers. One slot: a's batch runs while b and c queue; then b's drain takes [2, 3].
        seen.clear()
        delay["s"] = 0.2
        one_slot = QueryBatcher(run_batch, max_batch_size=4, max_inflight=1)
        a = asyncio.ensure_future(one_slot.submit(0, 1))
        while not seen:
            await asyncio.sleep(0.001)
        b = asyncio.ensure_future(one_slot.submit(0, 2))
        c = asyncio.ensure_future(one_slot.submit(0, 3))
        while len(seen) < 2:
            await asyncio.sleep(0.001)
        assert seen == [[1], [2, 3]]
        b.cancel()  # mid-batch
        assert await a == 1
        assert await c == 3

    asyncio.run(main())
