"""The rows tests write with their own vectors (the seven fields of ``schemas/collection.json``),
and a collection that lives for one test."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np

from hivlp_milvus.ids import row_id


def row(
    key: str, modality: str, low: Any, high: Any, *, reference: str | None = None, attributes: Any = None
) -> dict[str, Any]:
    """The row of ``key``: id ``row_id(key, modality)``, ``reference`` ``key`` and ``attributes`` ``{}`` by default."""
    return {
        "id": row_id(key, modality),
        "key": key,
        "modality": modality,
        "reference": key if reference is None else reference,
        "attributes": {} if attributes is None else attributes,
        "vec_low": low,
        "vec_high": high,
    }


def unit(x: Any) -> np.ndarray:
    """``x`` L2-normalised along its last axis, as float32 (the model's vectors are unit vectors)."""
    x = np.asarray(x)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@contextlib.contextmanager
def created(client: Any, prefix: str = "t", **create: Any) -> Iterator[Any]:
    """``HierarchicalCollection.create`` under a fresh ``prefix_<hex>`` name, dropped when the block ends."""
    from hivlp_milvus.collection import HierarchicalCollection

    col = HierarchicalCollection.create(f"{prefix}_{uuid.uuid4().hex[:10]}", client=client, **create)
    try:
        yield col
    finally:
        col.drop()
