"""A slow or unreadable image reference does not hold up other reads: bounded downloads per host,
one deadline per download (the wait for a slot included), concurrent reads of many rows.

Two real HTTP servers on 127.0.0.1 (no network): a *slow* one whose image answers after
:data:`SLOW_S` and which counts the requests it serves at once, and a *fast* one. Local files,
FIFOs and devices stand in for unreadable local references.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from serving_helpers import png

from hivlp_milvus.content import ContentOptions, read_image, row_contents
from hivlp_milvus.errors import BadRecordError

SLOW_S = 1.5


PNG = png()


@dataclass
class Server:
    url: str
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(server: Server, delay_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            with server.lock:
                server.in_flight += 1
                server.most_in_flight = max(server.most_in_flight, server.in_flight)
            try:
                if not self._wait_while_connected(delay_s):
                    return  # the client gave up: it no longer counts as in flight
                self.send_response(200)
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                    self.wfile.write(PNG)
            finally:
                with server.lock:
                    server.in_flight -= 1

        def _wait_while_connected(self, seconds: float) -> bool:
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                readable, _, _ = select.select([self.connection], [], [], min(left, 0.02))
                if readable and not self.connection.recv(1, socket.MSG_PEEK):
                    return False  # closed by the client
            return True

    return Handler


@contextlib.contextmanager
def _serve(delay_s: float) -> Iterator[Server]:
    server = Server(url="")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server, delay_s))
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def slow() -> Iterator[Server]:
    with _serve(SLOW_S) as server:
        yield server


@pytest.fixture
def fast() -> Iterator[Server]:
    with _serve(0.0) as server:
        yield server


def _timed_read(reference: str, options: ContentOptions) -> float:
    started = time.monotonic()
    assert read_image(reference, options).size == (8, 8)
    return time.monotonic() - started


def test_downloads_from_one_host_are_bounded_and_waiting_counts_against_the_timeout(slow: Server) -> None:
    options = ContentOptions(allow_http=True, timeout_s=SLOW_S + 1.0, max_per_host=2)
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: _attempt(f"{slow.url}/{i}.png", options), range(8)))
    elapsed = time.monotonic() - started
    assert slow.most_in_flight == 2  # never more than max_per_host connections to the slow host
    read = [r for r in results if r is None]
    refused = [r for r in results if r is not None]
    # Two slots, each busy SLOW_S per image, within timeout_s = SLOW_S + 1: two rounds at most.
    assert 2 <= len(read) <= 4, results
    # Each refusal says why: no slot within the timeout, or the slot came too late to finish in it.
    assert all("timeout_s=2.5" in str(r) for r in refused), refused
    assert any("max_per_host=2" in str(r) for r in refused), refused
    assert elapsed < options.timeout_s + 1.0  # nobody waits past its own timeout


def _attempt(reference: str, options: ContentOptions) -> BadRecordError | None:
    try:
        read_image(reference, options)
    except BadRecordError as exc:
        return exc
    return None


def test_a_slow_host_does_not_delay_reads_from_other_hosts_or_local_files(
    slow: Server, fast: Server, tmp_path: Path
) -> None:
    local = tmp_path / "local.png"
    local.write_bytes(PNG)
    options = ContentOptions(allow_http=True, timeout_s=SLOW_S + 2.0, max_per_host=2)
    quiet = [_timed_read(f"{fast.url}/a.png", options) for _ in range(3)] + [
        _timed_read(str(local), options) for _ in range(3)
    ]
    with ThreadPoolExecutor(6) as pool:
        # Six reads at the slow host fill its slots and queue behind them ...
        stuck = [pool.submit(_attempt, f"{slow.url}/{i}.png", options) for i in range(6)]
        deadline = time.monotonic() + 10
        while slow.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.in_flight == 2
        # ... while reads from another host and from disk take what they took without them.
        loaded = [_timed_read(f"{fast.url}/b.png", options) for _ in range(3)] + [
            _timed_read(str(local), options) for _ in range(3)
        ]
        assert slow.in_flight == 2  # the slow reads were still going on all along
        for f in stuck:
            f.result()
    assert max(loaded) < SLOW_S / 2, (quiet, loaded)  # never queued behind the slow host
    assert max(loaded) < max(quiet) + 0.5, (quiet, loaded)


def test_many_slow_rows_cost_about_one_timeout_not_one_each(slow: Server, tmp_path: Path) -> None:
    local = tmp_path / "local.png"
    local.write_bytes(PNG)
    options = ContentOptions(allow_http=True, timeout_s=SLOW_S + 0.5, max_per_host=4)
    rows = [{"id": i, "modality": "image", "reference": f"{slow.url}/{i}.png"} for i in range(8)]
    rows += [
        {"id": 100, "modality": "image", "reference": str(local)},
        {"id": 101, "modality": "text", "reference": "a caption"},
        {"id": 102, "modality": "image", "reference": str(tmp_path / "missing.png")},
    ]
    started = time.monotonic()
    out = row_contents(rows, options)
    elapsed = time.monotonic() - started
    assert len(out) == len(rows)
    assert elapsed < options.timeout_s + 1.0, elapsed  # one after the other would be 8 x SLOW_S = 12 s
    images = [o for o in out[:8] if not isinstance(o, BadRecordError)]
    assert len(images) == 4  # the first four got a slot; the rest ran out of time behind them
    failed = [o for o in out[:8] if isinstance(o, BadRecordError)]  # the other four (len(out) checked above)
    assert all("timeout_s=2.0" in str(o) for o in failed), failed
    assert out[8].size == (8, 8)
    assert out[9] == "a caption"
    assert isinstance(out[10], BadRecordError)
    assert "not found" in str(out[10])


def test_row_contents_of_nothing_is_nothing() -> None:
    assert row_contents([]) == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_or_a_device_is_refused_at_once_not_read(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: forever
    for reference in (str(fifo), fifo.as_uri(), "/dev/zero", str(tmp_path)):
        started = time.monotonic()
        with pytest.raises(BadRecordError):
            read_image(reference)
        assert time.monotonic() - started < 1.0, reference
    out = row_contents([{"id": 1, "modality": "image", "reference": str(fifo)}], ContentOptions(timeout_s=1.0))
    assert isinstance(out[0], BadRecordError)


def test_max_per_host_is_validated() -> None:
    from hivlp_milvus.errors import ConfigError

    with pytest.raises(ConfigError, match="max_per_host"):
        ContentOptions(max_per_host=0)


def test_the_fusion_stage_reads_its_candidates_at_once(slow: Server, tmp_path: Path) -> None:
    """``fusion_rerank`` reads a query's M candidates together: 6 slow images cost one read, not 6."""
    from hivlp_milvus.fusion_stage import read_candidates

    options = ContentOptions(allow_http=True, timeout_s=SLOW_S + 0.5, max_per_host=6)
    hits = [[{"id": i, "entity": {"modality": "image", "reference": f"{slow.url}/{i}.png"}} for i in range(6)]]
    hits[0].append({"id": 6, "entity": {"modality": "text", "reference": "a caption"}})
    started = time.monotonic()
    out = read_candidates(["text"], hits, options)
    elapsed = time.monotonic() - started
    assert elapsed < 2 * SLOW_S, elapsed  # one after the other would be 6 x SLOW_S
    assert [o.size for o in out[0][:6]] == [(8, 8)] * 6
    assert isinstance(out[0][6], BadRecordError)  # a caption cannot be fused with a text query
