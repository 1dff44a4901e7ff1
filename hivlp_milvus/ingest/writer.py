"""Writing rows: upsert requests of a fixed size, on a background thread while the next batch encodes.

The report counts inserted vs updated rows (existing ids are looked up first, or known from this
run when it started on an empty collection); the write itself is an upsert either way, which is
what makes re-runs idempotent.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from hivlp_milvus.ingest.report import IngestReport

if TYPE_CHECKING:
    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.ingest.options import IngestOptions

# Requests waiting for the writer. Two keep it busy while the encoder works on the next batch,
# and bound the memory a slow Milvus can make the encoder fill.
_QUEUE_BATCHES = 2


class RunIds:
    """Which ids are stored: while ``active``, the ids this run wrote, else ``collection.existing_ids``.

    Active when the run started on an empty collection: then a row exists iff this run wrote it, so
    the inserted/updated split needs no ``existing_ids`` round trip per request (~25% of a Milvus
    Lite write). Past ``limit`` ids (~60 MB) Milvus is asked again. Only the report and
    ``skip_existing`` depend on it (assuming no other writer adds the same keys).
    """

    def __init__(self, collection: HierarchicalCollection, active: bool, limit: int = 1_000_000) -> None:
        self.collection, self.active, self.limit = collection, active, limit
        self._ids: set[int] = set()

    def present(self, ids: list[int]) -> set[int]:
        """The subset of ``ids`` already stored."""
        return {i for i in ids if i in self._ids} if self.active else self.collection.existing_ids(ids)

    def add(self, ids: list[int]) -> None:
        if not self.active:
            return
        self._ids.update(ids)
        if len(self._ids) > self.limit:
            self.active = False
            self._ids = set()


class Writer:
    """Writes rows in requests of ``batch_rows``, counted in ``report``; on a background thread when pipelined.

    A write error stops the run: no later request is written, and the error is re-raised in the
    calling thread at the next hand-off (or at :meth:`close`).
    """

    def __init__(
        self,
        collection: HierarchicalCollection,
        batch_rows: int,
        report: IngestReport,
        bar: Any = None,
        *,
        pipelined: bool = True,
        seen: RunIds | None = None,
    ) -> None:
        self.collection, self.report, self.bar = collection, report, bar
        self.seen = seen or RunIds(collection, active=False)
        self.batch_rows = max(int(batch_rows), 1)
        self._buffer: list[dict[str, Any]] = []
        self._failed = False
        self._pending: deque[Future[None]] = deque()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hivlp-ingest-writer") if pipelined else None

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Buffer ``rows``; every full request is handed to the writer."""
        self._buffer.extend(rows)
        while len(self._buffer) >= self.batch_rows:
            batch = self._buffer[: self.batch_rows]
            del self._buffer[: self.batch_rows]
            self._hand_off(batch)

    def close(self) -> None:
        """Write what is buffered, wait for the writer, and re-raise its error if it had one."""
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._hand_off(batch)
        self._wait(keep=0)
        if self._pool is not None:
            self._pool.shutdown()

    def abort(self) -> None:
        """Stop without writing what is still queued (the caller is raising)."""
        self._buffer, self._failed = [], True
        if self._pool is not None:
            # The request in flight finishes (or fails) on its own; don't hang the caller on a dead server.
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _hand_off(self, batch: list[dict[str, Any]]) -> None:
        if self._pool is None:
            self._write(batch)
            return
        self._pending.append(self._pool.submit(self._write, batch))
        self._wait(keep=_QUEUE_BATCHES)

    def _wait(self, keep: int) -> None:
        # A full queue makes the encoder wait (a slow Milvus throttles it); a finished request's
        # error is raised now, not after the next batch is encoded.
        while len(self._pending) > keep or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if self._failed:  # an earlier request failed: the run stops there
            return
        t0 = time.perf_counter()
        # The same key twice in one request: keep the last, as sequential upserts would.
        by_id = {row["id"]: row for row in batch}
        try:
            present = self.seen.present(list(by_id))
            self.collection.upsert(list(by_id.values()), validate=False)  # each row was checked when built (rows.py)
        except BaseException:
            self._failed = True
            raise
        self.seen.add(list(by_id))
        self.report.write_seconds += time.perf_counter() - t0
        self.report.inserted += len(by_id) - len(present)
        self.report.updated += len(present)
        self.report.rows_written += len(by_id)
        if self.bar is not None:
            self.bar.update(len(by_id))


@contextlib.contextmanager
def writing(collection: HierarchicalCollection, report: IngestReport, options: IngestOptions) -> Iterator[Writer]:
    """A :class:`Writer` with its progress bar: closed (everything written) on success, aborted on error.

    Requests are ``options.write_batch_rows`` rows, else the collection's ``max_rows_per_request``.
    """
    from tqdm.auto import tqdm

    bar = tqdm(desc="ingest", unit="row", dynamic_ncols=True, disable=not options.progress)
    writer = Writer(
        collection,
        options.write_batch_rows or collection.max_rows_per_request,
        report,
        bar,
        pipelined=options.pipeline,
        seen=RunIds(collection, active=collection.count() == 0),
    )
    try:
        yield writer
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
