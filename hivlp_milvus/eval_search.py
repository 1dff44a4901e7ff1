"""Retrieval quality measured *through Milvus*: the same table as :mod:`hivlp_milvus.eval`, but
every ranking comes from a real search of the collection (ANN coarse stage included).

The query vectors are the ones stored in the collection (fetched with ``get``), so nothing is
encoded twice and the numbers describe exactly what users of the collection get. The three-stage
rows (``hier@K+fusion@M``) are the exception: the fusion scorer reads the query's own caption or
image, so those searches take the raw queries of the records (and encode them again).

With ``rerank="client"`` a ``hier@K`` row shares its coarse stage with its shortlist recall: one
``vec_low`` search at ``limit=K`` per batch (the request ``hierarchical_search`` sends, with the
same search parameters) gives both, and the fine stage re-ranks each shortlist by the exact
``vec_high`` inner product on the stored vectors, as the client re-rank does (tested equal to
``hierarchical_search``). Searching the shortlist twice cost half of the quickstart's evaluation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.content import ContentOptions
from hivlp_milvus.data.record import Record
from hivlp_milvus.errors import SearchLimitError
from hivlp_milvus.eval import EvalTable
from hivlp_milvus.ids import row_id, text_key
from hivlp_milvus.model.embedding import HierarchicalEmbedding

_DIRECTIONS = (("image_to_text", "image", "text"), ("text_to_image", "text", "image"))


def evaluate_collection(
    collection: HierarchicalCollection,
    records: Sequence[Record],
    *,
    coarse_ks: Sequence[int] = (50,),
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 256,
    rerank: str = "client",
    progress: bool = True,
    fusion_limits: Sequence[int] = (),
    fusion_queries: int | None = None,
    content: ContentOptions | None = None,
) -> EvalTable:
    """Recall@K of low-only, high-only, hierarchical and three-stage search over an ingested test set.

    Args:
        collection: a collection the ``records`` were ingested into (images and captions).
        records: the test records; items with equal ``relevance_group`` are mutually relevant.
        coarse_ks: shortlist sizes (``coarse_limit``) of the hierarchical rows.
        ks: recall cut-offs; every search returns ``max(ks)`` hits.
        batch_size: queries per Milvus search call.
        rerank: re-rank path of the hierarchical rows (``"client"``, ``"server"``, ``"auto"``). Both
            give the same hits (tested). ``client``: each ``hier@K`` row comes from the shortlist
            search its ``shortlist_recall`` needs anyway, re-ranked on the stored ``vec_high``
            (module docstring; the subset rows of ``fusion_queries`` still call
            ``hierarchical_search``); ``server`` sends one request per query (~10x slower for a
            batch of 256 on Milvus Lite).
        progress: show a progress bar over the search calls.
        fusion_limits: for each ``M`` (and each ``K`` of ``coarse_ks`` with ``K >= M``) a row
            ``hier@K+fusion@M``: the funnel's top ``M`` re-scored by the model's fusion block
            (``hierarchical_search(..., fusion_limit=M)``), queried with the records' own captions
            and images. Needs a collection whose model has a fusion block.
        fusion_queries: run the fusion rows on the first ``N`` queries of each direction only (the
            scorer runs the image tower on every candidate: ~4 ms a pair on one shared core for
            ``tiny``); the rows are then named ``... n=N`` and a two-stage row ``hier@K n=N`` on
            the same queries is added, so the two are compared on equal terms. ``None``: all.
        content: how the fusion stage reads the candidates' images.

    Returns:
        An :class:`EvalTable` with rows ``low``, ``high``, ``hier@K`` and ``hier@K+fusion@M``: R@K
        both directions and their mean ``AR``; hierarchical rows also carry ``shortlist_recall``
        (the share of queries whose first relevant item is among the ``K`` coarse hits, both
        directions averaged); fusion rows carry ``fusion_skipped`` (candidates whose content could
        not be read, kept at their fine rank) and ``ms_per_query`` (the whole three-stage search).

    Raises:
        SearchLimitError: an ``M`` below ``max(ks)``, or larger than every ``K``.
    """
    limit = max(ks)
    for k in coarse_ks:  # checked up front: the shared rows never send a funnel request that would
        collection.profile.validate_limits(limit, k)
    items = _stored_items(collection, records)
    # The client re-rank of a whole row is computed from the shortlist search (module docstring).
    shared = rerank == "client"
    searches: list[tuple[str, dict[str, Any]]] = [("low", {"level": "low"}), ("high", {"level": "high"})]
    searches += [(f"hier@{k}", {"coarse_limit": k, "shared": shared}) for k in coarse_ks]
    searches += _fusion_searches(coarse_ks, fusion_limits, limit, fusion_queries)
    rows: dict[str, dict[str, float]] = {name: {} for name, _ in searches}
    total_calls = sum(
        -(-min(len(items[src][0]), how.get("queries") or len(items[src][0])) // batch_size)
        for _, src, _ in _DIRECTIONS
        for _, how in [*searches, *[(None, {}) for _ in coarse_ks]]
        if not how.get("shared")
    )
    bar = tqdm(total=total_calls, desc="eval through Milvus", unit="search", disable=not progress)
    shortlist: dict[str, list[float]] = {f"hier@{k}": [] for k in coarse_ks}
    for direction, src, dst in _DIRECTIONS:
        _, query_emb, query_groups, raw = items[src]
        target = (dst, dict(zip(items[dst][0], items[dst][2].tolist(), strict=True)))
        common = {"rerank": rerank, "batch_size": batch_size, "bar": bar}
        funnels: dict[int, np.ndarray] = {}
        # One per direction: the vec_high it fetches for rows outside the records serve every K.
        fine = _StoredHigh(collection, items[dst], limit) if shared else None
        for k in coarse_ks:
            # The funnel's coarse stage alone (vec_low at limit=k), and its client re-rank with fine.
            coarse, funnels[k] = _first_relevant_ranks(
                collection, query_emb, query_groups, target, k, {"level": "low"}, fine, **common
            )
            shortlist[f"hier@{k}"].append(float(np.mean(coarse <= k)))

        for name, how in searches:
            if how.get("shared"):
                firsts = funnels[how["coarse_limit"]]
            else:
                n = how.get("queries")  # a subset row: the first N queries of this direction (None: all)
                how = {**how, "raw": raw[:n], "content": content, "stats": rows[name]}
                firsts, _ = _first_relevant_ranks(
                    collection, query_emb[:n], query_groups[:n], target, limit, how, **common
                )
            for k in ks:
                rows[name][f"{direction}_R@{k}"] = float(np.mean(firsts <= k))
    bar.close()
    for name, row in rows.items():
        row["AR"] = float(np.mean([v for key, v in row.items() if "_R@" in key]))
        if "fusion_seconds" in row:  # both directions' queries, whole three-stage searches
            row["ms_per_query"] = 1000 * row.pop("fusion_seconds") / row.pop("fusion_queries")
        if name in shortlist:
            row["shortlist_recall"] = float(np.mean(shortlist[name]))
    meta = {
        "n_images": len(items["image"][0]),
        "n_texts": len(items["text"][0]),
        "collection": collection.name,
        "profile": collection.profile.name,
        "rerank": rerank,
        "measured": "through Milvus search (stored vectors as queries; fusion rows: the raw captions and images)",
    }
    if fusion_limits:
        meta |= {"fusion_limits": list(fusion_limits), "fusion_queries": fusion_queries}
    return EvalTable(rows=rows, meta=meta)


def _fusion_searches(
    coarse_ks: Sequence[int], fusion_limits: Sequence[int], limit: int, queries: int | None
) -> list[tuple[str, dict[str, Any]]]:
    """The ``hier@K+fusion@M`` searches: every ``K >= M``; each ``M`` must give at least ``limit`` hits.

    With ``queries`` (a subset), each fusion row is named ``... n=N`` and preceded by its two-stage
    comparison ``hier@K n=N`` on the same queries.
    """
    if queries is not None and (isinstance(queries, bool) or not isinstance(queries, int) or queries < 1):
        raise SearchLimitError(f"fusion_queries must be a positive int or None (all queries), got {queries!r}")
    subset = {} if queries is None else {"queries": queries}
    suffix = "" if queries is None else f" n={queries}"
    out: list[tuple[str, dict[str, Any]]] = []
    for m in fusion_limits:
        if m < limit:
            raise SearchLimitError(f"fusion_limits: {m} is below max(ks)={limit}; re-score at least {limit} candidates")
        fitting = [k for k in coarse_ks if k >= m]
        if not fitting:
            raise SearchLimitError(
                f"fusion_limits: {m} is larger than every coarse_ks {list(coarse_ks)}; the fusion stage re-scores "
                "part of the shortlist, so add a coarse K >= M"
            )
        for k in fitting:
            if subset and (f"hier@{k}{suffix}", {"coarse_limit": k, **subset}) not in out:
                out.append((f"hier@{k}{suffix}", {"coarse_limit": k, **subset}))
            out.append((f"hier@{k}+fusion@{m}{suffix}", {"coarse_limit": k, "fusion_limit": m, **subset}))
    return out


def _stored_items(
    collection: HierarchicalCollection, records: Sequence[Record]
) -> dict[str, tuple[list[int], HierarchicalEmbedding, np.ndarray, list[Any]]]:
    """Per modality: row ids, their stored vectors, integer relevance groups and raw items (image or caption)."""
    group_index: dict[str, int] = {}
    keyed: dict[str, list[tuple[int, int]]] = {"image": [], "text": []}
    raw_of: dict[int, Any] = {}
    for record in records:
        group = group_index.setdefault(record.relevance_group, len(group_index))
        if record.image is not None:
            keyed["image"].append((row_id(record.id, "image"), group))
            # A str query is a caption to hierarchical_search: an image given by its path goes as a Path.
            raw_of[keyed["image"][-1][0]] = Path(record.image) if isinstance(record.image, str) else record.image
        for i, caption in enumerate(record.captions):
            if caption.strip():
                keyed["text"].append((row_id(text_key(record.id, i), "text"), group))
                raw_of[keyed["text"][-1][0]] = caption
    out = {}
    for modality, pairs in keyed.items():
        wanted = dict(pairs)
        fetched = {int(row["id"]): row for row in collection.get(wanted, output_fields=["vec_low", "vec_high"])}
        present = [i for i in wanted if i in fetched]  # rows that failed ingest are not queries
        low = np.asarray([fetched[i]["vec_low"] for i in present], dtype=np.float32)
        high = np.asarray([fetched[i]["vec_high"] for i in present], dtype=np.float32)
        groups = np.asarray([wanted[i] for i in present], dtype=np.int64)
        out[modality] = (present, HierarchicalEmbedding(low, high), groups, [raw_of[i] for i in present])
    return out


def _hit_ids(
    collection: HierarchicalCollection,
    queries: HierarchicalEmbedding,
    modality: str,
    limit: int,
    how: dict[str, Any],
    *,
    rerank: str,
    batch_size: int,
    bar: Any,
) -> Iterator[tuple[int, list[int]]]:
    """``(query index, hit ids best first)`` of every query, searched ``batch_size`` queries at a time.

    ``how`` is ``{"level": ...}`` for a single-stage search, ``{"coarse_limit": K}`` for the funnel,
    or that plus ``fusion_limit``, ``raw`` (the raw queries), ``content`` and ``stats`` (a row that
    gains the skipped candidates and the search time) for three stages.
    """
    common = {"limit": limit, "modality": modality, "output_fields": []}
    for start in range(0, len(queries), batch_size):
        batch = queries[start : start + batch_size]
        if "level" in how:
            hits = collection.search(batch, level=how["level"], **common)
        elif "fusion_limit" in how:
            hits = _fusion_batch(collection, how, start, batch_size, rerank=rerank, **common)
        else:
            cut = how["coarse_limit"]
            hits = collection.hierarchical_search(batch, coarse_limit=cut, rerank=rerank, **common)
        for offset, query_hits in enumerate(hits):
            yield start + offset, [int(h["id"]) for h in query_hits]
        bar.update(1)


def _first_relevant_ranks(
    collection: HierarchicalCollection,
    queries: HierarchicalEmbedding,
    query_groups: np.ndarray,
    target: tuple[str, dict[int, int]],
    limit: int,
    how: dict[str, Any],
    fine: _StoredHigh | None = None,
    **search: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """1-based rank of the first relevant hit per query; ``inf`` when none is in the top ``limit``.

    ``target`` is (modality, the group of each of its row ids); ``how`` and ``search`` as in :func:`_hit_ids`.
    With ``fine``, also the ranks after re-ranking each query's hits by their exact ``vec_high``
    score: on the shortlist search, the ``hier@k`` row from the same search (module docstring);
    without, those are all ``inf``.
    """
    modality, group_of = target
    ranks = np.full(len(queries), np.inf)
    funnel = np.full(len(queries), np.inf)
    for q, ids in _hit_ids(collection, queries, modality, limit, how, **search):
        ranks[q] = _first_rank(ids, group_of, query_groups[q])
        if fine is not None:
            funnel[q] = _first_rank(fine.rerank(ids, queries.high[q]), group_of, query_groups[q])
    return ranks, funnel


def _first_rank(ids: Sequence[int], group_of: dict[int, int], group: int) -> float:
    """1-based position of the first id of ``group`` in ``ids``; ``inf`` when there is none."""
    return next((rank for rank, i in enumerate(ids, start=1) if group_of.get(i) == group), np.inf)


class _StoredHigh:
    """The fine stage of the client re-rank on vectors eval already holds: ``vec_high`` by row id."""

    def __init__(
        self, collection: HierarchicalCollection, item: tuple[list[int], HierarchicalEmbedding, Any, Any], limit: int
    ):
        ids, embedding = item[0], item[1]
        self._collection = collection
        self._limit = limit
        self._vecs: dict[int, np.ndarray] = dict(zip(ids, embedding.high, strict=True))

    def rerank(self, shortlist: list[int], query_high: np.ndarray) -> list[int]:
        """The ``shortlist`` (coarse order) by exact ``vec_high`` score, best first, at most ``limit`` ids."""
        # Rows of the collection outside the evaluated records can be coarse hits too.
        for row in self._collection.get([i for i in shortlist if i not in self._vecs], output_fields=["vec_high"]):
            self._vecs[int(row["id"])] = np.asarray(row["vec_high"], dtype=np.float32)
        # As in the client re-rank: a row deleted between the two stages drops out.
        cand = [i for i in shortlist if i in self._vecs]
        if not cand:
            return []
        scores = np.asarray([self._vecs[i] for i in cand], dtype=np.float32) @ query_high
        return [cand[j] for j in np.argsort(-scores, kind="stable")[: self._limit]]


def _fusion_batch(
    collection: HierarchicalCollection, how: dict[str, Any], start: int, batch_size: int, **search: Any
) -> list[list[dict[str, Any]]]:
    """One batch of three-stage searches with the raw queries; counts skips and time into ``how["stats"]``."""
    stats = how["stats"]
    queries = how["raw"][start : start + batch_size]
    t0 = time.perf_counter()
    hits = collection.hierarchical_search(
        queries,
        coarse_limit=how["coarse_limit"],
        fusion_limit=how["fusion_limit"],
        content=how["content"],
        **search,
    )
    stats["fusion_seconds"] = stats.get("fusion_seconds", 0.0) + time.perf_counter() - t0
    stats["fusion_queries"] = stats.get("fusion_queries", 0) + len(queries)
    stats["fusion_skipped"] = stats.get("fusion_skipped", 0) + len(hits.fusion_skipped)
    return hits
