"""The HiVLP training objective: two InfoNCE levels, coarse-to-fine consistency, shortlist re-rank.

The maths, the motivation of every term and the distributed-equivalence argument are in
``docs/objective.md``; this file is the implementation. Every term is a mean over *query rows*
of a function of that row against all columns, which is what lets N ranks score only their local
rows against the all-gathered columns and still optimise the single-process objective exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BeforeValidator, Field, StrictBool, StrictInt, model_validator
from torch import nn

from hivlp_milvus.errors import ConfigError, DimensionMismatchError
from hivlp_milvus.model.config import (
    ConfigBase,
    NonNegativeInt,
    NonNegativeNumber,
    PositiveNumber,
    config_dataclass,
)
from hivlp_milvus.model.distributed import (
    all_gather_no_grad,
    all_gather_with_grad,
    check_equal_batch_sizes,
    is_distributed,
    rank_and_world_size,
)
from hivlp_milvus.model.embedding import HiVLPOutput

__all__ = ["FUSION_TERMS", "TERMS", "HiVLPLoss", "LossConfig", "LossOutput"]

#: The weighted terms of the objective, in the order they are reported.
TERMS: tuple[str, ...] = ("low", "high", "consistency", "shortlist")
#: Terms that train the fusion block (the model must have one); off by default, reported after TERMS.
FUSION_TERMS: tuple[str, ...] = ("itm",)
_ALL_TERMS = TERMS + FUSION_TERMS


def _auto_or_bool(value: Any) -> Any:
    # One clear message instead of one per member of the union.
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(f"must be 'auto', true or false, got {value!r}")


@config_dataclass("LossConfig")
class LossConfig(ConfigBase):
    """Weights and knobs of the HiVLP objective; a weight of 0 switches that term off entirely.

    Attributes:
        low: Weight of the symmetric InfoNCE on the low (coarse) vectors.
        high: Weight of the symmetric InfoNCE on the high (fine) vectors.
        consistency: Weight of KL(p_high ‖ p_low) per query row, p_high stop-grad.
        shortlist: Weight of the high-level CE restricted to the low-level top-``shortlist_k``.
        shortlist_k: Shortlist size in *global* batch columns (≥ 2); ≥ global batch = high InfoNCE.
        shortlist_start_step: optimisation step from which the shortlist term is on (when the
            caller passes ``step``). Before the low level ranks anything its "shortlist" is noise,
            and training the high level on it from step 0 held a from-scratch model at chance
            (measured: loss stuck at ln B); the funnel term is a curriculum stage, not a warm start.
        consistency_temperature: τ_c dividing both levels' logits inside the KL.
        itm: Weight of image–text matching (needs a model with a fusion block): binary
            cross-entropy of the fusion logit on each positive pair and on one hard negative
            image per text and one hard negative text per image, sampled (as ALBEF does) in
            proportion to the softmax of this rank's high-level similarities, positives excluded.
        gather: ``"auto"`` all-gathers when ``torch.distributed`` is initialised with ≥ 2 ranks;
            ``True`` requires that (error otherwise); ``False`` never gathers (per-rank batches).
    """

    low: NonNegativeNumber = 1.0
    high: NonNegativeNumber = 1.0
    consistency: NonNegativeNumber = 1.0
    shortlist: NonNegativeNumber = 0.5
    # K = 1 leaves only the positive in the shortlist: the term would be identically 0.
    shortlist_k: Annotated[StrictInt, Field(ge=2)] = 16
    shortlist_start_step: NonNegativeInt = 0
    consistency_temperature: PositiveNumber = 1.0
    itm: NonNegativeNumber = 0.0
    gather: Annotated[Literal["auto"] | StrictBool, BeforeValidator(_auto_or_bool)] = "auto"

    @model_validator(mode="after")
    def _some_loss_at_every_step(self) -> LossConfig:
        if all(getattr(self, name) == 0 for name in _ALL_TERMS):
            raise ValueError(f"all weights ({', '.join(_ALL_TERMS)}) are 0; switch on at least one")
        if self.shortlist_start_step > 0 and all(
            getattr(self, name) == 0 for name in _ALL_TERMS if name != "shortlist"
        ):
            raise ValueError(
                "shortlist_start_step > 0 with only the shortlist term on leaves no loss "
                "before that step; switch on another term or set shortlist_start_step: 0"
            )
        return self

    @property
    def weights(self) -> dict[str, float]:
        """The switched-on terms and their weights, in :data:`TERMS` then :data:`FUSION_TERMS` order."""
        return {name: getattr(self, name) for name in _ALL_TERMS if getattr(self, name) > 0}

    def weights_at(self, step: int | None) -> dict[str, float]:
        """:attr:`weights` at optimisation ``step`` (``None``: every switched-on term)."""
        weights = self.weights
        if step is not None and step < self.shortlist_start_step:
            weights.pop("shortlist", None)
        return weights


@dataclass(frozen=True)
class LossOutput:
    """What :class:`HiVLPLoss` returns.

    Attributes:
        total: The weighted sum of the switched-on terms (carries the autograd graph).
        parts: Detached values for logging: each switched-on term (unweighted) under its
            :data:`TERMS` name, plus ``logit_scale_low`` and ``logit_scale_high``.
    """

    total: torch.Tensor
    parts: dict[str, torch.Tensor]


class HiVLPLoss(nn.Module):
    """The HiVLP objective over one (possibly distributed) batch of paired images and texts.

    Row ``i`` of ``out.image`` and row ``i`` of ``out.text`` are a positive pair. With
    ``torch.distributed`` initialised (and ``gather`` not ``False``), features are all-gathered
    with gradients and this rank's rows are scored against the global batch, labels offset by
    ``rank * B`` (open_clip's local loss). Each rank's loss is then the mean over *its* rows, so
    the mean of the ranks' losses equals the single-process loss on the concatenated batch, and
    DDP's gradient averaging yields the single-process gradient (``docs/objective.md``).
    """

    def __init__(self, config: LossConfig | None = None) -> None:
        """Create the loss.

        Args:
            config: Weights and knobs; the defaults of :class:`LossConfig` when ``None``.
        """
        super().__init__()
        self.config = config if config is not None else LossConfig()

    def forward(self, out: HiVLPOutput, groups: torch.Tensor | None = None, *, step: int | None = None) -> LossOutput:
        """Compute the objective.

        Args:
            out: Both modalities at both levels (rows aligned) and the clamped logit scales.
            groups: Optional ``(B,)`` integer group id per row; rows with equal ids (across all
                ranks: ids must be global) are mutual positives, e.g. near-duplicate scenes.
            step: the optimisation step; the shortlist term is off before
                ``config.shortlist_start_step``. ``None`` = every switched-on term.

        Returns:
            :class:`LossOutput` with the weighted total and detached parts.

        Raises:
            DimensionMismatchError: Image and text batches or dims disagree, or ``groups`` has the
                wrong shape/dtype.
            ConfigError: ``gather=True`` without an initialised process group, or unequal
                per-rank batch sizes.
        """
        cfg = self.config
        weights = cfg.weights_at(step)
        image, text = out.image, out.text
        _check_shapes(out, groups)
        batch = len(image)
        device = image.low.device

        rank, world = self._rank_and_world()
        if world > 1:
            check_equal_batch_sizes(batch, device=device)
            # One collective for all four tensors instead of four.
            local = torch.cat([image.low, image.high, text.low, text.high], dim=1)
            glob = all_gather_with_grad(local)
            split = [image.low_dim, image.high_dim, text.low_dim, text.high_dim]
            all_img_low, all_img_high, all_txt_low, all_txt_high = torch.split(glob, split, dim=1)
        else:
            all_img_low, all_img_high, all_txt_low, all_txt_high = image.low, image.high, text.low, text.high

        if groups is not None:
            groups = groups.to(device=device, dtype=torch.long)
            all_groups = all_gather_no_grad(groups) if world > 1 else groups
            positives = groups[:, None] == all_groups[None, :]
        else:
            columns = torch.arange(batch * world, device=device)
            positives = columns[None, :] == (torch.arange(batch, device=device) + rank * batch)[:, None]
        # Image i and text i share index and group, so one mask serves both directions.

        scale_low, scale_high = out.logit_scale_low, out.logit_scale_high
        need_low = any(t in weights for t in ("low", "consistency", "shortlist"))
        need_high = any(t in weights for t in ("high", "consistency", "shortlist"))
        # (image→text, text→image) logits of this rank's rows against all columns, in float32
        # so softmax/KL stay accurate under bf16 autocast.
        low = (
            (_logits(scale_low, image.low, all_txt_low), _logits(scale_low, text.low, all_img_low))
            if need_low
            else None
        )
        high = (
            (_logits(scale_high, image.high, all_txt_high), _logits(scale_high, text.high, all_img_high))
            if need_high
            else None
        )

        terms: dict[str, torch.Tensor] = {}
        if "low" in weights:
            terms["low"] = _symmetric(low, lambda lg: _soft_ce(lg, positives))
        if "high" in weights:
            terms["high"] = _symmetric(high, lambda lg: _soft_ce(lg, positives))
        if "consistency" in weights:
            tau = cfg.consistency_temperature
            terms["consistency"] = 0.5 * (_consistency_kl(high[0], low[0], tau) + _consistency_kl(high[1], low[1], tau))
        if "shortlist" in weights:
            k = cfg.shortlist_k
            terms["shortlist"] = 0.5 * (
                _soft_ce(high[0], positives, _shortlist_mask(low[0], positives, k))
                + _soft_ce(high[1], positives, _shortlist_mask(low[1], positives, k))
            )
        if "itm" in weights:
            # Local rows only (as ALBEF): the fusion block needs token features, which are not gathered.
            local = positives[:, rank * batch : (rank + 1) * batch] if groups is None else _positives_local(groups)
            terms["itm"] = _itm(out, local)

        total = sum(weights[name] * value for name, value in terms.items())
        parts = {name: value.detach() for name, value in terms.items()}
        parts["logit_scale_low"] = torch.as_tensor(scale_low).detach()
        parts["logit_scale_high"] = torch.as_tensor(scale_high).detach()
        return LossOutput(total=total, parts=parts)

    def _rank_and_world(self) -> tuple[int, int]:
        gather = self.config.gather
        if gather is False:
            return 0, 1
        if is_distributed():
            return rank_and_world_size()
        if gather is True:
            raise ConfigError(
                "LossConfig.gather=True but torch.distributed is not initialised with ≥ 2 ranks; "
                "use gather='auto' (gathers only when distributed) or initialise the process group first"
            )
        return 0, 1


def _positives_local(groups: torch.Tensor) -> torch.Tensor:
    """``(B, B)``: rows of this rank's batch that are mutual positives (same group id)."""
    return groups[:, None] == groups[None, :]


def _itm(out: HiVLPOutput, positives: torch.Tensor) -> torch.Tensor:
    """Image–text matching BCE on the positives and one sampled hard negative per image and per text."""
    fusion = getattr(out, "fusion", None)
    if fusion is None:
        raise ConfigError(
            "LossConfig.itm > 0 needs a model with a fusion block (HiVLPConfig.fusion), but the forward "
            "output has none; add a fusion block to the model config or set loss.itm: 0"
        )
    device = out.image.high.device
    batch = len(out.image)
    with torch.no_grad():
        sim = (out.text.high @ out.image.high.T).float() * out.logit_scale_high.detach().float()
        # Row t: how hard each image is as a negative for text t; rows of the transpose: texts per image.
        weights_t2i = torch.softmax(sim, dim=1).masked_fill(positives, 0.0)
        weights_i2t = torch.softmax(sim.T, dim=1).masked_fill(positives.T, 0.0)
        texts_with_neg = torch.nonzero(weights_t2i.sum(dim=1) > 0).flatten()
        images_with_neg = torch.nonzero(weights_i2t.sum(dim=1) > 0).flatten()
        neg_images = (
            torch.multinomial(weights_t2i[texts_with_neg], 1).flatten() if len(texts_with_neg) else texts_with_neg
        )
        neg_texts = (
            torch.multinomial(weights_i2t[images_with_neg], 1).flatten() if len(images_with_neg) else images_with_neg
        )
    rows = torch.arange(batch, device=device)
    image_index = torch.cat([rows, neg_images, images_with_neg])
    text_index = torch.cat([rows, texts_with_neg, neg_texts])
    logits = fusion.match(image_index, text_index).float()
    labels = torch.zeros_like(logits)
    labels[:batch] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


def _check_shapes(out: HiVLPOutput, groups: torch.Tensor | None) -> None:
    image, text = out.image, out.text
    if len(image) != len(text):
        raise DimensionMismatchError(f"{len(image)} image rows but {len(text)} text rows; rows must be pairs")
    if image.low_dim != text.low_dim or image.high_dim != text.high_dim:
        raise DimensionMismatchError(
            f"image dims (low {image.low_dim}, high {image.high_dim}) differ from text dims "
            f"(low {text.low_dim}, high {text.high_dim})"
        )
    if groups is not None:
        if not isinstance(groups, torch.Tensor) or groups.dim() != 1 or len(groups) != len(image):
            raise DimensionMismatchError(
                f"groups must be a 1-d tensor with one id per row ({len(image)}), "
                f"got {getattr(groups, 'shape', type(groups).__name__)}"
            )
        if groups.is_floating_point() or groups.is_complex():
            raise DimensionMismatchError(f"groups must be integer ids, got dtype {groups.dtype}")


def _logits(scale: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    return (scale * (rows @ columns.T)).float()


def _symmetric(
    pair: tuple[torch.Tensor, torch.Tensor] | None, term: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    assert pair is not None  # guaranteed by need_low / need_high
    return 0.5 * (term(pair[0]) + term(pair[1]))


def _soft_ce(logits: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of CE against the uniform distribution over each row's positive columns.

    ``candidates`` (a superset of ``positives``) restricts the softmax to those columns.
    """
    if candidates is not None:
        logits = logits.masked_fill(~candidates, float("-inf"))
    log_p = torch.log_softmax(logits, dim=1)
    targets = positives.to(log_p.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True)
    # Zero the excluded columns *before* multiplying: 0 · (-inf) would be NaN. Positives are always
    # candidates, so every kept log-probability is finite.
    return -(log_p.masked_fill(~positives, 0.0) * targets).sum(dim=1).mean()


def _consistency_kl(high: torch.Tensor, low: torch.Tensor, temperature: float) -> torch.Tensor:
    """Row-wise KL(p_high ‖ p_low), batchmean; p_high is a stop-grad teacher."""
    log_p_high = torch.log_softmax(high.detach() / temperature, dim=1)
    log_p_low = torch.log_softmax(low / temperature, dim=1)
    return F.kl_div(log_p_low, log_p_high, reduction="batchmean", log_target=True)


def _shortlist_mask(low_logits: torch.Tensor, positives: torch.Tensor, k: int) -> torch.Tensor:
    """Columns each row's coarse stage would shortlist, with its positives forced in.

    Equivalent to "top-``k`` columns by low score, then every missing positive replaces the
    lowest-ranked non-positive slot": all positives plus the best ``k - |P|`` negatives. Selection
    is detached (like inference's ANN stage, it is not differentiable) and never smaller than the
    positive set.
    """
    scores = low_logits.detach()
    k = min(k, scores.shape[1])
    keep_negatives = (k - positives.sum(dim=1, keepdim=True)).clamp(min=0)
    order = torch.argsort(scores.masked_fill(positives, float("-inf")), dim=1, descending=True, stable=True)
    rank_of = torch.empty_like(order)
    rank_of.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return positives | ((rank_of < keep_negatives) & ~positives)
