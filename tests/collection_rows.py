"""The rows tests write with their own vectors (the seven fields of ``schemas/collection.json``),
a collection that lives for one test, and the exact search results are compared with."""

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


def unique(prefix: str = "t") -> str:
    """A fresh collection name, ``prefix_<hex>``."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@contextlib.contextmanager
def created(client: Any, prefix: str = "t", **create: Any) -> Iterator[Any]:
    """``HierarchicalCollection.create`` under a :func:`unique` name, dropped when the block ends."""
    from hivlp_milvus.collection import HierarchicalCollection

    col = HierarchicalCollection.create(unique(prefix), client=client, **create)
    try:
        yield col
    finally:
        col.drop()


def brute_force(rows: list[dict], q_high: np.ndarray, limit: int, keep: Any = None) -> list[tuple[int, float]]:
    """The exact top ``limit`` ``(id, inner product on vec_high)`` among the rows ``keep`` accepts."""
    cand = [r for r in rows if keep is None or keep(r)]
    mat = np.stack([np.asarray(r["vec_high"], dtype=np.float32) for r in cand])
    scores = mat @ q_high
    order = np.argsort(-scores, kind="stable")[:limit]
    return [(cand[j]["id"], float(scores[j])) for j in order]


def assert_same(hits: list[dict], expected: list[tuple[int, float]], atol: float = 1e-4) -> None:
    """``hits`` are ``expected`` (from :func:`brute_force`): the same ids in order, the same scores."""
    assert [h["id"] for h in hits] == [i for i, _ in expected]
    np.testing.assert_allclose([h["distance"] for h in hits], [s for _, s in expected], atol=atol)
