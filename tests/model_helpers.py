"""Shared test helpers for the model: the small fusion ``micro`` model, random HiVLP outputs and a loop reference
of the loss's InfoNCE terms."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
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


# --------------------------------------------------------------------------- loop reference
# Explicit float64 loops written from the definitions in docs/objective.md, not from the vectorised
# implementation.


def side(out: HiVLPOutput, modality: str, level: str) -> np.ndarray:
    """One embedding of ``out`` (``modality`` image/text, ``level`` low/high) as a float64 array."""
    return getattr(getattr(out, modality), level).detach().double().numpy()


def positives(i: int, n: int, groups: list[int] | None) -> list[int]:
    """Row ``i``'s positive columns among the batch's ``n``: itself, or every row of its group."""
    return [j for j in range(n) if (groups[j] == groups[i] if groups else j == i)]


def logit_rows(out: HiVLPOutput, level: str, queue: dict[str, np.ndarray] | None = None) -> list[list[list[float]]]:
    """The image→text and text→image logits of ``level``, row by row; ``queue`` rows are extra columns."""
    scale = float(out.logit_scale_low if level == "low" else out.logit_scale_high)
    directions = []
    for rows_m, cols_m in (("image", "text"), ("text", "image")):
        cols = side(out, cols_m, level)
        if queue is not None:
            cols = np.concatenate([cols, queue[f"{cols_m}_{level}"]])
        directions.append([[scale * float(row @ col) for col in cols] for row in side(out, rows_m, level)])
    return directions


def ref_row(logits: list[float], positives: list[int], excluded: set[int], beta: float = 0.0) -> float:
    """-(1/|P|) Σ_p log(e^{l_p} / (Σ_{q∈P} e^{l_q} + Σ_{j∈N} w_j e^{l_j})), N = the rest minus ``excluded``."""
    negatives = [j for j in range(len(logits)) if j not in positives and j not in excluded]
    if negatives:
        z = sum(math.exp(beta * logits[j]) for j in negatives)
        weights = {j: len(negatives) * math.exp(beta * logits[j]) / z for j in negatives}
    else:
        weights = {}
    denom = sum(math.exp(logits[q]) for q in positives) + sum(w * math.exp(logits[j]) for j, w in weights.items())
    return -sum(logits[p] - math.log(denom) for p in positives) / len(positives)


def ref_infonce(
    out: HiVLPOutput,
    level: str,
    *,
    groups: list[int] | None,
    beta: float = 0.0,
    queue: dict[str, np.ndarray] | None = None,
    queue_groups: list[int] | None = None,
) -> float:
    """Symmetric InfoNCE of one level (the mean over both directions' rows); ``queue`` rows are extra
    columns, those of a row's group (``queue_groups``) left out."""
    values = []
    for matrix in logit_rows(out, level, queue):
        n = len(matrix)
        for i, logits in enumerate(matrix):
            same = {n + k for k, g in enumerate(queue_groups or []) if groups and g == groups[i]}
            values.append(ref_row(logits, positives(i, n, groups), same, beta))
    return sum(values) / len(values)
