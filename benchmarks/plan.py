"""Plan benchmark: the measurements behind ``plan`` in ``schemas/profiles.yaml``, and their check.

``hierarchical_search(plan="auto")`` answers with one exact search on ``vec_high`` where that is
cheaper than coarse -> fine, and sizes the default ``coarse_limit`` from the collection's size.
Both rules are data in the profile; this benchmark measures them and then checks them, on the
search benchmark's generated vectors (fitted to a trained model: :mod:`benchmarks.vectors`) in
cached Milvus Lite databases (:mod:`benchmarks.galleries`):

1. ``curve``: per gallery size, the share of the exact high top-10 inside the exact low top-K
   (numpy/faiss, 500 queries) for a grid of K; the smallest K reaching the target (0.995, a margin
   over 0.99 for the IVF's own loss) is the curve point ``{rows, per_hit: K / 10}``.
2. ``fit``: both plans forced, interleaved, at each size, for batches of 1, 8 and 32 queries and
   several shortlist sizes; a linear cost model per plan is fitted to the timings by least squares
   on relative error (``cost`` in the yaml).
3. ``check``: with the yaml as committed, ``plan="auto"`` (default ``coarse_limit``) against
   ``plan="exact"``, interleaved, on other queries: the chosen plan's time / exact's (must be
   <= 1.10) and its fidelity@10 (must be >= 0.99 and never below exact's).

Run: ``python -m benchmarks.plan --sizes 10k 100k 300k 1M`` (``--stage curve fit check``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import CACHE_DIR, interleaved, latency_stats, log, parse_sizes, write_result
from benchmarks.galleries import QueryVectors, build_or_open, gen_main_path
from benchmarks.metrics import K, fidelity, hit_ids, topk_ip
from benchmarks.vectors import GenParams, generate_vectors
from hivlp_milvus.search import hierarchical_search as hs

#: The search benchmark's generator, fitted to the trained tiny model (benchmarks/results/search.json).
GEN = GenParams(low_dim=32, high_dim=256, n_clusters=1000, spread=1.0, sigma=0.001953125, seed=0, alpha=1.5)
#: Shortlist sizes the curve is read on.
CURVE_KS = (10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000, 1500, 2000, 3000)
#: Curve target: a margin above 0.99 for what the IVF loses on top of the exact low ranking.
CURVE_TARGET = 0.995
N_QUERIES = 600  # 0..499: curve and fit; 500..599: the check (other queries)
BATCHES = (1, 8, 32)


def load(n: int, *, db: bool = True) -> tuple[Any, dict[str, np.ndarray]]:
    """The gallery of ``n`` generated rows: its vectors and (``db``) its cached Lite collection."""
    data = generate_vectors(n, GEN, n_queries=N_QUERIES)
    if not db:
        return None, data
    col, _client, info = build_or_open(gen_main_path(CACHE_DIR, GEN, n), data["low"], data["high"], with_ann_high=False)
    how = "cached" if info.get("cached") else f"built in {info.get('build_s', 0):.0f} s"
    log(f"gallery {n}: {how}")
    return col, data


def curve_point(data: dict[str, np.ndarray], nq: int = 500) -> dict[str, Any]:
    """Coarse recall of the exact low top-K per K, and the smallest K reaching :data:`CURVE_TARGET`."""
    n = len(data["low"])
    ks = [k for k in CURVE_KS if k <= n]
    gt = topk_ip(data["high"], data["q_high"][:nq], K)
    top = topk_ip(data["low"], data["q_low"][:nq], max(ks))
    recall = {k: float(np.mean([len(set(gt[i]) & set(top[i, :k])) / K for i in range(nq)])) for k in ks}
    best = next((k for k in ks if recall[k] >= CURVE_TARGET), ks[-1])
    return {"rows": n, "recall": {str(k): v for k, v in recall.items()}, "k": best, "per_hit": best / K}


def _query(data: dict[str, np.ndarray], start: int, nq: int) -> QueryVectors:
    return QueryVectors(data["q_low"][start : start + nq], data["q_high"][start : start + nq])


def fit_timings(col: Any, data: dict[str, np.ndarray], k_curve: int, *, n_items: int) -> list[dict[str, Any]]:
    """Both plans forced, interleaved, per batch size and shortlist: one row per (plan, nq, cl)."""
    n = len(data["low"])
    rows: list[dict[str, Any]] = []
    cls = sorted({min(c, n) for c in (max(K, k_curve // 2), k_curve, 2 * k_curve)})
    for nq in BATCHES:
        items = max(2, n_items // nq) if nq > 1 else n_items
        contenders: dict[str, Any] = {
            "exact": lambda i, nq=nq: hs(col, _query(data, i * nq, nq), limit=K, plan="exact")
        }
        for cl in cls:
            contenders[f"hier cl={cl}"] = lambda i, nq=nq, cl=cl: hs(
                col, _query(data, i * nq, nq), limit=K, coarse_limit=cl, plan="hierarchical"
            )
        times, _ = interleaved(contenders, items, seed=nq)
        for name, ts in times.items():
            cl = int(name.split("=")[1]) if "=" in name else 0
            rows.append({"rows": n, "nq": nq, "plan": name.split()[0], "cl": cl, **latency_stats(ts, nq)})
        log(f"  fit {n} nq={nq}: " + ", ".join(f"{k} {np.median(v) * 1e3:.0f} ms" for k, v in times.items()))
    return rows


def fit_cost(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Least squares on relative error of :class:`hivlp_milvus.profiles.PlanCost`'s terms, per plan.

    Coefficients are clipped at zero (a negative cost would extrapolate to nonsense).
    """
    out: dict[str, dict[str, float]] = {}
    for plan, names in (
        ("exact", ("base", "per_query", "per_row", "per_row_query")),
        ("hier", ("base", "per_query", "per_row", "per_row_query", "per_candidate")),
    ):
        sel = [r for r in rows if r["plan"] == plan]
        x = np.array(
            [[1.0, r["nq"], r["rows"], r["rows"] * r["nq"], r["nq"] * r["cl"]][: len(names)] for r in sel],
            dtype=np.float64,
        )
        # mean_ms is per call (a batch of nq queries is one call).
        y = np.array([r["mean_ms"] / 1e3 for r in sel])
        w = 1.0 / y
        coef = np.linalg.lstsq(x * w[:, None], y * w, rcond=None)[0]
        for _ in range(len(names)):  # refit without the coefficients that came out negative
            neg = coef < 0
            if not neg.any():
                break
            keep = ~neg
            coef = np.zeros_like(coef)
            coef[keep] = np.linalg.lstsq((x * w[:, None])[:, keep], y * w, rcond=None)[0]
        out["hierarchical" if plan == "hier" else plan] = {
            k: float(f"{max(v, 0.0):.3g}") for k, v in zip(names, coef, strict=True)
        }
    return out


def check(col: Any, data: dict[str, np.ndarray], *, n_items: int, rounds: int = 1) -> list[dict[str, Any]]:
    """``plan="auto"`` with the default coarse_limit against ``plan="exact"``, on the held-out queries."""
    n = len(data["low"])
    out = []
    q0 = 500
    for nq in (1, 32):
        items = min(n_items, N_QUERIES - q0) if nq == 1 else (N_QUERIES - q0) // nq
        chosen: dict[int, Any] = {}

        def auto(i: int, nq: int = nq, chosen: dict[int, Any] = chosen) -> Any:
            res = hs(col, _query(data, q0 + i * nq, nq), limit=K)
            chosen[i] = (res.plan, res.coarse_limit)
            return res

        times, outs = interleaved(
            {
                "auto": auto,
                "exact": lambda i, nq=nq: hs(col, _query(data, q0 + i * nq, nq), limit=K, plan="exact"),
            },
            items,
            rounds=rounds,
            seed=100 + nq,
        )
        q_high = data["q_high"][q0 : q0 + items * nq]
        gt = topk_ip(data["high"], q_high, K)
        fid = {
            name: float(np.mean(fidelity([h for r in res for h in hit_ids(r)], gt, data["high"], q_high)))
            for name, res in outs.items()
        }
        auto_s, exact_s = float(np.mean(times["auto"])), float(np.mean(times["exact"]))
        plans = sorted({p for p, _ in chosen.values()})
        row = {
            "rows": n,
            "nq": nq,
            "plan": "/".join(plans),
            "coarse_limit": next(iter(chosen.values()))[1],
            "rounds": rounds,
            "auto": latency_stats(times["auto"], nq),
            "exact": latency_stats(times["exact"], nq),
            "time_vs_exact": auto_s / exact_s,
            "fidelity_auto": fid["auto"],
            "fidelity_exact": fid["exact"],
        }
        # Judged on the numbers alone; the report also accepts auto == exact (the same requests).
        row["holds"] = row["time_vs_exact"] <= 1.10 and fid["auto"] >= min(0.99, fid["exact"])
        log(
            f"  check {n} nq={nq}: plan {row['plan']} cl={row['coarse_limit']} "
            f"{row['time_vs_exact']:.2f}x exact, fidelity {fid['auto']:.3f} (exact {fid['exact']:.3f})"
        )
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> Path:
    """Run the stages over the sizes and write ``benchmarks/results/plan.json`` (merged with earlier stages)."""
    import json

    ap = argparse.ArgumentParser(prog="python -m benchmarks.plan", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=None, help="gallery sizes (10k 100k 300k 1M)")
    ap.add_argument("--stage", nargs="+", choices=("curve", "fit", "check"), default=["curve", "fit", "check"])
    ap.add_argument("--queries", type=int, default=12, help="single queries per contender (batches: fewer)")
    ap.add_argument("--rounds", type=int, default=1, help="check: times each query is repeated (interleaved)")
    args = ap.parse_args(argv)
    sizes = parse_sizes(args.sizes, [10_000, 100_000, 300_000, 1_000_000])
    from benchmarks.common import RESULTS_DIR

    path = RESULTS_DIR / "plan.json"
    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    res: dict[str, Any] = {k: doc.get(k, {}) for k in ("curve", "fit_rows", "check")}
    import sys

    commands = [*doc.get("commands", []), " ".join(["python -m benchmarks.plan", *(argv or sys.argv[1:])])]
    t0 = time.perf_counter()
    out = path
    for n in sizes:
        col, data = load(n, db=bool({"fit", "check"} & set(args.stage)))
        if "curve" in args.stage:
            res["curve"][str(n)] = curve_point(data)
            log(f"  curve {n}: K={res['curve'][str(n)]['k']}")
        if "fit" in args.stage:
            k_curve = int(res["curve"].get(str(n), {}).get("k", 10 * K))
            res["fit_rows"][str(n)] = fit_timings(col, data, k_curve, n_items=args.queries)
        if "check" in args.stage:
            res["check"][str(n)] = check(col, data, n_items=args.queries, rounds=args.rounds)
        if col is not None:
            col.client.close()
        del col, data
        out = _write(res, commands, time.perf_counter() - t0 + float(doc.get("wall_s", 0.0)))  # after each size
    log(f"wrote {out}")
    return out


def _write(res: dict[str, Any], commands: list[str], wall_s: float) -> Path:
    all_rows = [r for rows in res["fit_rows"].values() for r in rows]
    payload = {
        **res,
        "generator": GEN.__dict__,
        "curve_target": CURVE_TARGET,
        "cost": fit_cost(all_rows) if all_rows else None,
        "coarse_curve": [
            {"rows": p["rows"], "per_hit": p["per_hit"]} for p in sorted(res["curve"].values(), key=lambda p: p["rows"])
        ],
        "commands": commands,
        "wall_s": wall_s,
    }
    return write_result("plan", payload)


if __name__ == "__main__":
    main()
