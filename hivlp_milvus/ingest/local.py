"""The in-process driver: read → (skip existing) → encode → write, the write on a background thread.

Wall time is close to ``max(encode, write)`` when both sides leave the GIL (torch kernels, a Milvus
server across a socket: 1.06 s pipelined vs 1.77 s in line for 1,200 micro-model rows into a
``milvus-lite server``); with in-process Milvus Lite the two sides mostly take turns.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from hivlp_milvus.data.record import EmbeddingRecord
from hivlp_milvus.errors import ConfigError
from hivlp_milvus.ingest import rows
from hivlp_milvus.ingest.encode import Encoder
from hivlp_milvus.ingest.options import IngestOptions
from hivlp_milvus.ingest.report import IngestReport
from hivlp_milvus.ingest.setup import NEEDS_MODEL, estimate_rows, load_model, resolve_collection
from hivlp_milvus.ingest.writer import writing

if TYPE_CHECKING:
    from hivlp_milvus.collection import HierarchicalCollection


def run_local(
    dataset: Any, *, model: Any, collection: HierarchicalCollection | None, options: IngestOptions
) -> IngestReport:
    """Ingest ``dataset`` in this process; see :func:`hivlp_milvus.ingest` for the contract."""
    started = time.perf_counter()
    model = load_model(model, options.device)
    from hivlp_milvus.data import load_source

    source = load_source(dataset, image_root=options.image_root)
    records = iter(source)
    # Peek at the first record: it decides the dims of a collection created from BYO vectors, and
    # image/caption records without a model fail here rather than after a partial write.
    first = next(records, None)
    if first is not None:
        records = itertools.chain([first], records)
        if model is None and not isinstance(first, EmbeddingRecord):
            raise ConfigError(NEEDS_MODEL)
    coll = resolve_collection(collection, options, model=model, first=first, estimate=estimate_rows(source, first))
    report = IngestReport(collection=str(getattr(coll, "name", options.collection_name)))
    report.setup_seconds = time.perf_counter() - started
    if coll is None:  # empty source and no collection to write to: nothing to do
        report.add_source_report(source)
        return report

    low_dim, high_dim = int(coll.low_dim), int(coll.high_dim)
    encoder = Encoder(model, low_dim, high_dim)
    first_vectors = True
    with writing(coll, report, options) as writer:
        items = (it for record in records for it in rows.record_items(record, report.failed))
        for chunk in _chunks(items, options.batch_size):
            t0 = time.perf_counter()
            if options.skip_existing:
                ids = [it.id for it in chunk]
                # Rows still queued for the writer are not in `seen` yet: at worst re-encoded, and
                # the upsert keeps one copy.
                present = writer.seen.present(ids)
                report.skipped_existing += sum(1 for it in chunk if it.id in present)
                chunk = [it for it in chunk if it.id not in present]
            t1 = time.perf_counter()
            report.write_seconds += t1 - t0  # the existence check is a Milvus call
            vectors = [it for it in chunk if it.kind == "vectors"]
            if vectors and first_vectors:
                first_vectors = False
                rows.check_first_batch([it.payload for it in vectors], low_dim, high_dim, vectors[0].key)
            out = encoder.rows(chunk, report.failed)
            report.encode_seconds += time.perf_counter() - t1
            writer.add(out)

    report.add_source_report(source)
    report.seconds = time.perf_counter() - started - report.setup_seconds
    return report


def _chunks(items: Iterable[rows.Item], size: int) -> Iterator[list[rows.Item]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
