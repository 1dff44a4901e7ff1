"""Where the time of a hierarchical search goes: per-stage timings and cProfile of Milvus Lite's engine."""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.galleries import QueryVectors
from benchmarks.metrics import K

STAGES = ("coarse_s", "fine_s", "total_s")  # SearchResults.timings of a hierarchical search


def profile_hier(
    col: Any,
    q_low: np.ndarray,
    q_high: np.ndarray,
    nq: int,
    coarse_list: list[int],
    *,
    db_path: Path,
) -> dict[str, Any]:
    """Where the time of the hierarchical path goes: stage timings + cProfile of the Milvus Lite internals."""

    def exact(i: int) -> Any:
        return col.search(QueryVectors(q_low[i : i + 1], q_high[i : i + 1]), level="high", limit=K, output_fields=[])

    def hier(i: int, cl: int, rerank: str) -> Any:
        query = QueryVectors(q_low[i : i + 1], q_high[i : i + 1])
        return col.hierarchical_search(query, limit=K, coarse_limit=cl, rerank=rerank, output_fields=[])

    out: dict[str, Any] = {}
    for rr in ("client", "server"):
        for cl in (coarse_list[0], coarse_list[-1]):
            timings = [hier(i, cl, rr).timings for i in range(nq)]
            out[f"{rr} cl={cl}"] = {k: float(np.median([t[k] for t in timings]) * 1e3) for k in STAGES}
    # The exact baseline's single request, for comparison.
    out["exact-high"] = {"search_s": float(np.median([exact(i).timings["search_s"] for i in range(nq)]) * 1e3)}
    # cProfile of the client path at the largest shortlist: which functions hold the time.
    out["cprofile_client"] = top_functions(_profile(lambda i: hier(i, coarse_list[-1], "client"), range(nq))[0], nq)
    out["cprofile_exact"] = top_functions(_profile(exact, range(nq))[0], nq)
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
        pr, seconds = _profile(fn, range(1, nq + 1))
        out[name] = {"ms_per_query_profiled": seconds / nq * 1e3, "top": top_functions(pr, nq, n=8)}
    return out


def _profile(call: Callable[[int], Any], indices: range) -> tuple[cProfile.Profile, float]:
    """``call(i)`` for every index under cProfile: the profile and the wall seconds it took."""
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    with pr:
        for i in indices:
            call(i)
    return pr, time.perf_counter() - t0


def top_functions(pr: cProfile.Profile, nq: int, n: int = 14) -> list[dict[str, Any]]:
    """The ``n`` functions with the most own time in ``pr``, per query."""
    st = pstats.Stats(pr, stream=io.StringIO())
    rows = [
        {
            "function": f"{'/'.join(Path(fname).parts[-2:])}:{line}({func})",
            "tottime_ms_per_query": tt / nq * 1e3,
            "cumtime_ms_per_query": ct / nq * 1e3,
            "calls_per_query": nc / nq,
        }
        for (fname, line, func), (_cc, nc, tt, ct, _) in st.stats.items()  # type: ignore[attr-defined]
    ]
    return sorted(rows, key=lambda r: -r["tottime_ms_per_query"])[:n]
