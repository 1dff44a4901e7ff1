"""The one value every encoder returns: a low (coarse) and a high (fine) vector per item."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hivlp_milvus.errors import DimensionMismatchError


@dataclass(frozen=True)
class HierarchicalEmbedding:
    """Both levels of a batch of embeddings, row-aligned.

    ``low`` is ``(N, low_dim)`` and ``high`` is ``(N, high_dim)``; both are L2-normalised when they
    come from a model. They are torch tensors inside the model and float32 numpy arrays once
    handed to Milvus (:meth:`numpy`). A single vector is a batch of one: 1-D ``low``/``high``
    (arrays, tensors or lists) are stored as ``(1, dim)``; lists become float32 arrays.

    Raises:
        DimensionMismatchError: a level is not 1-D or 2-D, or the levels have different row counts.
    """

    low: Any
    high: Any

    def __post_init__(self) -> None:
        # Frozen: normalise the fields in place once, so every consumer sees (N, dim) batches.
        object.__setattr__(self, "low", _as_batch(self.low, "low"))
        object.__setattr__(self, "high", _as_batch(self.high, "high"))
        if len(self.low) != len(self.high):
            raise DimensionMismatchError(f"low has {len(self.low)} rows but high has {len(self.high)}")

    def __len__(self) -> int:
        return len(self.low)

    def __getitem__(self, index: int | slice | Any) -> HierarchicalEmbedding:
        """Rows ``index`` of both levels (an int keeps a batch of one).

        Raises:
            IndexError: an int row outside the batch (so ``for row in embedding`` ends, as for a list).
        """
        if isinstance(index, int):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"row {index} of a batch of {n} embeddings")
            index = slice(index % n, index % n + 1)
        return HierarchicalEmbedding(self.low[index], self.high[index])

    @property
    def low_dim(self) -> int:
        return int(self.low.shape[-1])

    @property
    def high_dim(self) -> int:
        return int(self.high.shape[-1])

    def numpy(self) -> HierarchicalEmbedding:
        """A copy as contiguous float32 numpy arrays (what Milvus accepts)."""
        return HierarchicalEmbedding(_to_numpy(self.low), _to_numpy(self.high))

    @staticmethod
    def concat(parts: list[HierarchicalEmbedding]) -> HierarchicalEmbedding:
        """Row-wise concatenation of several batches (numpy or torch, not mixed)."""
        if not parts:
            raise ValueError("cannot concatenate zero embeddings")
        if isinstance(parts[0].low, torch.Tensor):
            return HierarchicalEmbedding(torch.cat([p.low for p in parts]), torch.cat([p.high for p in parts]))
        # Concatenated as they are, then made float32 once (the same values as casting each part first).
        return HierarchicalEmbedding(
            np.concatenate([p.low for p in parts]), np.concatenate([p.high for p in parts])
        ).numpy()


def _as_batch(x: Any, name: str) -> Any:
    """``x`` as a 2-D batch: a 1-D vector becomes one row; a list becomes a float32 array."""
    if not hasattr(x, "ndim"):
        x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return x.reshape(1, -1)
    if x.ndim != 2:
        raise DimensionMismatchError(
            f"{name} must be one vector (dim,) or a batch (n, dim), got shape {tuple(x.shape)}"
        )
    return x


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


@dataclass(frozen=True)
class HiVLPOutput:
    """What ``HiVLP.forward`` returns for training: both modalities at both levels, and the scales.

    ``logit_scale_low`` / ``logit_scale_high`` are the (already clamped) multiplicative inverse
    temperatures of the low and high level, as 0-d tensors.
    """

    image: HierarchicalEmbedding
    text: HierarchicalEmbedding
    logit_scale_low: torch.Tensor
    logit_scale_high: torch.Tensor
