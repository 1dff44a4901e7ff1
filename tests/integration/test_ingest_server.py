"""ingest() against a Milvus server over the network: exact rows, crash of the client, crash of Milvus.

The ingest runs that get killed run in a subprocess (a real process, SIGKILLed like a crash); the
re-runs must leave every row exactly once, which is checked by reading back every id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from cli_helpers import assert_collection_holds, byo, byo_rows, encoded_rows
from milvus_server import LiteServer

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.data import synthetic
from hivlp_milvus.ids import row_id
from hivlp_milvus.ingest import ingest
from hivlp_milvus.model import create_model

pytestmark = pytest.mark.integration

LOW, HIGH = 16, 64
REPO = Path(__file__).resolve().parents[2]

# The subprocess: ingest `n` deterministic BYO rows. The same seed gives the same rows in every run.
# A run to be killed half-way paces its source (sleep per record), so writes are in flight when
# the kill comes, and holds it at record `hold` (waits there to be killed), so however slowly the
# test gets to the kill on a loaded machine, the run cannot have finished by then.
SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from hivlp_milvus.data import EmbeddingRecord
    from hivlp_milvus.ingest import ingest

    uri, token, name, n, wb, skip, delay, hold = sys.argv[1:9]
    n, wb, delay, hold = int(n), int(wb), float(delay), int(hold)

    def records():
        rng = np.random.default_rng(7)
        for i in range(n):
            low = rng.standard_normal(16).astype(np.float32)
            high = rng.standard_normal(64).astype(np.float32)
            if delay:
                time.sleep(delay)
            if hold and i == hold:
                time.sleep(3600)  # held until the test kills this process
            yield EmbeddingRecord(f"r{i:05d}", "image" if i % 2 else "text", low, high, reference=f"ref {i}")

    report = ingest(records(), uri=uri, token=token or None, collection_name=name, write_batch_rows=wb,
                    skip_existing=skip == "1", progress=False)
    print(json.dumps(report.to_dict()))
    """
)


def _assert_every_row_once(coll: HierarchicalCollection, n: int) -> None:
    """The collection holds each of the script's ``n`` rows exactly once (a query returns every stored row)."""
    ids: list[int] = []
    it = coll.client.query_iterator(coll.name, batch_size=1000, filter="id >= 0", output_fields=["id"])
    while page := it.next():
        ids.extend(int(r["id"]) for r in page)
    it.close()
    assert len(ids) == n
    assert set(ids) == {row_id(f"r{i:05d}", "image" if i % 2 else "text") for i in range(n)}


def _run(
    script: Path, uri: str, token: str, name: str, n: int, wb: int, skip: bool, delay: float, hold: int = 0
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [uri, token, name, str(n), str(wb), "1" if skip else "0", str(delay), str(hold)]
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _finish(proc: subprocess.Popen, timeout: float = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _wait_for_rows(coll_name: str, uri: str, token: str, at_least: int, proc: subprocess.Popen) -> int:
    """Poll until `at_least` rows landed (the collection is created by the subprocess)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ingest ended before it could be killed: {proc.communicate()[1][-2000:]}"
        try:
            coll = HierarchicalCollection.open(coll_name, uri=uri, token=token or None)
            n = coll.count()
            coll.client.close()  # an open client would keep reconnecting to a killed server
        except Exception:  # not created yet
            n = 0
        if n >= at_least:
            return n
        time.sleep(0.05)
    raise AssertionError(f"fewer than {at_least} rows landed within 120 s")


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "ingest_script.py"
    path.write_text(SCRIPT, encoding="utf-8")
    return path


@pytest.fixture
def name() -> str:
    return f"ingest_{uuid.uuid4().hex[:10]}"


def test_ingest_over_the_network(milvus_server, name: str) -> None:
    uri, token = milvus_server.uri, milvus_server.token or None
    recs = byo(400, low=LOW, high=HIGH)
    report = ingest(recs, uri=uri, token=token, collection_name=name, write_batch_rows=128, progress=False)
    assert (report.inserted, report.updated) == (400, 0)
    coll = HierarchicalCollection.open(name, uri=uri, token=token)
    try:
        assert_collection_holds(coll, byo_rows(recs), atol=0)  # 400 rows, vectors bit for bit
        again = ingest(recs, uri=uri, token=token, collection_name=name, progress=False)
        assert (again.inserted, again.updated) == (0, 400)
        assert coll.count() == 400

        # Images + captions encoded by the micro model, over the network.
        records = synthetic.generate(6, seed=2, image_size=32, captions_per_image=2)
        model = create_model("micro", texts=[c for r in records for c in r.captions], seed=0)
        model_name = name + "_m"
        rep = ingest(records, uri=uri, token=token, collection_name=model_name, model=model, progress=False)
        assert rep.inserted == 18
        mcoll = HierarchicalCollection.open(model_name, uri=uri, token=token, model=model)
        assert_collection_holds(mcoll, encoded_rows(model, records))  # each row as the model encodes it here
        mcoll.drop()
    finally:
        coll.drop()


def test_killed_ingest_resumes_to_exactly_once(milvus_server, script: Path, name: str) -> None:
    uri, token, n = milvus_server.uri, milvus_server.token, 3000
    proc = _run(script, uri, token, name, n, wb=50, skip=False, delay=0.001, hold=n // 2)
    try:
        landed = _wait_for_rows(name, uri, token, 300, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    coll = HierarchicalCollection.open(name, uri=uri, token=token or None)
    try:
        partial = coll.count()
        assert landed <= partial < n, "the kill must interrupt the run half-way"

        # A plain re-run (no skip): everything upserted again, nothing duplicated.
        report = _finish(_run(script, uri, token, name, n, wb=500, skip=False, delay=0))
        assert report["inserted"] + report["updated"] == n
        assert report["updated"] == partial
        _assert_every_row_once(coll, n)

        # And a resume with skip_existing over the complete collection: nothing to do.
        report = _finish(_run(script, uri, token, name, n, wb=500, skip=True, delay=0))
        assert (report["skipped_existing"], report["rows_written"]) == (n, 0)
        assert coll.count() == n
    finally:
        coll.drop()


def test_milvus_killed_mid_ingest_then_resumed(script: Path, name: str) -> None:
    data_dir = tempfile.mkdtemp(prefix="hivlp-ingest-crash-")
    server = LiteServer(data_dir).start()
    n = 2000
    try:
        proc = _run(script, server.uri, "", name, n, wb=50, skip=False, delay=0.001, hold=n // 2)
        try:
            _wait_for_rows(name, server.uri, "", 200, proc)
            server.kill()  # Milvus dies under the writer
        finally:
            # The client would retry for minutes (pymilvus' policy); it crashes here instead.
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)

        restarted = LiteServer(data_dir, port=server.port).start()
        server = restarted
        coll = HierarchicalCollection.open(name, uri=server.uri)
        survived = coll.count()
        assert survived < n
        print(f"rows that survived the Milvus crash: {survived} of {n}")

        report = _finish(_run(script, server.uri, "", name, n, wb=200, skip=True, delay=0))
        assert report["skipped_existing"] == survived
        assert report["inserted"] == n - survived
        assert report["updated"] == 0
        _assert_every_row_once(coll, n)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
