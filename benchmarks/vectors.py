"""Generated (low, high) vector pairs whose low/high relation is fitted to a real model's.

Galleries larger than the real embeddings the benchmark can afford (1M rows) are generated:
clustered high vectors, low vectors a noisy projection of them, the noise ``sigma`` fitted
(:func:`calibrate`) so the coarse recall curve matches the real model's.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import embed_gallery
from benchmarks.metrics import coarse_recall_curve

#: Real gallery embeddings the generator is fitted on (cached per model fingerprint).
FIT_N = 10_000


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` as float32 unit vectors (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass
class GenParams:
    """Parameters of the generated-vector model (see :func:`generate_vectors`)."""

    low_dim: int = 32
    high_dim: int = 256
    n_clusters: int = 1000
    spread: float = 1.0
    sigma: float = 0.5
    seed: int = 0
    alpha: float = 1.5


def generate_vectors(n: int, p: GenParams, *, n_queries: int = 0, part_seed: int = 0) -> dict[str, np.ndarray]:
    """Generated (low, high) pairs whose low/high relation mimics the model's.

    * ``high = normalise(c_k + spread * z)``: a mixture of ``n_clusters`` Gaussian clusters around
      unit-norm random centres ``c_k`` (the data is clustered, like scene embeddings);
    * ``low = normalise(high @ P + sigma * e)``: a fixed random projection ``P`` (``high_dim x
      low_dim``, Gaussian / sqrt(high_dim)) plus isotropic noise ``e``; ``sigma`` sets how much of
      the high-dim neighbourhood the low vectors keep, and is fitted (:func:`calibrate`) so that
      the coarse recall curve (share of the exact high top-10 found in the low top-K) matches the
      real model's at 10k / 100k.

    Queries are drawn from the same mixture (another random stream). Rows are generated in chunks
    so 1M x 256 needs ~1 GB.
    """
    base = np.random.default_rng(p.seed)
    # Per-coordinate scale: a power-law spectrum, so the first low_dim coordinates carry most (not all)
    # of the variance, like the leading principal components of real embeddings.
    spec = ((np.arange(p.high_dim) + 1.0) ** (-p.alpha / 2)).astype(np.float32)
    centres = base.standard_normal((p.n_clusters, p.high_dim)).astype(np.float32) * spec

    def draw(m: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([p.seed, stream, part_seed])
        highs = np.empty((m, p.high_dim), np.float32)
        lows = np.empty((m, p.low_dim), np.float32)
        for s in range(0, m, 100_000):
            e = min(s + 100_000, m)
            k = rng.integers(p.n_clusters, size=e - s)
            v = centres[k] + p.spread * rng.standard_normal((e - s, p.high_dim), dtype=np.float32) * spec
            highs[s:e] = normalize(v)
            lo = normalize(v[:, : p.low_dim])
            lows[s:e] = normalize(
                lo + (p.sigma / math.sqrt(p.low_dim)) * rng.standard_normal(lo.shape, dtype=np.float32)
            )
        return lows, highs

    low, high = draw(n, 1)
    out = {"low": low, "high": high}
    if n_queries:
        out["q_low"], out["q_high"] = draw(n_queries, 2)
    return out


def calibrate(real: dict[str, np.ndarray], base: GenParams, *, n: int, target_k: int = 20) -> tuple[GenParams, dict]:
    """Fit ``sigma`` so that the generated coarse recall@``target_k`` equals the real one at size ``n``."""
    sub = {k: (v[:n] if k in ("low", "high") else v) for k, v in real.items()}
    target = coarse_recall_curve(sub)[str(target_k)]
    lo, hi = 0.0, 1.0
    trace = []
    for _ in range(8):
        mid = (lo + hi) / 2
        p = dataclasses.replace(base, sigma=mid)
        g = generate_vectors(n, p, n_queries=200)
        r = coarse_recall_curve(g, ks=(target_k,))[str(target_k)]
        trace.append((round(mid, 4), round(r, 4)))
        if r > target:
            lo = mid
        else:
            hi = mid
    fitted = dataclasses.replace(base, sigma=(lo + hi) / 2)
    return fitted, {"fit_size": n, "target_k": target_k, "target": target, "trace": trace}


def fitted_generator(
    model: Any,
    real_n: int,
    low_dim: int,
    high_dim: int,
    cache: Path,
    *,
    smoke: bool = False,
    real: dict[str, np.ndarray] | None = None,
    query_kind: str = "image",
) -> tuple[GenParams, dict[str, Any]]:
    """The generated-vector model fitted on the real model's first ``FIT_N`` gallery embeddings.

    Fitted at 10k (cached per model fingerprint), validated at the largest real size (the
    agreement table in the results): so the 1M database can be built before the 100k real
    embeddings exist, and the check at 100k is out of sample.
    """
    fp = str(getattr(model, "fingerprint", "x"))[:10]
    base = GenParams(low_dim=low_dim, high_dim=high_dim)
    fit_n = min(real_n, FIT_N)
    path = cache / f"calibration_{fp}_fit{fit_n}_{query_kind}.json"
    if path.exists() and not smoke:
        saved = json.loads(path.read_text())
        return GenParams(**saved["params"]), saved["fit"]
    if real is None or len(real["low"]) < fit_n:
        real = embed_gallery(model, fit_n, seed=7, n_queries=500, cache=not smoke, query_kind=query_kind)
    params, fit = calibrate(real, base, n=fit_n)
    if not smoke:
        path.write_text(json.dumps({"params": params.__dict__, "fit": fit}))
    return params, fit
