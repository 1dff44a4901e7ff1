"""Writing rows: upsert requests of a fixed size, on a background thread while the next batch encodes.

The queue between the encoder and the writer is bounded, so a slow Milvus throttles the encoder
instead of letting encoded batches pile up in memory. The report counts inserted vs updated rows
(existing ids are looked up first, or known from this run when it started on an empty
collection); the write itself is an upsert either way, which is what makes re-runs idempotent.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hivlp_milvus.ingest.report import IngestReport

if TYPE_CHECKING:
    from hivlp_milvus.collection import HierarchicalCollection

# Encoded batches waiting for the writer. Two is enough to keep the writer busy while the encoder
# works on the next batch, and bounds the memory held by a slow Milvus.
_QUEUE_BATCHES = 2


def write_rows(
    collection: HierarchicalCollection, rows: list[dict[str, Any]], seen: RunIds | None = None
) -> tuple[int, int]:
    """Upsert ``rows`` in one request; returns ``(inserted, updated)``.

    Existing ids are looked up first so the report can tell new rows from overwritten ones (from
    ``seen`` instead of Milvus when the run started on an empty collection). The write itself is
    an upsert either way, which is what makes re-runs and resumes idempotent.
    """
    if not rows:
        return 0, 0
    by_id = {row["id"]: row for row in rows}
    if len(by_id) != len(rows):
        # The same key twice in one request: keep the last, as sequential upserts would.
        rows = list(by_id.values())
    ids = list(by_id)
    present = seen.present(ids) if seen is not None and seen.active else None
    if present is None:
        present = collection.existing_ids(ids)
    collection.upsert(rows, validate=False)  # each row was checked when it was built (rows.py)
    if seen is not None:
        seen.add(ids)
    return len(rows) - len(present), len(present)


class RunIds:
    """The ids this run wrote, when it started on an empty collection.

    Then a row exists iff this run wrote it, so the inserted/updated split needs no ``existing_ids``
    round trip per request (measured: that lookup is ~25% of a Milvus Lite write). Past ``limit``
    ids (~60 MB of Python ints) it gives up and Milvus is asked again. Only the report depends on
    it: the writes are upserts regardless. It assumes no other writer adds the same keys meanwhile.
    """

    def __init__(self, active: bool, limit: int = 1_000_000) -> None:
        self.active = active
        self.limit = limit
        self._ids: set[int] = set()

    def present(self, ids: list[int]) -> set[int]:
        return {i for i in ids if i in self._ids}

    def add(self, ids: list[int]) -> None:
        if not self.active:
            return
        self._ids.update(ids)
        if len(self._ids) > self.limit:
            self.active = False
            self._ids = set()


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(desc="ingest", unit="row", dynamic_ncols=True)


class Writer:
    """Writes rows in requests of ``batch_rows``; on a background thread when pipelined.

    The queue is bounded so a slow Milvus throttles the encoder instead of letting encoded batches
    pile up in memory. A write error stops the run: it is re-raised in the calling thread at the
    next hand-off (or at :meth:`close`).
    """

    def __init__(
        self,
        collection: HierarchicalCollection,
        batch_rows: int,
        report: IngestReport,
        bar: Any,
        *,
        pipelined: bool = True,
        seen: RunIds | None = None,
    ) -> None:
        self.collection = collection
        self.seen = seen
        self.batch_rows = max(int(batch_rows), 1)
        self.report = report
        self.bar = bar
        self._buffer: list[dict[str, Any]] = []
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=_QUEUE_BATCHES)
        self._thread: threading.Thread | None = None
        if pipelined:
            self._thread = threading.Thread(target=self._run, name="hivlp-ingest-writer", daemon=True)
            self._thread.start()

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
        if self._thread is not None:
            self._put(None)
            self._thread.join()
        self._raise_if_failed()

    def abort(self) -> None:
        """Stop without writing what is still queued (the caller is raising)."""
        self._stop.set()
        self._buffer = []
        if self._thread is None:
            return
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        with contextlib.suppress(queue.Full):  # the queue was just drained
            self._queue.put_nowait(None)
        # The batch in flight finishes (or fails) on its own; don't hang the caller on a dead server.
        self._thread.join(timeout=60)

    def _hand_off(self, batch: list[dict[str, Any]]) -> None:
        if self._thread is None:
            self._write(batch)
        else:
            self._put(batch)

    def _put(self, item: list[dict[str, Any]] | None) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None or self._stop.is_set():
                return
            try:
                self._write(batch)
            except BaseException as exc:  # handed to the calling thread, which re-raises it
                self._error = exc
                return

    def _write(self, batch: list[dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        inserted, updated = write_rows(self.collection, batch, self.seen)
        self.report.write_seconds += time.perf_counter() - t0
        self.report.inserted += inserted
        self.report.updated += updated
        self.report.rows_written += inserted + updated
        self.bar.update(inserted + updated)


@contextlib.contextmanager
def writing(
    collection: HierarchicalCollection, batch_rows: int, report: IngestReport, *, progress: bool, pipelined: bool
) -> Iterator[Writer]:
    """A :class:`Writer` with its progress bar: closed (everything written) on success, aborted on error."""
    bar = progress_bar(progress)
    writer = Writer(
        collection, batch_rows, report, bar, pipelined=pipelined, seen=RunIds(active=collection.count() == 0)
    )
    try:
        yield writer
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
