"""``connect()``: a ``MilvusClient`` for Milvus Lite (a local path) or a Milvus server (a URL).

``./hivlp.db`` (or any path without a scheme) runs Milvus Lite in this process; ``http(s)://`` and
``tcp://`` address a Milvus server, with token auth and TLS options passed through to pymilvus.
Connecting retries a bounded number of times with backoff and then fails with a clear error,
never hangs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from hivlp_milvus.errors import (
    ConfigError,
    MilvusError,
    MilvusUnavailableError,
    PermissionDeniedError,
    milvus_errors,
)

logger = logging.getLogger(__name__)

DEFAULT_URI = "./hivlp.db"
SERVER_SCHEMES = ("http", "https", "tcp")
# Per-attempt connect timeout when the caller gives none: long enough for a remote server behind
# TLS, short enough that `retries` attempts fail within well under a minute.
_DEFAULT_CONNECT_TIMEOUT_S = 5.0

_LITE_CACHE: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def is_server_uri(uri: str) -> bool:
    """Whether ``uri`` addresses a Milvus server (``http(s)://`` / ``tcp://``) rather than a Lite path."""
    return urlparse(str(uri)).scheme.lower() in SERVER_SCHEMES


def _lite_endpoint(path: str) -> str:
    """Start (or reuse) the in-process Milvus Lite for ``path`` and return its local gRPC URI.

    pymilvus only recognises Lite paths ending in ``.db``; any other scheme-less path is served
    the same way by starting Lite directly.
    """
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ConfigError(f"Milvus Lite path {path!r}: directory {parent!r} does not exist; create it first")
    if path.endswith(".db"):
        return path  # pymilvus starts Lite itself
    from milvus_lite.server_manager import server_manager_instance

    local = server_manager_instance.start_and_get_uri(path)
    if local is None:
        raise MilvusUnavailableError(f"could not start Milvus Lite on {path!r}; check the path is writable")
    return local


def connect(
    uri: str = DEFAULT_URI,
    *,
    token: str | None = None,
    db_name: str = "",
    timeout: float | None = None,
    retries: int = 3,
    secure: bool | None = None,
    server_pem_path: str | None = None,
    server_name: str | None = None,
    client_pem_path: str | None = None,
    client_key_path: str | None = None,
    ca_pem_path: str | None = None,
) -> Any:
    """Connect to Milvus Lite or a Milvus server.

    Args:
        uri: a local path (``./hivlp.db``: Milvus Lite in this process) or ``http(s)://host:port`` /
            ``tcp://host:port`` (a Milvus server, standalone or cluster, or Zilliz Cloud).
        token: ``"user:password"`` or an API key (servers only).
        db_name: Milvus database (servers only; ``""`` = default).
        timeout: connect timeout of each attempt in seconds (default 5 s); pymilvus uses the
            constructor's timeout for connecting, per-call timeouts are given per call.
        retries: connection attempts before giving up (backoff 0.5 s, 1 s, 2 s, ... between them).
        secure: use TLS (servers; implied by ``https://``).
        server_pem_path: the server's certificate (one-way TLS).
        server_name: the name the server's certificate was issued for (SNI / verification).
        client_pem_path: this client's certificate (two-way TLS).
        client_key_path: this client's private key (two-way TLS).
        ca_pem_path: the CA that signed the certificates (two-way TLS).

    Returns:
        A connected ``pymilvus.MilvusClient``.

    Raises:
        ConfigError: ``uri`` is neither a usable local path nor a server URL.
        MilvusUnavailableError: Milvus did not answer after ``retries`` attempts.
        PermissionDeniedError: the server refused the token (not retried).
    """
    from pymilvus import MilvusClient
    from pymilvus.exceptions import ConnectionConfigException

    # Named, not **kwargs: MilvusClient ignores keywords it does not know, so a typo would vanish.
    tls = call_options(
        secure=secure,
        server_pem_path=server_pem_path,
        server_name=server_name,
        client_pem_path=client_pem_path,
        client_key_path=client_key_path,
        ca_pem_path=ca_pem_path,
    )
    uri = str(uri)
    scheme = urlparse(uri).scheme.lower()
    if scheme and scheme not in SERVER_SCHEMES and not (len(scheme) == 1 and os.name == "nt"):
        raise ConfigError(
            f"uri {uri!r} has scheme {scheme!r}; use a local path (./hivlp.db) for Milvus Lite or "
            f"{'/'.join(s + '://' for s in SERVER_SCHEMES)} for a Milvus server"
        )
    server = bool(scheme)
    target = uri if server else _lite_endpoint(uri)
    attempts = max(int(retries), 1)
    connect_timeout = timeout if timeout is not None else _DEFAULT_CONNECT_TIMEOUT_S
    last: Exception | None = None
    shown = redact_uri(uri)
    for attempt in range(attempts):
        try:
            with milvus_errors(f"connecting to Milvus at {shown!r}"):
                client = MilvusClient(uri=target, token=token or "", db_name=db_name, timeout=connect_timeout, **tls)
                client.list_collections(timeout=connect_timeout)  # a real round trip, not just a channel
            return client
        except PermissionDeniedError:
            raise  # a wrong token does not get better by retrying
        except Exception as exc:  # any other failure to answer is retried, then reported
            if isinstance(exc, MilvusError) and isinstance(exc.__cause__, ConnectionConfigException):
                raise ConfigError(f"invalid Milvus uri {shown!r}: {exc.__cause__.message}") from exc.__cause__
            last = exc
        if attempt + 1 < attempts:
            delay = 0.5 * (2**attempt)
            logger.info(
                "Milvus at %s not reachable (%s); retry %d/%d in %.1fs", shown, last, attempt + 1, attempts, delay
            )
            time.sleep(delay)
    what = (
        "check the server is running and reachable (host, port, firewall), that TLS options "
        "(secure=True, server_pem_path) match the server, and that the token is valid"
        if server
        else "check the path is writable and not opened by another process"
    )
    raise MilvusUnavailableError(
        f"could not connect to Milvus at {shown!r} after {attempts} attempt(s): {last}; {what}",
        code=getattr(last, "code", None),
    ) from last


# The TLS options pymilvus' MilvusClient takes, by the names it takes them.
TLS_OPTIONS = ("secure", "server_pem_path", "server_name", "client_pem_path", "client_key_path", "ca_pem_path")


class ConnectionOptions(BaseModel):
    """Everything needed to reach one Milvus: where, who, and how (TLS). One value that every
    entry point (``HierarchicalCollection.open/create``, ``ingest()``, the CLI, the Serve app)
    takes, so an option added here reaches all of them.

    Example:
        ``ConnectionOptions(uri="https://milvus:19530", token="root:Milvus", secure=True,
        server_pem_path="ca.pem", server_name="milvus.internal").connect()``
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str = DEFAULT_URI
    token: str | None = Field(None, repr=False)  # never in a logged or printed options value
    db_name: str = ""
    secure: bool | None = None
    server_pem_path: str | None = None
    server_name: str | None = None
    client_pem_path: str | None = None
    client_key_path: str | None = None
    ca_pem_path: str | None = None
    timeout: float | None = None
    retries: int = 3

    def tls(self) -> dict[str, Any]:
        """The TLS options that are set, as ``MilvusClient`` keyword arguments."""
        return {name: getattr(self, name) for name in TLS_OPTIONS if getattr(self, name) is not None}

    def connect(self) -> Any:
        """A connected ``MilvusClient`` (see :func:`connect`)."""
        return connect(**self.model_dump())  # the fields are connect()'s arguments, by name

    def redacted_uri(self) -> str:
        """The URI with any ``user:password@`` removed, for messages and logs."""
        return redact_uri(self.uri)


def connection_options(
    connection: ConnectionOptions | None, *, uri: str = DEFAULT_URI, token: str | None = None
) -> ConnectionOptions:
    """One :class:`ConnectionOptions` from ``connection`` or the older ``uri=`` / ``token=`` arguments.

    Raises:
        ConfigError: ``connection`` and a ``uri`` or ``token`` were both given.
    """
    if connection is None:
        return ConnectionOptions(uri=str(uri), token=token)
    if token is not None or str(uri) != DEFAULT_URI:
        raise ConfigError("give either connection=ConnectionOptions(...) or uri=/token=, not both")
    return connection


def redact_uri(uri: str) -> str:
    """``uri`` without credentials (``http://user:pw@host`` → ``http://***@host``)."""
    parsed = urlparse(str(uri))
    if parsed.username is None and parsed.password is None:
        return str(uri)
    # Everything after the last "@" is host[:port] as written (an IPv6 host keeps its brackets).
    return parsed._replace(netloc=f"***@{parsed.netloc.rpartition('@')[2]}").geturl()


def is_lite(client: Any) -> bool:
    """Whether ``client`` talks to Milvus Lite (in-process or ``milvus-lite server``).

    Decided from ``get_server_version()`` (``"milvus_lite-..."``), cached per client.

    Raises:
        MilvusError: (a subclass) the server did not answer.
    """
    client = getattr(client, "raw", client)  # a GuardedClient: ask (and cache) the real one
    with contextlib.suppress(KeyError, TypeError):  # not asked yet, or a client without weak references
        return _LITE_CACHE[client]
    with milvus_errors("get_server_version"):
        version = str(client.get_server_version())
    lite = "lite" in version.lower()  # Lite 3.x says "milvus_lite-3.2.2"; a server, "v2.6.x"
    with contextlib.suppress(TypeError):
        _LITE_CACHE[client] = lite
    return lite


class GuardedClient:
    """A ``MilvusClient`` whose every method raises :class:`~hivlp_milvus.errors.MilvusError`
    subclasses instead of pymilvus' exceptions (see :func:`hivlp_milvus.errors.milvus_errors`).

    Holding one of these instead of the client puts every Milvus call of the holder behind the error
    boundary, including calls added later, without a wrapper at each call site.

    Attributes:
        raw: the wrapped ``pymilvus.MilvusClient``.
    """

    __slots__ = ("raw", "_where")

    def __init__(self, raw: Any, where: str = "") -> None:
        self.raw = raw
        self._where = where

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.raw, name)
        if not callable(attr):
            return attr
        what = f"{name}{self._where}"

        def call(*args: Any, **kwargs: Any) -> Any:
            with milvus_errors(what):
                return attr(*args, **kwargs)

        return call

    def __repr__(self) -> str:
        return f"GuardedClient({self.raw!r})"


def call_options(**options: Any) -> dict[str, Any]:
    """The pass-through options of a Milvus call that were given (``None`` = Milvus' default, not sent)."""
    return {k: v for k, v in options.items() if v is not None}


def guarded(client: Any, where: str = "") -> GuardedClient:
    """``client`` behind the error boundary (a :class:`GuardedClient`; one already guarded is re-labelled).

    Args:
        client: a ``pymilvus.MilvusClient`` (or a :class:`GuardedClient`).
        where: appended to the method name in messages, e.g. ``" on collection 'docs'"``.
    """
    return GuardedClient(getattr(client, "raw", client), where)
