"""The HiVLP training objective: two InfoNCE levels, coarse-to-fine consistency, shortlist re-rank.

Optional negatives from the peers (``docs/objective.md``, "Negatives"): hard-negative weighting of
the InfoNCE terms (Robinson et al. 2021, as VLDeformer's bi-modal hard negatives), a queue of past
all-gathered embeddings as extra negatives (MoCo's/ALBEF's ``_dequeue_and_enqueue``, COTS), and the
choice of how ``itm`` draws its negatives (ALBEF's softmax sampling, or the hardest).

The maths, the motivation of every term and the distributed-equivalence argument are in
``docs/objective.md``; this file is the implementation. Every term is a mean over *query rows*
of a function of that row against all columns, which is what lets N ranks score only their local
rows against the all-gathered columns and still optimise the single-process objective exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BeforeValidator, Field, StrictBool, StrictInt, model_validator
from torch import nn

from hivlp_milvus.errors import CheckpointError, ConfigError, DimensionMismatchError
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

__all__ = ["FUSION_TERMS", "TERMS", "HiVLPLoss", "LossConfig", "LossOutput", "NegativeQueue"]

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
        itm_negatives: how ``itm`` picks each row's negative among this rank's non-positive rows:
            ``"sampled"`` draws it in proportion to the softmax of the high-level similarity (ALBEF);
            ``"hardest"`` takes the most similar one (deterministic, the hardest in the batch).
        hard_negative_beta: β ≥ 0 of the hard-negative weighting of the ``low`` and ``high``
            InfoNCE terms: each negative column j of a row is weighted by
            ``w_j = N · softmax_j(β · logit_j)`` over the row's N negatives (detached importance
            weights, mean 1), so the most similar negatives dominate the denominator. 0 = off.
        queue_size: rows of past (all-gathered, detached) embeddings kept per level and modality
            and used as extra negative columns of the ``low`` and ``high`` InfoNCE terms (0 = off).
            Every call of the loss enqueues the global batch, so the queue is identical on every
            rank; queued rows of a group in the batch are left out of that row's softmax.
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
    itm_negatives: Literal["sampled", "hardest"] = "sampled"
    hard_negative_beta: NonNegativeNumber = 0.0
    queue_size: NonNegativeInt = 0
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
        self.queue = NegativeQueue(self.config.queue_size)

    def queue_state(self) -> dict[str, torch.Tensor]:
        """The negative queue as named tensors (empty when it is off or empty), for checkpoints."""
        return self.queue.state_dict()

    def load_queue_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the queue from :meth:`queue_state` (the newest ``queue_size`` rows are kept)."""
        self.queue.load_state_dict(state)

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
        # The columns every row is scored against, by NegativeQueue.FIELDS name: this rank's rows, or all ranks'.
        gathered = {"image_low": image.low, "image_high": image.high, "text_low": text.low, "text_high": text.high}
        if world > 1:
            check_equal_batch_sizes(batch, device=device)
            # One collective for all four tensors instead of four.
            # In float32 whatever autocast made of the heads: gloo gathers bf16 slowly or not at all.
            glob = all_gather_with_grad(torch.cat(list(gathered.values()), dim=1).float())
            split = torch.split(glob, [t.shape[1] for t in gathered.values()], dim=1)
            gathered = dict(zip(gathered, split, strict=True))

        if groups is not None:
            groups = groups.to(device=device, dtype=torch.long)
            all_groups = all_gather_no_grad(groups) if world > 1 else groups
            positives = groups[:, None] == all_groups[None, :]
        else:
            columns = torch.arange(batch * world, device=device)
            positives = columns[None, :] == (torch.arange(batch, device=device) + rank * batch)[:, None]
        # Image i and text i share index and group, so one mask serves both directions.

        scales = {"low": out.logit_scale_low, "high": out.logit_scale_high}
        # Per level, (image→text, text→image) logits of this rank's rows against all columns, in
        # float32 so softmax/KL stay accurate under bf16 autocast; only the levels a term reads.
        both = "consistency" in weights or "shortlist" in weights
        logits = {
            level: (
                _logits(scale, getattr(image, level), gathered[f"text_{level}"]),
                _logits(scale, getattr(text, level), gathered[f"image_{level}"]),
            )
            for level, scale in scales.items()
            if both or level in weights
        }

        terms: dict[str, torch.Tensor] = {}
        # The queue's columns follow the batch's; consistency and shortlist keep to the batch (the
        # funnel inference runs is over one gallery, not over stale rows of past steps).
        queued = self.queue.columns(device) if len(self.queue) else None
        if queued is not None:
            queue_pos = (
                self.queue.same_group(groups)
                if groups is not None
                else torch.zeros(batch, len(self.queue), dtype=torch.bool, device=device)
            )
            wide_pos = torch.cat([positives, torch.zeros_like(queue_pos)], dim=1)
            wide_cand = torch.cat([torch.ones_like(positives), ~queue_pos], dim=1)
        for level in ("low", "high"):
            if level not in weights:
                continue
            if queued is not None:
                scale = scales[level]
                i2t = torch.cat([logits[level][0], _logits(scale, getattr(image, level), queued[f"text_{level}"])], 1)
                t2i = torch.cat([logits[level][1], _logits(scale, getattr(text, level), queued[f"image_{level}"])], 1)
                pos, cand = wide_pos, wide_cand
            else:
                (i2t, t2i), pos, cand = logits[level], positives, None
            beta = cfg.hard_negative_beta
            terms[level] = 0.5 * (
                _soft_ce(_hard_negative_logits(i2t, pos, cand, beta), pos, cand)
                + _soft_ce(_hard_negative_logits(t2i, pos, cand, beta), pos, cand)
            )
        if both:
            high, low = logits["high"], logits["low"]
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
            local = positives[:, rank * batch : (rank + 1) * batch] if groups is None else groups[:, None] == groups
            terms["itm"] = _itm(out, local, hardest=cfg.itm_negatives == "hardest")
        if cfg.queue_size > 0:
            # After the terms: a batch is never its own negative. Every rank pushes the same global rows.
            self.queue.push(gathered, None if groups is None else all_groups)

        total = sum(weights[name] * value for name, value in terms.items())
        parts = {name: value.detach() for name, value in terms.items()}
        parts.update({f"logit_scale_{level}": torch.as_tensor(scale).detach() for level, scale in scales.items()})
        return LossOutput(total=total, parts=parts)

    def _rank_and_world(self) -> tuple[int, int]:
        gather = self.config.gather
        if gather is not False and is_distributed():
            return rank_and_world_size()
        if gather is True:
            raise ConfigError(
                "LossConfig.gather=True but torch.distributed is not initialised with ≥ 2 ranks; "
                "use gather='auto' (gathers only when distributed) or initialise the process group first"
            )
        return 0, 1


def _itm(out: HiVLPOutput, positives: torch.Tensor, *, hardest: bool = False) -> torch.Tensor:
    """Image–text matching BCE on the positives and one hard negative per image and per text.

    The negative is sampled in proportion to the softmax of the similarities (ALBEF's
    ``model_retrieval.py``), or with ``hardest`` the most similar non-positive row.
    """
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
        neg_images = _draw(weights_t2i[texts_with_neg], hardest) if len(texts_with_neg) else texts_with_neg
        neg_texts = _draw(weights_i2t[images_with_neg], hardest) if len(images_with_neg) else images_with_neg
    rows = torch.arange(batch, device=device)
    image_index = torch.cat([rows, neg_images, images_with_neg])
    text_index = torch.cat([rows, texts_with_neg, neg_texts])
    logits = fusion.match(image_index, text_index).float()
    labels = torch.zeros_like(logits)
    labels[:batch] = 1.0
    return F.binary_cross_entropy_with_logits(logits, labels)


def _draw(weights: torch.Tensor, hardest: bool) -> torch.Tensor:
    """One column per row: the heaviest (``hardest``) or one drawn in proportion to the weights."""
    if hardest:
        return torch.argmax(weights, dim=1)
    return torch.multinomial(weights, 1).flatten()


def _hard_negative_logits(
    logits: torch.Tensor, positives: torch.Tensor, candidates: torch.Tensor | None, beta: float
) -> torch.Tensor:
    """Logits whose softmax denominator weights each negative by ``N · softmax(β · logit)``.

    Robinson et al., "Contrastive Learning with Hard Negative Samples" (ICLR 2021, code
    ``joshr17/HCL``: ``imp = exp(β·sim)``, ``reweight_neg = (imp·neg).sum / imp.mean``), the
    re-weighting VLDeformer applies to its bi-modal negatives. Adding ``log w_j`` to a negative's
    logit multiplies its ``exp`` by ``w_j``; the weights have mean 1 over the row's negatives, so
    β = 0 is plain InfoNCE, and they are detached (importance weights, not a learnt quantity).
    Positives and excluded columns keep their logits.
    """
    if beta == 0:
        return logits
    negatives = ~positives if candidates is None else candidates & ~positives
    with torch.no_grad():
        scaled = (beta * logits).masked_fill(~negatives, float("-inf"))
        count = negatives.sum(dim=1, keepdim=True)
        norm = torch.logsumexp(scaled, dim=1, keepdim=True)
        log_w = scaled - norm + torch.log(count.clamp(min=1).to(logits.dtype))
        # Rows without negatives (logsumexp = -inf) and non-negative columns: weight 1, log 0.
        log_w = torch.where(negatives, log_w, torch.zeros_like(log_w))
    return logits + log_w


class NegativeQueue:
    """A FIFO of past global batches' embeddings (both levels, both modalities) and group ids.

    The rows are the *all-gathered* detached embeddings, pushed in the same order on every rank,
    so the queue is the same everywhere without a collective of its own (MoCo's
    ``_dequeue_and_enqueue`` gathers its keys first for the same reason). It is stored newest
    first, at most ``size`` rows, without a momentum encoder: the rows are the online model's
    own embeddings of the last ``size`` pairs, as in XBM (Wang et al., CVPR 2020), which found
    their drift small enough once the model trains past its first steps; a momentum copy of both
    towers (MoCo, COTS) would double the model's memory.
    """

    FIELDS = ("image_low", "image_high", "text_low", "text_high")

    def __init__(self, size: int) -> None:
        """An empty queue of at most ``size`` rows (0 = off: :meth:`push` keeps nothing)."""
        self.size = size
        self._rows: dict[str, torch.Tensor] = {}
        self._groups: torch.Tensor | None = None  # group id per row, -1 = none
        self._grouped: torch.Tensor | None = None  # whether the row's batch had group ids

    def __len__(self) -> int:
        return 0 if self._groups is None else len(self._groups)

    @torch.no_grad()
    def push(self, rows: dict[str, torch.Tensor], groups: torch.Tensor | None) -> None:
        """Put a global batch in front; the oldest rows beyond ``size`` fall out."""
        if self.size == 0:
            return
        count = len(rows["image_low"])
        device = rows["image_low"].device
        ids = groups if groups is not None else torch.full((count,), -1, dtype=torch.long, device=device)
        flags = torch.full((count,), groups is not None, dtype=torch.bool, device=device)
        if len(self) and any(self._rows[n].shape[1] != rows[n].shape[1] for n in self.FIELDS):
            raise DimensionMismatchError(
                "the negative queue holds embeddings of other dims than this batch's; a checkpoint's "
                "queue belongs to its model: resume with the model that wrote it"
            )
        fresh = {n: rows[n].detach().float() for n in self.FIELDS}
        if len(self):
            fresh = {n: torch.cat([fresh[n], self._rows[n].to(device)]) for n in self.FIELDS}
            ids = torch.cat([ids, self._groups.to(device)])
            flags = torch.cat([flags, self._grouped.to(device)])
        self._rows = {n: t[: self.size].contiguous() for n, t in fresh.items()}
        self._groups, self._grouped = ids[: self.size].contiguous(), flags[: self.size].contiguous()

    def columns(self, device: torch.device) -> dict[str, torch.Tensor]:
        """The queued embeddings per :attr:`FIELDS` name, newest first, on ``device``."""
        return {n: t.to(device) for n, t in self._rows.items()}

    def same_group(self, groups: torch.Tensor) -> torch.Tensor:
        """``(B, len)``: which queued rows share a group id with each batch row (excluded as negatives)."""
        if self._groups is None or self._grouped is None:
            return torch.zeros(len(groups), 0, dtype=torch.bool, device=groups.device)
        queued = self._groups.to(groups.device)
        return (groups[:, None] == queued[None, :]) & self._grouped.to(groups.device)[None, :]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Named CPU tensors (safetensors-ready); empty when the queue is."""
        if not len(self):
            return {}
        state = {f"queue.{n}": t.cpu().contiguous() for n, t in self._rows.items()}
        state["queue.groups"] = self._groups.cpu().contiguous()
        state["queue.grouped"] = self._grouped.cpu().contiguous()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`'s tensors (empty: an empty queue); keeps the newest ``size`` rows.

        Raises:
            CheckpointError: a tensor is missing or the row counts disagree.
        """
        if not state or self.size == 0:
            self._rows, self._groups, self._grouped = {}, None, None
            return
        names = [*(f"queue.{n}" for n in self.FIELDS), "queue.groups", "queue.grouped"]
        missing = [n for n in names if n not in state]
        lengths = {len(state[n]) for n in names if n in state}
        if missing or len(lengths) != 1:
            raise CheckpointError(
                f"the saved negative queue is incomplete (missing {missing}, row counts {sorted(lengths)}); "
                "resume from another checkpoint or delete its loss_state.safetensors to start with an empty queue"
            )
        keep = slice(0, self.size)
        self._rows = {n: state[f"queue.{n}"][keep].float().clone() for n in self.FIELDS}
        self._groups = state["queue.groups"][keep].long().clone()
        self._grouped = state["queue.grouped"][keep].bool().clone()


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
