"""Engine check: the hierarchical path's requests on Milvus' C++ engine instead of Milvus Lite 3.

Why this exists: on Milvus Lite 3.2 (pure Python + faiss) every search request pays Python loops
over all primary keys, ~0.5 s per request at 1M rows whatever the index does (see the profile in
``search.json``). That floor hides what the coarse stage saves. This benchmark sends the requests
``HierarchicalCollection.hierarchical_search`` sends to a Milvus whose engine is the C++ one
(segcore + knowhere): Milvus Lite 2.5.1's ``milvus`` binary, started from a separate virtualenv
(``--lite25-python``), or any Milvus server (``--uri``, e.g. a standalone container).

The requests, per contender (the same data, queries and interleaving as ``benchmarks/search.py``):

* ``hier-client``: IVF_FLAT search on ``vec_low`` (limit = coarse_limit, the profile's nprobe),
  one ``get`` of the shortlist's ``vec_high``, the re-rank in numpy;
* ``hier-server``: the same coarse search, then per query a FLAT search on ``vec_high`` filtered
  to ``id in [shortlist]``;
* ``exact-high``: FLAT search on ``vec_high`` (the LightningDOT-style baseline);
* ``hier-server flat-low``: the server path on a copy whose ``vec_low`` is FLAT (an exact coarse
  stage; see ``GALLERY_FLAT`` for why);
* ``low-only``: IVF_FLAT on ``vec_low``; ``ann-high``: IVF_FLAT on ``vec_high`` (its own collection).

Raw ``MilvusClient`` calls, not ``HierarchicalCollection``: Milvus Lite 2.5 implements neither
partitions nor filter templates (both answer UNIMPLEMENTED), and the collection layer needs
partitions. The id filter is a literal list of integers the benchmark produced itself (no user
input goes into it). Vectors: the generated vectors of ``search.json`` (same fitted generator).

    python -m venv .venv-lite25 && .venv-lite25/bin/pip install milvus-lite==2.5.1
    .venv/bin/python -m benchmarks.engine --lite25-python .venv-lite25/bin/python --sizes 100k 1M
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.baseline import InProcess
from benchmarks.common import (
    CACHE_DIR,
    RESULTS_DIR,
    Timer,
    interleaved_queries,
    latency_stats,
    log,
    parse_sizes,
    rss_mib,
    write_result,
)
from benchmarks.load import free_port
from benchmarks.metrics import K, fidelity, hit_ids, topk_ip
from benchmarks.vectors import GenParams, generate_vectors
from hivlp_milvus.errors import ConfigError

GALLERY = "engine_gallery"
# The same rows with an exact (FLAT) coarse index: on Milvus Lite 2.5 an IVF index is not the one
# asked for (small galleries are searched brute force; at 1M a built-in index with a fixed nprobe
# answers, whatever nprobe the request sets), so the funnel is also measured with a coarse stage
# whose recall does not depend on the engine's index.
GALLERY_FLAT = "engine_gallery_flat_low"
ANN = "engine_gallery_high_ivf"
NQ_BATCH = 32
# Milvus Lite 2.5 inserts ~14k rows/s in requests of 1,000 rows but ~160 rows/s in requests of
# 10,000 (its per-request cost grows faster than linearly): keep requests small.
INSERT_BATCH = 1_000
# Its ``get`` of vectors is quadratic in the number of ids (500 ids 30 ms, 1,000 66 ms, 2,000 0.22 s,
# 4,000 0.76 s at 100k rows; ``get`` of the ids alone stays linear): the client re-rank fetches
# the shortlist in pieces of 1,000 (``hierarchical_search`` sends one ``get``; on a server that is
# one request, here it would be the engine's quirk, not the funnel, that we measure).
GET_BATCH = 1_000
# The Lite 2.5 server, started by a Python that has milvus-lite 2.5 installed (not this venv's 3.x).
# SIGTERM must stop the ``milvus`` binary it spawned, or that keeps running (and holding ~4 GB).
_SERVER_SNIPPET = """
import signal, sys, time
from milvus_lite.server import Server
s = Server(sys.argv[1], address=sys.argv[2])
if not (s.init() and s.start()):
    sys.exit("milvus-lite server did not start")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("started", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    s.stop()
"""


def start_lite25(python: str, data_dir: Path, *, timeout_s: float = 60.0) -> tuple[subprocess.Popen, str]:
    """Start Milvus Lite 2.5's C++ server (``python`` must have ``milvus-lite==2.5.*``); returns (process, uri)."""
    from pymilvus import MilvusClient

    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir / "server.log"
    with log_path.open("w") as log_file:  # a file, not a pipe nobody reads (a full pipe blocks the server)
        proc = subprocess.Popen(
            [python, "-c", _SERVER_SNIPPET, str(data_dir / "engine.db"), f"127.0.0.1:{port}"],
            cwd=str(data_dir),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop_lite25 can stop the binary too
        )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the Lite 2.5 server exited: {log_path.read_text()[-2000:]}")
        try:
            MilvusClient(uri, timeout=2).list_collections()
            return proc, uri
        except Exception:  # not listening yet
            time.sleep(0.5)
    stop_lite25(proc)
    raise RuntimeError(f"the Lite 2.5 server did not answer on {uri} within {timeout_s:.0f} s")


def stop_lite25(proc: subprocess.Popen) -> None:
    """Stop the wrapper and the ``milvus`` binary it started (the whole process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # the binary, if it outlived its parent
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def lite25_version(python: str) -> str | None:
    out = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('milvus-lite'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or None


# ---------------------------------------------------------------------- build


def _wait_indexed(client: Any, name: str, field: str, n: int, timeout_s: float = 1800.0) -> float | None:
    """Seconds until ``field``'s index covers all ``n`` rows (searches before that are brute force).

    ``None`` when the engine does not report index progress (Milvus Lite 2.5 always says
    ``total_rows: 0``, and does not build the requested index at all; see ``GALLERY_FLAT``).
    """
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        info = client.describe_index(name, field)
        if int(info.get("total_rows", 0)) == 0 and info.get("state") == "Finished":
            return None
        if int(info.get("indexed_rows", 0)) >= n and int(info.get("pending_index_rows", 0)) == 0:
            return time.perf_counter() - t0
        time.sleep(1.0)
    log(f"  warning: {name}.{field} not fully indexed after {timeout_s:.0f} s: {client.describe_index(name, field)}")
    return time.perf_counter() - t0


def _reads_nested_build_params(client: Any) -> bool:
    """Milvus Lite 3 reads IVF build params only nested under ``params`` (see ``IndexProfile.index_params``)."""
    from hivlp_milvus.connection import is_lite

    try:
        return is_lite(client)
    except Exception:  # Milvus Lite 2.5 does not implement get_server_version: not Lite 3
        return False


def _index_nlist(desc: dict[str, Any]) -> int | None:
    """The ``nlist`` a ``describe_index`` reports, flat (servers, Lite 2.5) or nested (Lite 3)."""
    nested = desc.get("params")
    if isinstance(nested, str):
        with contextlib.suppress(ValueError):
            nested = json.loads(nested)
    value = desc.get("nlist", nested.get("nlist") if isinstance(nested, dict) else None)
    return int(value) if value is not None else None


def _count(client: Any, name: str) -> int:
    return int(client.query(name, filter="", output_fields=["count(*)"])[0]["count(*)"])


def build(client: Any, low: np.ndarray, high: np.ndarray, nlist: int, *, rebuild: bool = False) -> dict[str, Any]:
    """Create (or reuse, when it holds ``n`` rows with this ``nlist``) the three collections, timed."""
    from pymilvus import DataType, MilvusClient

    n = len(high)
    info: dict[str, Any] = {"rows": n, "nlist": nlist}
    specs = {
        GALLERY: (
            [("vec_low", low.shape[1]), ("vec_high", high.shape[1])],
            {"vec_low": ("IVF_FLAT", {"nlist": nlist}), "vec_high": ("FLAT", {})},
        ),
        GALLERY_FLAT: (
            [("vec_low", low.shape[1]), ("vec_high", high.shape[1])],
            {"vec_low": ("FLAT", {}), "vec_high": ("FLAT", {})},
        ),
        ANN: ([("vec", high.shape[1])], {"vec": ("IVF_FLAT", {"nlist": nlist})}),
    }
    nest = _reads_nested_build_params(client)
    for name, (fields, indexes) in specs.items():
        reuse = not rebuild and client.has_collection(name)
        if reuse:
            want = nlist if indexes[fields[0][0]][0] != "FLAT" else None
            reuse = _index_nlist(client.describe_index(name, fields[0][0])) == want and _count(client, name) == n
        if reuse:
            client.load_collection(name)
            info[name] = {"cached": True}
            continue
        if client.has_collection(name):
            client.drop_collection(name)
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        for field, dim in fields:
            schema.add_field(field, DataType.FLOAT_VECTOR, dim=dim)
        ip = client.prepare_index_params()
        for field, (kind, params) in indexes.items():
            ip.add_index(
                field, index_type=kind, metric_type="IP", params={"params": params} if nest and params else params
            )
        client.create_collection(name, schema=schema, index_params=ip)
        vectors = {"vec_low": low, "vec_high": high, "vec": high}
        t_ins = time.perf_counter()
        for s in range(0, n, INSERT_BATCH):
            e = min(s + INSERT_BATCH, n)
            client.insert(name, [{"id": i, **{f: vectors[f][i] for f, _ in fields}} for i in range(s, e)])
            if e % 100_000 == 0 or e == n:
                log(f"  insert {name} {e}/{n} ({e / (time.perf_counter() - t_ins):.0f} rows/s)")
        insert_s = time.perf_counter() - t_ins
        with Timer() as t_idx:
            client.flush(name)
            waited = {f: _wait_indexed(client, name, f, n) for f, _ in fields}
        client.load_collection(name)
        info[name] = {"cached": False, "insert_s": insert_s, "flush_index_s": t_idx.s, "index_wait_s": waited}
    info["client_rss_mib"] = rss_mib()
    return info


# ---------------------------------------------------------------------- the contenders


def nprobe_for(coarse_limit: int, n: int, nlist: int) -> int:
    """The nprobe ``HierarchicalCollection`` picks (the ``cpu`` profile's rule), for the same shortlist."""
    from hivlp_milvus.profiles import load_profile

    profile = load_profile("cpu").with_low_build_params({"nlist": nlist})
    return int(profile.low_search_params(coarse_limit, num_rows=n)["params"]["nprobe"])


class Requests:
    """The requests of each contender against one endpoint (the client re-rank also times its stages)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def coarse(self, q_low: np.ndarray, cl: int, nprobe: int | None, collection: str = GALLERY) -> list[list[int]]:
        """The coarse stage; ``nprobe=None`` for the FLAT coarse collection."""
        return self.single_stage(collection, "vec_low", q_low, {"nprobe": nprobe} if nprobe else {}, limit=cl)

    def rerank_client(self, shortlists: list[list[int]], q_high: np.ndarray) -> tuple[list[list[int]], float, float]:
        """(ids, get seconds, numpy seconds)."""
        union = sorted({i for s in shortlists for i in s})
        with Timer() as t_get:
            rows = [
                r
                for s in range(0, len(union), GET_BATCH)
                for r in self.client.get(GALLERY, ids=union[s : s + GET_BATCH], output_fields=["vec_high"])
            ]
        with Timer() as t_np:
            vecs = {int(r["id"]): r["vec_high"] for r in rows}
            out = []
            for q, s in enumerate(shortlists):
                cand = [i for i in s if i in vecs]
                scores = np.asarray([vecs[i] for i in cand], dtype=np.float32) @ q_high[q]
                out.append([cand[j] for j in np.argsort(-scores, kind="stable")[:K]])
        return out, t_get.s, t_np.s

    def rerank_server(
        self, shortlists: list[list[int]], q_high: np.ndarray, collection: str = GALLERY
    ) -> list[list[int]]:
        return [
            hit_ids(
                self.client.search(
                    collection,
                    data=q_high[q : q + 1],
                    anns_field="vec_high",
                    limit=min(K, len(s)),
                    output_fields=["id"],
                    filter=f"id in [{','.join(str(int(i)) for i in s)}]",  # ints produced here, not user input
                    search_params={"metric_type": "IP", "params": {}},
                )
            )[0]
            for q, s in enumerate(shortlists)
        ]

    def single_stage(
        self, name: str, field: str, q: np.ndarray, params: dict[str, Any], limit: int = K
    ) -> list[list[int]]:
        res = self.client.search(
            name,
            data=q,
            anns_field=field,
            limit=limit,
            output_fields=["id"],  # the key only, as hivlp_milvus.search sends: Lite answers [] with every field
            search_params={"metric_type": "IP", "params": params},
        )
        return hit_ids(res)


def plan_for(n: int, smoke: bool) -> dict[str, Any]:
    """Queries and sweep per size (the smoke plan's second shortlist is the whole gallery: exact)."""
    if smoke:
        return {"n_single": 4, "n_batches": 1, "coarse": [20, n], "ann_nprobe": [8], "profile_queries": 4}
    if n <= 200_000:
        return {
            "n_single": 60,
            "n_batches": 3,
            "coarse": [50, 100, 200, 500],
            "ann_nprobe": [16, 64],
            "profile_queries": 20,
        }
    return {"n_single": 60, "n_batches": 3, "coarse": [100, 300, 1000], "ann_nprobe": [64, 256], "profile_queries": 20}


def bench_size(
    label: str, client: Any, data: dict[str, np.ndarray], plan: dict[str, Any], rebuild: bool
) -> dict[str, Any]:
    from hivlp_milvus.profiles import nlist_for

    n = len(data["low"])
    nlist = nlist_for(n)
    log(f"[{label}] building / opening {n} rows (nlist {nlist})")
    build_info = build(client, data["low"], data["high"], nlist, rebuild=rebuild)
    log(f"[{label}] ready: {build_info}")
    need = max(plan["n_single"], plan["n_batches"] * NQ_BATCH)
    q_low, q_high = data["q_low"][:need], data["q_high"][:need]
    gt = topk_ip(data["high"], q_high, K)
    inproc = InProcess(data["low"], data["high"], nlist=nlist)
    req = Requests(client)
    contenders: dict[str, tuple[dict[str, Any], Any]] = {}
    for cl in plan["coarse"]:
        npb = nprobe_for(cl, n, nlist)
        contenders[f"hier-client cl={cl}"] = (
            {"kind": "hier-client", "coarse_limit": cl, "nprobe": npb},
            lambda sl, cl=cl, npb=npb: req.rerank_client(req.coarse(q_low[sl], cl, npb), q_high[sl])[0],
        )
        contenders[f"hier-server cl={cl}"] = (
            {"kind": "hier-server", "coarse_limit": cl, "nprobe": npb},
            lambda sl, cl=cl, npb=npb: req.rerank_server(req.coarse(q_low[sl], cl, npb), q_high[sl]),
        )
        contenders[f"hier-server flat-low cl={cl}"] = (
            {"kind": "hier-server-flat-low", "coarse_limit": cl},
            lambda sl, cl=cl: req.rerank_server(
                req.coarse(q_low[sl], cl, None, GALLERY_FLAT), q_high[sl], GALLERY_FLAT
            ),
        )
        contenders[f"faiss-funnel cl={cl}"] = (
            {"kind": "faiss-funnel", "coarse_limit": cl, "nprobe": npb},
            lambda sl, cl=cl, npb=npb: inproc.funnel(q_low[sl], q_high[sl], cl, npb),
        )
    contenders["exact-high"] = (
        {"kind": "exact-high"},
        lambda sl: req.single_stage(GALLERY, "vec_high", q_high[sl], {}),
    )
    npl = nprobe_for(K, n, nlist)
    contenders["low-only"] = (
        {"kind": "low-only", "nprobe": npl},
        lambda sl: req.single_stage(GALLERY, "vec_low", q_low[sl], {"nprobe": npl}),
    )
    for npb in plan["ann_nprobe"]:
        contenders[f"ann-high nprobe={npb}"] = (
            {"kind": "ann-high", "nprobe": npb},
            lambda sl, npb=npb: req.single_stage(ANN, "vec", q_high[sl], {"nprobe": npb}),
        )
    contenders["faiss-exact"] = ({"kind": "faiss-exact"}, lambda sl: inproc.exact(q_high[sl]))

    t_single, out_single, t_batch, out_batch = interleaved_queries(
        {name: f for name, (_, f) in contenders.items()},
        plan["n_single"],
        plan["n_batches"],
        NQ_BATCH,
        label=label,
        warmup=2,
    )

    rows = [
        {
            "name": name,
            **cfg,
            "single": latency_stats(t_single[name]),
            "batch32": latency_stats(t_batch[name], per_call_items=NQ_BATCH),
            "fidelity@10": float(np.mean(fidelity(out_single[name], gt, data["high"], q_high))),
            "fidelity@10_batch": float(np.mean(fidelity(out_batch[name], gt, data["high"], q_high))),
        }
        for name, (cfg, _) in contenders.items()
    ]
    ex = next(r for r in rows if r["name"] == "exact-high")
    for r in rows:
        r["speedup_qps_single"] = r["single"]["qps"] / ex["single"]["qps"]
        r["speedup_qps_batch32"] = r["batch32"]["qps"] / ex["batch32"]["qps"]
    return {
        "label": label,
        "rows": n,
        "nlist": nlist,
        "build": build_info,
        "n_single": plan["n_single"],
        "n_batches": plan["n_batches"],
        "contenders": rows,
        "stages": stage_profile(req, q_low, q_high, plan, n, nlist),
    }


def stage_profile(
    req: Requests, q_low: np.ndarray, q_high: np.ndarray, plan: dict[str, Any], n: int, nlist: int
) -> dict[str, Any]:
    """Median ms per stage of single queries.

    Coarse search, then ``get`` + numpy (client path) or the filtered FLAT search (server paths).
    """
    out: dict[str, Any] = {}
    nq = min(plan["profile_queries"], len(q_low))
    for cl in plan["coarse"]:
        npb = nprobe_for(cl, n, nlist)
        for path, collection, nprobe in (
            ("hier-client", GALLERY, npb),
            ("hier-server", GALLERY, npb),
            ("hier-server flat-low", GALLERY_FLAT, None),
        ):
            st: dict[str, list[float]] = {"coarse_ms": [], "total_ms": []}
            for i in range(nq):
                with Timer() as t_all:
                    with Timer() as t_c:
                        short = req.coarse(q_low[i : i + 1], cl, nprobe, collection)
                    if path == "hier-client":
                        _, get_s, np_s = req.rerank_client(short, q_high[i : i + 1])
                        st.setdefault("get_ms", []).append(get_s * 1e3)
                        st.setdefault("numpy_ms", []).append(np_s * 1e3)
                    else:
                        with Timer() as t_f:
                            req.rerank_server(short, q_high[i : i + 1], collection)
                        st.setdefault("filtered_search_ms", []).append(t_f.s * 1e3)
                st["coarse_ms"].append(t_c.s * 1e3)
                st["total_ms"].append(t_all.s * 1e3)
            out[f"{path} cl={cl}"] = {k: float(np.median(v)) for k, v in st.items()}
    ex = []
    for i in range(nq):
        with Timer() as t:
            req.single_stage(GALLERY, "vec_high", q_high[i : i + 1], {})
        ex.append(t.s * 1e3)
    out["exact-high"] = {"total_ms": float(np.median(ex))}
    return out


# ---------------------------------------------------------------------- run


def generator_from(result_path: Path) -> GenParams:
    """The fitted generator of a ``search.json`` (so both benchmarks search the same vectors)."""
    saved = json.loads(result_path.read_text())["generator"]
    return GenParams(**{k: v for k, v in saved.items() if k in GenParams.__dataclass_fields__})


def run(
    sizes: list[int],
    *,
    uri: str | None = None,
    lite25_python: str | None = None,
    token: str | None = None,
    smoke: bool = False,
    rebuild: bool = False,
    generator: Path | None = None,
    name: str = "engine",
    results_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> Path:
    from pymilvus import MilvusClient

    if bool(uri) == bool(lite25_python):
        raise ConfigError(
            "the engine benchmark needs exactly one of --uri (a running Milvus server) or --lite25-python "
            "(a Python with milvus-lite==2.5.* installed, whose C++ server it starts)"
        )
    t0 = time.perf_counter()
    cache = Path(cache_dir or CACHE_DIR)
    proc = None
    if lite25_python:
        proc, uri = start_lite25(lite25_python, cache / "lite25")
        engine = {"kind": "milvus-lite C++ server", "milvus_lite": lite25_version(lite25_python)}
    else:
        engine = {"kind": "Milvus server", "uri": uri}
    try:
        client = MilvusClient(uri, token=token or "")
        with_gen = generator or (Path(results_dir or RESULTS_DIR) / "search.json")
        gp = generator_from(with_gen) if with_gen.exists() and not smoke else GenParams()
        log(f"engine {engine} at {uri}; generator {gp}")
        out_sizes = [
            bench_size(f"gen-{n}", client, generate_vectors(n, gp, n_queries=200), plan_for(n, smoke), rebuild)
            for n in sorted(sizes)
        ]
        result = {
            "smoke": smoke,
            "engine": engine,
            "k": K,
            "generator": {**gp.__dict__, "from": str(with_gen) if with_gen.exists() and not smoke else "defaults"},
            "sizes": out_sizes,
            "wall_s": time.perf_counter() - t0,
        }
        path = write_result(name, result, results_dir=results_dir)
        log(f"wrote {path}")
        return path
    finally:
        if proc is not None:
            stop_lite25(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="*", help="gallery sizes (default 100k 1M)")
    ap.add_argument("--uri", help="a running Milvus server, e.g. http://localhost:19530")
    ap.add_argument("--token", help="its token, if any")
    ap.add_argument("--lite25-python", help="a Python with milvus-lite==2.5.* installed: start its C++ server")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args(argv)
    sizes = parse_sizes(args.sizes, [2_000] if args.smoke else [100_000, 1_000_000])
    run(sizes, uri=args.uri, lite25_python=args.lite25_python, token=args.token, smoke=args.smoke, rebuild=args.rebuild)
    return 0


if __name__ == "__main__":
    sys.exit(main())
