"""What the coarse request asks Milvus for: ``output_fields=[]`` against the key alone, side by side.

Milvus Lite 3.2 answers a search whose ``output_fields`` is empty with *every* field of each hit:
both vectors and the JSON attributes. Until 2026-11-30 ``hivlp_milvus.search`` sent ``[]`` for
the funnel's coarse stage, so a shortlist of ``cl`` rows shipped and decoded ``cl`` pairs of
vectors that nobody read; it now sends ``["id"]``. On one gallery, single queries, interleaved:

* the raw coarse request (``MilvusClient.search`` on ``vec_low``, the profile's ``nprobe``) both
  ways at each ``cl``, checked to return the same ids;
* the funnel as it runs now (``hierarchical_search``, client re-rank) and exact high-dim search;

once with single queries and once with batches of ``--nq`` queries a call.

    python -m benchmarks.coarse_fields --db benchmarks/.cache/gen_..._1000000_s0.0020.db

``--db`` is a database of the search benchmark's cache (collection ``gallery``); without it a
small random gallery is built in a temporary directory (``--rows``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import interleaved, latency_stats, log, write_result
from benchmarks.galleries import COLLECTION
from benchmarks.metrics import K, hit_ids

SHORTLISTS = (100, 1000)


def measure(
    col: Any, *, queries: int, nq: int = 1, shortlists: tuple[int, ...] = SHORTLISTS, seed: int = 0
) -> dict[str, Any]:
    """p50 / p99 per contender, the ``[]`` / ``["id"]`` ratio per shortlist, and the funnel vs exact.

    Each call sends ``nq`` queries (``queries // nq`` calls per contender).
    """
    from hivlp_milvus.model.embedding import HierarchicalEmbedding

    rng = np.random.default_rng(seed)
    rows = col.count()
    # Queries near stored rows (a perturbed copy of each), as real queries land near their matches.
    picked = col.get(rng.choice(rows, queries, replace=False).tolist(), output_fields=["vec_low", "vec_high"])
    q = {f: np.asarray([r[f] for r in picked], np.float32) for f in ("vec_low", "vec_high")}
    for f, v in q.items():
        v += rng.normal(0, 0.05, v.shape).astype(np.float32)
        q[f] = v / np.linalg.norm(v, axis=1, keepdims=True)
    client = col.client
    shortlists = tuple(cl for cl in shortlists if cl < rows)

    def coarse(cl: int, fields: list[str]) -> Any:
        params = col.profile.low_search_params(cl, num_rows=rows)
        return lambda i: hit_ids(
            client.search(
                col.name,
                data=q["vec_low"][i * nq : (i + 1) * nq],
                anns_field="vec_low",
                limit=cl,
                output_fields=fields,
                search_params=params,
            )
        )

    def query(i: int) -> Any:
        return HierarchicalEmbedding(q["vec_low"][i * nq : (i + 1) * nq], q["vec_high"][i * nq : (i + 1) * nq])

    contenders: dict[str, Any] = {}
    for cl in shortlists:
        for fields in ([], ["id"]):
            contenders[_coarse_name(cl, fields)] = coarse(cl, fields)
    contenders[f"funnel cl={shortlists[-1]}"] = lambda i: hit_ids(
        col.hierarchical_search(query(i), limit=K, coarse_limit=shortlists[-1], rerank="client", output_fields=[])
    )
    contenders["exact-high"] = lambda i: hit_ids(col.search(query(i), level="high", limit=K, output_fields=[]))
    times, outputs = interleaved(contenders, queries // nq, seed=seed)
    # Searched without a partition: the search benchmark's galleries hold their rows outside the
    # modality partitions, where a partition-restricted search would time empty answers.
    empty = [name for name, per_query in outputs.items() if not all(per_query)]
    if empty:
        raise RuntimeError(f"{empty} gave empty answers: the measurement would time nothing")
    stats = {name: latency_stats(t) for name, t in times.items()}
    every, key = ({str(cl): _coarse_name(cl, fields) for cl in shortlists} for fields in ([], ["id"]))
    same = {cl: outputs[every[cl]] == outputs[key[cl]] for cl in every}
    ratio = {cl: stats[every[cl]]["p50_ms"] / stats[key[cl]]["p50_ms"] for cl in every}
    speedup = stats["exact-high"]["p50_ms"] / stats[f"funnel cl={shortlists[-1]}"]["p50_ms"]
    return {
        "rows": rows,
        "queries": queries // nq * nq,
        "nq": nq,
        "stats": stats,
        "same_ids": same,
        "all_fields_over_key_p50": ratio,
        "funnel_speedup_vs_exact_p50": speedup,
    }


def _coarse_name(cl: int, fields: list[str]) -> str:
    """``coarse cl=100 output_fields=["id"]``: the contender's name, the request it sends."""
    return f"coarse cl={cl} output_fields={json.dumps(fields)}"


def build_gallery(path: Path, rows: int, seed: int = 0) -> Any:
    """A random unit-vector gallery of ``rows`` images (32/256 dims) with attributes, flushed."""
    from hivlp_milvus.collection import HierarchicalCollection

    rng = np.random.default_rng(seed)
    col = HierarchicalCollection.create(COLLECTION, uri=str(path), low_dim=32, high_dim=256, expected_rows=rows)
    for start in range(0, rows, 2000):
        n = min(2000, rows - start)
        low = rng.normal(size=(n, 32)).astype(np.float32)
        high = rng.normal(size=(n, 256)).astype(np.float32)
        col.upsert(
            [
                {
                    "id": start + j,
                    "key": f"g{start + j}",
                    "modality": "image",
                    "reference": f"img/{start + j}.png",
                    "attributes": {"tag": "x" * 20},
                    "vec_low": (low[j] / np.linalg.norm(low[j])).tolist(),
                    "vec_high": (high[j] / np.linalg.norm(high[j])).tolist(),
                }
                for j in range(n)
            ]
        )
    col.flush()
    return col


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", type=Path, default=None, help="a search-benchmark cache database (collection 'gallery')")
    p.add_argument("--rows", type=int, default=20_000, help="rows of the random gallery built without --db")
    p.add_argument("--queries", type=int, default=30, help="single queries per contender")
    p.add_argument("--nq", type=int, default=32, help="queries per call of the batched run")
    p.add_argument("--batches", type=int, default=3, help="calls per contender of the batched run")
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args(argv)
    from hivlp_milvus.collection import HierarchicalCollection

    with tempfile.TemporaryDirectory(prefix="hivlp-fields-") as tmp:
        if args.db is not None:
            col = HierarchicalCollection.open(COLLECTION, uri=str(args.db))
        else:
            col = build_gallery(Path(tmp) / "gallery.db", args.rows)
        log(f"{col.count()} rows; {args.queries} queries per contender")
        runs = [measure(col, queries=args.queries), measure(col, queries=args.batches * args.nq, nq=args.nq)]
    for run in runs:
        for name, s in run["stats"].items():
            log(f"nq={run['nq']} {name}: p50 {s['p50_ms']:.1f} ms")
        speedup = run["funnel_speedup_vs_exact_p50"]
        log(f"nq={run['nq']} [] / ['id'] p50: {run['all_fields_over_key_p50']}; funnel vs exact {speedup:.2f}x")
    gallery = str(args.db) if args.db else f"random, {args.rows} rows"
    print(write_result("coarse_fields", {"gallery": gallery, "runs": runs}, results_dir=args.results_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
