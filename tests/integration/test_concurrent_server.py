"""Several processes on one collection of a Milvus server: two ingest, one searches, all at once.

Two spawned writer processes ingest disjoint sets of precomputed-vector records (``ingest()``,
small upsert batches) while a third process runs hierarchical searches in a loop until both writers
are done, checking every result as it arrives. At the end every row exists exactly once, every
process exited cleanly, and the searcher saw the collection grow under it (searches really ran
during the writes). Child tracebacks are sent back to the test and shown in its failure message.

The overlap is an event, not a timing: each writer holds its source half-way until the searcher
has searched a few times among the rows written so far, then writes the rest under the searches.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from collection_rows import unit

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.data import EmbeddingRecord
from hivlp_milvus.ids import row_id
from hivlp_milvus.model.embedding import HierarchicalEmbedding

pytestmark = pytest.mark.integration

LOW, HIGH = 16, 64
WRITERS, PER_WRITER = 2, 600
LIMIT, COARSE = 5, 20
TIMEOUT_S = 180.0


def _records(writer: int) -> Iterator[EmbeddingRecord]:
    """Writer ``writer``'s rows: the same every time (seeded), keys disjoint from the other writer's."""
    rng = np.random.default_rng(1000 + writer)
    for i in range(PER_WRITER):
        modality = "image" if i % 2 else "text"
        yield EmbeddingRecord(
            f"w{writer}-{i:04d}",
            modality,
            unit(rng.standard_normal(LOW)),
            unit(rng.standard_normal(HIGH)),
            attributes={"writer": writer},
        )


def _all_records() -> dict[int, EmbeddingRecord]:
    return {row_id(r.id, r.modality): r for w in range(WRITERS) for r in _records(w)}


# -- the child processes (spawned: module-level functions, everything passed as plain values) ------


def _child(role: str, results: Any, go: Any, body: Any) -> None:
    """Wait until every child is ready (the ``go`` barrier), run ``body``; any exception goes back as text."""
    try:
        go.wait(TIMEOUT_S)
        results.put(("done", role, body()))
    except BaseException:
        results.put(("error", role, traceback.format_exc()))
        raise


def _writer(
    writer: int, uri: str, token: str, name: str, results: Any, go: Any, create: bool = False, midway: Any = None
) -> None:
    def body() -> dict[str, Any]:
        from hivlp_milvus.ingest import ingest

        def held() -> Iterator[EmbeddingRecord]:
            for i, record in enumerate(_records(writer)):
                # Half-way, wait until searches ran among the rows so far (``midway``, set by the searcher).
                if midway is not None and i == PER_WRITER // 2 and not midway.wait(TIMEOUT_S):
                    raise TimeoutError("the searcher never searched a partly written collection")
                yield record

        report = ingest(held(), uri=uri, token=token or None, collection_name=name, write_batch_rows=25,
                        create=create, expected_rows=WRITERS * PER_WRITER, progress=False)  # fmt: skip
        return report.to_dict()

    _child(f"writer-{writer}", results, go, body)


def _check_hits(res: Any, queries: list[EmbeddingRecord], modality: str | None, rows: dict) -> int:
    """Assert one search result is well formed; returns how many queries found their own row."""
    assert isinstance(res, list)
    assert len(res) == len(queries)
    assert set(res.timings) >= {"coarse_s", "fine_s", "total_s"}
    found = 0
    for query, hits in zip(queries, res, strict=True):
        assert len(hits) <= LIMIT
        ids = [h["id"] for h in hits]
        assert len(set(ids)) == len(ids), f"duplicate hits {ids}"
        distances = [h["distance"] for h in hits]
        assert distances == sorted(distances, reverse=True), distances
        assert all(d <= 1.0 + 1e-4 for d in distances), distances  # unit vectors: IP <= 1
        for hit in hits:
            row = rows.get(hit["id"])
            assert row is not None, f"hit {hit['id']} is not a row any writer wrote"
            assert hit["entity"]["key"] == row.id
            assert hit["entity"]["modality"] == row.modality
            assert modality in (None, row.modality)
        own = row_id(query.id, query.modality)
        if own in ids:  # a stored row is its own best match, exactly
            assert ids[0] == own, (query.id, ids)
            assert distances[0] == pytest.approx(1.0, abs=1e-4)
            found += 1
    return found


def _searcher(uri: str, token: str, name: str, results: Any, go: Any, writers_done: Any, midway: Any) -> None:
    def body() -> dict[str, Any]:
        coll = HierarchicalCollection.open(name, uri=uri, token=token or None)
        rows = _all_records()
        records = list(rows.values())
        rng = np.random.default_rng(7)
        stats: dict[str, Any] = {"searches": 0, "counts_during_writes": [], "self_found": 0}
        modalities = (None, "image", "text")

        def search(queries: list[EmbeddingRecord], modality: str | None) -> int:
            q = HierarchicalEmbedding(np.stack([r.vec_low for r in queries]), np.stack([r.vec_high for r in queries]))
            res = coll.hierarchical_search(q, limit=LIMIT, coarse_limit=COARSE, modality=modality)
            return _check_hits(res, queries, modality, rows)

        while not writers_done.is_set():
            count = coll.count()
            assert count >= max(stats["counts_during_writes"], default=0), "the row count went down"
            stats["counts_during_writes"].append(count)
            queries = [records[i] for i in rng.choice(len(records), size=2, replace=False)]
            stats["self_found"] += search(queries, modalities[stats["searches"] % 3])
            stats["searches"] += 1
            if stats["searches"] >= 3 and any(0 < c < len(rows) for c in stats["counts_during_writes"]):
                midway.set()  # the writers may finish now
        # Both writers are done: now every row must be found as its own best match.
        stats["final_found"] = search([records[i] for i in rng.choice(len(records), size=20, replace=False)], None)
        return stats

    _child("searcher", results, go, body)


# -- the test ---------------------------------------------------------------------------------------


def _run_children(procs: list[Any], results: Any, go: Any, *releases: Any) -> tuple[dict, list[str]]:
    """Start the children (they begin together, at the ``go`` barrier), collect their results (or tracebacks)."""
    for p in procs:
        p.start()
    done: dict[str, Any] = {}
    errors: list[str] = []
    deadline = time.monotonic() + TIMEOUT_S
    while len(done) < len(procs) and not errors and time.monotonic() < deadline:
        try:
            kind, role, payload = results.get(timeout=0.5)
        except queue.Empty:
            # Died without reporting (e.g. killed): no traceback to show.
            errors += [
                f"{p.name} exited with {p.exitcode} before reporting"
                for p in procs
                if p.exitcode is not None and p.name not in done
            ]
            continue
        if kind == "done":
            done[role] = payload
            if all(f"writer-{w}" in done for w in range(WRITERS)):
                releases[0].set()  # writers_done
        else:
            errors.append(f"--- {role} failed:\n{payload}")
    if len(done) < len(procs) and not errors:
        errors.append(f"no result within {TIMEOUT_S:.0f} s from {sorted({p.name for p in procs} - set(done))}")
    go.abort()  # release anyone still waiting, so they can exit
    for event in releases:
        event.set()
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.terminate()
            p.join(timeout=10)
            errors.append(f"{p.name} did not exit and was terminated")
        elif p.exitcode != 0 and not errors:
            errors.append(f"{p.name} exited with {p.exitcode}")
    return done, errors


def test_two_writers_and_a_searcher_in_parallel(milvus_server: Any) -> None:
    uri, token = milvus_server.uri, milvus_server.token
    name = f"concurrent_{uuid.uuid4().hex[:10]}"
    coll = HierarchicalCollection.create(
        name, uri=uri, token=token or None, low_dim=LOW, high_dim=HIGH, expected_rows=WRITERS * PER_WRITER
    )
    ctx = mp.get_context("spawn")
    results, go, writers_done, midway = ctx.Queue(), ctx.Barrier(WRITERS + 1), ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(target=_writer, args=(w, uri, token, name, results, go, False, midway), name=f"writer-{w}")
        for w in range(WRITERS)
    ]
    searcher_args = (uri, token, name, results, go, writers_done, midway)
    procs.append(ctx.Process(target=_searcher, args=searcher_args, name="searcher"))
    try:
        done, errors = _run_children(procs, results, go, writers_done, midway)
        assert not errors, "\n".join(errors)

        for w in range(WRITERS):
            report = done[f"writer-{w}"]
            assert report["failed"] == [], report["failed"][:5]
            assert (report["inserted"], report["updated"]) == (PER_WRITER, 0), report

        # 1,200 rows: one query returns them all (Milvus caps a query's limit at 16,384).
        ids = [r["id"] for r in coll.client.query(name, filter="id >= 0", output_fields=["id"], limit=16384)]
        assert len(ids) == WRITERS * PER_WRITER, "a row is missing or stored twice"
        assert set(ids) == set(_all_records())

        stats = done["searcher"]
        counts = stats["counts_during_writes"]
        print(f"searches during the writes: {stats['searches']}, row counts seen {counts[0]} .. {counts[-1]}")
        assert stats["searches"] >= 3
        assert any(0 < c < WRITERS * PER_WRITER for c in counts), f"no search ran while rows arrived: {counts}"
        assert stats["final_found"] == 20  # after the writes every sampled row is its own top hit
    finally:
        coll.drop()


def test_two_ingests_creating_the_same_new_collection_at_once(milvus_server: Any) -> None:
    """Both writers find no collection and create it at the same moment: one wins, the other opens it.

    Before the fix, one of the two failed every time ("collection already exists", the Lite
    server's "File exists", or a SchemaMismatchError on the half-made collection without its
    partitions).
    """
    uri, token = milvus_server.uri, milvus_server.token
    name = f"race_{uuid.uuid4().hex[:10]}"
    ctx = mp.get_context("spawn")
    results, go, writers_done = ctx.Queue(), ctx.Barrier(WRITERS), ctx.Event()
    procs = [
        ctx.Process(target=_writer, args=(w, uri, token, name, results, go, True), name=f"writer-{w}")
        for w in range(WRITERS)
    ]
    try:
        done, errors = _run_children(procs, results, go, writers_done)
        assert not errors, "\n".join(errors)
        for w in range(WRITERS):
            assert (done[f"writer-{w}"]["inserted"], done[f"writer-{w}"]["failed"]) == (PER_WRITER, [])
        coll = HierarchicalCollection.open(name, uri=uri, token=token or None)
        coll.flush()
        assert coll.count() == WRITERS * PER_WRITER
    finally:
        from pymilvus import MilvusClient

        client = MilvusClient(uri=uri, token=token or "")
        if client.has_collection(name):
            client.drop_collection(name)
