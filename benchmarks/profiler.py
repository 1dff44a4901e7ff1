"""Where the time of a hierarchical search goes: per-stage timings and cProfile of Milvus Lite's engine."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.galleries import QueryVectors
from benchmarks.metrics import K


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
                    QueryVectors(q_low[i : i + 1], q_high[i : i + 1]),
                    limit=K,
                    coarse_limit=cl,
                    rerank=rr,
                    output_fields=[],
                )
                for k in stages:
                    stages[k].append(r.timings[k])
            out[f"{rr} cl={cl}"] = {k: float(np.median(v) * 1e3) for k, v in stages.items()}
    # The exact baseline's single request, for comparison.
    ex = []
    for i in range(nq):
        r = col.search(QueryVectors(q_low[i : i + 1], q_high[i : i + 1]), level="high", limit=K, output_fields=[])
        ex.append(r.timings["search_s"])
    out["exact-high"] = {"search_s": float(np.median(ex) * 1e3)}
    # cProfile of the client path at the largest shortlist: which functions hold the time.
    pr = cProfile.Profile()
    pr.enable()
    for i in range(nq):
        col.hierarchical_search(
            QueryVectors(q_low[i : i + 1], q_high[i : i + 1]),
            limit=K,
            coarse_limit=coarse_list[-1],
            rerank="client",
            output_fields=[],
        )
    pr.disable()
    out["cprofile_client"] = top_functions(pr, nq)
    pr = cProfile.Profile()
    pr.enable()
    for i in range(nq):
        col.search(QueryVectors(q_low[i : i + 1], q_high[i : i + 1]), level="high", limit=K, output_fields=[])
    pr.disable()
    out["cprofile_exact"] = top_functions(pr, nq)
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
            output_fields=["id"],  # the key only, as hivlp_milvus.search sends
            search_params={"nprobe": nprobe} if nprobe else None,
        ),
        "exact FLAT vec_high": lambda i: eng.search(
            [q_high[i].tolist()], top_k=K, metric_type="IP", anns_field="vec_high", output_fields=["id"]
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
        out[name] = {"ms_per_query_profiled": (time.perf_counter() - t0) / nq * 1e3, "top": top_functions(pr, nq, n=8)}
    return out


def top_functions(pr: cProfile.Profile, nq: int, n: int = 14) -> list[dict[str, Any]]:
    """The ``n`` functions with the most own time in ``pr``, per query."""
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
