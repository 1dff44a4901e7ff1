"""The Ray Data stages of distributed ingest, run on the workers (module-level: Ray pickles them by reference).

Between the stages a record travels as numpy columns; attributes as JSON text, so blocks with
different attribute keys never need an Arrow schema merge. Items, checks and encoding are those of
the in-process driver (:mod:`.rows`, :mod:`.encode`), so both paths build the same rows.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Container, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from ray.data import Datasink
from ray.data.block import BlockAccessor

from hivlp_milvus.connection import ConnectionOptions
from hivlp_milvus.data.record import EmbeddingRecord, Record, Skipped
from hivlp_milvus.errors import ModelMismatchError
from hivlp_milvus.ingest.encode import Encoder
from hivlp_milvus.ingest.report import IngestReport
from hivlp_milvus.ingest.rows import Item, record_items
from hivlp_milvus.ingest.writer import Writer

# The columns of an item (stage 1 → 2) and the text columns of a row (stage 2 → 3).
TEXT_COLUMNS = ("key", "modality", "reference", "attributes")
ITEM_COLUMNS = ("id", *TEXT_COLUMNS, "kind", "image_path", "image_bytes", "text", "error")
_NPY_MAGIC = b"\x93NUMPY"
# Blank captions are dropped, as load_source drops them (and caption indexes count kept captions
# only, so a Ray Dataset and the same records as a list give the same keys). They travel as an
# item with this error so the driver can count them.
DROPPED = "blank caption (dropped)"
# Rows already stored (skip_existing) travel the same way, to be counted as skipped.
EXISTING = "already stored (skipped)"


def rows_of(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A numpy batch as a list of row dicts."""
    return [dict(zip(batch, cells, strict=True)) for cells in zip(*batch.values(), strict=True)]


def _missing(value: Any) -> bool:
    """A null cell: ``None``, or the NaN Arrow → numpy makes of a null in a column."""
    return value is None or (isinstance(value, float) and value != value)


def text(value: Any) -> str:
    """A cell as ``str`` (``""`` for a null)."""
    if _missing(value):
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _attributes(value: Any) -> tuple[dict[str, Any], str | None]:
    """``(attributes, error)`` for an attributes cell (dict, JSON text or missing)."""
    if _missing(value):
        return {}, None
    if isinstance(value, (str, bytes)):
        raw = text(value)
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError as exc:
            return {}, f"attributes are not valid JSON: {exc}"
        if not isinstance(parsed, dict):
            return {}, f"attributes must be a JSON object, got {type(parsed).__name__}"
        return parsed, None
    if isinstance(value, dict):
        try:
            # Arrow → numpy turns nested values into numpy scalars / arrays: back to JSON types.
            return json.loads(json.dumps(value, allow_nan=False, default=_json_default)), None
        except (TypeError, ValueError) as exc:
            return {}, f"attributes are not JSON-serialisable: {exc}"
    return {}, f"attributes must be a dict, got {type(value).__name__}"


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.generic, np.ndarray)):
        return x.tolist()  # a numpy scalar's tolist() is its Python value
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def image_bytes(image: Any) -> bytes:
    """An in-memory image as bytes: encoded bytes as is, an array as a ``.npy`` dump, PIL as PNG."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    buf = io.BytesIO()
    if isinstance(image, np.ndarray):
        np.save(buf, image, allow_pickle=False)
    else:
        image.save(buf, format="PNG")  # a PIL image
    return buf.getvalue()


def _decode_image(path: Any, data: Any) -> Any:
    if text(path):
        return text(path)
    data = bytes(data or b"")
    if data.startswith(_NPY_MAGIC):
        return np.load(io.BytesIO(data), allow_pickle=False)
    return data


def _captions(row: dict[str, Any]) -> list[str]:
    value = row["captions"] if row.get("captions") is not None else row.get("caption")
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [text(value)]
    return [text(c) for c in value]


def _image_path(value: str, image_root: str | None) -> str:
    if image_root and value and "://" not in value and not Path(value).expanduser().is_absolute():
        return str(Path(image_root).expanduser() / value)
    return value


# Stage 1: records → items


def item_cells(item: Item) -> dict[str, Any]:
    """An image or caption item as the cells of the encode stage (an in-memory image as bytes)."""
    image = item.payload if item.kind == "image" else None
    path = str(image) if isinstance(image, (str, Path)) else ""
    try:
        data = image_bytes(image) if image is not None and not path else b""
    except Exception as exc:  # an unusable in-memory image fails this record only
        return _error_cells(item.key, f"cannot serialise image of type {type(image).__name__}: {exc}")
    return {
        "id": item.id,
        **{c: getattr(item, c) for c in TEXT_COLUMNS[:3]},
        "attributes": json.dumps(item.attributes),
        "kind": item.kind,
        "image_path": path,
        "image_bytes": data,
        "text": item.payload if item.kind == "text" else "",
        "error": "",
    }


def _error_cells(key: str, error: str) -> dict[str, Any]:
    # A failed item is never written: its id only fills the column.
    return {**dict.fromkeys(ITEM_COLUMNS, ""), "id": 0, "key": key, "image_bytes": b"", "error": error}


def explode(batch: dict[str, np.ndarray], *, image_root: str | None = None) -> dict[str, np.ndarray]:
    """Records → one item per image and per caption (failed items carry their ``error``)."""
    out: list[dict[str, Any]] = []
    for raw in rows_of(batch):
        row = {k: None if _missing(v) else v for k, v in raw.items()}
        rid = text(row.get("id")) or text(row.get("path"))
        attributes, error = _attributes(row.get("attributes"))
        image = row.get("image")
        path = _image_path(image, image_root) if isinstance(image, str) else ""
        data = bytes(image) if isinstance(image, (bytes, bytearray)) else b""
        if isinstance(image, np.ndarray) and image.dtype != object:
            data = image_bytes(image)
        raw_captions = _captions(row)
        captions = [c.strip() for c in raw_captions if c.strip()]
        out += [_error_cells(rid, DROPPED)] * (len(raw_captions) - len(captions))
        if error:
            out.append(_error_cells(rid, error))
            continue
        record = Record(rid, image=path or data or None, captions=captions, attributes=attributes)
        failed: list[Skipped] = []
        out += [item_cells(it) for it in record_items(record, failed, image_reference=path or text(row.get("path")))]
        out += [_error_cells(s.key, s.reason) for s in failed]
    return {c: np.asarray([x[c] for x in out], dtype=np.int64 if c == "id" else object) for c in ITEM_COLUMNS}


# Stage 2: items → rows (encoded, or precomputed vectors checked)


class RowStage:
    """Ray Data actor of stage 2: item batches → rows, built by the in-process driver's :class:`Encoder`.

    With ``checkpoint_dir`` it loads the model once and encodes image / caption items; without, it
    checks rows of precomputed vectors. With ``skip`` (``skip_existing``) the rows already stored
    are dropped first: from the driver's snapshot of the ids (Lite), or asked of Milvus on a
    connection the actor opens once (server).
    """

    def __init__(
        self,
        dims: tuple[int, int],
        skip: dict[str, Any] | None,
        checkpoint_dir: str | None = None,
        fingerprint: str = "",
        device: str = "cpu",
    ) -> None:
        model = None
        if checkpoint_dir is not None:
            from hivlp_milvus.model import HiVLP

            model = HiVLP.from_pretrained(checkpoint_dir, device=device)
            if str(model.fingerprint) != fingerprint:
                raise ModelMismatchError(
                    f"the checkpoint at {checkpoint_dir!r} has fingerprint {model.fingerprint}, "
                    f"not the driver's {fingerprint}: the directory changed during ingest"
                )
        self.items_of = _vector_items if model is None else _encode_items
        self.encoder = Encoder(model, *dims)
        self.stored = _stored_ids(skip)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """The columns of the batch's new rows, then one row per problem (its reason in ``error``).

        A problem's vectors are zeros (a column holds one shape); ``encode_s`` spreads the batch's
        time over its rows.
        """
        t0 = time.perf_counter()
        problems: list[Skipped] = []
        items = [it for row in rows_of(batch) for it in self.items_of(row, problems)]
        stored = self.stored([it.id for it in items])
        problems += [Skipped(it.key, EXISTING) for it in items if it.id in stored]
        rows = self.encoder.rows([it for it in items if it.id not in stored], problems)
        vectors = {"vec_low": self.encoder.low_dim, "vec_high": self.encoder.high_dim}
        blank = {
            "id": 0,
            "modality": "",
            "reference": "",
            "attributes": {},
            **{f: np.zeros(d) for f, d in vectors.items()},
        }
        cells = [
            *({**row, "error": ""} for row in rows),
            *({**blank, "key": s.key, "error": s.reason} for s in problems),
        ]
        n = len(cells)
        return {
            "id": np.asarray([c["id"] for c in cells], dtype=np.int64),
            **{c: np.asarray([x[c] for x in cells], dtype=object) for c in TEXT_COLUMNS[:3]},
            "attributes": np.asarray([json.dumps(x["attributes"]) for x in cells], dtype=object),
            # reshape: an empty batch still has (0, dim) vector columns.
            **{f: np.asarray([x[f] for x in cells], np.float32).reshape(n, d) for f, d in vectors.items()},
            "error": np.asarray([x["error"] for x in cells], dtype=object),
            "encode_s": np.full(n, (time.perf_counter() - t0) / max(n, 1)),
        }


def _stored_ids(skip: dict[str, Any] | None) -> Callable[[list[int]], Container[int]]:
    """Which of some ids are already stored: none looked up, the driver's snapshot (Lite), or Milvus (server)."""
    if skip is None:
        return lambda ids: ()
    if "ids" in skip:
        return lambda ids: skip["ids"]
    from hivlp_milvus.collection import HierarchicalCollection

    return HierarchicalCollection.open(skip["name"], client=skip["connection"].connect()).existing_ids


def _vector_items(row: dict[str, Any], problems: list[Skipped]) -> Iterable[Item]:
    key = text(row.get("id"))
    attributes, error = _attributes(row.get("attributes"))
    if error:
        problems.append(Skipped(key, error))
        return []
    modality, reference = text(row.get("modality")), text(row.get("reference"))
    record = EmbeddingRecord(key, modality, row["vec_low"], row["vec_high"], reference, attributes)
    return record_items(record, problems)


def _encode_items(row: dict[str, Any], problems: list[Skipped]) -> list[Item]:
    key, error, kind = text(row["key"]), text(row["error"]), text(row["kind"])
    if error:
        problems.append(Skipped(key, error))
        return []
    payload = _decode_image(row["image_path"], row["image_bytes"]) if kind == "image" else text(row["text"])
    cells = (text(row["modality"]), text(row["reference"]), json.loads(text(row["attributes"]) or "{}"))
    return [Item(int(row["id"]), key, *cells, kind, payload)]


# Stage 3: rows → Milvus


def rows_for_milvus(batch: dict[str, np.ndarray], report: IngestReport) -> list[dict[str, Any]]:
    """Encoded batch → the rows to write; the rest (existing, failed, dropped) and the encode time go to ``report``."""
    report.encode_seconds += float(np.sum(batch["encode_s"]))
    errors = [text(e) for e in batch["error"]]
    report.dropped_captions += errors.count(DROPPED)
    report.skipped_existing += errors.count(EXISTING)
    report.failed.extend(
        Skipped(text(key), e) for key, e in zip(batch["key"], errors, strict=True) if e not in ("", DROPPED, EXISTING)
    )
    return [
        {
            "id": int(batch["id"][i]),
            **{c: text(batch[c][i]) for c in TEXT_COLUMNS[:3]},
            "attributes": json.loads(text(batch["attributes"][i]) or "{}"),
            "vec_low": np.asarray(batch["vec_low"][i], dtype=np.float32),
            "vec_high": np.asarray(batch["vec_high"][i], dtype=np.float32),
        }
        for i, e in enumerate(errors)
        if not e
    ]


class MilvusDatasink(Datasink):
    """Upserts encoded rows into a Milvus *server* collection from each write task.

    Holds only the connection options and the name (never a client): every write task opens its
    own connection. Each task returns its :class:`IngestReport`; the driver merges them.
    """

    def __init__(self, connection: ConnectionOptions, name: str, rows_per_write: int) -> None:
        self.connection, self.name, self.rows_per_write = connection, name, int(rows_per_write)
        self.parts: list[IngestReport] = []

    def write(self, blocks: Iterable[Any], ctx: Any) -> IngestReport:
        from hivlp_milvus.collection import HierarchicalCollection

        coll = HierarchicalCollection.open(self.name, client=self.connection.connect())
        out = IngestReport()
        writer = Writer(coll, self.rows_per_write, out, pipelined=False)
        try:
            for block in blocks:
                writer.add(rows_for_milvus(BlockAccessor.for_block(block).to_batch_format("numpy"), out))
            writer.close()
        finally:
            with contextlib.suppress(Exception):
                coll.client.close()
        return out

    def on_write_complete(self, write_result: Any) -> None:
        # Runs on the driver, with every write task's return value.
        self.parts = [part for part in write_result.write_returns if part is not None]
