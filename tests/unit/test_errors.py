"""One error family at the boundary: Milvus' errors leave the library as HiVLPError subclasses.

Real Milvus Lite wherever the fault can be produced here (bad filter, dropped collection, a bad
request argument, a stopped server); Milvus' codes that only a real server sends (permission,
rate limit) are checked on exceptions built with those codes, as pymilvus builds them.
"""

from __future__ import annotations

import logging
import logging.handlers
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from collection_rows import row, unit
from milvus_server import LiteServer
from pymilvus.exceptions import InvalidConsistencyLevel, MilvusException, ParamError

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import ConnectionOptions, connect, guarded
from hivlp_milvus.errors import (
    CollectionNotFoundError,
    ConfigError,
    FilterError,
    HiVLPError,
    InvalidRequestError,
    MilvusError,
    MilvusUnavailableError,
    NotFoundError,
    PermissionDeniedError,
    from_milvus,
    milvus_errors,
)
from hivlp_milvus.model.embedding import HierarchicalEmbedding

LOW, HIGH = 4, 8


def _rows(n: int = 12) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    return [
        row(
            str(i),
            ("image", "text")[i % 2],
            unit(rng.normal(size=LOW)),
            unit(rng.normal(size=HIGH)),
            reference=f"ref {i}",
            attributes={"n": i},
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HierarchicalCollection]:
    client = connect(str(tmp_path_factory.mktemp("errors") / "e.db"))
    col = HierarchicalCollection.create(f"e_{uuid.uuid4().hex[:8]}", client=client, low_dim=LOW, high_dim=HIGH)
    col.upsert(_rows())
    yield col
    col.drop()


def _query(rows: list[dict[str, Any]], i: int) -> HierarchicalEmbedding:
    return HierarchicalEmbedding(rows[i]["vec_low"], rows[i]["vec_high"])


@pytest.fixture
def pymilvus_log() -> Iterator[logging.handlers.BufferingHandler]:
    """pymilvus' error log at its default level (another test module may have raised it), captured."""
    root, decorators = logging.getLogger("pymilvus"), logging.getLogger("pymilvus.decorators")
    saved = (root.level, decorators.level)
    root.setLevel(logging.WARNING)
    decorators.setLevel(logging.NOTSET)
    capture = logging.handlers.BufferingHandler(capacity=10_000)  # keeps every record in .buffer
    decorators.addHandler(capture)
    try:
        yield capture
    finally:
        decorators.removeHandler(capture)
        root.setLevel(saved[0])
        decorators.setLevel(saved[1])


# ---------------------------------------------------------------------- real Milvus Lite


def test_bad_filter_is_a_filter_error_with_milvus_code_and_no_pymilvus_traceback(
    col: HierarchicalCollection, pymilvus_log: logging.handlers.BufferingHandler
) -> None:
    rows = _rows()
    for call in (
        lambda: col.hierarchical_search(_query(rows, 0), limit=2, filter="key ==== 1"),
        lambda: col.search(_query(rows, 0), level="high", limit=2, filter="no_such_field == 1"),
        lambda: col.count("key ==== 1"),
        lambda: col.query("no_such_field == 1"),
        lambda: col.delete(filter="key ==== 1"),
    ):
        with pytest.raises(FilterError, match="invalid filter") as info:
            call()
        assert info.value.code == 6  # Milvus Lite's "illegal argument"
        assert isinstance(info.value.__cause__, MilvusException)
    assert pymilvus_log.buffer == []
    # The same failure outside the boundary is still logged by pymilvus: the capture works and
    # only the wrapped calls are quiet.
    with pytest.raises(MilvusException):
        col.client.query(col.name, filter="key ==== 1")
    assert [r.levelno for r in pymilvus_log.buffer] == [logging.ERROR]


def test_dropped_collection_is_not_found(tmp_path: Path) -> None:
    client = connect(str(tmp_path / "d.db"))
    col = HierarchicalCollection.create("gone", client=client, low_dim=LOW, high_dim=HIGH)
    client.drop_collection("gone")
    for call in (col.count, lambda: col.get([1]), lambda: col.existing_ids([1]), col.describe):
        with pytest.raises(CollectionNotFoundError, match="gone") as info:
            call()
        assert info.value.code == 100
        assert isinstance(info.value, NotFoundError | LookupError)
        assert isinstance(info.value.__cause__, MilvusException)


def test_invalid_argument_with_a_valid_filter_is_not_blamed_on_the_filter(col: HierarchicalCollection) -> None:
    """The probe tells the filter apart from the other arguments of a search."""
    q = _query(_rows(), 0)
    with pytest.raises(InvalidRequestError, match="consistency") as info:
        col.hierarchical_search(q, limit=2, filter="key != {k}", filter_params={"k": "x"}, consistency_level="Nope")
    assert not isinstance(info.value, FilterError)
    assert isinstance(info.value.__cause__, InvalidConsistencyLevel)
    with pytest.raises(FilterError):
        col.hierarchical_search(q, limit=2, filter="key ==== 1", consistency_level="Nope")


def test_unknown_keyword_arguments_are_errors(col: HierarchicalCollection) -> None:
    q = _query(_rows(), 0)
    for call, unknown in (
        (lambda: col.hierarchical_search(q, fine_limit=20), "fine_limit"),  # type: ignore[call-arg]
        (lambda: col.search(q, nprobe=8), "nprobe"),  # type: ignore[call-arg]
        (lambda: col.query("", limit=1, offset=2), "offset"),  # type: ignore[call-arg]
        (lambda: connect("./x.db", server_pem="ca.pem"), "server_pem"),  # type: ignore[call-arg]
    ):
        with pytest.raises(TypeError, match=unknown):
            call()


def test_pass_through_options_reach_milvus(col: HierarchicalCollection) -> None:
    rows = _rows()
    q = _query(rows, 2)
    for rerank in ("client", "server"):
        res = col.hierarchical_search(q, limit=1, rerank=rerank, timeout=30, consistency_level="Strong")
        assert res[0][0]["id"] == rows[2]["id"]
    assert len(col.query("", limit=3, timeout=30, consistency_level="Strong")) == 3
    # The timeout reaches pymilvus, which checks it (and the boundary types its complaint).
    with pytest.raises(InvalidRequestError, match="timeout"):
        col.search(q, level="high", limit=1, timeout="soon")  # type: ignore[arg-type]


def test_stopped_server_is_unavailable_and_connection_options_reach_open(tmp_path: Path) -> None:
    server = LiteServer(str(tmp_path / "data")).start()
    try:
        options = ConnectionOptions(uri=server.uri, retries=1, timeout=3)
        created = HierarchicalCollection.create("srv", connection=options, low_dim=LOW, high_dim=HIGH)
        created.upsert(_rows())
        col = HierarchicalCollection.open("srv", connection=options)
        assert col.count() == len(_rows())
        with pytest.raises(ConfigError, match="connection"):
            HierarchicalCollection.open("srv", connection=options, uri=server.uri)
        server.kill()
        for call in (col.count, lambda: col.hierarchical_search(_query(_rows(), 0), limit=1)):
            with pytest.raises(MilvusUnavailableError) as info:
                call()
            assert info.value.code == 2  # Milvus' "service unavailable"
        with pytest.raises(MilvusUnavailableError):
            HierarchicalCollection.open("srv", connection=options)
    finally:
        server.stop()


# ---------------------------------------------------------------------- the mapping, by code


@pytest.mark.parametrize(
    ("exc", "cls", "code"),
    [
        (MilvusException(2, "service unavailable"), MilvusUnavailableError, 2),
        (MilvusException(8, "rate limit exceeded"), MilvusUnavailableError, 8),
        (MilvusException(101, "collection not loaded"), MilvusUnavailableError, 101),
        (MilvusException(grpc.StatusCode.UNAVAILABLE, "Retry timeout: 3s"), MilvusUnavailableError, "UNAVAILABLE"),
        (MilvusException(100, "collection not found"), CollectionNotFoundError, 100),
        (MilvusException(200, "partition not found"), NotFoundError, 200),
        (MilvusException(1400, "not authenticated"), PermissionDeniedError, 1400),
        (MilvusException(1401, "privilege not permitted"), PermissionDeniedError, 1401),
        (MilvusException(1, "denied", 3), PermissionDeniedError, 1),  # legacy PermissionDenied
        (MilvusException(1100, "invalid parameter"), InvalidRequestError, 1100),
        (MilvusException(65535, "bad", is_input_error=True), InvalidRequestError, 65535),
        (ParamError(message="wrong type"), InvalidRequestError, 1),
        (MilvusException(65535, "something odd"), MilvusError, 65535),
    ],
)
def test_codes_map_to_subclasses(exc: MilvusException, cls: type, code: Any) -> None:
    err = from_milvus(exc, "search on collection 'c'")
    assert type(err) is cls
    assert err.code == code
    assert str(err).startswith("search on collection 'c' failed: ")


class _RpcErrorFake(grpc.RpcError):
    """A raw gRPC error as pymilvus re-raises it for non-retried statuses (a server's auth refusal)."""

    def __init__(self, status: grpc.StatusCode, details: str) -> None:
        self._status, self._details = status, details

    def code(self) -> grpc.StatusCode:
        return self._status

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (grpc.StatusCode.UNAUTHENTICATED, PermissionDeniedError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, MilvusUnavailableError),
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
    ],
)
def test_raw_grpc_errors_map_by_status(status: grpc.StatusCode, cls: type) -> None:
    with pytest.raises(cls, match="token|the call") as info, milvus_errors("connecting"):
        raise _RpcErrorFake(status, "token rejected")
    assert info.value.code == status.name
    assert isinstance(info.value.__cause__, grpc.RpcError)


def test_wrapper_passes_other_exceptions_through(tmp_path: Path) -> None:
    with pytest.raises(KeyError), milvus_errors():
        raise KeyError("ours")
    with pytest.raises(ConfigError), milvus_errors():
        raise ConfigError("ours")
    client = guarded(connect(str(tmp_path / "g.db")))
    assert client.list_collections() == []
    with pytest.raises(CollectionNotFoundError):
        client.describe_collection("missing")


def test_errors_keep_their_code_through_pickle() -> None:
    """Ray sends a Searcher's errors to the ingress pickled: the type and code must survive."""
    import pickle

    err = pickle.loads(pickle.dumps(from_milvus(MilvusException(1401, "no"), "x")))
    assert type(err) is PermissionDeniedError
    assert err.code == 1401
    assert isinstance(err, HiVLPError | PermissionError)
