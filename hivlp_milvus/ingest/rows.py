"""Records → items → rows: the one place rows are built and checked, for every ingest path.

One record with an image and *k* captions becomes *k + 1* items: the image (key = ``record.id``)
and one per caption (key = ``text_key(record.id, i)``); an :class:`EmbeddingRecord` becomes one
item carrying the user's vectors. The in-process driver, the Ray Data stages and ``POST /ingest``
all build their items here. Each item is checked here, so one bad record is reported and skipped
instead of failing a whole upsert request (and rows are then written without a second check); the
VARCHAR limits come from the collection schema, the same numbers Milvus enforces.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from hivlp_milvus.data.record import EmbeddingRecord, Record, Skipped
from hivlp_milvus.errors import DimensionMismatchError
from hivlp_milvus.ids import MODALITIES, row_id, text_key
from hivlp_milvus.schema import max_lengths

NOT_FINITE = "vectors contain NaN or infinity"


@dataclass
class Item:
    """One future row: an image or a caption to encode, or precomputed vectors (``kind``).

    ``id`` is the Milvus primary key ``row_id(key, modality)``; ``payload`` is the image (path,
    bytes, array, PIL), the caption, or ``(vec_low, vec_high)``.
    """

    id: int
    key: str
    modality: str
    reference: str
    attributes: dict[str, Any]
    kind: str
    payload: Any

    def row(self, low: np.ndarray, high: np.ndarray) -> dict[str, Any]:
        """The Milvus row of this item with its vectors."""
        scalars = ("id", "key", "modality", "reference", "attributes")
        return {**{f: getattr(self, f) for f in scalars}, "vec_low": low, "vec_high": high}


def check_text_fields(key: str, reference: str, attributes: Any) -> str | None:
    """The reason a row's scalar fields would make Milvus reject the whole request, or ``None``."""
    if not key:
        return "empty key (record id)"
    limits = max_lengths()
    # A UTF-8 character is at most 4 bytes: encode only strings that might be too long.
    for field, value, what in (("key", key, "key"), ("reference", reference, "reference (image uri or caption)")):
        cap = limits[field]
        if len(value) * 4 > cap and len(value.encode()) > cap:
            return f"{what} is longer than {cap} bytes"
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


def record_items(record: Any, failed: list[Skipped], *, image_reference: str | None = None) -> Iterator[Item]:
    """The items of one record; what cannot become a row is appended to ``failed`` with the reason.

    Args:
        record: a :class:`Record` or an :class:`EmbeddingRecord`.
        failed: where records / captions that cannot be used are reported.
        image_reference: the image row's reference when it is not the record's own path (an
            image decoded by Ray Data from a file keeps that file's path).
    """
    if isinstance(record, EmbeddingRecord):
        key, modality = str(record.id or ""), str(record.modality)
        reference, attributes = str(record.reference or ""), record.attributes or {}
        reason = check_text_fields(key, reference, attributes)
        if modality not in MODALITIES:
            reason = f"modality must be one of {MODALITIES}, got {modality!r}"
        if reason:
            failed.append(Skipped(key, reason))
        else:
            vectors = (record.vec_low, record.vec_high)
            yield Item(row_id(key, modality), key, modality, reference, attributes, "vectors", vectors)
    elif isinstance(record, Record):
        rid, attributes = str(record.id or ""), record.attributes or {}
        reference = record.image_uri if image_reference is None else image_reference
        reason = check_text_fields(rid, reference, attributes)
        if not reason and record.image is None and not record.captions:
            reason = "record has neither an image nor captions"
        if reason:
            failed.append(Skipped(rid, reason))
            return
        if record.image is not None:
            yield Item(row_id(rid, "image"), rid, "image", reference, attributes, "image", record.image)
        for i, caption in enumerate(record.captions):
            key = text_key(rid, i)
            blank = not isinstance(caption, str) or not caption.strip()
            reason = "empty caption" if blank else check_text_fields(key, caption, attributes)
            if reason:
                failed.append(Skipped(key, reason))
            else:
                yield Item(row_id(key, "text"), key, "text", caption, attributes, "text", caption)
    else:
        key = str(getattr(record, "id", "?"))
        failed.append(Skipped(key, f"not a Record/EmbeddingRecord: {type(record).__name__}"))


def check_vectors(low: Any, high: Any, low_dim: int, high_dim: int) -> tuple[np.ndarray, np.ndarray] | str:
    """``(low, high)`` as float32 1-D arrays of the collection's dims, or the reason they are not.

    NaN / infinity are not looked for here: :func:`vector_rows` does that once per batch, vectorised.
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
    return lo, hi


def check_first_batch(pairs: list[tuple[Any, Any]], low_dim: int, high_dim: int, first_key: str = "") -> None:
    """Refuse precomputed vectors whose usual shape is not the collection's.

    Dims that differ in the *first* batch mean the data does not fit this collection at all
    (another model, another collection): stop before writing anything. Later, one odd vector is
    just a bad record (:func:`check_vectors`).

    Raises:
        DimensionMismatchError: the most common shape in ``pairs`` differs from the collection's.
    """
    if not pairs:
        return
    shapes = Counter((np.shape(lo), np.shape(hi)) for lo, hi in pairs)
    (lo_shape, hi_shape), _ = shapes.most_common(1)[0]
    if (tuple(lo_shape), tuple(hi_shape)) != ((low_dim,), (high_dim,)):
        where = f" (first record {first_key!r})" if first_key else ""
        raise DimensionMismatchError(
            f"precomputed vectors have shapes vec_low {tuple(lo_shape)} / vec_high {tuple(hi_shape)}{where} "
            f"but the collection has low_dim={low_dim}, high_dim={high_dim}; ingest into a collection "
            "created for these vectors (another collection_name) or recompute them with the collection's model"
        )


def vector_rows(items: list[Item], low_dim: int, high_dim: int, failed: list[Skipped]) -> list[dict[str, Any]]:
    """Rows of precomputed-vector items; malformed vectors are appended to ``failed``."""
    checked = [(it, check_vectors(*it.payload, low_dim, high_dim)) for it in items]
    failed.extend(Skipped(it.key, reason) for it, reason in checked if isinstance(reason, str))
    good = [(it, *vectors) for it, vectors in checked if not isinstance(vectors, str)]
    if not good:
        return []
    # One vectorised NaN/inf test for the whole batch instead of four ufunc calls per row.
    finite = np.isfinite(np.stack([lo for _, lo, _ in good])).all(axis=1)
    finite &= np.isfinite(np.stack([hi for _, _, hi in good])).all(axis=1)
    failed.extend(Skipped(it.key, NOT_FINITE) for (it, _, _), ok in zip(good, finite, strict=True) if not ok)
    return [it.row(lo, hi) for (it, lo, hi), ok in zip(good, finite, strict=True) if ok]
