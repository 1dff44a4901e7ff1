"""The content resolver: a row's caption or the image behind its reference, and every way that fails.

http(s) is exercised against a real ``http.server`` on 127.0.0.1 (no network needed).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hivlp_milvus.content import ContentOptions, read_image, row_content
from hivlp_milvus.errors import BadRecordError, ConfigError


def _png(color: tuple[int, int, int] = (200, 30, 40), size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/ok.png":
            self._send(PNG)
        elif self.path == "/big-declared.png":
            self._send(PNG + b"\0" * 5000)
        elif self.path == "/big-undeclared.png":
            # No Content-Length: the size is only known by reading, which must stop at the limit.
            self.send_response(200)
            self.end_headers()
            self.wfile.write(PNG + b"\0" * 5000)
            self.close_connection = True
        elif self.path == "/slow-headers.png":
            time.sleep(1.5)
            self._send(PNG)
        elif self.path == "/trickle.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            for i in range(len(PNG)):  # each byte well within the socket timeout, the whole far beyond
                self.wfile.write(PNG[i : i + 1])
                self.wfile.flush()
                time.sleep(0.05)
        elif self.path == "/not-an-image.png":
            self._send(b"<html>hello</html>")
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client stopped at its limit
            self.wfile.write(body)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "a b.png"  # a space: file:// URLs must be unquoted
    path.write_bytes(PNG)
    return path


def test_local_path_and_file_url_read_the_same_pixels(image_file: Path) -> None:
    by_path = read_image(str(image_file))
    by_url = read_image(image_file.as_uri())
    assert by_path.mode == "RGB"
    assert by_path.size == (8, 8)
    np.testing.assert_array_equal(np.asarray(by_path), np.asarray(by_url))
    assert tuple(np.asarray(by_path)[0, 0]) == (200, 30, 40)


def test_relative_path_resolves_under_root_and_escapes_are_refused(image_file: Path, tmp_path: Path) -> None:
    options = ContentOptions(root=str(tmp_path))
    assert read_image(image_file.name, options).size == (8, 8)
    outside = tmp_path.parent / "outside.png"
    outside.write_bytes(PNG)
    for reference in ("../outside.png", str(outside), outside.as_uri()):
        with pytest.raises(BadRecordError, match="outside the content root"):
            read_image(reference, options)
    assert read_image(str(outside)).size == (8, 8)  # no root: any path is allowed


def test_missing_file_and_undecodable_bytes_are_bad_records(tmp_path: Path) -> None:
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    missing = tmp_path / "missing.png"
    for reference, match in ((str(missing), "not found"), (missing.as_uri(), "not found"), (str(junk), "junk.png")):
        with pytest.raises(BadRecordError, match=match):
            read_image(reference)


@pytest.mark.parametrize(
    ("reference", "match"), [("s3://bucket/key.png", "scheme 's3'"), ("file://otherhost/etc/x.png", "only local files")]
)
def test_unsupported_schemes_and_remote_file_hosts_are_refused(reference: str, match: str) -> None:
    with pytest.raises(BadRecordError, match=match):
        read_image(reference)


def test_http_is_off_by_default_and_reads_when_allowed(server: str) -> None:
    with pytest.raises(BadRecordError, match="allow_http=True"):
        read_image(f"{server}/ok.png")
    img = read_image(f"{server}/ok.png", ContentOptions(allow_http=True))
    assert tuple(np.asarray(img)[0, 0]) == (200, 30, 40)


@pytest.mark.parametrize("path", ["/big-declared.png", "/big-undeclared.png"])
def test_http_larger_than_max_bytes_is_refused(server: str, path: str) -> None:
    small = ContentOptions(allow_http=True, max_bytes=len(PNG) + 100)
    with pytest.raises(BadRecordError, match="max_bytes"):
        read_image(server + path, small)
    # The same limit lets the small image through: the refusal is the size, not the server.
    assert read_image(f"{server}/ok.png", small).size == (8, 8)


@pytest.mark.parametrize("path", ["/slow-headers.png", "/trickle.png"])
def test_http_slower_than_timeout_is_refused_in_bounded_time(server: str, path: str) -> None:
    options = ContentOptions(allow_http=True, timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(BadRecordError, match="timeout_s=0.5"):
        read_image(server + path, options)
    assert time.monotonic() - start < 1.4  # the trickle would take ~3 s, the slow headers 1.5 s


def test_http_errors_and_non_images_are_bad_records(server: str) -> None:
    for url, match in (
        (f"{server}/missing.png", "404"),
        (f"{server}/not-an-image.png", "not-an-image"),
        ("http://127.0.0.1:9/x.png", "cannot download"),  # the discard port: nothing listens
    ):
        with pytest.raises(BadRecordError, match=match):
            read_image(url, ContentOptions(allow_http=True))


def test_row_content_gives_caption_text_or_the_image(image_file: Path) -> None:
    assert row_content({"modality": "text", "reference": "a red square"}) == "a red square"
    img = row_content({"modality": "image", "reference": str(image_file)})
    assert img.size == (8, 8)
    with pytest.raises(BadRecordError, match="no reference"):
        row_content({"id": 7, "modality": "image", "reference": ""})


@pytest.mark.parametrize(
    "options", [{"max_bytes": 0}, {"timeout_s": -1}, {"allow_htp": True}], ids=lambda o: next(iter(o))
)
def test_options_are_validated(options: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(options))):  # the error names the bad option
        ContentOptions(**options)
