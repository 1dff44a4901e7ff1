"""Serving benchmark: dynamic batching (``max_batch_size=32``) vs none (``1``) for text encoding.

The same bounded concurrent load is sent twice to the real app of ``serving/`` (Ray Serve, Milvus
Lite), once per ``max_batch_size``: ``--requests`` distinct texts, at most ``--concurrency`` in
flight, from an asyncio client in this process. Two paths are timed:

* ``http``: ``POST /encode`` through Serve's proxy and the FastAPI ingress (what users see);
* ``handle``: ``TextEncoder.encode`` through a DeploymentHandle (the encoder alone, no HTTP).

Prints requests/s, p50/p99 latency and the mean batch size the encoder saw, and writes them as
JSON (``--out``)::

    python benchmarks/serve.py                        # tiny model (the quickstart's), 256 x 32
    python benchmarks/serve.py --model minilm         # a 6-layer, 384-wide text tower (MiniLM-sized)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

MODELS = {
    "micro": {},
    "tiny": {},
    # all-MiniLM-L6-v2's shape with random weights: a realistic CPU text tower.
    "minilm": {"hidden_size": 384, "num_layers": 6, "num_heads": 12, "intermediate_size": 1536, "max_length": 32},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model(name: str, texts: list[str]) -> Any:
    from hivlp_milvus.model import HiVLPConfig, create_model, get_config

    base = get_config("micro" if name == "micro" else "tiny").to_dict()
    base["text"].update(MODELS[name])
    return create_model(HiVLPConfig.from_dict(base), texts=texts, seed=0)


async def _load(send: Any, texts: list[str], concurrency: int) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(text: str) -> None:
        async with gate:
            t0 = time.perf_counter()
            await send(text)
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(one(t) for t in texts))
    wall = time.perf_counter() - started
    return {
        "requests": len(texts),
        "seconds": round(wall, 3),
        "rps": round(len(texts) / wall, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * float(np.percentile(latencies, 99, method="nearest")), 1),
    }


async def _http_load(url: str, texts: list[str], concurrency: int) -> dict[str, float]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def send(text: str) -> None:
            r = await client.post("/encode", json={"text": text})
            r.raise_for_status()

        return await _load(send, texts, concurrency)


async def _handle_load(handle: Any, texts: list[str], concurrency: int) -> dict[str, float]:
    async def send(text: str) -> None:
        await handle.encode.remote(text)

    return await _load(send, texts, concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--batch-wait-s", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve.json"))
    args = parser.parse_args(argv)

    import ray
    from milvus_lite.server_manager import server_manager_instance
    from ray import serve

    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.data import synthetic
    from hivlp_milvus.ingest import ingest
    from serving import AppArgs, build_app

    records = synthetic.generate(200, seed=0)
    captions = [c for r in records for c in r.captions]
    texts = [f"{captions[i % len(captions)]} #{i}" for i in range(args.requests + args.concurrency)]
    warmup, texts = texts[: args.concurrency], texts[args.concurrency :]
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(args.model, captions)
        model.save_pretrained(Path(tmp) / "model")
        db = str(Path(tmp) / "bench.db")
        col = HierarchicalCollection.create("bench", uri=db, model=model)
        ingest(records[:20], collection=col, model=model, progress=False)  # the Searcher needs a collection
        col.client.close()
        server_manager_instance.release_server(db)

        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        url = f"http://127.0.0.1:{port}"
        try:
            for size in args.batch_sizes:
                app = build_app(
                    AppArgs(
                        checkpoint=str(Path(tmp) / "model"),
                        milvus_uri=db,
                        collection="bench",
                        max_batch_size=size,
                        batch_wait_timeout_s=args.batch_wait_s,
                        max_encoder_replicas=1,  # one replica: measure batching, not scaling
                    )
                )
                serve.run(app, name="bench", route_prefix="/")
                encoder = serve.get_deployment_handle("TextEncoder", app_name="bench")
                for path in ("http", "handle"):
                    asyncio.run(_http_load(url, warmup, args.concurrency))
                    encoder.reset_stats.remote().result()
                    load = (
                        _http_load(url, texts, args.concurrency)
                        if path == "http"
                        else _handle_load(encoder, texts, args.concurrency)
                    )
                    row = {"path": path, "max_batch_size": size, **asyncio.run(load)}
                    stats = encoder.stats.remote().result()
                    row["mean_batch"] = round(stats["mean_batch_size"], 1)
                    results.append(row)
                    print(json.dumps(row), flush=True)
                serve.delete("bench")
        finally:
            serve.shutdown()
            ray.shutdown()

    header = f"{'path':7} {'batch':>5} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10}"
    print(f"\nmodel={args.model} requests={args.requests} concurrency={args.concurrency}\n{header}")
    for r in results:
        cells = (r["path"], r["max_batch_size"], r["rps"], r["p50_ms"], r["p99_ms"], r["mean_batch"])
        print("{:7} {:>5} {:>7} {:>8} {:>8} {:>10}".format(*cells))
    for path in ("http", "handle"):
        by_size = {r["max_batch_size"]: r for r in results if r["path"] == path}
        if 1 in by_size and len(by_size) > 1:
            best = max(by_size.values(), key=lambda r: r["rps"])
            speedup = best["rps"] / by_size[1]["rps"]
            print(f"{path}: batching speed-up {speedup:.2f}x (max_batch_size {best['max_batch_size']} vs 1)")
    # Written with the machine info (load average!) of benchmarks/common.py.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `benchmarks` importable
    from benchmarks.common import write_result

    payload = {
        "model": args.model,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "batch_wait_timeout_s": args.batch_wait_s,
        "results": results,
    }
    write_result(args.out.stem, payload, results_dir=args.out.parent, command=" ".join(["python", *sys.argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
