"""Second training stage of the fusion block: hard negatives mined from the search funnel.

Why it exists: trained only by the in-batch ``itm`` term, the quickstart's scorer re-ranked the
funnel's top-M *worse* than the fine stage (t2i R@1 61 -> 13 at M = 20). Its negatives were
random in-batch pairs, far easier than the fine stage's top-M, which are exactly the scenes a dual
encoder confuses. This stage trains the fusion block alone (towers and heads frozen, so the
vectors, and what is ingested, do not change) on the candidates the funnel itself returns, as
LightningDOT's re-ranker is trained on its retriever's top-M:

1. Cache the frozen towers' outputs for a sample of the training split: image tokens, caption
   token states, both levels of both modalities.
2. Mine: in galleries of ``gallery_size`` images (the test gallery's size, so the negatives are
   as hard as at search time) run the funnel (low top ``coarse_limit`` -> high top ``mine_limit``)
   for every caption and every image; its non-relevant hits are the query's hard negatives.
3. Train: per query, a softmax over the fusion logits of its positive and ``negatives`` hard
   negatives (a listwise ranking loss: the stage-3 task is ordering a top-M), both directions.
4. Choose the score mix on the validation split: the stage-3 order is by
   ``distance + weight * fusion_score`` (``weight=None``: the fusion score alone), and the weight
   with the best mean R@1 of the three-stage search over the validation gallery is stored in the
   model config (``fusion.score_weight``). Weight 0 is on the grid, so the stored mix never ranks
   the validation set worse than the two stages.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from hivlp_milvus.data.record import Record
from hivlp_milvus.device import check_training_precision, training_autocast_dtype
from hivlp_milvus.errors import ConfigError
from hivlp_milvus.model import HiVLP
from hivlp_milvus.model.hivlp import eval_mode
from training.step import mixed_precision

__all__ = ["FusionFinetuneConfig", "FusionFinetuneReport", "finetune_fusion", "fusion_recall_at_1", "mix_order"]

#: The score-mix weights tried on the validation split. ``None`` (the fusion score alone) is left out so
#: a tuned model always carries a number: a large weight is that order in all but ties.
DEFAULT_WEIGHTS: tuple[float | None, ...] = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0)


@dataclasses.dataclass(frozen=True)
class FusionFinetuneConfig:
    """Budget and shape of the funnel-negative stage.

    Attributes:
        steps: optimizer steps. 800 lift the quickstart model's t2i and i2t R@1 at M = 20 by 5.8
            points each over two stages (through Milvus, 1,000 queries a direction), 200 by 2.7 and 2.8
            (docs/objective.md); a step costs ~0.33 s on two CPU cores.
        batch_size: queries per direction per step.
        negatives: hard negatives per query (drawn from its funnel top ``mine_limit``).
        mine_limit: depth ``M`` of the mining funnel (the search's ``fusion_limit``).
        coarse_limit: coarse shortlist of the mining funnel.
        gallery_size: images per mining gallery.
        max_images: training images cached (the cost is linear in it).
        captions_per_image: captions per cached image.
        lr: AdamW learning rate of the fusion block.
        seed: sampling seed.
        weights: score-mix weights tried on the validation split.
        val_images: validation images in the weight-selection gallery.
        precision: of the training steps, as ``optim.precision`` (``auto``: bf16 autocast where the
            device runs it natively); the caching and the weight choice stay float32, as search does.
    """

    steps: int = 800
    batch_size: int = 32
    negatives: int = 7
    mine_limit: int = 20
    coarse_limit: int = 50
    gallery_size: int = 1000
    max_images: int = 3000
    captions_per_image: int = 2
    lr: float = 3e-4
    seed: int = 0
    weights: tuple[float | None, ...] = DEFAULT_WEIGHTS
    val_images: int = 500
    precision: str = "auto"


@dataclasses.dataclass(frozen=True)
class FusionFinetuneReport:
    """What the stage did: the loss, the chosen weight and the validation R@1 it was chosen on.

    Attributes:
        steps: optimizer steps run.
        first_loss: mean loss of the first tenth of the steps.
        last_loss: mean loss of the last tenth (``ln(1 + negatives)`` is a scorer that knows nothing).
        score_weight: the chosen mix weight (``None``: the fusion score alone).
        val_r1: validation R@1 (t2i and i2t averaged) per weight tried, ``"fusion"`` for ``None``.
        seconds: wall time of the stage.
    """

    steps: int
    first_loss: float
    last_loss: float
    score_weight: float | None
    val_r1: dict[str, float]
    seconds: float

    def summary(self) -> str:
        """One line per fact, for the quickstart's log."""
        chosen = "fusion alone" if self.score_weight is None else f"{self.score_weight:g}"
        two = self.val_r1.get("0", float("nan"))
        best = max(self.val_r1.values())
        return (
            f"fusion block fine-tuned on funnel negatives: {self.steps} steps in {self.seconds:.0f} s, loss "
            f"{self.first_loss:.3f} -> {self.last_loss:.3f}; score mix weight {chosen} "
            f"(validation R@1 {100 * two:.1f} two-stage -> {100 * best:.1f} three-stage)"
        )


@dataclasses.dataclass
class _Cache:
    """Frozen-tower outputs of a sample: images ``i``, captions ``c`` (``cap_image``: its image)."""

    tokens: torch.Tensor  # (I, T, D) image tokens
    image_low: torch.Tensor
    image_high: torch.Tensor
    hidden: torch.Tensor  # (C, L, D) caption token states
    mask: torch.Tensor  # (C, L)
    text_low: torch.Tensor
    text_high: torch.Tensor
    image_group: torch.Tensor  # (I,) relevance group
    cap_group: torch.Tensor  # (C,)
    cap_image: torch.Tensor  # (C,) index of the caption's image


def finetune_fusion(
    model: HiVLP,
    train: Sequence[Record],
    val: Sequence[Record],
    config: FusionFinetuneConfig | None = None,
    *,
    progress: bool = True,
) -> FusionFinetuneReport:
    """Train ``model``'s fusion block on funnel-mined negatives and store the chosen score mix.

    Only the fusion block changes (and ``model.config.fusion.score_weight``): the towers and heads,
    hence every vector, stay as they are.

    Args:
        model: a model with a fusion block; updated in place.
        train: training records (a sample of ``config.max_images`` is cached).
        val: validation records (the first ``config.val_images`` form the selection gallery).
        config: the budget (defaults: :class:`FusionFinetuneConfig`).
        progress: print the loss every tenth of the steps.

    Returns:
        The report (the loss and the chosen weight with its validation R@1).

    Raises:
        ConfigError: the model has no fusion block, or a split has no image with a caption.
    """
    cfg = config or FusionFinetuneConfig()
    if model.fusion is None:
        raise ConfigError("finetune_fusion needs a model with a fusion block (config 'fusion')")
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    picked = [train[i] for i in np.sort(rng.permutation(len(train))[: cfg.max_images])]
    cache = _cache(model, picked, cfg.captions_per_image)
    t2i, i2t = _mine(cache, cfg)
    fusion = model.fusion
    optimizer = torch.optim.AdamW(fusion.parameters(), lr=cfg.lr, weight_decay=0.01)
    losses: list[float] = []
    fusion.train()
    check_training_precision(cfg.precision, model.device)
    dtype = training_autocast_dtype(cfg.precision, model.device)
    for step in range(cfg.steps):
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.steps // 10))  # a short warm-up, then flat
        for group in optimizer.param_groups:
            group["lr"] = lr
        with mixed_precision(dtype, model.device.type):
            loss = _listwise_loss(fusion, cache, t2i, i2t, cfg, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(fusion.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if progress and (step + 1) % max(1, cfg.steps // 10) == 0:
            print(f"      fusion fine-tune step {step + 1}/{cfg.steps}: loss {np.mean(losses[-10:]):.3f}", flush=True)
    fusion.eval()
    val_cache = _cache(model, list(val)[: cfg.val_images], 5)
    val_r1 = fusion_recall_at_1(fusion, val_cache, cfg.weights, cfg.mine_limit, cfg.coarse_limit)
    label = {_label(w): w for w in cfg.weights}
    best = max(val_r1, key=lambda k: val_r1[k])  # first best in grid order: the smaller weight on ties
    model.set_fusion_score_weight(label[best])
    tenth = max(1, len(losses) // 10)
    return FusionFinetuneReport(
        steps=cfg.steps,
        first_loss=float(np.mean(losses[:tenth])) if losses else math.nan,
        last_loss=float(np.mean(losses[-tenth:])) if losses else math.nan,
        score_weight=label[best],
        val_r1=val_r1,
        seconds=time.perf_counter() - started,
    )


def mix_order(distance: torch.Tensor, fusion_score: torch.Tensor, weight: float | None) -> torch.Tensor:
    """Per row, the candidate order of the three-stage search: by ``distance + weight * fusion_score``.

    ``weight=None`` orders by the fusion score alone. The sort is stable, so weight 0 keeps the
    fine order (the two-stage ranking) exactly. Mirrors ``hivlp_milvus.fusion_stage``.
    """
    key = fusion_score if weight is None else distance + weight * fusion_score
    return key.argsort(dim=1, descending=True, stable=True)


def fusion_recall_at_1(
    fusion: nn.Module, cache: _Cache, weights: Sequence[float | None], fusion_limit: int, coarse_limit: int
) -> dict[str, float]:
    """Three-stage R@1 (t2i and i2t averaged) over ``cache`` as one gallery, for each mix weight."""
    directions = (
        (cache.text_low, cache.text_high, cache.image_low, cache.image_high, cache.cap_group, cache.image_group),
        (cache.image_low, cache.image_high, cache.text_low, cache.text_high, cache.image_group, cache.cap_group),
    )
    out: dict[str, list[float]] = {_label(w): [] for w in weights}
    with torch.inference_mode():
        for d, (ql, qh, gl, gh, qg, gg) in enumerate(directions):
            cands, dist = _funnel(ql, qh, gl, gh, coarse_limit, fusion_limit)
            scores = torch.empty(cands.shape)
            for start in range(0, len(cands), 64):
                c = cands[start : start + 64]
                q = torch.arange(start, start + len(c)).unsqueeze(1).expand_as(c).reshape(-1)
                caps, imgs = (q, c.reshape(-1)) if d == 0 else (c.reshape(-1), q)
                scores[start : start + len(c)] = fusion(cache.hidden[caps], cache.mask[caps], cache.tokens[imgs]).view(
                    c.shape
                )
            for w in weights:
                top = torch.gather(cands, 1, mix_order(dist, scores, w)[:, :1]).squeeze(1)
                out[_label(w)].append(float((gg[top] == qg).float().mean()))
    return {k: float(np.mean(v)) for k, v in out.items()}


def _label(weight: float | None) -> str:
    return "fusion" if weight is None else f"{weight:g}"


def _cache(model: HiVLP, records: Sequence[Record], captions_per_image: int) -> _Cache:
    """Run the frozen towers once over the records (eval mode: BatchNorm statistics untouched)."""
    records = [r for r in records if r.image is not None and any(c.strip() for c in r.captions)]
    if not records:
        raise ConfigError("the fusion fine-tune needs records with an image and a caption")
    groups: dict[str, int] = {}
    image_group = [groups.setdefault(r.relevance_group, len(groups)) for r in records]
    captions, cap_image = [], []
    for i, r in enumerate(records):
        for caption in [c for c in r.captions if c.strip()][:captions_per_image]:
            captions.append(caption)
            cap_image.append(i)
    names = ("tokens", "image_low", "image_high", "hidden", "mask", "text_low", "text_high")
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(records), 128):
            emb, image_tokens = model.image_features(
                model.preprocess_images([r.image for r in records[start : start + 128]])
            )
            parts["tokens"].append(image_tokens.float().cpu())
            parts["image_low"].append(emb.low.float().cpu())
            parts["image_high"].append(emb.high.float().cpu())
        for start in range(0, len(captions), 256):
            tokens = model.tokenize(captions[start : start + 256])
            emb, hidden = model.text_features(tokens["input_ids"], tokens["attention_mask"])
            parts["hidden"].append(hidden.cpu())
            parts["mask"].append(tokens["attention_mask"])
            parts["text_low"].append(emb.low.float().cpu())
            parts["text_high"].append(emb.high.float().cpu())
    cap_image_t = torch.as_tensor(cap_image)
    image_group_t = torch.as_tensor(image_group)
    return _Cache(
        **{name: torch.cat(chunks) for name, chunks in parts.items()},
        image_group=image_group_t,
        cap_group=image_group_t[cap_image_t],
        cap_image=cap_image_t,
    )


def _funnel(
    ql: torch.Tensor, qh: torch.Tensor, gl: torch.Tensor, gh: torch.Tensor, coarse_limit: int, limit: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The search funnel, exact: low top ``coarse_limit`` then high top ``limit``; (indices, fine scores)."""
    coarse = (ql @ gl.T).topk(min(coarse_limit, len(gl)), dim=1).indices
    fine = torch.gather(qh @ gh.T, 1, coarse)
    dist, order = fine.sort(dim=1, descending=True, stable=True)
    keep = min(limit, coarse.shape[1])
    return torch.gather(coarse, 1, order[:, :keep]), dist[:, :keep]


def _mine(cache: _Cache, cfg: FusionFinetuneConfig) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per caption its funnel's non-relevant images, per image its funnel's non-relevant captions.

    Galleries are consecutive blocks of ``gallery_size`` images (and their captions).
    """
    n_images = len(cache.tokens)
    t2i: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(cache.hidden)
    i2t: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * n_images
    with torch.inference_mode():
        for lo in range(0, n_images, cfg.gallery_size):
            imgs = torch.arange(lo, min(lo + cfg.gallery_size, n_images))
            caps = torch.nonzero((cache.cap_image >= lo) & (cache.cap_image < imgs[-1] + 1)).squeeze(1)
            text = (cache.text_low[caps], cache.text_high[caps])
            image = (cache.image_low[imgs], cache.image_high[imgs])
            directions = (
                (text, image, caps, imgs, t2i, cache.cap_group, cache.image_group),
                (image, text, imgs, caps, i2t, cache.image_group, cache.cap_group),
            )
            for query_vecs, gallery_vecs, queries, gallery, negatives, query_group, gallery_group in directions:
                found, _ = _funnel(*query_vecs, *gallery_vecs, cfg.coarse_limit, cfg.mine_limit)
                for row, query in enumerate(queries.tolist()):
                    hits = gallery[found[row]]
                    negatives[query] = hits[gallery_group[hits] != query_group[query]]
    return t2i, i2t


def _listwise_loss(
    fusion: nn.Module,
    cache: _Cache,
    t2i: list[torch.Tensor],
    i2t: list[torch.Tensor],
    cfg: FusionFinetuneConfig,
    rng: np.random.Generator,
) -> torch.Tensor:
    """Softmax cross-entropy of the positive against its hard negatives, both directions."""
    k = cfg.negatives
    caps_rows, imgs_rows = [], []
    n_caps, n_images = len(cache.hidden), len(cache.tokens)
    for cap in rng.choice(n_caps, cfg.batch_size, replace=n_caps < cfg.batch_size):
        negs = _draw(t2i[cap], k, rng, len(cache.tokens))
        caps_rows.append(torch.full((k + 1,), int(cap)))
        imgs_rows.append(torch.cat([cache.cap_image[cap : cap + 1], negs]))
    positives = {}
    for cap, img in enumerate(cache.cap_image.tolist()):
        positives.setdefault(img, cap)  # the image's first cached caption is its positive
    for img in rng.choice(n_images, cfg.batch_size, replace=n_images < cfg.batch_size):
        negs = _draw(i2t[img], k, rng, len(cache.hidden))
        caps_rows.append(torch.cat([torch.tensor([positives[int(img)]]), negs]))
        imgs_rows.append(torch.full((k + 1,), int(img)))
    caps, imgs = torch.stack(caps_rows), torch.stack(imgs_rows)
    logits = fusion(cache.hidden[caps.reshape(-1)], cache.mask[caps.reshape(-1)], cache.tokens[imgs.reshape(-1)])
    target = torch.zeros(len(caps), dtype=torch.long)
    return nn.functional.cross_entropy(logits.view(len(caps), k + 1), target)


def _draw(negatives: torch.Tensor, k: int, rng: np.random.Generator, pool: int) -> torch.Tensor:
    """``k`` of the mined negatives (with replacement when fewer; random items when none)."""
    if len(negatives) == 0:
        return torch.as_tensor(rng.choice(pool, k))
    return negatives[torch.as_tensor(rng.choice(len(negatives), k, replace=len(negatives) < k))]
