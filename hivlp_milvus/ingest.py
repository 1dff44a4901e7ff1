"""``ingest()``: records → (encode) → upsert into a HiVLP collection, with progress and a report.

One record with an image and *k* captions becomes *k + 1* rows: the image row (key = ``record.id``)
and one text row per caption (key = ``text_key(record.id, i)``). An :class:`EmbeddingRecord`
becomes one row with the vectors the user computed, and needs no model. Every row's primary key is
``row_id(key, modality)``, so running the same data twice upserts the same rows: a run that was
killed half-way can simply be started again (``skip_existing=True`` makes that resume skip the
rows already written without encoding them again).

The work is pipelined: the calling thread reads and encodes batch *i + 1* while a background
writer thread upserts batch *i* (a bounded queue keeps memory flat), so the wall time is close to
``max(encode, write)`` rather than their sum. The report gives both sides. The overlap pays when
the two sides leave the GIL (torch kernels, a Milvus server across a socket: measured 1.06 s
pipelined vs 1.77 s sequential for 1,200 micro-model rows into a ``milvus-lite server``). With
in-process Milvus Lite the server is Python in this process too, so the sides mostly take turns.

A ``ray.data.Dataset`` (or ``distributed=True``) goes through :mod:`hivlp_milvus.ingest_ray`
instead: encoding in a Ray Data actor pool, writes from the workers for a Milvus server.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivlp_milvus.data.record import EmbeddingRecord, Record, Skipped
from hivlp_milvus.errors import (
    BadRecordError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
)
from hivlp_milvus.ids import MODALITIES, row_id, text_key

if TYPE_CHECKING:
    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.model import HiVLP

logger = logging.getLogger(__name__)

# Milvus VARCHAR limits from schemas/collection.json (bytes): a longer value would make the whole
# upsert request fail, so such a record is reported and skipped instead.
MAX_KEY_BYTES = 1024
MAX_REFERENCE_BYTES = 65535
# Encoded batches waiting for the writer. Two is enough to keep the writer busy while the encoder
# works on the next batch, and bounds the memory held by a slow Milvus.
_QUEUE_BATCHES = 2
NOT_FINITE = "vectors contain NaN or infinity"


@dataclass
class IngestReport:
    """What one :func:`ingest` run did.

    Attributes:
        inserted: rows that did not exist before this run and were written.
        updated: rows that already existed (same key and modality) and were overwritten.
        skipped_existing: rows not encoded nor written because they existed (``skip_existing``).
        failed: records/rows that could not be used (undecodable image, empty caption, malformed
            vector, ...), each with the reason; the rest of the run went on.
        source_skipped: rows the data source itself could not read (from its ``SourceReport``).
        dropped_captions: blank captions the source dropped from records it kept (no row, no
            error: :func:`load_source` strips captions and drops empty ones).
        rows_written: rows sent to Milvus (``inserted + updated``).
        seconds: wall time of the ingest proper (reading, encoding, writing), the basis of
            ``rows_per_s``.
        setup_seconds: wall time before that: connecting, opening or creating the collection,
            checking the model (and starting the Ray pipeline's model checkpoint).
        encode_seconds: time spent preparing and encoding rows (model forward passes, image
            decoding, vector checks). Summed over workers in the Ray path.
        write_seconds: time spent in Milvus calls (existence checks and upserts). Summed over
            writers in the Ray path. With pipelining, ``encode_seconds + write_seconds`` exceeds
            ``seconds`` by the overlap.
        collection: the collection written to.
        distributed: whether the Ray Data path ran.
    """

    inserted: int = 0
    updated: int = 0
    skipped_existing: int = 0
    failed: list[Skipped] = field(default_factory=list)
    source_skipped: list[Skipped] = field(default_factory=list)
    dropped_captions: int = 0
    rows_written: int = 0
    seconds: float = 0.0
    setup_seconds: float = 0.0
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    collection: str = ""
    distributed: bool = False

    @property
    def rows_per_s(self) -> float:
        """Rows written per second of wall time."""
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def overlap(self) -> float:
        """Fraction of the shorter side (encode or write) hidden behind the other; 0 = sequential."""
        shorter = min(self.encode_seconds, self.write_seconds)
        if shorter <= 0:
            return 0.0
        hidden = self.encode_seconds + self.write_seconds - self.seconds
        return float(min(max(hidden / shorter, 0.0), 1.0))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (``failed`` / ``source_skipped`` as dicts)."""
        return {
            "collection": self.collection,
            "distributed": self.distributed,
            "inserted": self.inserted,
            "updated": self.updated,
            "skipped_existing": self.skipped_existing,
            "failed": [{"key": s.key, "reason": s.reason} for s in self.failed],
            "source_skipped": [{"key": s.key, "reason": s.reason} for s in self.source_skipped],
            "dropped_captions": self.dropped_captions,
            "rows_written": self.rows_written,
            "seconds": round(self.seconds, 4),
            "setup_seconds": round(self.setup_seconds, 4),
            "rows_per_s": round(self.rows_per_s, 2),
            "encode_seconds": round(self.encode_seconds, 4),
            "write_seconds": round(self.write_seconds, 4),
        }

    def __str__(self) -> str:
        lines = [
            f"ingest into {self.collection!r}" + (" (Ray Data)" if self.distributed else ""),
            f"  {'inserted':<20}{self.inserted:>12,}",
            f"  {'updated':<20}{self.updated:>12,}",
            f"  {'skipped (existing)':<20}{self.skipped_existing:>12,}",
            f"  {'failed':<20}{len(self.failed):>12,}",
            f"  {'source skipped':<20}{len(self.source_skipped):>12,}",
            f"  {'blank captions':<20}{self.dropped_captions:>12,}",
            f"  {'rows written':<20}{self.rows_written:>12,}  in {self.seconds:.2f} s"
            f" ({self.rows_per_s:,.0f} rows/s; setup {self.setup_seconds:.2f} s)",
            f"  {'encode / write':<20}{self.encode_seconds:>10.2f} s / {self.write_seconds:.2f} s"
            f"  (overlap {self.overlap:.0%})",
        ]
        problems = [("failed", s) for s in self.failed] + [("source", s) for s in self.source_skipped]
        for kind, s in problems[:10]:
            lines.append(f"  {kind} {s.key}: {s.reason}")
        if len(problems) > 10:
            lines.append(f"  ... and {len(problems) - 10} more (see report.failed / report.source_skipped)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Public entry point


def ingest(
    dataset: Any,
    *,
    collection: HierarchicalCollection | None = None,
    uri: str = "./hivlp.db",
    collection_name: str = "hivlp",
    token: str | None = None,
    model: HiVLP | str | Path | None = None,
    batch_size: int = 64,
    write_batch_rows: int | None = None,
    skip_existing: bool = False,
    distributed: bool = False,
    progress: bool = True,
    create: bool = True,
    pipeline: bool = True,
    expected_rows: int | None = None,
) -> IngestReport:
    """Encode a data set (or take its precomputed vectors) and upsert it into a HiVLP collection.

    Args:
        dataset: anything :func:`hivlp_milvus.data.load_source` accepts (a manifest / Karpathy /
            CSV / JSONL / Parquet path, an HF ``save_to_disk`` directory, a list or iterable of
            :class:`Record` / :class:`EmbeddingRecord`), or a ``ray.data.Dataset`` (see
            :func:`hivlp_milvus.ingest_ray.ingest_ray` for its columns).
        collection: an open :class:`HierarchicalCollection`; when ``None`` the collection
            ``collection_name`` at ``uri`` is opened (or created, see ``create``).
        uri: ``./hivlp.db`` (Milvus Lite in this process) or ``http(s)://host:port`` (a server).
        collection_name: the collection to open or create when ``collection`` is ``None``.
        token: Milvus token (``"user:password"`` or an API key) for a server.
        model: a :class:`HiVLP` or a checkpoint directory; required for records with images or
            captions, unused for :class:`EmbeddingRecord` rows.
        batch_size: items (images or captions) encoded per forward pass.
        write_batch_rows: rows per upsert request; ``None`` = the collection's
            ``max_rows_per_request`` (sized under Milvus' 64 MB request limit).
        skip_existing: skip rows whose id is already in the collection *before* encoding them
            (fast resume). Without it, existing rows are re-encoded and overwritten.
        distributed: run the Ray Data path even for a non-Ray source.
        progress: show a tqdm progress bar (rows).
        create: create the collection when it does not exist (dims from the model, or from the
            first :class:`EmbeddingRecord`).
        expected_rows: rows the collection will hold, to size the ANN index of a collection this
            call creates (IVF ``nlist``); default: estimated from the source's length.
        pipeline: write on a background thread while the next batch is encoded. ``False`` writes
            each batch before encoding the next (for debugging, and to measure the overlap).

    Returns:
        An :class:`IngestReport` (inserted / updated / skipped / failed counts and timings).

    Raises:
        ModelMismatchError: the model's dims or fingerprint differ from the collection's (raised
            before anything is written).
        DimensionMismatchError: precomputed vectors have other dims than the collection (checked
            on the first batch, before anything is written).
        ConfigError: a bad argument, or records that need a model when none was given.
        CollectionNotFoundError: the collection does not exist and ``create`` is ``False``.
        MilvusUnavailableError: Milvus cannot be reached.
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if write_batch_rows is not None and int(write_batch_rows) < 1:
        raise ConfigError(f"write_batch_rows must be >= 1 or None, got {write_batch_rows}")

    if distributed or _is_ray_dataset(dataset):
        from hivlp_milvus.ingest_ray import ingest_ray

        return ingest_ray(
            dataset,
            collection=collection,
            uri=uri,
            collection_name=collection_name,
            token=token,
            model=model,
            batch_size=batch_size,
            write_batch_rows=write_batch_rows,
            skip_existing=skip_existing,
            progress=progress,
            create=create,
        )

    started = time.perf_counter()
    model = load_model(model)
    from hivlp_milvus.data import load_source

    source = load_source(dataset)
    records = iter(source)
    # Peek at the first record: it decides the dims of a collection created from BYO vectors, and
    # image/caption records without a model fail here rather than after a partial write.
    first = next(records, None)
    if first is not None:
        records = itertools.chain([first], records)
        if model is None and not isinstance(first, EmbeddingRecord):
            raise ConfigError(
                "these records have images/captions and need a model to encode them: pass "
                "model=HiVLP.from_pretrained(dir) (or a checkpoint directory), or ingest "
                "EmbeddingRecord rows with precomputed vectors"
            )

    coll = resolve_collection(
        collection,
        uri=uri,
        collection_name=collection_name,
        token=token,
        model=model,
        first=first,
        create=create,
        expected_rows=expected_rows if expected_rows is not None else _estimate_rows(source, first),
    )
    report = IngestReport(collection=str(getattr(coll, "name", collection_name)))
    if coll is None:  # empty source and no collection to write to: nothing to do
        _source_report(source, report)
        report.setup_seconds = time.perf_counter() - started
        return report
    if model is not None:
        coll.check_model(model)  # before anything is written

    rows_per_write = int(write_batch_rows or coll.max_rows_per_request)
    bar = _progress_bar(progress)
    seen = _RunIds(active=coll.count() == 0)
    loop_started = time.perf_counter()
    report.setup_seconds = loop_started - started
    writer = _Writer(coll, rows_per_write, report, bar, pipelined=pipeline, seen=seen)
    encoder = _Encoder(coll, model, report)
    check_seconds = 0.0
    try:
        for chunk in _chunks(_items(records, report.failed), int(batch_size)):
            if skip_existing:
                t0 = time.perf_counter()
                ids = [it.id for it in chunk]
                # Rows still queued for the writer are not in `seen` yet: at worst re-encoded, and
                # the upsert keeps one copy.
                present = seen.present(ids) if seen.active else coll.existing_ids(ids)
                check_seconds += time.perf_counter() - t0
                if present:
                    report.skipped_existing += sum(1 for it in chunk if it.id in present)
                    chunk = [it for it in chunk if it.id not in present]
            rows = encoder.encode(chunk)
            writer.add(rows)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()

    report.write_seconds += check_seconds
    report.encode_seconds = encoder.seconds
    _source_report(source, report)
    report.seconds = time.perf_counter() - loop_started
    return report


def _source_report(source: Any, report: IngestReport) -> None:
    src = getattr(source, "report", None)
    report.source_skipped = list(getattr(src, "skipped", []))
    report.dropped_captions = int(getattr(src, "dropped_captions", 0))


# --------------------------------------------------------------------------------------------------
# Helpers shared with the Ray path


def load_model(model: Any) -> Any:
    """``model`` as a live :class:`HiVLP`: a checkpoint directory is loaded, a model is returned as is."""
    if model is None or not isinstance(model, (str, Path)):
        return model
    from hivlp_milvus.model import HiVLP

    return HiVLP.from_pretrained(str(model))


def resolve_collection(
    collection: HierarchicalCollection | None,
    *,
    uri: str,
    collection_name: str,
    token: str | None,
    model: Any,
    first: Any,
    create: bool,
    expected_rows: int | None = None,
) -> HierarchicalCollection | None:
    """The collection to write to: the given one, or ``collection_name`` at ``uri`` opened/created.

    Returns ``None`` only when the collection does not exist and nothing tells its dims (no model
    and an empty source), i.e. there is nothing to ingest. ``expected_rows`` sizes the ANN index
    of a collection created here (IVF ``nlist``); ``None`` uses the profile's default.
    """
    if collection is not None:
        return collection
    from hivlp_milvus.collection import HierarchicalCollection

    try:
        # Open first even when create=True: an existing collection must then be checked against
        # the data (dims) by ingest itself, which gives the precise error.
        return HierarchicalCollection.open(collection_name, uri=uri, token=token)
    except CollectionNotFoundError:
        if not create:
            raise
    dims = _dims_for_create(model, first)
    if dims is None:
        return None
    return HierarchicalCollection.create(
        collection_name,
        uri=uri,
        token=token,
        low_dim=dims[0],
        high_dim=dims[1],
        model=model,
        exist_ok=True,
        expected_rows=expected_rows,
    )


def _estimate_rows(source: Any, first: Any) -> int | None:
    """Rows a source will write: records x (image + captions of the first record), when it has a length."""
    try:
        n = len(source)
    except TypeError:
        return None
    if isinstance(first, EmbeddingRecord) or first is None:
        return n
    return n * ((first.image is not None) + max(1, len(first.captions)))


def _dims_for_create(model: Any, first: Any) -> tuple[int, int] | None:
    if model is not None:
        return int(model.config.low_dim), int(model.config.high_dim)
    if isinstance(first, EmbeddingRecord):
        return int(np.asarray(first.vec_low).shape[-1]), int(np.asarray(first.vec_high).shape[-1])
    if isinstance(first, dict) and "vec_low" in first and "vec_high" in first:
        return int(np.asarray(first["vec_low"]).shape[-1]), int(np.asarray(first["vec_high"]).shape[-1])
    return None


def write_rows(
    collection: HierarchicalCollection, rows: list[dict[str, Any]], seen: _RunIds | None = None
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
    collection.upsert(rows)
    if seen is not None:
        seen.add(ids)
    return len(rows) - len(present), len(present)


class _RunIds:
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


def check_vectors(
    low: Any, high: Any, low_dim: int, high_dim: int, *, check_finite: bool = True
) -> tuple[np.ndarray, np.ndarray] | str:
    """``(low, high)`` as float32 1-D arrays of the collection's dims, or the reason they are not.

    ``check_finite=False`` leaves the NaN/inf test to the caller (done once per batch, vectorised).
    """
    try:
        lo = np.asarray(low, dtype=np.float32)
        hi = np.asarray(high, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        return f"vectors are not numeric arrays: {exc}"
    if lo.ndim != 1 or hi.ndim != 1:
        return f"vectors must be 1-D, got vec_low shape {lo.shape} and vec_high shape {hi.shape}"
    if lo.shape[0] != low_dim or hi.shape[0] != high_dim:
        return (
            f"vector dims ({lo.shape[0]}, {hi.shape[0]}) differ from the collection's "
            f"(low_dim={low_dim}, high_dim={high_dim})"
        )
    if check_finite and not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        return NOT_FINITE
    return lo, hi


def check_text_fields(key: str, reference: str, attributes: Any) -> str | None:
    """The reason a row's scalar fields would make Milvus reject the whole request, or ``None``."""
    if not key:
        return "empty key (record id)"
    # A UTF-8 character is at most 4 bytes: encode only strings that might be too long.
    if len(key) * 4 > MAX_KEY_BYTES and len(key.encode()) > MAX_KEY_BYTES:
        return f"key is longer than {MAX_KEY_BYTES} bytes"
    if len(reference) * 4 > MAX_REFERENCE_BYTES and len(reference.encode()) > MAX_REFERENCE_BYTES:
        return f"reference (image uri or caption) is longer than {MAX_REFERENCE_BYTES} bytes"
    if not isinstance(attributes, dict):
        return f"attributes must be a dict, got {type(attributes).__name__}"
    if _plain_json(attributes):
        return None
    try:
        json.dumps(attributes, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"attributes are not JSON-serialisable: {exc}"
    return None


def _plain_json(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is obviously JSON (str keys; str/int/bool/None/finite float leaves).

    A fast path: ``json.dumps`` on every record's attributes costs more than the rest of the
    per-row checks together. Anything unusual goes to ``json.dumps`` for the verdict.
    """
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return value - value == 0.0  # False for NaN and +-inf
    if depth > 8:
        return False
    if t is dict:
        return all(type(k) is str and _plain_json(v, depth + 1) for k, v in value.items())
    if t is list:
        return all(_plain_json(v, depth + 1) for v in value)
    return False


# --------------------------------------------------------------------------------------------------
# Records → items → rows


@dataclass
class _Item:
    """One future row: an image, a caption or a pair of precomputed vectors."""

    id: int
    key: str
    modality: str
    reference: str
    attributes: dict[str, Any]
    kind: str  # "image" | "text" | "vectors"
    payload: Any


def _items(records: Iterable[Any], failed: list[Skipped]) -> Iterator[_Item]:
    """Flatten records into items; records that cannot become rows are appended to ``failed``."""
    for record in records:
        if isinstance(record, EmbeddingRecord):
            key, modality = str(record.id or ""), str(record.modality)
            if modality not in MODALITIES:
                failed.append(Skipped(key, f"modality must be one of {MODALITIES}, got {modality!r}"))
                continue
            reference, attributes = str(record.reference or ""), record.attributes or {}
            reason = check_text_fields(key, reference, attributes)
            if reason:
                failed.append(Skipped(key, reason))
                continue
            yield _Item(
                row_id(key, modality),
                key,
                modality,
                reference,
                attributes,
                "vectors",
                (record.vec_low, record.vec_high),
            )
        elif isinstance(record, Record):
            rid, attributes = str(record.id or ""), record.attributes or {}
            reason = check_text_fields(rid, record.image_uri, attributes)
            if reason:
                failed.append(Skipped(rid, reason))
                continue
            if record.image is None and not record.captions:
                failed.append(Skipped(rid, "record has neither an image nor captions"))
                continue
            if record.image is not None:
                yield _Item(row_id(rid, "image"), rid, "image", record.image_uri, attributes, "image", record.image)
            for i, caption in enumerate(record.captions):
                key = text_key(rid, i)
                if not isinstance(caption, str) or not caption.strip():
                    failed.append(Skipped(key, "empty caption"))
                    continue
                reason = check_text_fields(key, caption, attributes)
                if reason:
                    failed.append(Skipped(key, reason))
                    continue
                yield _Item(row_id(key, "text"), key, "text", caption, attributes, "text", caption)
        else:
            key = str(getattr(record, "id", "?"))
            failed.append(Skipped(key, f"not a Record/EmbeddingRecord: {type(record).__name__}"))


def _chunks(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _row(item: _Item, low: np.ndarray, high: np.ndarray) -> dict[str, Any]:
    return {
        "id": item.id,
        "key": item.key,
        "modality": item.modality,
        "reference": item.reference,
        "attributes": item.attributes,
        "vec_low": low,
        "vec_high": high,
    }


class _Encoder:
    """Turns a chunk of items into rows, isolating bad records so the rest of the chunk lands."""

    def __init__(self, collection: HierarchicalCollection, model: Any, report: IngestReport) -> None:
        self.low_dim, self.high_dim = int(collection.low_dim), int(collection.high_dim)
        self.model = model
        self.failed = report.failed
        self.seconds = 0.0
        self._vectors_seen = False

    def encode(self, chunk: list[_Item]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            rows: list[dict[str, Any]] = []
            vectors = [it for it in chunk if it.kind == "vectors"]
            if vectors:
                rows += self._vectors(vectors)
            images = [it for it in chunk if it.kind == "image"]
            texts = [it for it in chunk if it.kind == "text"]
            if (images or texts) and self.model is None:
                for it in images + texts:
                    self.failed.append(Skipped(it.key, "needs a model to encode (none was given)"))
                return rows
            if images:
                rows += self._images(images)
            if texts:
                rows += self._embed(texts, [it.payload for it in texts], self.model.embed_texts)
            return rows
        finally:
            self.seconds += time.perf_counter() - t0

    def _vectors(self, items: list[_Item]) -> list[dict[str, Any]]:
        if not self._vectors_seen:
            self._vectors_seen = True
            self._check_first_batch(items)
        good, vectors = [], []
        for it in items:
            low, high = it.payload
            checked = check_vectors(low, high, self.low_dim, self.high_dim, check_finite=False)
            if isinstance(checked, str):
                self.failed.append(Skipped(it.key, checked))
            else:
                good.append(it)
                vectors.append(checked)
        if not good:
            return []
        # One vectorised NaN/inf test for the whole batch instead of four ufunc calls per row.
        finite = np.isfinite(np.stack([v[0] for v in vectors])).all(axis=1)
        finite &= np.isfinite(np.stack([v[1] for v in vectors])).all(axis=1)
        rows = []
        for it, (lo, hi), ok in zip(good, vectors, finite, strict=True):
            if ok:
                rows.append(_row(it, lo, hi))
            else:
                self.failed.append(Skipped(it.key, NOT_FINITE))
        return rows

    def _check_first_batch(self, items: list[_Item]) -> None:
        # Dims that differ in the *first* batch mean the data does not fit this collection at all
        # (another model, another collection): stop before writing anything. Later, one odd vector
        # is just a bad record.
        shapes = Counter((np.shape(it.payload[0]), np.shape(it.payload[1])) for it in items)
        (lo_shape, hi_shape), _ = shapes.most_common(1)[0]
        if (tuple(lo_shape), tuple(hi_shape)) != ((self.low_dim,), (self.high_dim,)):
            raise DimensionMismatchError(
                f"precomputed vectors have shapes vec_low {tuple(lo_shape)} / vec_high {tuple(hi_shape)} "
                f"(first record {items[0].key!r}) but the collection has low_dim={self.low_dim}, "
                f"high_dim={self.high_dim}; ingest into a collection created for these vectors "
                "(another collection_name) or recompute them with the collection's model"
            )

    def _images(self, items: list[_Item]) -> list[dict[str, Any]]:
        from hivlp_milvus.model.preprocess import load_image

        ok_items, images = [], []
        for it in items:
            try:
                images.append(load_image(it.payload))
                ok_items.append(it)
            except BadRecordError as exc:
                self.failed.append(Skipped(it.key, str(exc)))
            except Exception as exc:  # any decoder failure is this record's problem, not the run's
                self.failed.append(Skipped(it.key, f"cannot load image: {type(exc).__name__}: {exc}"))
        return self._embed(ok_items, images, self.model.embed_images)

    def _embed(self, items: list[_Item], inputs: list[Any], embed: Any) -> list[dict[str, Any]]:
        if not items:
            return []
        try:
            emb = embed(inputs, batch_size=len(inputs)).numpy()
        except Exception as exc:
            if len(items) == 1:
                self.failed.append(Skipped(items[0].key, f"encoding failed: {type(exc).__name__}: {exc}"))
                return []
            # One input broke the batch: encode one by one so only that record is lost.
            logger.warning("batch encoding failed (%s); retrying the %d items one by one", exc, len(items))
            rows = []
            for it, x in zip(items, inputs, strict=True):
                rows += self._embed([it], [x], embed)
            return rows
        self._check_model_dims(emb)
        return [_row(it, emb.low[i], emb.high[i]) for i, it in enumerate(items)]

    def _check_model_dims(self, emb: Any) -> None:
        if emb.low_dim != self.low_dim or emb.high_dim != self.high_dim:
            raise DimensionMismatchError(
                f"the model produced ({emb.low_dim}, {emb.high_dim})-dim vectors but the collection "
                f"has low_dim={self.low_dim}, high_dim={self.high_dim}"
            )


# --------------------------------------------------------------------------------------------------
# Writing


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(desc="ingest", unit="row", dynamic_ncols=True)


class _Writer:
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
        seen: _RunIds | None = None,
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


def _is_ray_dataset(obj: Any) -> bool:
    # Checked by class name so a plain (non-Ray) ingest never imports Ray.
    return any(c.__name__ == "Dataset" and c.__module__.startswith("ray.data") for c in type(obj).__mro__)
