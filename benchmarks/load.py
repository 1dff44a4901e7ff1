"""Load benchmark: N concurrent HTTP clients for T seconds against the search app, on the loopback.

Two modes, each bounded in time and request count, each stopping by itself::

    python benchmarks/load.py --start                 # `serve run` on ./hivlp_work (the quickstart), load, stop
    python benchmarks/load.py --url http://127.0.0.1:8000 [--api-key K] --clients 8 --duration 20
    python benchmarks/load.py --compare-batching      # searches at 1, 8, 32 clients, batching on/off interleaved

**Mixed load** (``--url`` or ``--start``): each client loops over a weighted mix of routes
(``--mix search_text=6,search_image=2,encode=1,ingest=1``): a text search, an image search (a
synthetic PNG as base64), a text encode, and a one-caption ingest whose key cycles over
:data:`INGEST_KEYS` keys (``loadbench-0`` ...), so repeated runs upsert the same few rows instead of
growing the collection. Reported: requests/s, p50/p95/p99 per route, errors by status, the CPU the
serve processes used (psutil), and **wrong answers**: before the load each of a few text queries is
sent alone, and every answer to the same query under load must list the same ids in the same order.
Text searches look at image rows (cross-modal default) and the ingests write text rows, so the
ingests cannot change those answers.

**Batching comparison** (``--compare-batching``): builds a synthetic collection, starts Ray and the
app in this process (the clients are asyncio tasks here; the replicas are separate processes), and
for each client count runs the search load twice, with the Searcher's cross-request batching on and
off (``Searcher.set_batching`` through a handle), alternating which goes first. Writes
``benchmarks/results/load.json``; ``benchmarks/report_load.py`` renders it into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROUTES = ("search_text", "search_image", "encode", "ingest")
DEFAULT_MIX = {"search_text": 6, "search_image": 2, "encode": 1, "ingest": 1}
INGEST_KEYS = 16
CHECK_QUERIES = 8
LEVELS = (1, 8, 32)


def parse_mix(text: str) -> dict[str, float]:
    """``"search_text=6,encode=1"`` -> weights; routes not named get 0.

    Raises:
        ValueError: an unknown route, a negative weight, or all weights zero.
    """
    weights = dict.fromkeys(ROUTES, 0.0)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in weights:
            raise ValueError(f"unknown route {name!r} in --mix; use {', '.join(ROUTES)}")
        weights[name] = float(value)
        if weights[name] < 0:
            raise ValueError(f"--mix weight of {name} is negative")
    if not any(weights.values()):
        raise ValueError("--mix gives every route weight 0")
    return weights


@dataclass
class Workload:
    """What the clients send: captions (text queries, encodes, ingests) and base64 PNG images."""

    texts: list[str]
    images: list[str]
    check_texts: list[str] = field(default_factory=list)


def make_workload(n: int = 64, seed: int = 0) -> Workload:
    """``n`` synthetic scenes: their first captions and their images (PNG, base64)."""
    from hivlp_milvus.data import synthetic

    texts, images = [], []
    for record in synthetic.generate(n, seed=seed):
        texts.append(record.captions[0])
        buf = io.BytesIO()
        record.image.save(buf, format="PNG")
        images.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return Workload(texts=texts, images=images, check_texts=texts[:CHECK_QUERIES])


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _request(route: str, workload: Workload, rng: random.Random, n: int, limit: int) -> tuple[str, dict[str, Any]]:
    if route == "search_text":
        return "/search", {"text": rng.choice(workload.texts), "limit": limit}
    if route == "search_image":
        return "/search", {"image": rng.choice(workload.images), "limit": limit}
    if route == "encode":
        return "/encode", {"text": rng.choice(workload.texts)}
    key = f"loadbench-{n % INGEST_KEYS}"
    return "/ingest", {"records": [{"key": key, "captions": [rng.choice(workload.texts)]}]}


async def single_client_answers(client: Any, texts: list[str], limit: int) -> dict[str, list[str]]:
    """Each text searched alone, one after another: the ids every answer under load must repeat."""
    answers = {}
    for text in texts:
        r = await client.post("/search", json={"text": text, "limit": limit})
        r.raise_for_status()
        answers[text] = [h["id"] for h in r.json()["hits"]]
    return answers


async def run_load(
    url: str,
    workload: Workload,
    *,
    clients: int,
    duration_s: float,
    max_requests: int,
    mix: dict[str, float],
    api_key: str | None = None,
    seed: int = 0,
    limit: int = 10,
    timeout_s: float = 60.0,
    check: bool = True,
) -> dict[str, Any]:
    """``clients`` concurrent clients, each sending one request at a time, for ``duration_s`` or
    ``max_requests`` requests in all, whichever comes first.

    Returns:
        ``{"clients", "wall_s", "requests", "rps", "errors": {status: n}, "routes": {route: {...}},
        "checked", "wrong_answers", "examples"}``; transport failures count as status ``transport``.
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients + 1, max_keepalive_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout_s, limits=limits) as client:
        # The check texts are searched under load too, so every one of them is checked often.
        queries = Workload(workload.texts[: CHECK_QUERIES * 2] + workload.check_texts, workload.images)
        expected = await single_client_answers(client, workload.check_texts, limit) if check else {}
        names = [r for r in ROUTES if mix.get(r, 0) > 0]
        weights = [mix[r] for r in names]
        records: list[tuple[str, int | str, float]] = []
        wrong: list[dict[str, Any]] = []
        counter = {"sent": 0, "checked": 0}
        deadline = time.perf_counter() + duration_s

        async def one_client(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while time.perf_counter() < deadline and counter["sent"] < max_requests:
                n = counter["sent"]
                counter["sent"] += 1
                route = rng.choices(names, weights)[0]
                path, body = _request(route, queries if route == "search_text" else workload, rng, n, limit)
                t0 = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    status: int | str = r.status_code
                except httpx.HTTPError as exc:
                    status = f"transport:{type(exc).__name__}"
                records.append((route, status, time.perf_counter() - t0))
                if status == 200 and route == "search_text" and body["text"] in expected:
                    counter["checked"] += 1
                    got = [h["id"] for h in r.json()["hits"]]
                    if got != expected[body["text"]]:
                        wrong.append({"text": body["text"], "expected": expected[body["text"]], "got": got})

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        wall = time.perf_counter() - started
    return summarize(records, wall, clients) | {
        "checked": counter["checked"],
        "wrong_answers": len(wrong),
        "examples": wrong[:3],
    }


def summarize(records: list[tuple[str, int | str, float]], wall: float, clients: int) -> dict[str, Any]:
    """Throughput, latency percentiles (successful requests) and errors by status, overall and per route."""

    def stats(rows: list[tuple[str, int | str, float]]) -> dict[str, Any]:
        ok = [lat for _, status, lat in rows if status == 200]
        errors: dict[str, int] = {}
        for _, status, _ in rows:
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
        return {
            "requests": len(rows),
            "ok": len(ok),
            "rps": round(len(rows) / wall, 2) if wall else 0.0,
            "p50_ms": round(1000 * percentile(ok, 50), 1),
            "p95_ms": round(1000 * percentile(ok, 95), 1),
            "p99_ms": round(1000 * percentile(ok, 99), 1),
            "errors": errors,
        }

    routes = {r: stats([x for x in records if x[0] == r]) for r in ROUTES if any(x[0] == r for x in records)}
    return {"clients": clients, "wall_s": round(wall, 2), **stats(records), "routes": routes}


# -- CPU of the serve processes --------------------------------------------------------------------


def serve_processes(root_pid: int | None = None, *, include_root: bool = True) -> list[Any]:
    """The processes of the app: ``root_pid``'s descendants (and itself), else every Ray Serve process here."""
    if root_pid is not None:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)] if include_root else root.children(recursive=True)
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if "ServeReplica" in cmd or "ProxyActor" in cmd or "ServeController" in cmd:
            found.append(proc)
    return found


class CpuMeter:
    """CPU seconds used by a set of processes between :meth:`start` and :meth:`stop`."""

    def __init__(self, procs: list[Any]) -> None:
        self._procs = procs
        self._before: dict[int, float] = {}
        self._t0 = 0.0

    def _times(self) -> dict[int, float]:
        out = {}
        for p in self._procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
            except Exception:  # a process gone meanwhile (a replica replaced)
                continue
        return out

    def start(self) -> None:
        self._before, self._t0 = self._times(), time.perf_counter()

    def stop(self) -> dict[str, Any]:
        after, wall = self._times(), time.perf_counter() - self._t0
        used = sum(max(0.0, after[pid] - self._before.get(pid, after[pid])) for pid in after)
        return {
            "processes": len(after),
            "cpu_s": round(used, 2),
            "cores_busy": round(used / wall, 2) if wall else 0.0,
            "machine_cores": psutil.cpu_count(),
        }


# -- mixed load against a running (or started) app ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen | None, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"`serve run` exited with code {proc.returncode} before the app answered")
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"the app at {url} was not healthy within {timeout_s:.0f} s")


def _health(url: str) -> dict[str, Any]:
    """``GET /healthz`` (the collection and its row count), ``{}`` when it does not answer 200."""
    import httpx

    try:
        r = httpx.get(f"{url}/healthz", timeout=10)
        return r.json() if r.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return {}


def start_app(workdir: Path, port: int, log: Path) -> subprocess.Popen:
    """``serve run`` of ``serving:build_app`` in ``workdir`` (its ``hivlp_work/``) on 127.0.0.1:``port``."""
    if not (workdir / "hivlp_work" / "model" / "config.json").is_file():
        raise SystemExit(
            f"no quickstart output in {workdir}/hivlp_work: run `hivlp-milvus quickstart` (or `make demo`) first, "
            "or point --url at a running app"
        )
    config = log.with_suffix(".yaml")
    config.write_text(
        f"http_options: {{host: 127.0.0.1, port: {port}}}\n"
        "applications:\n  - {name: hivlp, import_path: 'serving:build_app', route_prefix: /}\n"
    )
    serve = Path(sys.executable).with_name("serve")
    cmd = [str(serve) if serve.exists() else "serve", "run", "--address", "local", str(config)]
    # Its own process group: stopping it stops the local Ray it started, and nothing else.
    return subprocess.Popen(
        cmd, cwd=str(workdir), stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_app(proc: subprocess.Popen) -> None:
    """Ctrl-C (serve run shuts the app and its Ray down), then SIGKILL the group after 60 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def mixed(args: argparse.Namespace) -> dict[str, Any]:
    """The mixed load against ``--url`` or a started app; the result dict (also printed)."""
    workload = make_workload(seed=args.seed)
    proc, url, tmp = None, args.url.rstrip("/"), tempfile.mkdtemp(prefix="hivlp-load-")
    try:
        if args.start:
            url = f"http://127.0.0.1:{free_port()}"
            proc = start_app(Path(args.workdir).resolve(), int(url.rsplit(":", 1)[1]), Path(tmp) / "serve.log")
            print(f"started `serve run` (pid {proc.pid}, log {tmp}/serve.log); waiting for {url}/healthz", flush=True)
            _wait_healthy(url, proc, args.start_timeout)
        health = _health(url)
        meter = CpuMeter(serve_processes(proc.pid if proc else None))
        meter.start()
        result = asyncio.run(
            run_load(
                url,
                workload,
                clients=args.clients,
                duration_s=args.duration,
                max_requests=args.max_requests,
                mix=parse_mix(args.mix),
                api_key=args.api_key,
                seed=args.seed,
            )
        )
        result["cpu"] = meter.stop()
    finally:
        if proc is not None:
            stop_app(proc)
    result |= {"url": url, "started": bool(args.start), "mix": parse_mix(args.mix), "duration_s": args.duration}
    result |= {"collection": health.get("collection"), "collection_rows": health.get("count")}
    return result


def print_mixed(result: dict[str, Any]) -> None:
    print(f"\n{result['clients']} clients, {result['wall_s']} s: {result['requests']} requests, {result['rps']} req/s")
    print(f"{'route':13} {'req':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  errors")
    for route, r in result["routes"].items():
        cells = (route, r["requests"], r["rps"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"] or "-")
        print("{:13} {:>6} {:>7} {:>8} {:>8} {:>8}  {}".format(*cells))
    print(
        f"errors by status: {result['errors'] or 'none'}; wrong answers: {result['wrong_answers']} of "
        f"{result['checked']} checked; serve CPU: {result.get('cpu')}"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of this script (``hivlp-milvus bench load`` passes its flags through)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="a running app (mixed load)")
    parser.add_argument("--api-key", default=None, help="the app's API key, if it needs one")
    parser.add_argument(
        "--start", action="store_true", help="start `serve run` on --workdir's hivlp_work, then stop it"
    )
    parser.add_argument("--workdir", default=".", help="--start: the directory holding hivlp_work/ (the quickstart's)")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="--start: seconds to wait for /healthz")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (mixed load)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (per run)")
    parser.add_argument("--max-requests", type=int, default=5000, help="stop after this many requests (per run)")
    parser.add_argument("--mix", default=",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()), help="route weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-batching", action="store_true", help="searches with batching on/off, interleaved")
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="--compare-batching: clients")
    parser.add_argument("--repeats", type=int, default=2, help="--compare-batching: runs per level and setting")
    parser.add_argument("--records", type=int, default=500, help="--compare-batching: synthetic scenes (x6 rows)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/load*.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.clients, args.max_requests, *args.levels) < 1 or args.duration <= 0:
        parser.error("--clients, --levels and --max-requests must be >= 1 and --duration > 0")
    parse_mix(args.mix)  # fail before starting anything
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `benchmarks` importable
    results = Path(__file__).resolve().parent / "results"
    if args.compare_batching:
        from benchmarks.load_compare import compare_batching, print_comparison
        from benchmarks.report_load import plot

        result = compare_batching(args)
        print_comparison(result)
        out = args.out or results / "load.json"
        if args.out is None:  # a smoke run's plot must not replace the measurement's
            print(f"plot: {plot(result, results.parent / 'plots')}")
    else:
        result = mixed(args)
        print_mixed(result)
        out = args.out or results / "load_mixed.json"
    _write(out, result)
    print(f"wrote {out}")
    failed = result.get("wrong_answers", 0) or any(r.get("wrong_answers") for r in result.get("runs", []))
    return 1 if failed else 0


def _write(out: Path, payload: dict[str, Any]) -> None:
    """Write the result with the machine info (load average) of benchmarks/common.py."""
    from benchmarks.common import write_result

    write_result(out.stem, payload, results_dir=out.parent, command=" ".join(["python", *sys.argv]))


if __name__ == "__main__":
    sys.exit(main())
