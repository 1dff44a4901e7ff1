"""Shared test helpers for the model: the small fusion ``micro`` model and random HiVLP outputs for the loss."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from hivlp_milvus.model import HiVLP, create_model, get_config
from hivlp_milvus.model.config import FusionConfig, HiVLPConfig
from hivlp_milvus.model.embedding import HierarchicalEmbedding, HiVLPOutput

# The smallest valid fusion block: one layer, two heads, width 32 (runs in a fraction of a second).
SMALL_FUSION = FusionConfig(layers=1, heads=2, width=32)

# The shape of the random outputs below: 6 pairs, low/high dims 4/8, fixed temperatures.
B, LOW_DIM, HIGH_DIM = 6, 4, 8
SCALE_LOW, SCALE_HIGH = 4.0, 6.0


def micro_fusion_config(fusion: FusionConfig = SMALL_FUSION) -> HiVLPConfig:
    """The ``micro`` config with the fusion block ``fusion``."""
    return dataclasses.replace(get_config("micro"), fusion=fusion)


def micro_fusion_model(texts: Sequence[str], *, seed: int = 0, fusion: FusionConfig = SMALL_FUSION) -> HiVLP:
    """A random-init ``micro`` model with the fusion block ``fusion``, its vocabulary from ``texts``."""
    return create_model(micro_fusion_config(fusion), texts=list(texts), seed=seed)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` with each row L2-normalised (the model's embeddings are unit vectors)."""
    return x / x.norm(dim=1, keepdim=True)


def random_output(seed: int = 0, rows: int = B, *, requires_grad: bool = False) -> HiVLPOutput:
    """A seeded :class:`HiVLPOutput` of ``rows`` pairs with unit embeddings; ``requires_grad`` covers the scales too."""
    g = torch.Generator().manual_seed(seed)
    feats = [
        unit_rows(torch.randn(rows, d, generator=g)).requires_grad_(requires_grad)
        for d in (LOW_DIM, HIGH_DIM, LOW_DIM, HIGH_DIM)
    ]
    return HiVLPOutput(
        image=HierarchicalEmbedding(feats[0], feats[1]),
        text=HierarchicalEmbedding(feats[2], feats[3]),
        logit_scale_low=torch.tensor(SCALE_LOW, requires_grad=requires_grad),
        logit_scale_high=torch.tensor(SCALE_HIGH, requires_grad=requires_grad),
    )
