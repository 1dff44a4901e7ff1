"""Where the tests find a real Milvus server, in order:

1. ``HIVLP_TEST_MILVUS_URI`` — any running Milvus (standalone, cluster, Zilliz), token in
   ``HIVLP_TEST_MILVUS_TOKEN``;
2. a testcontainers ``MilvusContainer`` (pinned image; the GPU image when ``HIVLP_TEST_MILVUS_GPU=1``)
   when a Docker daemon answers;
3. a Milvus Lite gRPC server (``milvus-lite server``) started as a subprocess on a free port.

The same tests run against all three; the chosen source is printed in the pytest header.

Each endpoint also says which engine answers (``engine``: ``lite``, ``cpu`` or ``gpu``), known from
how it was started rather than from the library under test, so tests can assert the choices the
library makes per engine (index profile, re-rank path). For ``HIVLP_TEST_MILVUS_URI`` set
``HIVLP_TEST_MILVUS_ENGINE``; without it a ``milvus_lite`` server version means ``lite``, anything
else ``cpu`` (a GPU server cannot be told from its version string).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

MILVUS_IMAGE = "milvusdb/milvus:v2.6.22"
MILVUS_GPU_IMAGE = "milvusdb/milvus:v2.6.22-gpu"


@dataclass(frozen=True)
class MilvusEndpoint:
    uri: str
    token: str
    engine: str = "cpu"  # "lite" | "cpu" | "gpu": which index profile this Milvus should get


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:
        return False
    return True


def describe_choice() -> str:
    if os.environ.get("HIVLP_TEST_MILVUS_URI"):
        return f"HIVLP_TEST_MILVUS_URI={os.environ['HIVLP_TEST_MILVUS_URI']}"
    if docker_available():
        image = MILVUS_GPU_IMAGE if os.environ.get("HIVLP_TEST_MILVUS_GPU") == "1" else MILVUS_IMAGE
        return f"testcontainers MilvusContainer({image})"
    return "milvus-lite gRPC server subprocess (no HIVLP_TEST_MILVUS_URI, no Docker daemon)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(uri: str, token: str = "", timeout_s: float = 60.0) -> None:
    from pymilvus import MilvusClient

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            client = MilvusClient(uri=uri, token=token, timeout=5)
            client.list_collections()
            client.close()
            return
        except Exception as exc:  # the server is still starting
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"Milvus at {uri} did not answer within {timeout_s}s: {last}")


class LiteServer:
    """A ``milvus-lite server`` subprocess that can be stopped and restarted on the same data dir."""

    def __init__(self, data_dir: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiteServer:
        exe = os.path.join(os.path.dirname(sys.executable), "milvus-lite")
        cmd = [exe, "server", "--data-dir", self.data_dir, "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_serving(self.uri)
        return self

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


ENGINES = ("lite", "cpu", "gpu")


def engine_of_env_server(uri: str, token: str) -> str:
    """The engine of the ``HIVLP_TEST_MILVUS_URI`` server (see the module docstring)."""
    declared = os.environ.get("HIVLP_TEST_MILVUS_ENGINE", "").strip().lower()
    if declared:
        if declared not in ENGINES:
            raise ValueError(f"HIVLP_TEST_MILVUS_ENGINE={declared!r}: use one of {ENGINES}")
        return declared
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, token=token, timeout=10)
    try:
        return "lite" if "lite" in str(client.get_server_version()).lower() else "cpu"
    finally:
        client.close()


@contextlib.contextmanager
def milvus_endpoint() -> Iterator[MilvusEndpoint]:
    """Yields a running Milvus for the duration of the block (see the module docstring)."""
    if os.environ.get("HIVLP_TEST_MILVUS_URI"):
        uri, token = os.environ["HIVLP_TEST_MILVUS_URI"], os.environ.get("HIVLP_TEST_MILVUS_TOKEN", "")
        yield MilvusEndpoint(uri, token, engine_of_env_server(uri, token))
        return
    if docker_available():
        from testcontainers.community.milvus import MilvusContainer

        gpu = os.environ.get("HIVLP_TEST_MILVUS_GPU") == "1"
        with MilvusContainer(image=MILVUS_GPU_IMAGE if gpu else MILVUS_IMAGE) as container:
            uri = container.get_connection_url()
            wait_until_serving(uri, "root:Milvus", timeout_s=180)
            yield MilvusEndpoint(uri, "root:Milvus", "gpu" if gpu else "cpu")
        return
    data_dir = tempfile.mkdtemp(prefix="hivlp-milvus-lite-")
    server = LiteServer(data_dir).start()
    try:
        yield MilvusEndpoint(server.uri, "", "lite")
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
