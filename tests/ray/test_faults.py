"""Faults under load, for real: Serve replicas killed and the Milvus server killed while clients search.

One module fixture builds small artefacts (a micro model, 20 synthetic scenes as PNG files), starts a
real Milvus Lite gRPC server (``tests/milvus_server.py``) holding the collection, and runs exactly
``serving.build_app(...)`` against it as one Serve application on the session's Ray cluster.

Each test runs a few client threads that search in a loop (a fixed set of queries whose answers
were taken from one client before the load), injects one fault and checks every answer:

* **a replica killed** (``ray.kill`` on the ``Ingress``, ``TextEncoder`` or ``Searcher`` replica's
  actor; one replica each, so every request needs the one killed): Serve replaces it; each request
  either succeeds with exactly the single-client answer or fails with a JSON error carrying a reason
  (503, or 504 when the replacement takes longer than the ingress's 60 s backend timeout), except
  requests inside a killed *ingress*, which get Serve's proxy's plain 500; none hangs (the client
  gives up after :data:`CLIENT_TIMEOUT_S`); the deployment is whole again (a new replica RUNNING, a
  right answer) within :data:`WHOLE_WITHIN_S`, measured;
* **the Milvus server killed** (SIGKILL) and restarted on the same data and port while searches and
  small ingests run: 503 with a reason while it is down, right answers again after it is back
  without restarting the app, and every row the ingest client wrote (retrying what failed) is in
  the collection exactly once (count and ids).

The figures (requests, failed, seconds until whole) are printed; docs/serving.md (RELIABILITY)
quotes them.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.ray]

APP = "faults"
COLLECTION = "faults_test"
N_RECORDS = 20
CLIENTS = 3
# The ingress gives a backend 60 s (ingress._BACKEND_TIMEOUT_S) before answering 504: a request
# without an answer past that and a margin hangs.
CLIENT_TIMEOUT_S = 75.0
# Bound on "killed -> a new replica running and answering right". A replica's start (torch, the model,
# the Milvus connection) takes ~5-10 s on an idle 2-core machine and ~70 s with a load average of 25.
WHOLE_WITHIN_S = 120.0
EVENT_DEADLINE_S = 150.0  # bounds waits that end on an event
LIMIT = 5
INGEST_BATCHES = 12  # the ingest client's batches during the Milvus fault, 1 record x 2 captions each


@dataclass
class App:
    url: str
    milvus: Any  # the LiteServer holding the collection
    queries: list[str]  # texts searched by the load
    expected: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # query -> (id, score)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Iterator[App]:
    from milvus_server import LiteServer
    from ray import serve

    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.data import load_source, synthetic
    from hivlp_milvus.ingest import ingest
    from hivlp_milvus.model import create_model
    from serving import AppArgs, build_app

    tmp = tmp_path_factory.mktemp("faults")
    t0 = time.monotonic()
    synthetic.write_splits(tmp / "data", {"test": N_RECORDS}, seed=5, progress=False)
    records = list(load_source(tmp / "data" / "test"))
    model = create_model("micro", texts=[c for r in records for c in r.captions], seed=0)
    model.save_pretrained(tmp / "model")
    (tmp / "milvus").mkdir()
    milvus = LiteServer(str(tmp / "milvus"))
    try:
        milvus.start()
        col = HierarchicalCollection.create(COLLECTION, uri=milvus.uri, model=model)
        report = ingest(records, collection=col, model=model, progress=False)
        assert not report.failed, str(report)
        col.client.close()
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = AppArgs(
            checkpoint=str(tmp / "model"),
            milvus_uri=milvus.uri,
            collection=COLLECTION,
            batch_wait_timeout_s=0.01,
            max_encoder_replicas=1,
            # One replica each: every request goes through the replica a test kills.
            searcher_replicas=1,
        )
        serve.run(build_app(args), name=APP, route_prefix="/")
        print(f"\n[faults fixture] app up after {time.monotonic() - t0:.1f}s", file=sys.stderr)
        queries = [r.captions[0] for r in records[:4]]
        served = App(url=f"http://127.0.0.1:{port}", milvus=milvus, queries=queries)
        with _client(served) as c:
            for q in queries:  # the single-client answers the load is checked against
                r = c.post("/search", json={"text": q, "limit": LIMIT})
                assert r.status_code == 200, r.text
                served.expected[q] = _answer(r.json())
        yield served
    finally:
        serve.shutdown()  # Ray itself belongs to the session (tests/conftest.py)
        milvus.stop()


def _client(app: App) -> httpx.Client:
    return httpx.Client(base_url=app.url, timeout=httpx.Timeout(CLIENT_TIMEOUT_S))


def _answer(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(h["id"], round(float(h["score"]), 4)) for h in body["hits"]]


# -- the load -------------------------------------------------------------------------------------


@dataclass
class Outcome:
    route: str
    status: int | None  # None: no answer within CLIENT_TIMEOUT_S, or the connection failed
    started: float
    seconds: float
    body: Any = None
    error: str = ""


class Load:
    """``CLIENTS`` threads searching the app's queries round-robin until :meth:`stop`."""

    def __init__(self, app: App, clients: int = CLIENTS) -> None:
        self.app = app
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 5)
            assert not t.is_alive(), "a load client did not stop: a request hangs past the client timeout"

    def _run(self, index: int) -> None:
        with _client(self.app) as c:
            i = index
            while not self._stop.is_set():
                query = self.app.queries[i % len(self.app.queries)]
                i += 1
                self.record(_timed(c, "search", "/search", {"text": query, "limit": LIMIT}, query))

    def record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def count_ok(self, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.status == 200 and o.started >= since)

    def count_status(self, status: int, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.status == status and o.started >= since)


def _timed(c: httpx.Client, route: str, path: str, body: dict[str, Any], tag: Any = None) -> Outcome:
    started = time.monotonic()
    try:
        r = c.post(path, json=body)
    except httpx.HTTPError as exc:  # a timeout is a hang; a refused connection is no answer either
        return Outcome(route, None, started, time.monotonic() - started, tag, f"{type(exc).__name__}: {exc}")
    try:
        payload = r.json()
    except ValueError:
        payload = {"raw": r.text[:300]}
    return Outcome(route, r.status_code, started, time.monotonic() - started, {"tag": tag, "json": payload})


def _check_searches(app: App, outcomes: list[Outcome], allowed_errors: set[tuple[int, str]]) -> Counter[Any]:
    """Every search is the single-client answer, or an allowed JSON error with a reason; never a hang."""
    tally: Counter[Any] = Counter()
    for o in outcomes:
        if o.route != "search":
            continue
        assert o.status is not None, f"a search got no answer ({o.error}) after {o.seconds:.1f}s"
        query, body = o.body["tag"], o.body["json"]
        if o.status == 200:
            assert _answer(body) == app.expected[query], f"a wrong answer under the fault for {query!r}"
            tally["ok"] += 1
            continue
        assert isinstance(body, dict), (o.status, body)
        assert body.get("message"), (o.status, body)  # a reason
        assert (o.status, body.get("error")) in allowed_errors, (o.status, body)
        tally[(o.status, body["error"])] += 1
    return tally


def _wait_until(what: str, check: Callable[[], Any], deadline_s: float = EVENT_DEADLINE_S) -> Any:
    deadline = time.monotonic() + deadline_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.05)
    return value


# -- replicas ---------------------------------------------------------------------------------------


def _replica_actors(deployment: str) -> list[str]:
    """Names of the live replica actors of one deployment of the app (``SERVE_REPLICA::app#name#id``)."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def _running(deployment: str) -> bool:
    from ray import serve

    status = serve.status().applications[APP].deployments[deployment]
    states = {str(getattr(k, "value", k)): v for k, v in status.replica_states.items() if v}
    return str(getattr(status.status, "value", status.status)) == "HEALTHY" and states == {"RUNNING": 1}


def _right_answer(app: App) -> bool:
    query = app.queries[0]
    with _client(app) as c:
        try:
            r = c.post("/search", json={"text": query, "limit": LIMIT})
        except httpx.HTTPError:
            return False
    return r.status_code == 200 and _answer(r.json()) == app.expected[query]


@pytest.mark.parametrize("deployment", ["Searcher", "TextEncoder", "Ingress"])
def test_a_replica_killed_under_load_is_replaced_without_wrong_answers(app: App, deployment: str) -> None:
    import ray

    _wait_until(f"{deployment} to run one healthy replica", lambda: _running(deployment) and _right_answer(app))
    (victim,) = _replica_actors(deployment)
    with Load(app) as load:
        _wait_until("the load to get answers", lambda: load.count_ok() >= 2 * CLIENTS)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

        def whole() -> bool:
            actors = _replica_actors(deployment)
            return bool(actors) and victim not in actors and _running(deployment) and _right_answer(app)

        _wait_until(f"a new {deployment} replica to answer", whole, WHOLE_WITHIN_S)
        whole_after = time.monotonic() - killed_at
        since = time.monotonic()
        _wait_until("answers after the fault", lambda: load.count_ok(since) >= CLIENTS)
    outcomes = load.outcomes
    proxy_500s: list[Outcome] = []
    if deployment == "Ingress":
        # Requests inside the killed ingress get Serve's proxy's own answer: a plain-text 500 with no
        # reason (the app's error handlers died with the replica). Only while it is being replaced.
        proxy_500s = [o for o in outcomes if o.status == 500 and o.body["json"] == {"raw": "Internal Server Error"}]
        assert all(o.started < killed_at + whole_after for o in proxy_500s), "a proxy 500 after the replacement"
        outcomes = [o for o in outcomes if o not in proxy_500s]
    # Elsewhere, requests in flight on the killed replica go to the replacement (Serve's router retries
    # them) and succeed, or wait for it until the ingress's backend timeout: a 504 with a reason.
    tally = _check_searches(app, outcomes, {(503, "backend_unavailable"), (504, "timeout")})
    if proxy_500s:
        tally[(500, "proxy, no reason")] = len(proxy_500s)
    failed = sum(n for k, n in tally.items() if k != "ok")
    print(
        f"\n[faults] {deployment} replica killed: {len(load.outcomes)} searches, {failed} failed "
        f"({dict(tally)}), whole again after {whole_after:.1f}s",
        file=sys.stderr,
    )
    assert whole_after < WHOLE_WITHIN_S
    assert tally["ok"] >= 3 * CLIENTS


# -- the Milvus server ------------------------------------------------------------------------------


def _ingest_through(app: App, load: Load, done: threading.Event) -> None:
    """Write INGEST_BATCHES small batches, retrying each one until it is acknowledged (bounded)."""
    deadline = time.monotonic() + EVENT_DEADLINE_S
    with _client(app) as c:
        for i in range(INGEST_BATCHES):
            record = {"key": f"fault-{i:03d}", "captions": [f"fault caption {i} a", f"fault caption {i} b"]}
            while True:
                outcome = _timed(c, "ingest", "/ingest", {"records": [record]}, record["key"])
                load.record(outcome)
                if outcome.status == 200:
                    assert outcome.body["json"]["failed"] == [], outcome.body
                    break
                assert time.monotonic() < deadline, f"ingest of {record['key']} never succeeded: {outcome}"
                time.sleep(0.2)
            time.sleep(0.15)  # spread the batches over the outage
    done.set()


def test_milvus_killed_under_load_503s_then_recovers_with_every_row_once(app: App) -> None:
    from pymilvus import MilvusClient

    from hivlp_milvus.ids import row_id, text_key

    _wait_until("the app to answer", lambda: _right_answer(app))
    done = threading.Event()
    with Load(app, clients=2) as load:
        writer = threading.Thread(target=_ingest_through, args=(app, load, done), daemon=True)
        writer.start()
        _wait_until("the load to get answers", lambda: load.count_ok() >= 4)
        killed_at = time.monotonic()
        app.milvus.kill()  # SIGKILL, as a crash
        try:
            _wait_until("503s while Milvus is down", lambda: load.count_status(503, killed_at) >= 3)
        finally:
            app.milvus.start()  # the same data directory and port
        back_at = time.monotonic()
        _wait_until("right answers after the restart", lambda: _right_answer(app), WHOLE_WITHIN_S)
        whole_after = time.monotonic() - back_at
        writer.join(timeout=EVENT_DEADLINE_S)
        assert done.is_set(), "the ingest client did not finish"
    searches = _check_searches(app, load.outcomes, {(503, "milvus_unavailable")})
    ingests = [o for o in load.outcomes if o.route == "ingest"]
    for o in ingests:  # a failed batch says why; the client retried it
        assert o.status is not None, f"an ingest got no answer ({o.error})"
        if o.status != 200:
            assert o.status == 503, (o.status, o.body)
            assert o.body["json"].get("message"), o.body
    failed = sum(n for k, n in searches.items() if k != "ok")
    slowest_503 = max(o.seconds for o in load.outcomes if o.status == 503)
    retried = sum(1 for o in ingests if o.status != 200)
    print(
        f"\n[faults] Milvus killed {back_at - killed_at:.1f}s: {sum(searches.values())} searches, {failed} failed "
        f"({dict(searches)}, the slowest 503 in {slowest_503:.1f}s); "
        f"{len(ingests)} ingest requests, {retried} failed and retried; "
        f"right answers {whole_after:.1f}s after the restart",
        file=sys.stderr,
    )
    assert searches[(503, "milvus_unavailable")] >= 1
    assert slowest_503 < 15.0  # told at once (a connect attempt is 3 s), not after the 60 s backend timeout
    # Exactly once: every caption row of the ingest client, no other row with its keys.
    expected = {row_id(text_key(f"fault-{i:03d}", j), "text") for i in range(INGEST_BATCHES) for j in range(2)}
    client = MilvusClient(uri=app.milvus.uri)
    try:
        rows = client.query(COLLECTION, filter='key like "fault-%"', output_fields=["id"], limit=1000)
    finally:
        client.close()
    ids = [int(r["id"]) for r in rows]
    assert len(ids) == len(expected) == 2 * INGEST_BATCHES
    assert set(ids) == expected


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__, *os.environ.get("PYTEST_ARGS", "").split()]))
