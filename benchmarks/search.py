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

The pieces, one job each: :mod:`benchmarks.vectors` (the generator), :mod:`benchmarks.baseline`
(faiss, no database), :mod:`benchmarks.galleries` (the cached Lite databases),
:mod:`benchmarks.metrics`, :mod:`benchmarks.profiler` and :mod:`benchmarks.search_plots`; this
file plans the sweep per size, runs the contenders interleaved and writes the result.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.baseline import InProcess
from benchmarks.common import (
    CACHE_DIR,
    PLOTS_DIR,
    Timer,
    embed_gallery,
    interleaved_queries,
    latency_stats,
    log,
    obtain_model,
    parse_sizes,
    smoke_model,
    write_result,
)
from benchmarks.galleries import (
    ANN_COLLECTION,
    COLLECTION,
    QueryVectors,
    build_or_open,
    gen_db_path,
    gen_main_path,
)
from benchmarks.metrics import (
    K,
    coarse_recall_curve,
    coarse_recall_from,
    fidelity,
    hit_ids,
    labelled_recall,
    recall_at,
    topk_ip,
)
from benchmarks.profiler import profile_hier
from benchmarks.search_plots import plot
from benchmarks.vectors import fitted_generator, generate_vectors


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

    def _np_for(cl: int) -> int | None:  # the nprobe the profile picks for this shortlist (the default)
        return (col.profile.low_search_params(cl, num_rows=n).get("params") or {}).get("nprobe")

    default_nprobe = _np_for(100)
    ann_nlist = build.get("ann_high_nlist")
    inproc = InProcess(data["low"], data["high"], nlist=max(nlist_low, 16))

    # --- the contenders: name -> (config, fn(q_slice) -> list of id lists)
    contenders: dict[str, tuple[dict, Any]] = {}

    def hier(rerank: str, cl: int, nprobe: int | None) -> Callable[[slice], list[list[int]]]:
        sp = {"params": {"nprobe": nprobe}} if nprobe else None
        return lambda sl: hit_ids(
            col.hierarchical_search(
                QueryVectors(q_low[sl], q_high[sl]),
                limit=K,
                coarse_limit=cl,
                rerank=rerank,
                output_fields=[],
                search_params=sp,
            )
        )

    coarse_list = sorted({min(c, n) for c in plan["coarse"]})
    for cl in coarse_list:
        for npb in plan["nprobe"]:
            # the server path only at the default nprobe (the coarse stage is shared)
            for rr in ("client",) if npb is not None else ("client", "server"):
                name = f"hier-{rr} cl={cl}" + (f" nprobe={npb}" if npb else "")
                contenders[name] = (
                    {"kind": f"hier-{rr}", "coarse_limit": cl, "nprobe": npb or _np_for(cl), "rerank": rr},
                    hier(rr, cl, npb),
                )

    def single_level(level: str) -> Any:
        return lambda sl: hit_ids(
            col.search(QueryVectors(q_low[sl], q_high[sl]), level=level, limit=K, output_fields=[])
        )

    contenders["exact-high"] = ({"kind": "exact-high"}, single_level("high"))
    contenders["low-only"] = ({"kind": "low-only", "nprobe": _np_for(K)}, single_level("low"))
    if client.has_collection(ANN_COLLECTION):
        for npb in plan["ann_nprobe"]:
            contenders[f"ann-high nprobe={npb}"] = (
                {"kind": "ann-high", "nprobe": npb, "nlist": ann_nlist},
                lambda sl, npb=npb: hit_ids(
                    client.search(
                        ANN_COLLECTION,
                        data=q_high[sl],
                        anns_field="vec",
                        limit=K,
                        output_fields=["id"],  # the key only: Lite answers [] with every field
                        search_params={"metric_type": "IP", "params": {"nprobe": npb}},
                    )
                ),
            )
    for cl in coarse_list:
        npf = max(1, min(_np_for(cl) or 16, inproc.nlist))
        contenders[f"faiss-funnel cl={cl}"] = (
            {"kind": "faiss-funnel", "coarse_limit": cl, "nprobe": npf},
            lambda sl, cl=cl, npf=npf: inproc.funnel(q_low[sl], q_high[sl], cl, npf),
        )
    contenders["faiss-exact"] = ({"kind": "faiss-exact"}, lambda sl: inproc.exact(q_high[sl]))

    # single queries interleaved query by query, then batches of 32 interleaved batch by batch
    t_single, out_single, t_batch, out_batch = interleaved_queries(
        {name: f for name, (_, f) in contenders.items()}, n_single, nb, nq_b, label=label, seed=seed
    )

    labels = data.get("q_label")
    rows = []
    for name, (cfg, _) in contenders.items():
        pred_single, pred_batch = out_single[name], out_batch[name]
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
        "coarse_recall_curve": coarse_recall_from(data, gt, q_low, n_single),
        "contenders": rows,
    }
    if plan.get("profile_queries"):
        result["profile"] = profile_hier(col, q_low, q_high, plan["profile_queries"], coarse_list, db_path=db_path)
    return result


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
    if smoke:
        model, model_info = smoke_model(50)
        query_kind = "text"  # labelled, so R@K is computed per contender
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
    agreement = {
        str(n): {
            "real": coarse_recall_curve({k: (v[:n] if k in ("low", "high") else v) for k, v in real.items()}),
            "generated": coarse_recall_curve(generate_vectors(n, gen_params, n_queries=200)),
        }
        for n in sorted({min(2_000, real_n), min(5_000, real_n), min(10_000, real_n), real_n})
    }
    text_recall = labelled_recall(model, real_n, smoke=smoke) if query_kind == "image" else None
    sizes_out = []
    for n in sorted(sizes):
        if n <= real_n:
            sub = {k: (v[:n] if k in ("low", "high", "group") else v) for k, v in real.items()}
            sizes_out.append(
                {
                    **bench_size(
                        f"real-{_h(n)}", sub, cache / f"real_{fp}_{n}.db", default_plan(n, smoke), rebuild=rebuild
                    ),
                    "data": f"real tiny-model embeddings ({query_kind} queries -> image gallery)",
                }
            )
        # Generated vectors above the real size, and at it (a check against the real run) when large enough.
        if n > real_n or (n == real_n and not smoke and n >= 5_000):
            sizes_out.append(
                {
                    **bench_size(
                        f"gen-{'check-' if n == real_n else ''}{_h(n)}",
                        generate_vectors(n, gen_params, n_queries=500),
                        gen_main_path(cache, gen_params, n),
                        default_plan(n, smoke),
                        rebuild=rebuild,
                        collection=COLLECTION,
                        ann_path=gen_db_path(cache, gen_params, n),
                    ),
                    "data": f"generated vectors (sigma={gen_params.sigma:.3f}, {gen_params.n_clusters} clusters)",
                }
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
    path.with_name(f"{name}_partial.json").unlink(missing_ok=True)
    log(f"wrote {path}")
    return path


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
