"""Search benchmark metrics: exact top-k, fidelity@10 against exact high-dim search, R@K, coarse recall.

Exact ground truth is faiss brute force (``IndexFlatIP``) on the same float32 vectors Milvus holds.
Used by the search benchmark (``benchmarks/search.py``) and the engine check (``benchmarks/engine.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import embed_gallery

#: The cut-off of fidelity@K and of every contender's result list.
K = 10
#: Shortlist sizes of the coarse recall curve (the funnel's ceiling per coarse_limit).
COARSE_KS = (10, 20, 50, 100, 200, 500, 1000)


def topk_ip(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k ids (faiss IndexFlatIP), shape (nq, k)."""
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return ids


def coarse_recall_curve(d: dict[str, np.ndarray], ks: tuple[int, ...] = COARSE_KS, nq: int = 200) -> dict[str, float]:
    """Share of the exact high top-10 inside the exact low top-K, per K (the funnel's ceiling)."""
    return coarse_recall_from(d, topk_ip(d["high"], d["q_high"][:nq], K), d["q_low"], nq, ks)


def coarse_recall_from(
    data: dict[str, np.ndarray], gt: np.ndarray, q_low: np.ndarray, nq: int, ks: tuple[int, ...] = COARSE_KS
) -> dict[str, float]:
    """:func:`coarse_recall_curve` for a gallery whose exact high top-10 ``gt`` is already known."""
    ks = tuple(k for k in ks if k <= len(data["low"]))
    top = topk_ip(data["low"], q_low[:nq], max(ks))
    return {str(k): float(np.mean([len(set(gt[i]) & set(top[i, :k])) / K for i in range(len(top))])) for k in ks}


def hit_ids(hits: Any) -> list[list[int]]:
    """The ids of ``MilvusClient.search``-shaped hits, one list per query."""
    return [[int(h["id"]) for h in q] for q in hits]


def fidelity(
    pred: list[list[int]] | np.ndarray,
    gt: np.ndarray,
    high: np.ndarray | None = None,
    q_high: np.ndarray | None = None,
    rtol: float = 1e-5,
) -> list[float]:
    """Fidelity@10 per query: share of the exact high-dim top-10 the contender returned.

    Tie-aware when ``high``/``q_high`` are given: a returned id counts if its exact high score is
    at least the exact 10th score (minus ``rtol``), so equally-scored items (duplicate scenes of an
    under-trained model, float summation order) are not counted as misses.
    """
    if high is None or q_high is None:
        pairs = zip(pred, gt, strict=False)
        return [len({int(x) for x in p[:K] if x >= 0} & {int(x) for x in g[:K]}) / K for p, g in pairs]
    out = []
    for i, (p, g) in enumerate(zip(pred, gt, strict=False)):
        ids = [int(x) for x in list(p)[:K] if x >= 0]
        thr = float(high[int(g[K - 1])] @ q_high[i])
        sc = high[ids] @ q_high[i]  # no ids (all padding): no scores, fidelity 0
        out.append(min(1.0, float(np.sum(sc >= thr - rtol * max(1.0, abs(thr)))) / K))
    return out


def recall_at(
    pred: list[list[int]] | np.ndarray, labels: np.ndarray, group: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """R@K per cut-off: share of queries with an image of the labelled scene group in the top K."""
    pairs = list(zip(pred, labels, strict=False))
    return {
        f"R@{k}": float(
            np.mean([any(x >= 0 and group[int(x)] == group[int(lab)] for x in list(p)[:k]) for p, lab in pairs])
        )
        for k in ks
    }


def labelled_recall(model: Any, n: int, *, smoke: bool = False) -> dict[str, Any]:
    """R@1/5/10 of text -> image retrieval on labelled caption queries (exact, in-process).

    Low-only, high-only and the funnel at several shortlist sizes; the Milvus contenders return
    these same rankings at fidelity 1.0.
    """
    d = embed_gallery(model, n, seed=7, n_queries=64 if smoke else 200, cache=not smoke, query_kind="text")
    out: dict[str, Any] = {"gallery": n, "queries": int(len(d["q_label"]))}
    hi = topk_ip(d["high"], d["q_high"], K)
    out["high-only"] = recall_at(hi, d["q_label"], d["group"])
    out["low-only"] = recall_at(topk_ip(d["low"], d["q_low"], K), d["q_label"], d["group"])
    cand = topk_ip(d["low"], d["q_low"], min(1000, n))
    for cl in (c for c in (20, 50, 100, 200, 1000) if c <= n):
        ranked = [c[np.argsort(-(d["high"][c] @ q))[:K]] for c, q in zip(cand[:, :cl], d["q_high"], strict=False)]
        out[f"hierarchical cl={cl}"] = recall_at(ranked, d["q_label"], d["group"])
    out["distinct_top1_high"] = int(len(set(hi[:, 0].tolist())))
    return out
