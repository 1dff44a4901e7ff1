"""Search benchmark: is the coarse -> fine hierarchy worth it, at what scale, and where is the limit.

One run, per gallery size, on one Milvus Lite database, with the same queries for every contender
and the contenders interleaved query by query (random order per query):

1. ``hier-client`` / ``hier-server``: ``HierarchicalCollection.hierarchical_search`` (both re-rank
   paths), sweeping ``coarse_limit`` and the coarse IVF ``nprobe``;
2. ``exact-high``: single-stage FLAT search on ``vec_high`` (the LightningDOT-style baseline);
3. ``ann-high``: single-stage IVF_FLAT on ``vec_high`` (a second collection in the same database,
   same rows), ``nprobe`` swept to reach the funnel's fidelity;
4. ``low-only``: single-stage IVF_FLAT on ``vec_low``;
5. ``faiss-funnel`` / ``faiss-exact``: the same funnel in-process (faiss IVF on low, numpy re-rank on
   high; faiss flat on high), no database: the floor this hardware allows.

Fidelity@10 = |top-10 of the contender ∩ exact high-dim top-10| / 10 (exact = numpy/faiss brute
force on the high vectors). R@K (text -> image, a hit is any gallery image of the query's scene
group) on labelled caption queries when the gallery is real model embeddings.

Data: real tiny-model embeddings of a synthetic gallery (``--real-max`` images, default 10k) and,
for larger galleries, *generated* vectors whose low/high relation is fitted to the real model's
(see :func:`generate_vectors` and :func:`calibrate`); at the largest real size both are run and
their fidelity curves are compared.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    CACHE_DIR,
    PLOTS_DIR,
    Timer,
    embed_gallery,
    interleaved,
    latency_stats,
    log,
    obtain_model,
    parse_sizes,
    peak_rss_mib,
    rss_mib,
    write_result,
)

K = 10
COARSE_KS = (10, 20, 50, 100, 200, 500, 1000)
COLLECTION = "gallery"
ANN_COLLECTION = "gallery_high_ivf"


# ---------------------------------------------------------------------- vectors


def _norm(x: np.ndarray) -> np.ndarray:
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
            highs[s:e] = _norm(v)
            lo = _norm(v[:, : p.low_dim])
            lows[s:e] = _norm(lo + (p.sigma / math.sqrt(p.low_dim)) * rng.standard_normal(lo.shape, dtype=np.float32))
        return lows, highs

    low, high = draw(n, 1)
    out = {"low": low, "high": high}
    if n_queries:
        out["q_low"], out["q_high"] = draw(n_queries, 2)
    return out


# ---------------------------------------------------------------------- exact / in-process


def topk_ip(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k ids (faiss IndexFlatIP), shape (nq, k)."""
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return ids


def coarse_recall_curve(d: dict[str, np.ndarray], ks: tuple[int, ...] = COARSE_KS, nq: int = 200) -> dict[str, float]:
    """Share of the exact high top-10 inside the exact low top-K, per K (the funnel's ceiling)."""
    n = len(d["low"])
    ks = tuple(k for k in ks if k <= n)
    q_low, q_high = d["q_low"][:nq], d["q_high"][:nq]
    gt = topk_ip(d["high"], q_high, K)
    low_top = topk_ip(d["low"], q_low, max(ks))
    out = {}
    for k in ks:
        hit = [len(set(gt[i]) & set(low_top[i, :k])) / K for i in range(len(gt))]
        out[str(k)] = float(np.mean(hit))
    return out


def calibrate(real: dict[str, np.ndarray], base: GenParams, *, n: int, target_k: int = 20) -> tuple[GenParams, dict]:
    """Fit ``sigma`` so that the generated coarse recall@``target_k`` equals the real one at size ``n``."""
    sub = {k: (v[:n] if k in ("low", "high") else v) for k, v in real.items()}
    target = coarse_recall_curve(sub)[str(target_k)]
    lo, hi = 0.0, 1.0
    trace = []
    for _ in range(8):
        mid = (lo + hi) / 2
        p = GenParams(**{**base.__dict__, "sigma": mid})
        g = generate_vectors(n, p, n_queries=200)
        r = coarse_recall_curve(g, ks=(target_k,))[str(target_k)]
        trace.append((round(mid, 4), round(r, 4)))
        if r > target:
            lo = mid
        else:
            hi = mid
    fitted = GenParams(**{**base.__dict__, "sigma": (lo + hi) / 2})
    return fitted, {"fit_size": n, "target_k": target_k, "target": target, "trace": trace}


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
        out = np.empty((len(q_low), K), np.int64)
        for i in range(len(q_low)):
            c = cand[i][cand[i] >= 0]
            s = self.high[c] @ q_high[i]
            top = np.argpartition(-s, min(K, len(s) - 1))[:K] if len(s) > K else np.arange(len(s))
            top = top[np.argsort(-s[top])]
            out[i, : len(top)] = c[top]
            out[i, len(top) :] = -1
        return out

    def exact(self, q_high: np.ndarray) -> np.ndarray:
        _, ids = self.flat.search(np.ascontiguousarray(q_high, dtype=np.float32), K)
        return ids


# ---------------------------------------------------------------------- Milvus Lite databases


class _Emb:
    """Duck-typed HierarchicalEmbedding (search.py only needs ``.low`` / ``.high``)."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.low, self.high = low, high


def _dir_mib(path: Path) -> float:
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _drain(path: Path, name: str) -> None:
    """Wait until Milvus Lite's background compaction + segment-index builds are done.

    Lite builds segment indexes on a background thread after a flush; searching before that
    would time brute force on unindexed segments. Benchmark-only: reaches into the in-process
    Lite server that ``MilvusClient(path)`` started.
    """
    try:
        from milvus_lite.server_manager import server_manager_instance

        entry = server_manager_instance._servers.get(os.path.abspath(str(path)))
        if entry is None:
            entry = server_manager_instance._servers.get(str(path))
        if entry is not None:
            entry[1].get_collection(name)._wait_for_bg()
            return
    except Exception as exc:  # pragma: no cover - depends on milvus-lite internals
        log(f"  (could not drain Lite's background work: {exc}); sleeping 5 s")
    time.sleep(5)


def _insert_all(client: Any, name: str, n: int, make_rows: Any, step: int = 10_000) -> float:
    t_start = time.perf_counter()
    for s in range(0, n, step):
        e = min(s + step, n)
        client.insert(name, make_rows(s, e))
        if (s // step) % 20 == 0:
            log(f"  insert {name} {e}/{n} ({e / (time.perf_counter() - t_start):.0f} rows/s)")
    return time.perf_counter() - t_start


def build_or_open(
    path: Path,
    low: np.ndarray | None,
    high: np.ndarray,
    *,
    name: str = COLLECTION,
    with_ann_high: bool = True,
    rebuild: bool = False,
) -> tuple[Any, Any, dict[str, Any]]:
    """Open the cached collections in the database at ``path`` or build them (timed, with memory).

    The database holds the HiVLP collection ``name`` (both vectors; one per generated-vector
    ``sigma``) and ``gallery_high_ivf`` (``vec_high`` only, IVF_FLAT: the ANN-on-high contender),
    which depends only on the high vectors and is shared. ``low=None`` builds only the latter.
    Returns ``(collection or None, client, info)``.
    """
    from pymilvus import DataType, MilvusClient

    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.profiles import nlist_for

    n = len(high)
    if rebuild and path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        for m in path.parent.glob(path.name + ".*.built.json"):
            m.unlink()
    marker = Path(str(path) + f".{name}.built.json")
    ann_marker = Path(str(path) + f".{ANN_COLLECTION}.built.json")
    rss0 = rss_mib()
    with Timer() as t_open:
        client = MilvusClient(str(path))
    info: dict[str, Any] = {"rows": n, "high_dim": high.shape[1], "connect_s": t_open.s}
    col = None
    if low is not None:
        info["low_dim"] = low.shape[1]
        if marker.exists() and client.has_collection(name):
            info.update(json.loads(marker.read_text()))
            with Timer() as t:
                col = HierarchicalCollection.open(name, client=client)
            info.update({"cached": True, "open_s": t.s})
        else:
            if client.has_collection(name):
                client.drop_collection(name)
            built: dict[str, Any] = {}
            with Timer() as t_all:
                col = HierarchicalCollection.create(
                    name, client=client, low_dim=low.shape[1], high_dim=high.shape[1], profile="lite", expected_rows=n
                )
                built["insert_s"] = _insert_all(
                    client,
                    name,
                    n,
                    lambda s, e: [
                        {
                            "id": i,
                            "key": f"g{i}",
                            "modality": "image",
                            "reference": "",
                            "attributes": {},
                            "vec_low": low[i],
                            "vec_high": high[i],
                        }
                        for i in range(s, e)
                    ],
                )
                with Timer() as t_flush:
                    client.flush(name)
                    _drain(path, name)
                built["flush_index_s"] = t_flush.s
            built.update(
                {
                    "build_s": t_all.s,
                    "insert_rows_per_s": n / built["insert_s"],
                    "low_index": col.profile.low.build_params,
                    "rss_growth_mib": rss_mib() - rss0,
                    "peak_rss_mib": peak_rss_mib(),
                }
            )
            marker.write_text(json.dumps(built))
            info.update(built)
            info["cached"] = False
    if with_ann_high:
        nlist = nlist_for(n)
        if ann_marker.exists() and client.has_collection(ANN_COLLECTION):
            info.update(json.loads(ann_marker.read_text()))
            client.load_collection(ANN_COLLECTION)
        else:
            if client.has_collection(ANN_COLLECTION):
                client.drop_collection(ANN_COLLECTION)
            schema = MilvusClient.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vec", DataType.FLOAT_VECTOR, dim=high.shape[1])
            ip = client.prepare_index_params()
            ip.add_index("vec", index_type="IVF_FLAT", metric_type="IP", params={"nlist": nlist})
            client.create_collection(ANN_COLLECTION, schema=schema, index_params=ip)
            with Timer() as t_ann:
                _insert_all(client, ANN_COLLECTION, n, lambda s, e: [{"id": i, "vec": high[i]} for i in range(s, e)])
                client.flush(ANN_COLLECTION)
                _drain(path, ANN_COLLECTION)
            ann = {"ann_high_build_s": t_ann.s, "ann_high_nlist": nlist}
            ann_marker.write_text(json.dumps(ann))
            info.update(ann)
    info["disk_mib"] = _dir_mib(path)
    info["rss_now_mib"] = rss_mib()
    return col, client, info


# ---------------------------------------------------------------------- metrics


def _ids(hits: Any) -> list[list[int]]:
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
        if not ids:
            out.append(0.0)
            continue
        sc = high[ids] @ q_high[i]
        out.append(min(1.0, float(np.sum(sc >= thr - rtol * max(1.0, abs(thr)))) / K))
    return out


def recall_at(
    pred: list[list[int]] | np.ndarray, labels: np.ndarray, group: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    out = {}
    for k in ks:
        hit = [
            any(x >= 0 and group[int(x)] == group[int(lab)] for x in list(p)[:k])
            for p, lab in zip(pred, labels, strict=False)
        ]
        out[f"R@{k}"] = float(np.mean(hit))
    return out


# ---------------------------------------------------------------------- one gallery size


def default_plan(n: int, smoke: bool) -> dict[str, Any]:
    """Queries and sweep per size: large galleries are slow per query on Milvus Lite, so fewer."""
    if smoke:
        return {
            "n_single": 4,
            "n_batches": 1,
            "coarse": [20, n],
            "nprobe": [None],
            "ann_nprobe": [8],
            "profile_queries": 0,
        }
    if n <= 20_000:
        return {
            "n_single": 40,
            "n_batches": 2,
            "coarse": [20, 50, 100, 200, 500],
            "nprobe": [None, 8],
            "ann_nprobe": [4, 16, 64],
            "profile_queries": 0,
        }
    if n <= 200_000:
        return {
            "n_single": 40,
            "n_batches": 2,
            "coarse": [50, 100, 200, 500, 1000],
            "nprobe": [None, 32],
            "ann_nprobe": [16, 64, 256],
            "profile_queries": 0,
        }
    return {
        "n_single": 24,
        "n_batches": 2,
        "coarse": [100, 300, 1000],
        "nprobe": [None, 64],
        "ann_nprobe": [64, 256, 1024],
        "profile_queries": 6,
    }


def bench_size(
    label: str,
    data: dict[str, np.ndarray],
    db_path: Path,
    plan: dict[str, Any],
    *,
    rebuild: bool = False,
    seed: int = 0,
    collection: str = COLLECTION,
    ann_path: Path | None = None,
) -> dict[str, Any]:
    n = len(data["low"])
    log(f"[{label}] gallery {n} rows, dims {data['low'].shape[1]}/{data['high'].shape[1]}")
    col, client, build = build_or_open(
        db_path, data["low"], data["high"], name=collection, rebuild=rebuild, with_ann_high=ann_path is None
    )
    if ann_path is not None:  # the IVF-on-high collection lives in its own database (built once per high vectors)
        _, client, ann_build = build_or_open(ann_path, None, data["high"], rebuild=rebuild)
        build = {
            **build,
            **{k: v for k, v in ann_build.items() if k.startswith("ann_")},
            "ann_db_disk_mib": ann_build.get("disk_mib"),
        }
    log(f"[{label}] db ready: {build}")
    q_low, q_high = data["q_low"], data["q_high"]
    n_single = min(plan["n_single"], len(q_low))
    nb = plan["n_batches"]
    nq_b = 32
    need = max(n_single, nb * nq_b)
    q_low, q_high = q_low[:need], q_high[:need]
    with Timer() as t_gt:
        gt = topk_ip(data["high"], q_high, K)
    nlist_low = int(col.profile.low.build_params.get("nlist") or 0)
    default_nprobe = (col.profile.low_search_params(100, num_rows=n).get("params") or {}).get("nprobe")
    ann_nlist = build.get("ann_high_nlist")
    inproc = InProcess(data["low"], data["high"], nlist=max(nlist_low, 16))

    # --- the contenders: name -> (config, fn(q_slice) -> list of id lists)
    contenders: dict[str, tuple[dict, Any]] = {}

    def hier(rerank: str, cl: int, nprobe: int | None):
        sp = {"params": {"nprobe": nprobe}} if nprobe else None

        def fn(sl: slice) -> list[list[int]]:
            return _ids(
                col.hierarchical_search(
                    _Emb(q_low[sl], q_high[sl]),
                    limit=K,
                    coarse_limit=cl,
                    rerank=rerank,
                    output_fields=[],
                    search_params=sp,
                )
            )

        return fn

    coarse_list = sorted({min(c, n) for c in plan["coarse"]})

    def _np_for(cl: int) -> int | None:  # the nprobe the profile picks for this shortlist (the default)
        return (col.profile.low_search_params(cl, num_rows=n).get("params") or {}).get("nprobe")

    for cl in coarse_list:
        for npb in plan["nprobe"]:
            for rr in ("client", "server"):
                if rr == "server" and npb is not None:
                    continue  # server path only at the default nprobe (the coarse stage is shared)
                name = f"hier-{rr} cl={cl}" + (f" nprobe={npb}" if npb else "")
                contenders[name] = (
                    {"kind": f"hier-{rr}", "coarse_limit": cl, "nprobe": npb or _np_for(cl), "rerank": rr},
                    hier(rr, cl, npb),
                )

    def exact_fn(sl: slice) -> list[list[int]]:
        return _ids(col.search(_Emb(q_low[sl], q_high[sl]), level="high", limit=K, output_fields=[]))

    def low_fn(sl: slice) -> list[list[int]]:
        return _ids(col.search(_Emb(q_low[sl], q_high[sl]), level="low", limit=K, output_fields=[]))

    contenders["exact-high"] = ({"kind": "exact-high"}, exact_fn)
    contenders["low-only"] = (
        {
            "kind": "low-only",
            "nprobe": (col.profile.low_search_params(K, num_rows=n).get("params") or {}).get("nprobe"),
        },
        low_fn,
    )
    if client.has_collection(ANN_COLLECTION):
        for npb in plan["ann_nprobe"]:

            def ann(sl: slice, npb: int = npb) -> list[list[int]]:
                res = client.search(
                    ANN_COLLECTION,
                    data=q_high[sl],
                    anns_field="vec",
                    limit=K,
                    output_fields=[],
                    search_params={"metric_type": "IP", "params": {"nprobe": npb}},
                )
                return _ids(res)

            contenders[f"ann-high nprobe={npb}"] = ({"kind": "ann-high", "nprobe": npb, "nlist": ann_nlist}, ann)
    for cl in coarse_list:
        npf = max(1, min(_np_for(cl) or 16, inproc.nlist))

        def fun(sl: slice, cl: int = cl, npf: int = npf) -> np.ndarray:
            return inproc.funnel(q_low[sl], q_high[sl], cl, npf)

        contenders[f"faiss-funnel cl={cl}"] = ({"kind": "faiss-funnel", "coarse_limit": cl, "nprobe": npf}, fun)
    contenders["faiss-exact"] = ({"kind": "faiss-exact"}, lambda sl: inproc.exact(q_high[sl]))

    # --- single queries, interleaved query by query
    log(f"[{label}] {len(contenders)} contenders x {n_single} single queries (interleaved)")
    fns = {name: (lambda i, f=f: f(slice(i, i + 1))) for name, (_, f) in contenders.items()}
    t_single, out_single = interleaved(fns, n_single, seed=seed, warmup=1)
    # --- batches of 32, interleaved batch by batch
    log(f"[{label}] {len(contenders)} contenders x {nb} batches of {nq_b}")
    fns_b = {name: (lambda i, f=f: f(slice(i * nq_b, (i + 1) * nq_b))) for name, (_, f) in contenders.items()}
    t_batch, out_batch = interleaved(fns_b, nb, seed=seed + 1, warmup=0)

    labels = data.get("q_label")
    rows = []
    for name, (cfg, _) in contenders.items():
        pred_single = [ids for q in out_single[name] for ids in q]
        pred_batch = [ids for b in out_batch[name] for ids in b]
        fid = fidelity(pred_single, gt[:n_single], data["high"], q_high)
        fid_b = fidelity(pred_batch, gt[: len(pred_batch)], data["high"], q_high)
        fid_strict = fidelity(pred_single, gt[:n_single])
        row = {
            "name": name,
            **cfg,
            "single": latency_stats(t_single[name]),
            "batch32": latency_stats(t_batch[name], per_call_items=nq_b),
            "fidelity@10": float(np.mean(fid)),
            "fidelity@10_min": float(np.min(fid)),
            "fidelity@10_ids": float(np.mean(fid_strict)),
            "fidelity@10_batch": float(np.mean(fid_b)) if fid_b else None,
        }
        if labels is not None and "group" in data:
            # R@K over the queries whose labelled image is in this (sub-)gallery.
            inside = [j for j in range(n_single) if labels[j] < n]
            if inside:
                row.update(recall_at([pred_single[j] for j in inside], labels[inside], data["group"]))
                row["R@K_queries"] = len(inside)
        rows.append(row)
    ex = next(r for r in rows if r["name"] == "exact-high")
    for r in rows:
        r["speedup_single"] = ex["single"]["p50_ms"] / r["single"]["p50_ms"] if r["single"]["p50_ms"] else None
        r["speedup_qps_single"] = r["single"]["qps"] / ex["single"]["qps"]
        r["speedup_qps_batch32"] = r["batch32"]["qps"] / ex["batch32"]["qps"] if ex["batch32"].get("qps") else None

    result = {
        "label": label,
        "rows": n,
        "low_dim": data["low"].shape[1],
        "high_dim": data["high"].shape[1],
        "build": build,
        "ground_truth_s": t_gt.s,
        "nlist_low": nlist_low,
        "default_nprobe": default_nprobe,
        "inprocess_build_s": inproc.build_s,
        "n_single": n_single,
        "n_batches": nb,
        "nq_batch": nq_b,
        "coarse_recall_curve": _curve_from(data, gt, q_low, n_single),
        "contenders": rows,
    }
    if plan.get("profile_queries"):
        result["profile"] = profile_hier(
            col, q_low, q_high, plan["profile_queries"], coarse_list, default_nprobe, db_path=db_path
        )
    return result


def _curve_from(data: dict[str, np.ndarray], gt: np.ndarray, q_low: np.ndarray, nq: int) -> dict[str, float]:
    n = len(data["low"])
    ks = tuple(k for k in COARSE_KS if k <= n)
    top = topk_ip(data["low"], q_low[:nq], max(ks))
    return {str(k): float(np.mean([len(set(gt[i]) & set(top[i, :k])) / K for i in range(nq)])) for k in ks}


def profile_hier(
    col: Any,
    q_low: np.ndarray,
    q_high: np.ndarray,
    nq: int,
    coarse_list: list[int],
    default_nprobe: int | None,
    *,
    db_path: Path,
) -> dict[str, Any]:
    """Where the time of the hierarchical path goes: stage timings + cProfile of the Milvus Lite internals."""
    out: dict[str, Any] = {}
    for rr in ("client", "server"):
        for cl in (coarse_list[0], coarse_list[-1]):
            stages = {"coarse_s": [], "fine_s": [], "total_s": []}
            for i in range(nq):
                r = col.hierarchical_search(
                    _Emb(q_low[i : i + 1], q_high[i : i + 1]), limit=K, coarse_limit=cl, rerank=rr, output_fields=[]
                )
                for k in stages:
                    stages[k].append(r.timings[k])
            out[f"{rr} cl={cl}"] = {k: float(np.median(v) * 1e3) for k, v in stages.items()}
    # The exact baseline's single request, for comparison.
    ex = []
    for i in range(nq):
        r = col.search(_Emb(q_low[i : i + 1], q_high[i : i + 1]), level="high", limit=K, output_fields=[])
        ex.append(r.timings["search_s"])
    out["exact-high"] = {"search_s": float(np.median(ex) * 1e3)}
    # cProfile of the client path at the largest shortlist: which functions hold the time.
    pr = cProfile.Profile()
    pr.enable()
    for i in range(nq):
        col.hierarchical_search(
            _Emb(q_low[i : i + 1], q_high[i : i + 1]),
            limit=K,
            coarse_limit=coarse_list[-1],
            rerank="client",
            output_fields=[],
        )
    pr.disable()
    out["cprofile_client"] = _top_functions(pr, nq)
    pr = cProfile.Profile()
    pr.enable()
    for i in range(nq):
        col.search(_Emb(q_low[i : i + 1], q_high[i : i + 1]), level="high", limit=K, output_fields=[])
    pr.disable()
    out["cprofile_exact"] = _top_functions(pr, nq)
    try:  # the server side: the Lite engine called in this thread, so cProfile sees its work
        out["engine_profile"] = profile_engine(col, db_path, q_low, q_high, min(nq, 3), coarse_list[-1])
    except Exception as exc:  # depends on milvus-lite internals
        out["engine_profile"] = {"error": repr(exc)}
    return out


def profile_engine(
    col: Any, db_path: Path, q_low: np.ndarray, q_high: np.ndarray, nq: int, coarse_limit: int
) -> dict[str, Any]:
    """cProfile of Milvus Lite's engine itself (no gRPC): coarse IVF search, exact FLAT search, get.

    ``MilvusClient(path)`` runs Lite's server in threads of this process; the client thread only
    sees ``grpc._channel._blocking``. Calling the engine's ``Collection`` directly shows where a
    request's time goes (profiler overhead inflates Python-heavy parts ~3-4x). The engine is looked
    up by database path: every gallery size has its own database with a collection of the same name.
    """
    from milvus_lite.server_manager import server_manager_instance

    entry = server_manager_instance._servers.get(os.path.abspath(db_path))  # its key, as Lite makes it
    if entry is None or col.name not in entry[1].list_collections():
        return {"error": f"Lite engine of {db_path} not found in this process"}
    eng = entry[1].get_collection(col.name)
    nprobe = (col.profile.low_search_params(coarse_limit, num_rows=col.approx_num_rows()).get("params") or {}).get(
        "nprobe"
    )
    calls = {
        "coarse IVF vec_low": lambda i: eng.search(
            [q_low[i].tolist()],
            top_k=coarse_limit,
            metric_type="IP",
            anns_field="vec_low",
            output_fields=[],
            search_params={"nprobe": nprobe} if nprobe else None,
        ),
        "exact FLAT vec_high": lambda i: eng.search(
            [q_high[i].tolist()], top_k=K, metric_type="IP", anns_field="vec_high", output_fields=[]
        ),
        f"get {coarse_limit} ids vec_high": lambda i: eng.get(
            list(range(i * coarse_limit, (i + 1) * coarse_limit)), output_fields=["vec_high"]
        ),
    }
    out: dict[str, Any] = {"segments": [int(s.num_rows) for s in eng._segments_snapshot()]}
    for name, fn in calls.items():
        fn(0)
        pr = cProfile.Profile()
        t0 = time.perf_counter()
        pr.enable()
        for i in range(1, nq + 1):
            fn(i)
        pr.disable()
        out[name] = {"ms_per_query_profiled": (time.perf_counter() - t0) / nq * 1e3, "top": _top_functions(pr, nq, n=8)}
    return out


def _top_functions(pr: cProfile.Profile, nq: int, n: int = 14) -> list[dict[str, Any]]:
    st = pstats.Stats(pr, stream=io.StringIO())
    rows = []
    for (fname, line, func), (_cc, nc, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        short = "/".join(Path(fname).parts[-2:])
        rows.append(
            {
                "function": f"{short}:{line}({func})",
                "tottime_ms_per_query": tt / nq * 1e3,
                "cumtime_ms_per_query": ct / nq * 1e3,
                "calls_per_query": nc / nq,
            }
        )
    rows.sort(key=lambda r: -r["tottime_ms_per_query"])
    return rows[:n]


# ---------------------------------------------------------------------- plots


def _one_per_size(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One gallery per size for the QPS-vs-size plot: generated vectors where both exist (so the
    curve is one data model end to end), else what there is."""
    by: dict[int, dict[str, Any]] = {}
    for s in sizes:
        if s["rows"] not in by or s["label"].startswith(("gen-", "gen-check")):
            by[s["rows"]] = s
    return list(by.values())


def plot(result: dict[str, Any], plots_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    files = []
    colors = {
        "hier-client": "C0",
        "hier-server": "C1",
        "exact-high": "C3",
        "ann-high": "C2",
        "low-only": "C4",
        "faiss-funnel": "C5",
        "faiss-exact": "C7",
    }
    for size in result["sizes"]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for kind, c in colors.items():
            pts = [(r["single"]["p50_ms"], r["fidelity@10"]) for r in size["contenders"] if r["kind"] == kind]
            if not pts:
                continue
            pts.sort()
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=c, label=kind, s=22)
            front, best = [], -1.0
            for x, y in pts:
                if y > best:
                    front.append((x, y))
                    best = y
            ax.plot([p[0] for p in front], [p[1] for p in front], color=c, lw=1)
        ax.axhline(0.99, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("p50 latency per single query (ms, log)")
        ax.set_ylabel("fidelity@10 vs exact high-dim")
        ax.set_title(
            f"{size['label']}: latency vs fidelity ({size['rows']:,} rows, {size['low_dim']}/{size['high_dim']} dims)"
        )
        ax.legend(fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
        f = plots_dir / f"search_pareto_{size['label']}.png"
        fig.tight_layout()
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(str(f))
    # QPS vs gallery size: the best contender of each kind with fidelity >= 0.99 (exact ones always).
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, mode in zip(axes, ("single", "batch32"), strict=False):
        for kind, c in colors.items():
            xs, ys = [], []
            for size in sorted(_one_per_size(result["sizes"]), key=lambda s: s["rows"]):
                ok = [
                    r
                    for r in size["contenders"]
                    if r["kind"] == kind and (r["fidelity@10"] >= 0.99 or kind == "low-only")
                ]
                if ok:
                    xs.append(size["rows"])
                    ys.append(max(r[mode]["qps"] for r in ok))
            if xs:
                ax.plot(xs, ys, "o-", color=c, label=kind)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gallery size (rows)")
        ax.set_ylabel("queries / s")
        ax.set_title(
            f"QPS vs gallery size ({'single queries' if mode == 'single' else 'batches of 32'}),\n"
            "best config with fidelity@10 >= 0.99 (low-only: any)"
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    f = plots_dir / "search_qps_vs_size.png"
    fig.tight_layout()
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(str(f))
    return files


# ---------------------------------------------------------------------- driver


def run(
    sizes: list[int],
    *,
    smoke: bool = False,
    model_dir: str | None = None,
    real_max: int = 10_000,
    train_steps: int = 120,
    results_dir: Path | None = None,
    plots_dir: Path | None = None,
    cache_dir: Path | None = None,
    rebuild: bool = False,
    name: str = "search",
    query_kind: str = "image",
) -> Path:
    cache = Path(cache_dir or CACHE_DIR)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if smoke:  # text queries: labelled, so R@K is computed per contender
        query_kind = "text"
    if smoke:
        from hivlp_milvus.data import synthetic
        from hivlp_milvus.model import create_model

        recs = synthetic.generate(50, seed=1)
        model = create_model("micro", texts=[c for r in recs for c in r.captions], seed=0)
        model_info = {"source": "untrained micro model (smoke)"}
    else:
        model, model_info = obtain_model(model_dir, train_steps=train_steps)
    real_sizes = [s for s in sizes if s <= real_max]
    real_n = max(real_sizes) if real_sizes else min(real_max, max(sizes))
    log(f"real embeddings: {real_n} images")
    fp = str(getattr(model, "fingerprint", "x"))[:10]
    real = embed_gallery(model, real_n, seed=7, n_queries=64 if smoke else 500, cache=not smoke, query_kind=query_kind)
    low_dim, high_dim = real["low"].shape[1], real["high"].shape[1]
    gen_params, fit = fitted_generator(
        model, real_n, low_dim, high_dim, cache, smoke=smoke, real=real, query_kind=query_kind
    )
    log(f"generated-vector model fitted: sigma={gen_params.sigma:.3f} ({fit})")
    agreement = {}
    for n in sorted({min(2_000, real_n), min(5_000, real_n), min(10_000, real_n), real_n}):
        sub = {k: (v[:n] if k in ("low", "high") else v) for k, v in real.items()}
        agreement[str(n)] = {
            "real": coarse_recall_curve(sub),
            "generated": coarse_recall_curve(generate_vectors(n, gen_params, n_queries=200)),
        }
    text_recall = labelled_recall(model, real_n, smoke=smoke) if query_kind == "image" else None
    sizes_out = []
    for n in sorted(sizes):
        if n <= real_n:
            sub = {k: (v[:n] if k in ("low", "high", "group") else v) for k, v in real.items()}
            plan = default_plan(n, smoke)
            sizes_out.append(bench_size(f"real-{_h(n)}", sub, cache / f"real_{fp}_{n}.db", plan, rebuild=rebuild))
            sizes_out[-1]["data"] = f"real tiny-model embeddings ({query_kind} queries -> image gallery)"
        if n == real_n or n > real_n:
            if n == real_n and not smoke and n >= 5_000:
                label = f"gen-check-{_h(n)}"
            elif n > real_n:
                label = f"gen-{_h(n)}"
            else:
                continue
            g = generate_vectors(n, gen_params, n_queries=500)
            sizes_out.append(
                bench_size(
                    label,
                    g,
                    gen_main_path(cache, gen_params, n),
                    default_plan(n, smoke),
                    rebuild=rebuild,
                    collection=COLLECTION,
                    ann_path=gen_db_path(cache, gen_params, n),
                )
            )
            sizes_out[-1]["data"] = (
                f"generated vectors (sigma={gen_params.sigma:.3f}, {gen_params.n_clusters} clusters)"
            )
        if sizes_out and not smoke:  # partial results survive a crash at a later size
            write_result(
                name + "_partial",
                {"sizes": sizes_out, "generator": {**gen_params.__dict__, "fit": fit, "agreement": agreement}},
                results_dir=results_dir,
            )
    result = {
        "smoke": smoke,
        "model": model_info,
        "k": K,
        "query_kind": query_kind,
        "text_recall": text_recall,
        "generator": {**gen_params.__dict__, "fit": fit, "agreement": agreement},
        "sizes": sizes_out,
        "wall_s": time.perf_counter() - t0,
    }
    result["plots"] = plot(result, Path(plots_dir or PLOTS_DIR))
    path = write_result(name, result, results_dir=results_dir)
    partial = path.with_name(f"{name}_partial.json")
    if partial.exists():
        partial.unlink()
    log(f"wrote {path}")
    return path


def gen_db_path(cache: Path, p: GenParams, n: int) -> Path:
    """The database of a generated gallery: keyed by everything the high vectors depend on."""
    return cache / f"gen_c{p.n_clusters}_sp{p.spread}_a{p.alpha}_seed{p.seed}_{p.low_dim}_{p.high_dim}_{n}.db"


def gen_main_path(cache: Path, p: GenParams, n: int) -> Path:
    """The HiVLP collection's database of a generated gallery: the low vectors depend on sigma."""
    return (
        cache
        / f"gen_c{p.n_clusters}_sp{p.spread}_a{p.alpha}_seed{p.seed}_{p.low_dim}_{p.high_dim}_{n}_s{p.sigma:.4f}.db"
    )


FIT_N = 10_000


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
    for cl in (20, 50, 100, 200, 1000):
        if cl > n:
            continue
        ranked = []
        for i in range(len(cand)):
            c = cand[i, :cl]
            sc = d["high"][c] @ d["q_high"][i]
            ranked.append(c[np.argsort(-sc)[:K]])
        out[f"hierarchical cl={cl}"] = recall_at(ranked, d["q_label"], d["group"])
    out["distinct_top1_high"] = int(len(set(hi[:, 0].tolist())))
    return out


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


def prebuild(n: int, model_dir: str | None = None, real_n: int = 10_000) -> None:
    """Fit the generator on 10k real embeddings and build the generated n-row database (background job)."""
    model, _ = obtain_model(model_dir)
    gp, fit = fitted_generator(model, real_n, model.config.low_dim, model.config.high_dim, CACHE_DIR)
    log(f"fitted {gp} {fit}")
    g = generate_vectors(n, gp, n_queries=0)
    _, _, info = build_or_open(gen_main_path(CACHE_DIR, gp, n), g["low"], g["high"], with_ann_high=False)
    log(f"built {info}")
    _, _, info = build_or_open(gen_db_path(CACHE_DIR, gp, n), None, g["high"])
    log(f"built {info}")


def _h(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else (f"{n // 1000}k" if n % 1000 == 0 else str(n))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="*", help="gallery sizes, e.g. 10k 100k 1M")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--model", default=None)
    ap.add_argument("--real-max", default="10k")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args(argv)
    sizes = parse_sizes(args.sizes, [500] if args.smoke else [10_000, 100_000, 1_000_000])
    run(
        sizes,
        smoke=args.smoke,
        model_dir=args.model,
        real_max=parse_sizes([args.real_max], [])[0],
        rebuild=args.rebuild,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
