"""A real two-node Ray cluster on this machine: Ray Train with one worker per node, then Ray Data ingest.

Two ``ray start --block`` processes form the cluster: a head (``{"node_a": 1}``, 2 CPUs, with the
dashboard, whose State API Train V2 and this test use) and a second node that joins it with
``--address`` (``{"node_b": 1}``, 2 CPUs). Both get their own free ports, a private ``--temp-dir``
(so a plain ``ray.init()`` elsewhere on the machine never finds this cluster) and a per-test
token (``RAY_AUTH_MODE=token``). The pytest process already belongs to the session's cluster and
one process joins one cluster, so everything runs from driver subprocesses, as on a real cluster:

1. ``python -m training`` with ``run.ray_address`` = the head, 2 workers under ``STRICT_SPREAD``,
   ``run.storage_path`` on a directory both nodes read (on a real cluster: NFS or S3);
2. ``two_node_driver.py``: which node each training worker ran on, then the distributed ingest
   (``distributed=True``: encoder actors and write tasks on the cluster) into the Milvus server.

The nodes are stopped by SIGTERM to their ``ray start`` processes, never ``ray stop`` (which stops
every Ray instance on the machine, the session's cluster included).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from milvus_server import MilvusEndpoint, free_port, milvus_endpoint

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.data import synthetic
from hivlp_milvus.ids import row_id, text_key
from hivlp_milvus.model import HiVLP

pytestmark = [pytest.mark.ray, pytest.mark.slow]

HERE = Path(__file__).resolve().parent
RAY = Path(sys.executable).with_name("ray")
# Ingested by the driver, regenerated here to know the expected rows (same seed, same records).
IMAGES, CAPTIONS, SEED = 24, 2, 5
# 64 images / (2 workers x batch 8) = 4 optimizer steps, one epoch, no validation.
TRAIN_OVERRIDES = [
    "model.config=micro",
    "loss.itm=0",
    "data.synthetic={train: 64, val: 0, seed: 1, image_size: 32}",
    "data.shuffle_buffer=16",
    "data.preprocess_batch_size=16",
    "optim.batch_size=8",
    "optim.warmup_steps=1",
    "optim.epochs=1",
    "scaling.num_workers=2",
    "scaling.resources_per_worker={CPU: 1}",
    "scaling.placement_strategy=STRICT_SPREAD",
    "run.name=two_node",
    "run.log_every_steps=1",
]


@dataclass(frozen=True)
class TwoNodeCluster:
    address: str  # the head's GCS, host:port
    env: dict[str, str]  # what a driver needs to join (token auth)
    temp_dir: Path


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"


def _start_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with log.open("w") as out:
        # Its own session: if SIGTERM is not enough, the whole group (raylet, GCS, ...) is killed.
        return subprocess.Popen(
            [str(RAY), "start", "--block", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _wait_started(proc: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if "Ray runtime started" in (log.read_text(errors="replace") if log.exists() else ""):
            return
        assert proc.poll() is None, f"ray start exited with {proc.returncode}:\n{_tail(log)}"
        time.sleep(0.5)
    raise AssertionError(f"ray start did not report a running node within {timeout_s:.0f} s:\n{_tail(log)}")


def _stop_node(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes on SIGTERM
        try:
            proc.wait(timeout=60)
            return
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started (start_new_session)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def two_node_cluster() -> Iterator[TwoNodeCluster]:
    # Short path: Ray puts Unix sockets under the temp dir (108-byte limit on their paths).
    temp_dir = Path(tempfile.mkdtemp(prefix="hivlp-2n-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM: stop now, no 30 s drain
        RAY_USAGE_STATS_ENABLED="0",
    )
    common = ["--num-cpus=2", f"--temp-dir={temp_dir}", "--object-store-memory=200000000", "--disable-usage-stats"]
    (gcs, dashboard, client, *head_ports), worker_ports = _free_ports(9), _free_ports(6)

    def node_ports(ports: list[int]) -> list[str]:
        flags = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc",
                 "metrics-export", "runtime-env-agent")  # fmt: skip
        return [f"--{flag}-port={port}" for flag, port in zip(flags, ports, strict=True)]

    address = f"127.0.0.1:{gcs}"
    head = ["--head", f"--port={gcs}", '--resources={"node_a": 1}', "--include-dashboard=true",
            f"--dashboard-port={dashboard}", f"--ray-client-server-port={client}", *node_ports(head_ports)]  # fmt: skip
    worker = [f"--address={address}", '--resources={"node_b": 1}', *node_ports(worker_ports)]
    nodes: list[subprocess.Popen] = []
    try:
        for name, args in (("head", head), ("worker", worker)):  # the head first: the worker joins it
            log = temp_dir / f"{name}.log"
            nodes.append(_start_node([*args, *common], log, env))
            _wait_started(nodes[-1], log)
        yield TwoNodeCluster(address, env, temp_dir)
    finally:
        for proc in reversed(nodes):  # the joining node first, then the head
            _stop_node(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[MilvusEndpoint]:
    with milvus_endpoint() as endpoint:
        yield endpoint


def _drive(cmd: list[str], cluster: TwoNodeCluster, log: Path, timeout_s: float) -> str:
    """Run a driver process against the cluster; its output is returned (and kept in ``log``)."""
    with log.open("w") as out:
        try:  # run() kills the driver when it times out
            proc = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=cluster.env, cwd=HERE.parents[1], timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{cmd[1:3]} did not finish within {timeout_s:.0f} s:\n{_tail(log)}") from None
    assert proc.returncode == 0, f"{cmd[1:3]} exited with {proc.returncode}:\n{_tail(log)}"
    return log.read_text(errors="replace")


def test_train_on_two_nodes_then_distributed_ingest(
    two_node_cluster: TwoNodeCluster, server: MilvusEndpoint, tmp_path: Path
) -> None:
    cluster = two_node_cluster
    shared = cluster.temp_dir / "shared"  # stands for NFS / S3: every node of this cluster reads it
    work = tmp_path / "work"
    steps = tmp_path / "steps.jsonl"

    # 1. Ray Train: 2 workers, one per node, checkpoints on the shared storage path.
    _drive(
        [sys.executable, "-m", "training", "--config", "quickstart", *TRAIN_OVERRIDES,
         f"run.ray_address={cluster.address}", f"run.work_dir={work}", f"run.storage_path={shared}",
         f"run.step_log={steps}"],
        cluster,
        tmp_path / "train.log",
        timeout_s=240,
    )  # fmt: skip
    result = json.loads((work / "train_result.json").read_text())
    assert result["metrics"]["step"] == 4
    assert result["metrics"]["samples_seen"] == 64
    assert result["plan"]["workers"] == 2
    assert result["plan"]["global_batch"] == 16
    assert Path(result["last_checkpoint"]).parent == shared / "two_node"

    # The exported model loads, equals the last checkpoint, and is not the initial model.
    model = HiVLP.from_pretrained(work / "model")
    assert model.fingerprint == HiVLP.from_pretrained(result["last_checkpoint"]).fingerprint
    assert model.fingerprint != HiVLP.from_pretrained(shared / "two_node" / "init_model").fingerprint

    # 2. Ray Data ingest with the exported model, written by tasks on the cluster into Milvus.
    name = "two_node_ingest"
    out = _drive(
        [sys.executable, str(HERE / "two_node_driver.py"), "--address", cluster.address, "--uri", server.uri,
         "--token", server.token, "--collection", name, "--model", str(work / "model"),
         "--images", str(IMAGES), "--captions", str(CAPTIONS), "--seed", str(SEED)],
        cluster,
        tmp_path / "ingest.log",
        timeout_s=180,
    )  # fmt: skip
    # The driver's last line of its own is one JSON object; Ray's log lines (e.g. the raylet's disk
    # warnings) can still arrive after it on the shared output.
    facts = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))

    # One training worker on each node: the two ranks ran on the two different nodes.
    nodes, workers = facts["nodes"], facts["train_workers"]
    assert sorted(nodes.values()) == ["node_a", "node_b"], nodes
    assert len(workers) == 2, workers
    assert {w["node_id"] for w in workers} == set(nodes), workers
    rank0_pids = {s["pid"] for s in map(json.loads, steps.read_text().splitlines())}
    assert len(rank0_pids) == 1
    assert rank0_pids < {w["pid"] for w in workers}, (rank0_pids, workers)  # rank 0 is one of them

    records = synthetic.generate(IMAGES, seed=SEED, image_size=32, captions_per_image=CAPTIONS)
    keys = [(r.id, "image") for r in records] + [
        (text_key(r.id, i), "text") for r in records for i in range(len(r.captions))
    ]
    report = facts["report"]
    assert report["distributed"]
    assert report["failed"] == []
    assert (report["inserted"], report["updated"]) == (len(keys), 0)

    token = server.token or None
    coll = HierarchicalCollection.open(name, uri=server.uri, token=token, model=model)  # fingerprint checked
    try:
        ids = [r["id"] for r in coll.client.query(name, filter="id >= 0", output_fields=["id"], limit=16384)]
        assert sorted(ids) == sorted(row_id(k, m) for k, m in keys)  # every image / caption exactly once

        # The stored vectors are the exported model's.
        text_id, image_id = row_id(text_key(records[3].id, 1), "text"), row_id(records[3].id, "image")
        got = {int(r["id"]): r for r in coll.get([text_id, image_id], ["id", "vec_low", "vec_high"])}
        text = model.embed_texts([records[3].captions[1]]).numpy()
        image = model.embed_images([records[3].image]).numpy()
        np.testing.assert_allclose(got[text_id]["vec_high"], text.high[0], atol=1e-5)
        np.testing.assert_allclose(got[image_id]["vec_low"], image.low[0], atol=1e-5)
    finally:
        coll.drop()
