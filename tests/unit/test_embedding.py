"""HierarchicalEmbedding: a single vector is a batch of one; shapes that cannot be a batch are errors."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from collection_rows import row, unit

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import connect
from hivlp_milvus.errors import DimensionMismatchError
from hivlp_milvus.model.embedding import HierarchicalEmbedding


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda dim: np.ones(dim, np.float32), np.ndarray),
        (lambda dim: [1.0] * dim, np.ndarray),  # lists become float32 arrays
        (torch.ones, torch.Tensor),  # tensors stay tensors
    ],
    ids=["array", "list", "tensor"],
)
def test_one_vector_of_each_level_is_a_batch_of_one(make, kind) -> None:
    emb = HierarchicalEmbedding(low=make(32), high=make(256))
    assert len(emb) == 1
    assert (tuple(emb.low.shape), tuple(emb.high.shape)) == ((1, 32), (1, 256))
    assert (emb.low_dim, emb.high_dim) == (32, 256)
    assert isinstance(emb.low, kind)
    assert emb.low.dtype in (np.float32, torch.float32)
    np.testing.assert_array_equal(emb.numpy().high, np.ones((1, 256), np.float32))


def test_batches_keep_their_shape_and_rows_are_batches() -> None:
    emb = HierarchicalEmbedding(np.zeros((3, 4), np.float32), np.zeros((3, 8), np.float32))
    assert len(emb) == 3
    assert emb[1].low.shape == (1, 4)
    assert emb[np.int64(2)].high.shape == (1, 8)  # a numpy index is a row too
    assert len(HierarchicalEmbedding.concat([emb, emb[0]])) == 4


def test_rows_index_and_iterate_like_a_sequence() -> None:
    low = np.arange(12, dtype=np.float32).reshape(3, 4)
    emb = HierarchicalEmbedding(low, np.zeros((3, 8), np.float32))
    np.testing.assert_array_equal(emb[-1].low, low[2:])
    np.testing.assert_array_equal(emb[-3].low, low[:1])
    # Iteration goes through __getitem__ until IndexError: past the end must raise, not be empty.
    assert [r.low[0, 0] for r in emb] == [0.0, 4.0, 8.0]
    for outside in (3, -4):
        with pytest.raises(IndexError, match=f"row {outside} of a batch of 3"):
            emb[outside]


@pytest.mark.parametrize(
    ("low", "high", "match"),
    [
        (np.zeros((2, 4)), np.zeros((3, 8)), "low has 2 rows but high has 3"),
        (np.zeros(4), np.zeros((2, 8)), "low has 1 rows but high has 2"),
        (np.zeros((1, 2, 4)), np.zeros((1, 8)), r"low must be one vector .*\(1, 2, 4\)"),
        (np.zeros(4), np.float32(1.0), "high must be one vector"),
    ],
)
def test_shapes_that_are_not_batches(low: object, high: object, match: str) -> None:
    with pytest.raises(DimensionMismatchError, match=match):
        HierarchicalEmbedding(low, high)
    with pytest.raises(ValueError):  # still a ValueError for generic handlers
        HierarchicalEmbedding(low, high)


def test_a_single_vector_query_searches_like_its_batch(tmp_path) -> None:
    rng = np.random.default_rng(3)
    low, high = unit(rng.normal(size=(20, 4))), unit(rng.normal(size=(20, 8)))
    rows = [row(str(i), "image", low[i], high[i]) for i in range(20)]
    col = HierarchicalCollection.create(
        f"one_{uuid.uuid4().hex[:6]}", client=connect(str(tmp_path / "o.db")), low_dim=4, high_dim=8
    )
    col.upsert(rows)
    single = col.hierarchical_search(HierarchicalEmbedding(low=low[5], high=high[5]), limit=3, coarse_limit=20)
    batch = col.hierarchical_search(HierarchicalEmbedding(low[5:6], high[5:6]), limit=3, coarse_limit=20)
    assert len(single) == 1
    assert [h["id"] for h in single[0]] == [h["id"] for h in batch[0]]
    assert single[0][0]["id"] == rows[5]["id"]
