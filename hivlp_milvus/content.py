"""One resolver for a row's content: what the fusion stage reads behind a candidate's ``reference``.

A caption row's ``reference`` *is* its text. An image row's ``reference`` is where the image lives:

* a local path (relative paths resolve under ``ContentOptions.root``, default the working directory);
* a ``file://`` URL;
* an ``http://`` / ``https://`` URL, only when ``allow_http`` is on (off by default: fetching URLs
  stored in a database from the search process is a server-side request the operator must opt
  into), with a byte limit and a time limit for the whole download.

Downloads are bounded: at most ``max_per_host`` at once to one host in this process (a slow or
hanging host holds only its own slots, so reads from other hosts and local files go on), and the
wait for a slot counts against the same ``timeout_s``. :func:`row_contents` reads many rows (a fusion
stage's candidates) concurrently, so M slow references cost about one ``timeout_s``, not M of them.

Every failure is a :class:`~hivlp_milvus.errors.BadRecordError` naming the reference and the cause,
so the search stage can keep that candidate out of the re-scoring and report it.
"""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

from hivlp_milvus.errors import BadRecordError
from hivlp_milvus.model.config import ConfigBase, Flag, PositiveInt, PositiveNumber, config_dataclass

__all__ = ["ContentOptions", "read_image", "row_content", "row_contents"]

_CHUNK = 64 * 1024


@config_dataclass("content")
class ContentOptions(ConfigBase):
    """Where and how candidate images are read.

    Attributes:
        root: base directory of relative paths; when set, a path (or ``file://`` URL) resolving
            outside it is refused. ``None``: relative to the working directory, any path allowed.
        allow_http: fetch ``http(s)://`` references.
        max_bytes: largest image download accepted (bytes).
        timeout_s: seconds one download may take in total (the wait for a slot, connect, headers
            and body); also the bound of one :func:`row_contents` call.
        max_per_host: downloads from one host (``host:port``) at once in this process.
    """

    root: str | None = None
    allow_http: Flag = False
    max_bytes: PositiveInt = 16 * 1024 * 1024
    timeout_s: PositiveNumber = 10.0
    max_per_host: PositiveInt = 4


def row_content(row: Mapping[str, Any], options: ContentOptions | None = None) -> Any:
    """The content of a collection row: its caption (a text row) or its decoded image (an image row).

    Args:
        row: a row with ``modality`` and ``reference`` (e.g. a hit's ``entity``).
        options: how images are read; defaults of :class:`ContentOptions` when ``None``.

    Returns:
        The caption ``str``, or an RGB ``PIL.Image.Image``.

    Raises:
        BadRecordError: the row has no reference, or its image cannot be read or decoded.
    """
    reference = row.get("reference")
    if not isinstance(reference, str) or not reference:
        raise BadRecordError(f"row {row.get('id', '?')} has no reference to read its content from")
    if row.get("modality") == "text":
        return reference
    return read_image(reference, options)


def row_contents(rows: Sequence[Mapping[str, Any]], options: ContentOptions | None = None) -> list[Any]:
    """The content of many rows, read concurrently; a row that fails gives its error instead.

    Reads run in a pool of threads (downloads at most ``max_per_host`` at once per host), and the
    whole call returns within about ``timeout_s``: a read still running then is reported as
    too slow (its thread ends by itself: downloads stop at their own deadline).

    Args:
        rows: rows with ``modality`` and ``reference`` (e.g. the entities of a fusion stage's candidates).
        options: how images are read; defaults of :class:`ContentOptions` when ``None``.

    Returns:
        One item per row, in order: what :func:`row_content` returns, or the
        :class:`~hivlp_milvus.errors.BadRecordError` it raised.
    """
    options = options or ContentOptions()
    if not rows:
        return []
    deadline = time.monotonic() + options.timeout_s
    pool = ThreadPoolExecutor(max_workers=min(len(rows), 4 * options.max_per_host), thread_name_prefix="content")
    try:
        futures = [pool.submit(row_content, row, options) for row in rows]
        # A little past the deadline: each download gives up at timeout_s by itself, with its own reason.
        wait_futures(futures, timeout=max(0.0, deadline - time.monotonic()) + 0.5)
        out: list[Any] = []
        for row, future in zip(rows, futures, strict=True):
            if not future.done():
                out.append(
                    BadRecordError(
                        f"reading the content of row {row.get('id', '?')} took more than timeout_s={options.timeout_s}"
                    )
                )
                continue
            exc = future.exception()
            if exc is not None and not isinstance(exc, BadRecordError):
                raise exc
            out.append(exc if exc is not None else future.result())
        return out
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def read_image(reference: str, options: ContentOptions | None = None) -> Any:
    """Read and decode the image behind an image row's ``reference``.

    Args:
        reference: a local path, a ``file://`` URL or (with ``allow_http``) an ``http(s)://`` URL.
        options: how images are read; defaults of :class:`ContentOptions` when ``None``.

    Returns:
        A fully decoded RGB ``PIL.Image.Image``.

    Raises:
        BadRecordError: unsupported scheme, a path outside ``root``, a missing file, a download
            that fails, is larger than ``max_bytes`` or slower than ``timeout_s``, or bytes that
            are no image.
    """
    from hivlp_milvus.model.preprocess import load_image  # decoding needs PIL/torch: load on use

    options = options or ContentOptions()
    scheme = urllib.parse.urlsplit(reference).scheme.lower()
    if scheme in ("http", "https"):
        if not options.allow_http:
            raise BadRecordError(
                f"image reference {reference!r} is a URL and http(s) reading is off; set "
                "ContentOptions(allow_http=True) to fetch it"
            )
        return _decode(load_image, _download(reference, options), reference)
    if scheme == "file":
        path = _file_url_path(reference)
    elif len(scheme) > 1:  # one letter is a Windows drive ("C:\\..."), not a scheme
        raise BadRecordError(
            f"image reference {reference!r} has scheme {scheme!r}; supported: a local path, file://, http(s)://"
        )
    else:
        path = Path(reference)
    return _decode(load_image, _confined(path, options.root, reference), reference)


def _decode(load_image: Any, source: Any, reference: str) -> Any:
    try:
        return load_image(source)
    except BadRecordError as exc:
        raise BadRecordError(f"image reference {reference!r}: {exc}") from exc


def _file_url_path(reference: str) -> Path:
    parts = urllib.parse.urlsplit(reference)
    if parts.netloc not in ("", "localhost"):
        raise BadRecordError(f"file URL {reference!r} names host {parts.netloc!r}; only local files can be read")
    return Path(urllib.request.url2pathname(parts.path))


def _confined(path: Path, root: str | None, reference: str) -> Path:
    if root is None:
        return path
    base = Path(root).resolve()
    resolved = (base / path).resolve()  # an absolute path replaces base
    if not resolved.is_relative_to(base):
        raise BadRecordError(f"image reference {reference!r} resolves outside the content root {str(base)!r}")
    return resolved


_HOST_SLOTS: dict[tuple[str, int], threading.BoundedSemaphore] = {}
_HOST_SLOTS_LOCK = threading.Lock()


def _host_slots(url: str, limit: int) -> threading.BoundedSemaphore:
    """The process's download slots for the host of ``url`` (one set per host and limit)."""
    key = (urllib.parse.urlsplit(url).netloc.lower(), limit)
    with _HOST_SLOTS_LOCK:
        return _HOST_SLOTS.setdefault(key, threading.BoundedSemaphore(limit))


def _download(url: str, options: ContentOptions) -> bytes:
    """The body of ``url``, at most ``max_bytes``, within ``timeout_s`` in total (the wait for a slot included)."""
    deadline = time.monotonic() + options.timeout_s
    slots = _host_slots(url, options.max_per_host)
    if not slots.acquire(timeout=options.timeout_s):
        raise BadRecordError(
            f"image {url!r} waited more than timeout_s={options.timeout_s} for one of the "
            f"max_per_host={options.max_per_host} downloads from its host: that host is slow"
        )
    try:
        return _fetch(url, options, deadline)
    finally:
        slots.release()


def _fetch(url: str, options: ContentOptions, deadline: float) -> bytes:
    remaining = max(0.05, deadline - time.monotonic())
    request = urllib.request.Request(url, headers={"User-Agent": "hivlp-milvus"})  # noqa: S310 - http(s) only
    try:
        with urllib.request.urlopen(request, timeout=remaining) as response:  # noqa: S310 - scheme checked
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > options.max_bytes:
                raise BadRecordError(
                    f"image {url!r} is {int(declared)} bytes, above max_bytes={options.max_bytes}; "
                    "raise ContentOptions.max_bytes to read it"
                )
            body = bytearray()
            # The socket timeout bounds each read; the deadline bounds a server that trickles bytes.
            while chunk := response.read1(_CHUNK):  # read1: what has arrived, not a full chunk
                body += chunk
                if len(body) > options.max_bytes:
                    raise BadRecordError(
                        f"image {url!r} is larger than max_bytes={options.max_bytes}; "
                        "raise ContentOptions.max_bytes to read it"
                    )
                if time.monotonic() > deadline:
                    raise BadRecordError(f"image {url!r} took more than timeout_s={options.timeout_s} to download")
            return bytes(body)
    except BadRecordError:  # a ValueError, already saying what went wrong
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError and TimeoutError are OSErrors
        if isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError):
            raise BadRecordError(f"image {url!r} took more than timeout_s={options.timeout_s} to download") from exc
        raise BadRecordError(f"cannot download image {url!r}: {exc}") from exc
