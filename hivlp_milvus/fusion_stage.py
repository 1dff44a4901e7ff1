"""The third search stage: the fine stage's top-M re-scored by the model's fusion block.

Coarse (ANN on ``vec_low``) → fine (exact on ``vec_high``) → **fusion**: each candidate's content is
read from its row (a caption is its ``reference``; an image is read through
:mod:`hivlp_milvus.content`) and scored together with the query by ``model.score_pairs``. Each
stage is cheaper per item than the next and runs on more items; this one runs only when a search
asks for it (``fusion_limit``).

Order: the candidates that were scored are sorted by their mixed score ``distance + w *
fusion_score`` (``w`` is the model's ``fusion_score_weight``, chosen on validation data; ``w = 0``
gives the two-stage order exactly, ``None`` sorts by the fusion score alone; ties keep their fine
order) and fill the positions of the fine top-M; a candidate that could not be scored (its image cannot be
read, or it has the query's own modality) keeps its fine-stage position, gets ``fusion_score:
None`` and a ``fusion_error``, and is listed in ``SearchResults.fusion_skipped``. One unreadable
image never fails the search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hivlp_milvus.content import ContentOptions, row_contents
from hivlp_milvus.errors import BadRecordError, ConfigError, QueryError, SearchLimitError
from hivlp_milvus.queries import is_embedding, query_items

__all__ = ["CONTENT_FIELDS", "check_fusion", "fusion_rerank", "mixed_score", "read_candidates"]

#: The fields the fusion stage reads from each candidate row.
CONTENT_FIELDS = ("modality", "reference")


def check_fusion(model: Any, fusion_limit: Any, limit: int, query: Any) -> None:
    """Validate a fusion request before any search runs.

    Args:
        model: the collection's model (``None`` when it has none).
        fusion_limit: candidates re-scored per query (``M``).
        limit: final hits per query.
        query: the search's query or list of queries.

    Raises:
        ConfigError: no model, or a model without a fusion block.
        SearchLimitError: ``fusion_limit`` is not an int ≥ ``limit``.
        QueryError: a query is an embedding (the scorer reads the query's text or image).
    """
    if model is None or not getattr(model, "has_fusion", False):
        what = "the collection has no model" if model is None else "the collection's model has no fusion block"
        raise ConfigError(
            f"fusion_limit needs a model with a fusion block, but {what}; search without fusion_limit, or open the "
            "collection with a checkpoint trained with a fusion block (config 'fusion')"
        )
    if isinstance(fusion_limit, bool) or not isinstance(fusion_limit, int) or fusion_limit < limit:
        raise SearchLimitError(
            f"fusion_limit must be an int >= limit={limit} (the fusion stage re-scores the fine stage's top "
            f"fusion_limit and returns the first limit), got {fusion_limit!r}"
        )
    if any(is_embedding(q) for q in query_items(query)):
        raise QueryError(
            "the fusion stage scores the query's own text or image against each candidate, so it cannot run on "
            "an embedding query; search with the text or image, or without fusion_limit"
        )


def read_candidates(
    kinds: Sequence[str], hits: Sequence[list[dict[str, Any]]], content: ContentOptions | None = None
) -> list[list[Any]]:
    """Each candidate's content (caption or image), or the ``BadRecordError`` saying why it cannot be scored.

    Every candidate of every query is read in one :func:`~hivlp_milvus.content.row_contents` call,
    so M slow image references cost about one ``timeout_s``, not M of them.

    Args:
        kinds: ``"text"`` or ``"image"`` per query.
        hits: per query, the fine stage's hits, each with ``modality`` and ``reference`` in its ``entity``.
        content: how candidate images are read.
    """
    out: list[list[Any]] = [[None] * len(cands) for cands in hits]
    rows: list[dict[str, Any]] = []
    where: list[tuple[int, int]] = []
    for q, (kind, cands) in enumerate(zip(kinds, hits, strict=True)):
        for pos, hit in enumerate(cands):
            entity = hit.get("entity") or {}
            if entity.get("modality") == kind:
                out[q][pos] = BadRecordError(f"a {kind} candidate cannot be fused with a {kind} query")
            else:
                rows.append({"id": hit["id"], **entity})
                where.append((q, pos))
    for (q, pos), item in zip(where, row_contents(rows, content), strict=True):
        out[q][pos] = item
    return out


def fusion_rerank(
    model: Any,
    queries: Sequence[Any],
    kinds: Sequence[str],
    hits: Sequence[list[dict[str, Any]]],
    limit: int,
    content: ContentOptions | None = None,
    contents: Sequence[Sequence[Any]] | None = None,
) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Re-score each query's fine top-M with the fusion block and keep the first ``limit``.

    Args:
        model: a model with :meth:`~hivlp_milvus.model.hivlp.HiVLP.score_pairs`.
        queries: the raw queries (a str or an image each), aligned with ``hits``.
        kinds: ``"text"`` or ``"image"`` per query.
        hits: per query, the fine stage's hits in fine order, each with ``modality`` and
            ``reference`` in its ``entity``.
        limit: hits kept per query.
        content: how candidate images are read.
        contents: the candidates' content already read by :func:`read_candidates` (a server reads
            it per request, before requests are batched); ``None`` reads it here.

    Returns:
        The re-ordered hits (each with ``fusion_score``, ``None`` when not scored, and then
        ``fusion_error``), and the skipped candidates as ``{"query", "id", "reason"}``.
    """
    pair_images: list[Any] = []
    pair_texts: list[str] = []
    slots: list[tuple[int, int]] = []  # (query, position in its fine list) of each pair
    skipped: list[dict[str, Any]] = []
    if contents is None:
        contents = read_candidates(kinds, hits, content)
    for q, (query, kind, cands) in enumerate(zip(queries, kinds, hits, strict=True)):
        for pos, hit in enumerate(cands):
            item = contents[q][pos]
            if isinstance(item, BadRecordError):
                hit["fusion_score"], hit["fusion_error"] = None, str(item)
                skipped.append({"query": q, "id": hit["id"], "reason": str(item)})
                continue
            # The query object itself is repeated, so score_pairs encodes it once per query.
            pair_images.append(item if kind == "text" else query)
            pair_texts.append(query if kind == "text" else item)
            slots.append((q, pos))
    scores = model.score_pairs(pair_images, pair_texts) if slots else np.zeros(0, np.float32)
    for (q, pos), score in zip(slots, scores, strict=True):
        hits[q][pos]["fusion_score"] = float(score)
    weight = getattr(model, "fusion_score_weight", None)
    return [_order(cands, weight)[:limit] for cands in hits], skipped


def mixed_score(distance: float, fusion_score: float, weight: float | None) -> float:
    """The third stage's sort key: ``distance + weight * fusion_score``, or the fusion score alone for ``None``.

    Args:
        distance: the fine stage's similarity (higher = closer).
        fusion_score: the fusion block's match logit.
        weight: the model's ``fusion_score_weight``.
    """
    return fusion_score if weight is None else distance + weight * fusion_score


def _order(cands: list[dict[str, Any]], weight: float | None) -> list[dict[str, Any]]:
    """Scored candidates sorted by their mixed score into the scored positions; unscored ones stay put."""
    scored = [h for h in cands if h.get("fusion_score") is not None]
    # sorted is stable: ties keep the fine order, so weight 0 (the key is the fine distance) is the fine order.
    ranked = iter(sorted(scored, key=lambda h: -mixed_score(h["distance"], h["fusion_score"], weight)))
    return [next(ranked) if h.get("fusion_score") is not None else h for h in cands]
