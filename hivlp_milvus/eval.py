"""Image–text retrieval metrics: exact, chunked over queries, at the low, high and funnel level.

Names follow open_clip (``image_to_text_R@1``, ``text_to_image_mean_rank`` ...). Every metric
is computed from the 1-based rank of the *first relevant* gallery item of each query, where a
text and an image are relevant to each other iff their groups are equal (a record's captions
share its group; identical synthetic scenes share one too).

Ties are pessimistic: an irrelevant item whose score equals the best relevant score ranks ahead
of it, i.e. ``rank = 1 + #{irrelevant items with score >= best relevant score}``. A collapsed
model (one constant vector) therefore gets rank ~N, never a flattering rank 1. Queries with no
relevant item in the gallery are left out of their direction's metrics.

The hierarchical funnel ranks, per query, the top ``coarse_k`` items by low score (the
shortlist, taken with the same pessimistic tie rule, lower gallery index first within a class)
by their high score; items outside the shortlist follow it in low-score order. With
``coarse_k >= gallery size`` it is exactly high-only retrieval.

Score matrices are never materialised whole: queries go in chunks of ``chunk_size`` rows, so peak
memory is a few ``chunk_size × gallery`` float32 blocks and their boolean relevance mask (25k
images × 125k captions fits in ~2 GB with the default 1024; a smaller ``chunk_size`` lowers that
proportionally).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivlp_milvus.errors import BadRecordError, ConfigError

if TYPE_CHECKING:
    from hivlp_milvus.data.record import Record
    from hivlp_milvus.model.embedding import HierarchicalEmbedding

DIRECTIONS = ("image_to_text", "text_to_image")


# --------------------------------------------------------------------------- rank computation


def _first_relevant_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based rank of each row's best relevant column (``relevant``: a mask); 0 where a row has none."""
    best = np.max(scores, axis=1, where=relevant, initial=-np.inf)
    ranks = 1 + np.count_nonzero((scores >= best[:, None]) & ~relevant, axis=1)
    ranks[~relevant.any(axis=1)] = 0
    return ranks


def _shortlist(low: np.ndarray, threshold: np.ndarray, k: int, relevant: np.ndarray) -> np.ndarray:
    """Columns (chunk × k) of each row's top-``k`` low scores, pessimistic at the boundary."""
    member = low >= threshold[:, None]
    n_ge = np.count_nonzero(member, axis=1)
    # Rows where several items tie at the k-th score: irrelevant ones enter first, by index.
    for r in np.flatnonzero(n_ge > k):
        tied = np.flatnonzero(low[r] == threshold[r])
        n_gt = n_ge[r] - len(tied)
        is_rel = relevant[r, tied]
        chosen = np.concatenate([tied[~is_rel], tied[is_rel]])[: k - n_gt]
        member[r, tied] = False
        member[r, chosen] = True
    return np.nonzero(member)[1].reshape(len(low), k)


def _direction_ranks(
    query: tuple[np.ndarray, np.ndarray | None],
    gallery: tuple[np.ndarray, np.ndarray | None],
    query_codes: np.ndarray,
    gallery_codes: np.ndarray,
    *,
    coarse_ks: Sequence[int],
    chunk_size: int,
) -> dict[str, np.ndarray]:
    """Ranks of every query at each level: ``low``, ``high`` and ``hier@K`` (+ ``survived@K``)."""
    q_low, q_high = query
    g_low, g_high = gallery
    n_gallery = len(g_low)
    levels = (
        ["low"] if q_high is None else ["low", "high", *(f"{n}@{k}" for k in coarse_ks for n in ("hier", "survived"))]
    )
    out: dict[str, list[np.ndarray]] = {level: [] for level in levels}
    partial_ks = sorted({k for k in coarse_ks if k < n_gallery})
    for start in range(0, len(q_low), chunk_size):
        codes = query_codes[start : start + chunk_size]
        relevant = gallery_codes == codes[:, None]  # chunk × gallery; a bool is a quarter of a score
        low = q_low[start : start + chunk_size] @ g_low.T
        low_rank = _first_relevant_rank(low, relevant)
        out["low"].append(low_rank)
        if q_high is None:
            continue
        high = q_high[start : start + chunk_size] @ g_high.T
        out["high"].append(_first_relevant_rank(high, relevant))
        if partial_ks:
            # One pass over the full block for the largest shortlist; smaller shortlists are
            # prefixes of it under the same tie order, so they are cut from its candidates.
            k_max = partial_ks[-1]
            threshold = np.partition(low, n_gallery - k_max, axis=1)[:, n_gallery - k_max]
            candidates = _shortlist(low, threshold, k_max, relevant)
            candidate_low = np.take_along_axis(low, candidates, axis=1)
        for k in coarse_ks:
            if k >= n_gallery:  # the shortlist is the whole gallery: pure high-level ranking
                rank_k = out["high"][-1]
            else:
                cols_k = candidates
                if k < k_max:
                    threshold = np.partition(candidate_low, k_max - k, axis=1)[:, k_max - k]
                    cols_k = np.take_along_axis(
                        candidates,
                        _shortlist(candidate_low, threshold, k, np.take_along_axis(relevant, candidates, axis=1)),
                        axis=1,
                    )
                rank_k = _first_relevant_rank(
                    np.take_along_axis(high, cols_k, axis=1), np.take_along_axis(relevant, cols_k, axis=1)
                )
            # A first relevant item cut by the coarse stage keeps its low rank (> k): the items
            # outside the shortlist follow it in low-score order.
            out[f"hier@{k}"].append(np.where(rank_k > 0, rank_k, low_rank))
            out[f"survived@{k}"].append(rank_k > 0)
        del low, high
    return {name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64) for name, parts in out.items()}


def _metrics(ranks: dict[str, np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    """open_clip-style metrics from the rank arrays of both directions (0 = no relevant item)."""
    result: dict[str, float] = {}
    for direction in DIRECTIONS:
        r = ranks[direction]
        r = r[r > 0]
        if len(r) == 0:
            raise ValueError(
                f"no {direction.split('_to_')[0]} query has a relevant item in the gallery; "
                "check that image and text groups match"
            )
        for k in ks:
            result[f"{direction}_R@{k}"] = float(np.mean(r <= k))
        result[f"{direction}_mean_rank"] = float(np.mean(r))
        result[f"{direction}_median_rank"] = float(np.median(r))
    result["AR"] = float(np.mean([v for key, v in result.items() if "_R@" in key]))  # as eval_search's rows
    return result


def _ranks_both_ways(
    images: tuple[Any, Any],
    texts: tuple[Any, Any],
    image_groups: Sequence[Any],
    text_groups: Sequence[Any],
    coarse_ks: Sequence[int],
    chunk_size: int,
) -> dict[str, dict[str, np.ndarray]]:
    """:func:`_direction_ranks` of both directions, keyed by direction (``(low, high)`` pairs in)."""
    table: dict[Any, int] = {}  # one integer code per relevance group, shared by both modalities
    image_codes = np.fromiter((table.setdefault(g, len(table)) for g in image_groups), dtype=np.int64)
    text_codes = np.fromiter((table.setdefault(g, len(table)) for g in text_groups), dtype=np.int64)
    kw = {"coarse_ks": coarse_ks, "chunk_size": chunk_size}
    return {
        "image_to_text": _direction_ranks(images, texts, image_codes, text_codes, **kw),
        "text_to_image": _direction_ranks(texts, images, text_codes, image_codes, **kw),
    }


def _as_matrix(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().float().cpu().numpy()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (items, dim) array, got shape {x.shape}")
    return x


def _check(
    n_images: int,
    n_texts: int,
    image_groups: Sequence[Any],
    text_groups: Sequence[Any],
    ks: Sequence[int],
    chunk_size: int,
) -> None:
    if len(image_groups) != n_images or len(text_groups) != n_texts:
        raise ValueError(
            f"{n_images} images / {n_texts} texts but {len(image_groups)} image groups / {len(text_groups)} text groups"
        )
    if not ks or min(ks) < 1 or chunk_size < 1:
        raise ValueError(f"ks must be positive and chunk_size >= 1, got ks={tuple(ks)}, chunk_size={chunk_size}")


# --------------------------------------------------------------------------- public metrics


def retrieval_metrics(
    image_feats: Any,
    text_feats: Any,
    image_groups: Sequence[Any],
    text_groups: Sequence[Any],
    *,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Exact single-level retrieval metrics, both directions, chunked over queries.

    Args:
        image_feats: ``(n_images, d)`` array (numpy or torch); scores are dot products.
        text_feats: ``(n_texts, d)`` array.
        image_groups: relevance group of each image; text ``i`` is relevant to image ``j`` iff
            ``text_groups[i] == image_groups[j]``.
        text_groups: relevance group of each text.
        ks: the cut-offs of ``R@k``.
        chunk_size: queries scored at once (memory ~ ``chunk_size × gallery`` floats).

    Returns:
        ``{image_to_text,text_to_image}_R@{k}``, ``..._mean_rank``, ``..._median_rank`` (1-based
        rank of the first relevant item, pessimistic ties) and ``AR``, the mean of all the recalls.

    Raises:
        ValueError: mismatched lengths or dims, bad ``ks``, or a direction without any query that
            has a relevant item.
    """
    images, texts = _as_matrix(image_feats, "image_feats"), _as_matrix(text_feats, "text_feats")
    _check(len(images), len(texts), image_groups, text_groups, ks, chunk_size)
    ranks = _ranks_both_ways((images, None), (texts, None), image_groups, text_groups, (), chunk_size)
    return _metrics({d: r["low"] for d, r in ranks.items()}, ks)


# --------------------------------------------------------------------------- the table


_SHORT = {"image_to_text": "i2t", "text_to_image": "t2i"}


@dataclass
class EvalTable:
    """Retrieval metrics per level (``low``, ``high``, ``hier@K`` ...) with how they were measured.

    Attributes:
        rows: ``{row name: {metric name: value}}``; recalls are fractions in [0, 1].
        meta: gallery sizes, dims, coarse_ks, model fingerprint, skipped records...
    """

    rows: dict[str, dict[str, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        """An aligned text table: R@1/5/10 both directions, AR, AR relative to high, shortlist recall (%)."""
        ks = dict.fromkeys(  # in the rows' order, each once
            key.rsplit("@", 1)[1] for row in self.rows.values() for key in row if key.startswith("image_to_text_R@")
        )
        columns = [(f"{d}_R@{k}", f"{short} R@{k}") for d, short in _SHORT.items() for k in ks]
        header = ["level"] + [label for _, label in columns] + ["AR", "AR/high", "shortlist"]
        high_ar = self.rows.get("high", {}).get("AR")
        lines = [
            [name, *(_pct(row.get(key)) for key, _ in columns), _pct(row.get("AR"))]
            + [_pct(row["AR"] / high_ar) if high_ar and "AR" in row else "-", _pct(row.get("shortlist_recall"))]
            for name, row in self.rows.items()
        ]
        widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]

        def fmt(cells: list[str]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )

        out = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(c) for c in lines]
        if self.meta.get("n_images") is not None:
            out.append(f"({self.meta['n_images']} images, {self.meta.get('n_texts')} captions; recalls in %)")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalTable:
        return cls(rows=dict(data["rows"]), meta=dict(data.get("meta", {})))

    def save_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as indented JSON (parent directories created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        return path

    __str__ = format


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def evaluate_embeddings(
    image_emb: HierarchicalEmbedding,
    text_emb: HierarchicalEmbedding,
    image_groups: Sequence[Any],
    text_groups: Sequence[Any],
    *,
    coarse_ks: Sequence[int] = (10, 50, 100),
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> EvalTable:
    """Low-only, high-only and funnel metrics of precomputed embeddings, side by side.

    One pass over the query chunks computes every row (each score block is computed once).

    Args:
        image_emb: image embeddings (``.low`` / ``.high``).
        text_emb: text embeddings.
        image_groups: relevance group of each image.
        text_groups: relevance group of each text.
        coarse_ks: shortlist sizes, one ``hier@K`` row each.
        ks: the cut-offs of ``R@k``.
        chunk_size: queries scored at once.

    Returns:
        An :class:`EvalTable` with rows ``low``, ``high``, ``hier@K``... Each row has the keys of
        :func:`retrieval_metrics` for its ranking; a ``hier@K`` row also has
        ``{image_to_text,text_to_image}_shortlist_recall`` (fraction of queries whose first
        relevant item survives the coarse stage) and ``shortlist_recall``, their mean.
    """
    coarse_ks, ks = tuple(coarse_ks), tuple(ks)
    i_low, i_high = _as_matrix(image_emb.low, "image.low"), _as_matrix(image_emb.high, "image.high")
    t_low, t_high = _as_matrix(text_emb.low, "text.low"), _as_matrix(text_emb.high, "text.high")
    _check(len(i_low), len(t_low), image_groups, text_groups, ks, chunk_size)
    if len(i_high) != len(i_low) or len(t_high) != len(t_low):
        raise ValueError("low and high embeddings must have the same number of rows")
    if not coarse_ks or min(coarse_ks) < 1:
        raise ValueError(f"coarse_ks must be positive, got {coarse_ks}")
    ranks = _ranks_both_ways((i_low, i_high), (t_low, t_high), image_groups, text_groups, coarse_ks, chunk_size)
    levels = ["low", "high"] + [f"hier@{k}" for k in coarse_ks]
    rows = {level: _metrics({d: ranks[d][level] for d in DIRECTIONS}, ks) for level in levels}
    for k in coarse_ks:  # over the queries that have a relevant item, as the recalls
        survived = {
            f"{d}_shortlist_recall": float(np.mean(ranks[d][f"survived@{k}"][ranks[d]["low"] > 0])) for d in DIRECTIONS
        }
        rows[f"hier@{k}"].update(survived, shortlist_recall=sum(survived.values()) / len(survived))
    meta = {
        "n_images": len(image_groups),
        "n_texts": len(text_groups),
        "low_dim": i_low.shape[1],
        "high_dim": i_high.shape[1],
        "coarse_ks": list(coarse_ks),
        "ks": list(ks),
        "tie_rule": "pessimistic",
    }
    return EvalTable(rows=rows, meta=meta)


# --------------------------------------------------------------------------- a model on records


def _embed_images(model: Any, images: list[Any], batch_size: int, progress: bool) -> tuple[list[Any], list[int]]:
    """Embed in batches; a batch that fails on a bad image is retried item by item to skip just it."""
    from tqdm.auto import tqdm

    parts, kept = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="embed images", disable=not progress, unit="batch"):
        batch = images[start : start + batch_size]
        try:
            parts.append(model.embed_images(batch, batch_size=batch_size))
            kept.extend(range(start, start + len(batch)))
        except BadRecordError:
            for offset, image in enumerate(batch):
                try:
                    parts.append(model.embed_images([image], batch_size=1))
                    kept.append(start + offset)
                except BadRecordError:
                    continue
    return parts, kept


def _embed_texts(model: Any, texts: list[str], batch_size: int, progress: bool) -> list[Any]:
    from tqdm.auto import tqdm

    step = batch_size * 8  # several model batches per call: fewer Python round trips, same memory bound
    return [
        model.embed_texts(texts[s : s + step], batch_size=batch_size)
        for s in tqdm(range(0, len(texts), step), desc="embed texts", disable=not progress, unit="chunk")
    ]


@dataclass(frozen=True)
class _Levels:
    """Both levels of many batches (the shape of ``HierarchicalEmbedding``, without importing torch)."""

    low: np.ndarray
    high: np.ndarray


def _concat(parts: list[Any]) -> _Levels:
    return _Levels(
        np.concatenate([_as_matrix(p.low, "low") for p in parts]),
        np.concatenate([_as_matrix(p.high, "high") for p in parts]),
    )


def evaluate(
    model: Any,
    records: Iterable[Record],
    *,
    coarse_ks: Sequence[int] = (10, 50, 100),
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 64,
    text_batch_size: int = 256,
    chunk_size: int = 1024,
    progress: bool = True,
    device: str | None = None,
) -> EvalTable:
    """Embed records' images and all their captions with ``model`` and measure retrieval.

    Each image is a gallery item for text queries; each caption is a gallery item for image
    queries; relevance is ``record.relevance_group``. Records without an image and records
    whose image cannot be loaded are left out (counted in ``meta["skipped"]``).

    Args:
        model: anything with ``embed_images(images, batch_size=)`` and ``embed_texts(texts,
            batch_size=)`` returning numpy ``HierarchicalEmbedding`` (e.g. ``HiVLP``), or a
            checkpoint directory (``str`` / ``Path``), loaded with ``HiVLP.from_pretrained``.
        records: the evaluation records (a list, or a source from ``load_source``).
        coarse_ks: shortlist sizes of the funnel rows.
        ks: the cut-offs of ``R@k``.
        batch_size: images per model call.
        text_batch_size: captions per model batch.
        chunk_size: queries scored at once.
        progress: tqdm bars while embedding.
        device: where a checkpoint directory given as ``model`` runs: ``"auto"`` (the default
            for a directory: CUDA when usable, else the CPU), ``"cpu"`` or ``"cuda"``. A loaded
            model stays where it is (move it with ``model.to(...)``).

    Returns:
        The :class:`EvalTable` of :func:`evaluate_embeddings`, with the model fingerprint and
        what was skipped in ``meta``.

    Raises:
        ValueError: no record has both an image and a caption.
        ConfigError: ``device`` given with a loaded model, or a device that cannot be used.
        CheckpointError: ``model`` is a directory that is not a checkpoint.
    """
    from hivlp_milvus.data.record import Record

    if isinstance(model, (str, Path)):
        from hivlp_milvus.model import HiVLP

        model = HiVLP.from_pretrained(model, device=device or "auto")
    elif device is not None:
        raise ConfigError("device= applies to a checkpoint directory; move a loaded model with model.to(device)")

    usable: list[Record] = []
    skipped: list[str] = []
    for record in records:
        if not isinstance(record, Record) or record.image is None:
            skipped.append(f"{getattr(record, 'id', '?')}: no image")
            continue
        usable.append(record)
    parts, kept = _embed_images(model, [r.image for r in usable], batch_size, progress)
    skipped += [f"{usable[i].id}: image could not be loaded" for i in sorted(set(range(len(usable))) - set(kept))]
    usable = [usable[i] for i in kept]
    texts = [c for r in usable for c in r.captions]
    if not usable or not texts:
        raise ValueError("evaluation needs at least one record with both an image and a caption")
    image_emb = _concat(parts)
    text_emb = _concat(_embed_texts(model, texts, text_batch_size, progress))
    image_groups = [r.relevance_group for r in usable]
    text_groups = [r.relevance_group for r in usable for _ in r.captions]
    table = evaluate_embeddings(
        image_emb, text_emb, image_groups, text_groups, coarse_ks=coarse_ks, ks=ks, chunk_size=chunk_size
    )
    table.meta["model_fingerprint"] = getattr(model, "fingerprint", None)
    table.meta["skipped"] = len(skipped)
    table.meta["skipped_examples"] = skipped[:20]
    return table
