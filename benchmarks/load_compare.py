"""The Searcher's cross-request batching on and off, at several client counts, interleaved in one run.

``python benchmarks/load.py --compare-batching`` (``hivlp-milvus bench load --compare-batching``):
a synthetic collection (``--records`` scenes, 6 rows each) in a temporary Milvus Lite ``.db``, the
real app of ``serving/`` on a Ray started here (2 CPUs, one replica per deployment), and for each
client count ``--repeats`` pairs of text-search runs, batching on and off (``Searcher.set_batching``
through a handle), the pair's order alternating so a drift of the machine's load hits both alike.
Every answer is checked against the same query sent alone (batching on or off, the ids must not change).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.load import CpuMeter, Workload, free_port, percentile, run_load, serve_processes

WARMUP_S = 3.0
HANDLE_QUERIES = 64
#: ``http``: ``POST /search`` (encoder, proxy and ingress included); ``handle``: ``Searcher.search`` alone.
PATHS = ("http", "handle")


async def handle_load(searcher: Any, queries: list[tuple[Any, Any]], expected: list[list[int]], *, clients: int,
                      duration_s: float, max_requests: int) -> dict[str, Any]:  # fmt: skip
    """``clients`` concurrent callers of ``Searcher.search`` through its handle (encoded queries: the stage
    batching acts on, without the encoders and HTTP in front); ids checked against ``expected``."""
    latencies: list[float] = []
    state = {"sent": 0, "errors": 0, "wrong": 0}
    deadline = time.perf_counter() + duration_s

    async def caller(i: int) -> None:
        k = i
        while time.perf_counter() < deadline and state["sent"] < max_requests:
            state["sent"] += 1
            k = (k + 7) % len(queries)
            t0 = time.perf_counter()
            try:
                res = await searcher.search.remote(*queries[k], limit=10, modality="image")
            except Exception:
                state["errors"] += 1
                continue
            latencies.append(time.perf_counter() - t0)
            state["wrong"] += [h["id"] for h in res["hits"]] != expected[k]

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(clients)))
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "wall_s": round(wall, 2),
        "requests": state["sent"],
        "ok": len(latencies),
        "rps": round(len(latencies) / wall, 2),
        "p50_ms": round(1000 * percentile(latencies, 50), 1),
        "p95_ms": round(1000 * percentile(latencies, 95), 1),
        "p99_ms": round(1000 * percentile(latencies, 99), 1),
        "errors": {"exception": state["errors"]} if state["errors"] else {},
        "checked": len(latencies),
        "wrong_answers": state["wrong"],
    }


def _collection(tmp: Path, records: int, seed: int) -> tuple[Path, str, list[str]]:
    """A tiny-model checkpoint and a Lite collection of ``records`` synthetic scenes; their captions."""
    from milvus_lite.server_manager import server_manager_instance

    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.data import synthetic
    from hivlp_milvus.ingest import ingest
    from hivlp_milvus.model import create_model

    data = synthetic.generate(records, seed=seed)
    captions = [c for r in data for c in r.captions]
    model = create_model("tiny", texts=captions, seed=seed)
    model.save_pretrained(tmp / "model")
    db = str(tmp / "load.db")
    col = HierarchicalCollection.create("load", uri=db, model=model)
    report = ingest(data, collection=col, model=model, progress=False)
    if report.failed:
        raise RuntimeError(f"building the benchmark collection failed: {report}")
    col.client.close()
    server_manager_instance.release_server(db)  # the Searcher replica opens it next
    return tmp / "model", db, [r.captions[0] for r in data]


def compare_batching(args: argparse.Namespace) -> dict[str, Any]:
    """Run the comparison; ``{"levels", "duration_s", "records", "runs": [...]}``."""
    import ray
    from ray import serve

    from serving import AppArgs, build_app

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hivlp-load-") as tmp:
        model_dir, db, texts = _collection(Path(tmp), args.records, args.seed)
        print(f"collection of {args.records * 6} rows built in {time.perf_counter() - t0:.0f} s", flush=True)
        workload = Workload(texts=texts, images=[], check_texts=texts[:8])
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        runs: list[dict[str, Any]] = []
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            app = AppArgs(checkpoint=str(model_dir), milvus_uri=db, collection="load", max_encoder_replicas=1)
            serve.run(build_app(app), name="load", route_prefix="/")
            searcher = serve.get_deployment_handle("Searcher", app_name="load")
            mix = {"search_text": 1.0}

            encoder = serve.get_deployment_handle("TextEncoder", app_name="load")
            encoded = [encoder.encode.remote(t).result() for t in texts[:HANDLE_QUERIES]]
            queries = [(e["low"], e["high"]) for e in encoded]
            searcher.set_batching.remote(False).result()
            expected = [
                [h["id"] for h in searcher.search.remote(*q, limit=10, modality="image").result()["hits"]]
                for q in queries
            ]

            def one(path: str, clients: int, batching: bool, duration: float, check: bool = True) -> dict[str, Any]:
                searcher.set_batching.remote(batching).result()
                before = searcher.batch_stats.remote().result()
                meter = CpuMeter(serve_processes(os.getpid(), include_root=False))
                meter.start()
                if path == "handle":
                    load = handle_load(
                        searcher,
                        queries,
                        expected,
                        clients=clients,
                        duration_s=duration,
                        max_requests=args.max_requests,
                    )
                else:
                    load = run_load(
                        url,
                        workload,
                        clients=clients,
                        duration_s=duration,
                        max_requests=args.max_requests,
                        mix=mix,
                        seed=args.seed,
                        check=check,
                    )
                row = asyncio.run(load)
                row["cpu"] = meter.stop()
                after = searcher.batch_stats.remote().result()
                batches = after["batches"] - before["batches"]
                row["mean_query_batch"] = round((after["queries"] - before["queries"]) / batches, 2) if batches else 1.0
                row["batching"] = batching
                row["path"] = path
                return row

            for path in PATHS:
                for batching in (True, False):  # warm both settings (and the encoders) before measuring
                    one(path, 8, batching, WARMUP_S, check=False)
            for rep in range(args.repeats):
                for i, clients in enumerate(args.levels):
                    order = (True, False) if (rep + i) % 2 == 0 else (False, True)
                    for path in PATHS:
                        for batching in order:
                            row = one(path, clients, batching, args.duration) | {"repeat": rep}
                            runs.append(row)
                            print(_line(row), flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
    return {
        "levels": list(args.levels),
        "duration_s": args.duration,
        "repeats": args.repeats,
        "records": args.records,
        "rows": args.records * 6,
        "model": "tiny",
        "runs": runs,
        "summary": summarize_runs(runs),
    }


def summarize_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per client count and setting: the median requests/s and p99 over the repeats, errors and wrong answers."""
    import statistics

    out = []
    for path, clients, batching in (
        (p, c, b) for p in PATHS for c in sorted({r["clients"] for r in runs}) for b in (True, False)
    ):
        rows = [
            r for r in runs if r.get("path", "http") == path and r["clients"] == clients and r["batching"] is batching
        ]
        if not rows:
            continue
        out.append(
            {
                "path": path,
                "clients": clients,
                "batching": batching,
                "rps": round(statistics.median(r["rps"] for r in rows), 2),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rows), 1),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rows), 1),
                "mean_query_batch": round(statistics.median(r["mean_query_batch"] for r in rows), 2),
                "requests": sum(r["requests"] for r in rows),
                "errors": sum(r["requests"] - r["ok"] for r in rows),
                "checked": sum(r["checked"] for r in rows),
                "wrong_answers": sum(r["wrong_answers"] for r in rows),
                "cores_busy": round(statistics.median(r["cpu"]["cores_busy"] for r in rows), 2),
            }
        )
    return out


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r.get('path', 'http'):6} clients {r['clients']:>3} batching {'on ' if r['batching'] else 'off'}: "
        f"{r['rps']:>7} req/s  "
        f"p50 {r['p50_ms']:>7} ms  p99 {r['p99_ms']:>7} ms  batch {r['mean_query_batch']:>5}  "
        f"errors {r['requests'] - r['ok']}  wrong {r['wrong_answers']}/{r['checked']}"
    )


def print_comparison(result: dict[str, Any]) -> None:
    print(f"\n{result['rows']} rows, {result['duration_s']} s per run, {result['repeats']} repeats (medians)")
    for s in result["summary"]:
        print(_line({**s, "ok": s["requests"] - s["errors"]}))
