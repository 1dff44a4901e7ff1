"""Faults under load, for real: Serve replicas killed and the Milvus server killed while clients search.

One module fixture builds small artefacts (a micro model, 20 synthetic scenes as PNG files), starts a
real Milvus Lite gRPC server (``tests/milvus_server.py``) holding the collection, and runs exactly
``serving.build_app(...)`` against it as one Serve application on the session's Ray cluster.

Each test runs a few client threads that search in a loop (a fixed set of queries whose answers
were taken from one client before the load), injects one fault and checks every answer:

* **a replica killed** (``ray.kill`` on a ``TextEncoder`` or ``Searcher`` replica's actor, one replica
  each, so every request needs the one killed; or one of the two ``Ingress`` replicas): Serve
  replaces it; each request either succeeds with exactly the single-client answer or fails with a
  JSON error carrying a reason (503, or 504 when the replacement takes longer than the ingress's
  backend timeout, :data:`BACKEND_TIMEOUT_S`); none hangs (the client gives up after
  :data:`CLIENT_TIMEOUT_S`); the deployment is whole again (its replicas RUNNING, a right answer)
  within :data:`WHOLE_WITHIN_S`, measured. Requests inside a killed *ingress* get Serve's proxy's
  plain-text 500 (docs/serving.md, RELIABILITY, says why the app cannot answer them): the clients
  retry such an answer once, as the web page does (:func:`post_retrying`), the other ingress replica
  answers it, and no search is lost;
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
from serving_helpers import wait_until

pytestmark = [pytest.mark.ray]

APP = "faults"
COLLECTION = "faults_test"
N_RECORDS = 20
CLIENTS = 3
INGRESS_REPLICAS = 2  # a killed ingress leaves the other one answering (the retries among others)
# The ingress gives a backend this long (the backend_timeout_s builder arg) before answering 504: a
# request without an answer past that and a margin hangs.
BACKEND_TIMEOUT_S = 60.0
CLIENT_TIMEOUT_S = BACKEND_TIMEOUT_S + 15.0
RETRY_BACKOFF_S = 0.5  # before the one retry of a request that died with an ingress replica
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


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, ray_session: None, serve_collection: Callable) -> Iterator[App]:
    from milvus_server import LiteServer, free_port
    from ray import serve

    from hivlp_milvus.data import load_source, synthetic
    from serving import AppArgs, build_app

    tmp = tmp_path_factory.mktemp("faults")
    t0 = time.monotonic()
    synthetic.write_splits(tmp / "data", {"test": N_RECORDS}, seed=5, progress=False)
    records = list(load_source(tmp / "data" / "test"))
    (tmp / "milvus").mkdir()
    milvus = LiteServer(str(tmp / "milvus"))
    try:
        milvus.start()
        serve_collection(tmp, records, COLLECTION, milvus.uri)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = AppArgs(
            checkpoint=str(tmp / "model"),
            milvus_uri=milvus.uri,
            collection=COLLECTION,
            batch_wait_timeout_s=0.01,
            max_encoder_replicas=1,
            # One replica each: every request goes through the replica a test kills.
            searcher_replicas=1,
            ingress_replicas=INGRESS_REPLICAS,
            backend_timeout_s=BACKEND_TIMEOUT_S,
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
    retried_after: str = ""  # what the first attempt got, when it was retried ("500 text/plain", "ReadError")


def died_in_transit(response: httpx.Response) -> bool:
    """A 5xx that is not the app's JSON error: the request died with an ingress replica.

    Serve's proxy answers for a dead ingress with uvicorn's plain-text ``500 Internal Server Error``
    (or a plain 503 while it has no ingress to route to); the app's own errors are JSON with an
    ``error`` code and are final.
    """
    if response.status_code < 500:
        return False
    try:
        body = response.json()
    except ValueError:
        return True
    return not (isinstance(body, dict) and body.get("error"))


def post_retrying(c: httpx.Client, path: str, body: dict[str, Any]) -> tuple[httpx.Response, str]:
    """POST an idempotent request (search, encode); once more after a back-off if it died in transit.

    Died in transit: :func:`died_in_transit`, or the connection failed or was reset (not a timeout:
    that is a hang, never retried). Returns the final response and what the first attempt got
    (``""`` when it was not retried). An error of the retry is raised.
    """
    try:
        r = c.post(path, json=body)
        if not died_in_transit(r):
            return r, ""
        first = f"{r.status_code} {r.headers.get('content-type', 'no content-type')}"
    except httpx.TimeoutException:
        raise
    except httpx.TransportError as exc:
        first = type(exc).__name__
    time.sleep(RETRY_BACKOFF_S)
    return c.post(path, json=body), first


class Load:
    """``CLIENTS`` threads searching the app's queries round-robin until :meth:`stop`."""

    def __init__(self, app: App, clients: int = CLIENTS, retry: bool = True) -> None:
        self.app = app
        self.retry = retry
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
            t.join(timeout=2 * CLIENT_TIMEOUT_S + RETRY_BACKOFF_S + 5)  # a request and its one retry
            assert not t.is_alive(), "a load client did not stop: a request hangs past the client timeout"

    def _run(self, index: int) -> None:
        with _client(self.app) as c:
            i = index
            while not self._stop.is_set():
                query = self.app.queries[i % len(self.app.queries)]
                i += 1
                self.record(_timed(c, "search", "/search", {"text": query, "limit": LIMIT}, query, retry=self.retry))

    def record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def count_status(self, status: int, since: float = 0.0) -> int:
        with self._lock:
            return sum(1 for o in self.outcomes if o.status == status and o.started >= since)


def _timed(
    c: httpx.Client, route: str, path: str, body: dict[str, Any], tag: Any = None, retry: bool = False
) -> Outcome:
    started = time.monotonic()
    first = ""
    try:
        if retry:
            r, first = post_retrying(c, path, body)
        else:
            r = c.post(path, json=body)
    except httpx.HTTPError as exc:  # a timeout is a hang; a refused connection is no answer either
        return Outcome(route, None, started, time.monotonic() - started, tag, f"{type(exc).__name__}: {exc}")
    try:
        payload = r.json()
    except ValueError:
        payload = {"raw": r.text[:300]}
    seconds = time.monotonic() - started
    return Outcome(route, r.status_code, started, seconds, {"tag": tag, "json": payload}, retried_after=first)


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


# -- replicas ---------------------------------------------------------------------------------------


def _replica_actors(deployment: str) -> list[str]:
    """Names of the live replica actors of one deployment of the app (``SERVE_REPLICA::app#name#id``)."""
    import ray

    prefix = f"SERVE_REPLICA::{APP}#{deployment}#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def _replicas(deployment: str) -> int:
    return INGRESS_REPLICAS if deployment == "Ingress" else 1


def _running(deployment: str) -> bool:
    from ray import serve

    status = serve.status().applications[APP].deployments[deployment]
    states = {str(getattr(k, "value", k)): v for k, v in status.replica_states.items() if v}
    healthy = str(getattr(status.status, "value", status.status)) == "HEALTHY"
    return healthy and states == {"RUNNING": _replicas(deployment)}


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

    replicas = _replicas(deployment)
    wait_until(
        f"{deployment} to run {replicas} healthy replica(s)",
        lambda: _running(deployment) and _right_answer(app),
        EVENT_DEADLINE_S,
    )
    victim = _replica_actors(deployment)[0]
    # Two ingress replicas share the requests: twice the clients keep requests in flight on the victim.
    clients = CLIENTS * replicas
    with Load(app, clients=clients) as load:
        wait_until("the load to get answers", lambda: load.count_status(200) >= 2 * clients, EVENT_DEADLINE_S)
        killed_at = time.monotonic()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

        def whole() -> bool:
            actors = _replica_actors(deployment)
            return len(actors) == replicas and victim not in actors and _running(deployment) and _right_answer(app)

        wait_until(f"a new {deployment} replica to answer", whole, WHOLE_WITHIN_S)
        whole_after = time.monotonic() - killed_at
        since = time.monotonic()
        wait_until("answers after the fault", lambda: load.count_status(200, since) >= clients, EVENT_DEADLINE_S)
    outcomes = load.outcomes
    # Requests in flight on a killed Searcher or encoder go to the replacement (Serve's router retries
    # them) and succeed, or wait for it until the ingress's backend timeout: a 504 with a reason.
    # Requests in flight on a killed ingress get Serve's proxy's plain 500 and are retried by the client.
    tally = _check_searches(app, outcomes, {(503, "backend_unavailable"), (504, "timeout")})
    retried = Counter(o.retried_after for o in outcomes if o.retried_after)
    first_ok = min(o.started + o.seconds - killed_at for o in outcomes if o.status == 200 and o.started >= killed_at)
    failed = sum(n for k, n in tally.items() if k != "ok")
    print(
        f"\n[faults] {deployment} replica killed ({replicas} running, {clients} clients): {len(outcomes)} searches, "
        f"{failed} failed ({dict(tally)}); died in transit and retried: {sum(retried.values())} ({dict(retried)}); "
        f"first right answer to a request sent after the kill {first_ok:.2f}s after it; "
        f"whole again after {whole_after:.1f}s",
        file=sys.stderr,
    )
    assert whole_after < WHOLE_WITHIN_S
    assert tally["ok"] >= 3 * clients
    if deployment == "Ingress":
        # The retry is what saved them: without it these are plain 500s, a failure of _check_searches.
        assert retried, "no request was in flight on the killed ingress: nothing tested the retry"
        assert failed == 0, f"searches lost with a second ingress replica and retrying clients: {dict(tally)}"
        assert first_ok < whole_after, "no new request was answered before the killed ingress was replaced"
    else:
        assert not retried, f"a plain 5xx without an ingress killed: {retried}"


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

    wait_until("the app to answer", lambda: _right_answer(app), EVENT_DEADLINE_S)
    done = threading.Event()
    with Load(app, clients=2) as load:
        writer = threading.Thread(target=_ingest_through, args=(app, load, done), daemon=True)
        writer.start()
        wait_until("the load to get answers", lambda: load.count_status(200) >= 4, EVENT_DEADLINE_S)
        killed_at = time.monotonic()
        app.milvus.kill()  # SIGKILL, as a crash
        try:
            wait_until("503s while Milvus is down", lambda: load.count_status(503, killed_at) >= 3, EVENT_DEADLINE_S)
        finally:
            app.milvus.start()  # the same data directory and port
        back_at = time.monotonic()
        wait_until("right answers after the restart", lambda: _right_answer(app), WHOLE_WITHIN_S)
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
