"""Hierarchical projection heads: tower features → L2-normalised (low, high) embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hivlp_milvus.errors import ConfigError
from hivlp_milvus.model.embedding import HierarchicalEmbedding


class SeparateHead(nn.Module):
    """Two independent linear projections, feature → low and feature → high (the default).

    Args:
        in_dim: width of the tower features.
        low_dim: coarse output dimension.
        high_dim: fine output dimension.
    """

    def __init__(self, in_dim: int, low_dim: int, high_dim: int) -> None:
        super().__init__()
        # No bias, as in CLIP: a shared offset would only add a constant to every similarity.
        self.low = nn.Linear(in_dim, low_dim, bias=False)
        self.high = nn.Linear(in_dim, high_dim, bias=False)

    def forward(self, features: torch.Tensor) -> HierarchicalEmbedding:
        """``(N, in_dim)`` → both levels, each L2-normalised."""
        return HierarchicalEmbedding(_normalise(self.low(features)), _normalise(self.high(features)))


class NestedHead(nn.Module):
    """One projection feature → high; low is its first ``low_dim`` dims (Matryoshka prefix).

    The prefix is taken *before* normalisation and normalised on its own, so the low vector is a
    unit vector too and the coarse index sees the same kind of vector as with a separate head.

    Args:
        in_dim: width of the tower features.
        low_dim: coarse output dimension (a prefix of high).
        high_dim: fine output dimension.

    Raises:
        ConfigError: ``low_dim > high_dim``.
    """

    def __init__(self, in_dim: int, low_dim: int, high_dim: int) -> None:
        super().__init__()
        if low_dim > high_dim:
            raise ConfigError(f"nested head needs low_dim ({low_dim}) <= high_dim ({high_dim})")
        self.low_dim = low_dim
        self.proj = nn.Linear(in_dim, high_dim, bias=False)

    def forward(self, features: torch.Tensor) -> HierarchicalEmbedding:
        """``(N, in_dim)`` → both levels, each L2-normalised."""
        full = self.proj(features)
        return HierarchicalEmbedding(_normalise(full[:, : self.low_dim]), _normalise(full))


def build_head(kind: str, in_dim: int, low_dim: int, high_dim: int) -> nn.Module:
    """The head named by ``HiVLPConfig.head``.

    Args:
        kind: ``"separate"`` or ``"nested"``.
        in_dim: width of the tower features.
        low_dim: coarse output dimension.
        high_dim: fine output dimension.

    Returns:
        A module mapping ``(N, in_dim)`` features to a :class:`HierarchicalEmbedding`.

    Raises:
        ConfigError: unknown ``kind``.
    """
    if kind == "separate":
        return SeparateHead(in_dim, low_dim, high_dim)
    if kind == "nested":
        return NestedHead(in_dim, low_dim, high_dim)
    raise ConfigError(f"unknown head {kind!r}; use 'separate' or 'nested'")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    # eps keeps an all-zero row (possible at init or with a dead input) from producing NaNs.
    return F.normalize(x, dim=-1, eps=1e-12)
