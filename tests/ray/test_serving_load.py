"""The app under concurrent load, and the metrics an operator scrapes, on the session's Ray cluster.

One module fixture: a micro model, 40 synthetic scenes (240 rows) in a Milvus Lite ``.db`` and
exactly ``serving.build_app(...)`` on Serve (port chosen here). The load generator of
``benchmarks/load.py`` runs in this process (the replicas are other processes): a few seconds of
8 clients over every route must give zero errors and, for text searches, the ids the same query
gets alone. Then the Prometheus endpoint of Ray's metrics agent must list each HiVLP metric.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[2]
N_RECORDS = 40
LOAD_S = 4.0
# Ray's workers push their metrics to the node's agent every metrics_report_interval_ms (10 s by default).
METRICS_WAIT_S = 45.0


@dataclass
class Served:
    url: str
    workload: Any


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ray_session: None, serve_collection: Callable) -> Iterator[Served]:
    from ray import serve

    from hivlp_milvus.data import synthetic
    from serving import AppArgs, build_app

    sys.path.insert(0, str(ROOT))
    from benchmarks.load import Workload, free_port, make_workload

    tmp = tmp_path_factory.mktemp("load")
    records = synthetic.generate(N_RECORDS, seed=5)
    db = str(tmp / "load.db")
    serve_collection(tmp, records, "load", db)  # micro model in tmp/model; the .db released for the Searcher
    work = make_workload(16, seed=5)
    # The check queries are captions of the collection's own scenes.
    texts = [r.captions[0] for r in records]
    workload = Workload(texts=texts, images=work.images, check_texts=texts[:6])

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        args = AppArgs(checkpoint=str(tmp / "model"), milvus_uri=db, collection="load", max_encoder_replicas=1)
        serve.run(build_app(args), name="loadtest", route_prefix="/")
        yield Served(url=f"http://127.0.0.1:{port}", workload=workload)
    finally:
        serve.shutdown()


def test_load_smoke_has_no_errors_and_single_client_answers(served: Served) -> None:
    from benchmarks.load import DEFAULT_MIX, run_load

    result = asyncio.run(
        run_load(served.url, served.workload, clients=8, duration_s=LOAD_S, max_requests=400, mix=DEFAULT_MIX)
    )
    assert result["errors"] == {}, result
    assert set(result["routes"]) == {"search_text", "search_image", "encode", "ingest"}, result["routes"]
    assert result["checked"] > 0
    assert result["wrong_answers"] == 0, result["examples"]
    assert result["wall_s"] < LOAD_S + 30  # bounded: it stops by itself


def _metrics_text() -> str:
    import ray

    node = ray.nodes()[0]
    return httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10).text


def test_metrics_endpoint_lists_each_metric(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        for text in served.workload.texts[:3]:
            assert client.post("/search", json={"text": text, "limit": 5}).status_code == 200
        bad = client.post(
            "/search", json={"text": "a red circle", "filter": [{"field": "nope", "op": "==", "value": 1}]}
        )
        assert bad.status_code == 422
    wanted = {
        "encode": r'ray_hivlp_stage_seconds_bucket\{[^}]*stage="encode"',
        "coarse": r'ray_hivlp_stage_seconds_bucket\{[^}]*stage="coarse"',
        "fine": r'ray_hivlp_stage_seconds_bucket\{[^}]*stage="fine"',
        "hits": r'ray_hivlp_hits_returned_total\{[^}]*route="search"[^}]*\} [1-9]',
        "errors": r'ray_hivlp_errors_total\{[^}]*kind="invalid_filter"',
    }
    deadline = time.monotonic() + METRICS_WAIT_S
    missing = set(wanted)
    while missing and time.monotonic() < deadline:
        text = _metrics_text()
        missing = {name for name, pattern in wanted.items() if not re.search(pattern, text)}
        if missing:
            time.sleep(2.0)
    assert not missing, f"not exported within {METRICS_WAIT_S:.0f} s: {sorted(missing)}"
    errors = re.search(r'ray_hivlp_errors_total\{([^}]*kind="invalid_filter"[^}]*)\}', text)
    assert errors is not None
    assert 'status="422"' in errors.group(1)
