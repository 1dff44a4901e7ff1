"""The funnel without a database (faiss IVF on low, numpy re-rank on high): the floor this hardware allows."""

from __future__ import annotations

import numpy as np

from benchmarks.common import Timer
from benchmarks.metrics import K


def _ivf(data: np.ndarray, nlist: int):
    import faiss

    q = faiss.IndexFlatIP(data.shape[1])
    index = faiss.IndexIVFFlat(q, data.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical = True  # unit-norm centroids: IP assignment is not biased to large centroids
    rng = np.random.default_rng(0)
    train = data[rng.choice(len(data), size=min(len(data), 64 * nlist), replace=False)]
    index.train(np.ascontiguousarray(train))
    index.add(np.ascontiguousarray(data))
    return index


class InProcess:
    """The funnel without a database: faiss IVF on low -> numpy exact re-rank on high."""

    def __init__(self, low: np.ndarray, high: np.ndarray, nlist: int) -> None:
        import faiss

        self.high = np.ascontiguousarray(high, dtype=np.float32)
        with Timer() as t:
            self.index = _ivf(low, nlist)
            self.flat = faiss.IndexFlatIP(high.shape[1])
            self.flat.add(self.high)
        self.build_s = t.s
        self.nlist = nlist

    def funnel(self, q_low: np.ndarray, q_high: np.ndarray, coarse_limit: int, nprobe: int) -> np.ndarray:
        self.index.nprobe = nprobe
        _, cand = self.index.search(np.ascontiguousarray(q_low, dtype=np.float32), coarse_limit)
        out = np.full((len(q_low), K), -1, np.int64)  # -1: padding past a short shortlist
        for i in range(len(q_low)):
            c = cand[i][cand[i] >= 0]
            s = self.high[c] @ q_high[i]
            top = np.argpartition(-s, min(K, len(s) - 1))[:K] if len(s) > K else np.arange(len(s))
            top = top[np.argsort(-s[top])]
            out[i, : len(top)] = c[top]
        return out

    def exact(self, q_high: np.ndarray) -> np.ndarray:
        _, ids = self.flat.search(np.ascontiguousarray(q_high, dtype=np.float32), K)
        return ids
