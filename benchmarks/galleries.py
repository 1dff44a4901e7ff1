"""The search benchmark's Milvus Lite databases: built once per gallery, cached, timed, with memory.

Every gallery size has its own database under ``benchmarks/.cache/`` holding the HiVLP collection
(``gallery``: both vectors) and ``gallery_high_ivf`` (``vec_high`` only, IVF_FLAT: the ANN-on-high
contender). A ``<db>.<collection>.built.json`` marker records the build's timings, so a re-run
reuses the database and still reports how long the build took.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import Timer, log, peak_rss_mib, rss_mib
from benchmarks.vectors import GenParams

COLLECTION = "gallery"
ANN_COLLECTION = "gallery_high_ivf"


class QueryVectors:
    """Duck-typed HierarchicalEmbedding (search.py only needs ``.low`` / ``.high``)."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.low, self.high = low, high


def disk_mib(path: Path) -> float:
    """Size of a database (a file or a directory) in MiB."""
    if path.is_file():
        return path.stat().st_size / 2**20
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def wait_for_lite_indexes(path: Path, name: str) -> None:
    """Wait until Milvus Lite's background compaction + segment-index builds are done.

    Lite builds segment indexes on a background thread after a flush; searching before that
    would time brute force on unindexed segments. Benchmark-only: reaches into the in-process
    Lite server that ``MilvusClient(path)`` started.
    """
    try:
        from milvus_lite.server_manager import server_manager_instance

        servers = server_manager_instance._servers  # (server, db, port) per path: never falsy
        entry = servers.get(os.path.abspath(str(path))) or servers.get(str(path))
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
                    wait_for_lite_indexes(path, name)
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
                wait_for_lite_indexes(path, ANN_COLLECTION)
            ann = {"ann_high_build_s": t_ann.s, "ann_high_nlist": nlist}
            ann_marker.write_text(json.dumps(ann))
            info.update(ann)
    info["disk_mib"] = disk_mib(path)
    info["rss_now_mib"] = rss_mib()
    return col, client, info


def gen_db_path(cache: Path, p: GenParams, n: int) -> Path:
    """The database of a generated gallery: keyed by everything the high vectors depend on."""
    return cache / f"gen_c{p.n_clusters}_sp{p.spread}_a{p.alpha}_seed{p.seed}_{p.low_dim}_{p.high_dim}_{n}.db"


def gen_main_path(cache: Path, p: GenParams, n: int) -> Path:
    """The HiVLP collection's database of a generated gallery: the low vectors depend on sigma."""
    return (
        cache
        / f"gen_c{p.n_clusters}_sp{p.spread}_a{p.alpha}_seed{p.seed}_{p.low_dim}_{p.high_dim}_{n}_s{p.sigma:.4f}.db"
    )
