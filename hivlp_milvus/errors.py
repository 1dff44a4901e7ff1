"""One exception base class for the whole library, with one subclass per kind of mistake.

Every message says what was wrong and what to do about it. Subclasses also inherit the matching
builtin (``ValueError``, ``LookupError``, ``ConnectionError``, ``PermissionError``) so generic
handlers keep working.

Errors raised by Milvus (pymilvus' ``MilvusException`` and raw gRPC errors) never cross the public
API as such: :func:`milvus_errors` turns each into the :class:`MilvusError` subclass its code names
(unavailable, not found, permission denied, invalid request), keeping Milvus' ``code`` and the
original exception as ``__cause__``. Callers map errors by type, never by message text.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)


class HiVLPError(Exception):
    """Base class of every error raised on purpose by hivlp_milvus.

    Attributes:
        code: Milvus' error code when the error was reported by Milvus (``None`` otherwise). A
            gRPC failure carries the gRPC status name (e.g. ``"UNAVAILABLE"``).
    """

    def __init__(self, *args: object, code: int | str | None = None) -> None:
        super().__init__(*args)
        self.code = code


class ConfigError(HiVLPError, ValueError):
    """A model, training, profile or CLI configuration is invalid."""


class CheckpointError(HiVLPError):
    """A checkpoint directory is missing, incomplete or not a HiVLP checkpoint."""


class DataError(HiVLPError, ValueError):
    """A data source cannot be read at all (unknown format, missing manifest, wrong columns)."""


class DimensionMismatchError(HiVLPError, ValueError):
    """Vectors do not have the dimensions the model or collection expects."""


class MilvusError(HiVLPError):
    """Milvus answered with an error that no more specific subclass describes (``code`` is Milvus')."""


class MilvusUnavailableError(MilvusError, ConnectionError):
    """Milvus could not be reached (or stopped answering) after bounded retries."""


class NotFoundError(MilvusError, LookupError):
    """Something the call names (collection, partition, index, database, field) does not exist in Milvus."""


class CollectionNotFoundError(NotFoundError):
    """The named collection does not exist in this Milvus."""


class PermissionDeniedError(MilvusError, PermissionError):
    """Milvus refused the call: not authenticated (bad or missing token) or not permitted (privileges)."""


class InvalidRequestError(MilvusError, ValueError):
    """Milvus rejected the request's arguments as invalid (bad input, not an outage)."""


class CollectionExistsError(HiVLPError):
    """The collection already exists and ``exist_ok`` was not given."""


class SchemaMismatchError(HiVLPError):
    """The collection exists but was not created by hivlp_milvus, or with another schema version."""


class ModelMismatchError(HiVLPError):
    """The model's dims or fingerprint differ from the ones recorded in the collection."""


class FilterError(HiVLPError, ValueError):
    """A search/delete filter is malformed or uses unknown fields."""


class SearchLimitError(HiVLPError, ValueError):
    """``limit`` / ``coarse_limit`` are out of range for the index profile."""


class QueryError(HiVLPError, ValueError):
    """A query is of a type that cannot be searched (or needs a model that was not given)."""


class ProfileError(HiVLPError, ValueError):
    """An index profile is unknown or not supported by this Milvus."""


class BadRecordError(HiVLPError, ValueError):
    """One record cannot be used (undecodable image, empty caption); ingest skips it and reports why."""


# ---------------------------------------------------------------------- Milvus errors -> HiVLPError

# Milvus' error codes (milvus-io/milvus pkg/util/merr/errors.go), by what the caller can do.
_UNAVAILABLE_CODES = frozenset(
    {
        2,  # service unavailable
        4,  # request limit exceeded (retriable)
        8,  # rate limit exceeded (retriable)
        11,  # time tick long delay
        12,  # service resource insufficient
        # Not loaded: a restarted Milvus (or Lite server) forgets what was loaded; the collection
        # answers again once reopened (HierarchicalCollection.open loads it), as after an outage.
        101,  # collection not loaded
        103,  # collection not fully loaded
        106,  # collection on recovering
        201,  # partition not loaded
        202,  # partition not fully loaded
        401,  # replica not available
        503,  # channel not available
        902,  # node offline
        905,  # node not available
        10000,  # canceled
        10001,  # timeout
    }
)
_NOT_FOUND_CODES = frozenset({100, 200, 300, 400, 500, 600, 700, 800, 901, 1600, 1603, 1700})
_COLLECTION_NOT_FOUND_CODE = 100
_PERMISSION_CODES = frozenset({1400, 1401, 1800})
# 6 is "cross cluster routing" on a server but "illegal argument" on Milvus Lite 3 (its filter,
# schema and VARCHAR-length errors); the server code is never seen by a single-cluster client.
_INVALID_CODES = frozenset({5, 6, 105, 701, 702, 802, 1100, 1101, 1102, 1701, 1801, 1802, 1804, 1806, 2001, 3000})
_LEGACY_PERMISSION_DENIED = 3  # common.proto ErrorCode, still set by older servers

_GRPC_CLASSES = {
    "UNAVAILABLE": MilvusUnavailableError,
    "DEADLINE_EXCEEDED": MilvusUnavailableError,
    "CANCELLED": MilvusUnavailableError,
    "RESOURCE_EXHAUSTED": MilvusUnavailableError,
    "ABORTED": MilvusUnavailableError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNAUTHENTICATED": PermissionDeniedError,
    "INVALID_ARGUMENT": InvalidRequestError,
    "OUT_OF_RANGE": InvalidRequestError,
    "FAILED_PRECONDITION": InvalidRequestError,
    "UNIMPLEMENTED": InvalidRequestError,
    "NOT_FOUND": NotFoundError,
}

_ADVICE: dict[type[MilvusError], str] = {
    MilvusUnavailableError: (
        "check that Milvus is running and reachable (host, port, TLS) and the collection loaded; the call can be "
        "retried (HierarchicalCollection.open reloads a released collection)"
    ),
    CollectionNotFoundError: "check the collection name, or create it (HierarchicalCollection.create / ingest)",
    NotFoundError: "check the names used (collection, partition, index, database)",
    PermissionDeniedError: "check the token (user:password or API key) and that this user holds the needed privileges",
    InvalidRequestError: "check the arguments of the call",
    MilvusError: "see Milvus' message",
}


def _code(exc: BaseException) -> int | str | None:
    """Milvus' code of a pymilvus/gRPC error, or its gRPC status name (``"UNAVAILABLE"``), else ``None``.

    pymilvus puts a ``grpc.StatusCode`` in ``code`` after retries; a raw ``grpc.RpcError``'s ``code()``
    is its status.
    """
    code = getattr(exc, "code", None)
    if callable(code):
        code = code()
    name = getattr(code, "name", None)
    if isinstance(name, str) and name in _GRPC_CLASSES:
        return name
    return int(code) if isinstance(code, int) else None


def _class_for(exc: BaseException) -> type[MilvusError]:
    from pymilvus import exceptions as pe

    # pymilvus' client-side checks, by type: they never reached the server.
    client_side_input = (
        pe.ParamError,
        pe.DataTypeNotMatchException,
        pe.DataNotMatchException,
        pe.DataTypeNotSupportException,
        pe.PrimaryKeyException,
        pe.PartitionKeyException,
        pe.ClusteringKeyException,
        pe.AutoIDException,
        pe.SchemaNotReadyException,
        pe.FieldTypeException,
        pe.FieldsTypeException,
        pe.InvalidConsistencyLevel,
        pe.AmbiguousIndexName,
    )
    if isinstance(exc, client_side_input):
        return InvalidRequestError
    if isinstance(exc, pe.ConnectError | pe.MilvusUnavailableException):
        return MilvusUnavailableError
    if isinstance(exc, pe.CollectionNotExistException):
        return CollectionNotFoundError
    code = _code(exc)
    if isinstance(code, str):
        return _GRPC_CLASSES[code]
    if code is None:
        return MilvusError
    # First match wins; the last two also take the older servers' and pymilvus' own markers.
    for codes, cls, marked in (
        ({_COLLECTION_NOT_FOUND_CODE}, CollectionNotFoundError, False),
        (_UNAVAILABLE_CODES, MilvusUnavailableError, False),
        (_NOT_FOUND_CODES, NotFoundError, False),
        (_PERMISSION_CODES, PermissionDeniedError, getattr(exc, "compatible_code", None) == _LEGACY_PERMISSION_DENIED),
        (_INVALID_CODES, InvalidRequestError, getattr(exc, "is_input_error", False)),
    ):
        if code in codes or marked:
            return cls
    return MilvusError


def milvus_message(exc: BaseException) -> str:
    """Milvus' own message of a pymilvus/gRPC error (without pymilvus' ``<MilvusException: ...>`` frame)."""
    message = getattr(exc, "message", None)
    if isinstance(message, str) and message:
        return message
    details = getattr(exc, "details", None)
    if callable(details):
        with contextlib.suppress(Exception):
            return str(details())
    return str(exc)


def from_milvus(exc: BaseException, what: str = "the Milvus call") -> MilvusError:
    """The :class:`MilvusError` subclass for a pymilvus/gRPC error, chosen by its code (and type).

    Args:
        exc: a ``pymilvus.exceptions.MilvusException`` or ``grpc.RpcError``.
        what: the operation, for the message (e.g. ``"search on collection 'docs'"``).

    Returns:
        The error to raise (``raise from_milvus(exc, ...) from exc`` keeps the cause); its ``code``
        is Milvus' code, or the gRPC status name.
    """
    cls, code = _class_for(exc), _code(exc)
    shown = f"code {code}" if code is not None else "no code"
    return cls(f"{what} failed: {milvus_message(exc)} ({shown}); {_ADVICE[cls]}", code=code)


# pymilvus' decorators log every failed call at ERROR with a full traceback before raising. For the
# calls below, the error is raised again as a typed HiVLPError that says the same, so those records
# only repeat it (a user's bad filter printed a traceback before our FilterError). A filter on
# pymilvus' logger drops them while a wrapped call runs in this thread/task; other calls keep theirs.
_WRAPPED_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("hivlp_wrapped_milvus_call", default=False)
PYMILVUS_ERROR_LOGGER = "pymilvus.decorators"


# Installed once, at import (a logger takes any callable as a filter): a logger's filters outlive
# logging.config.dictConfig (pymilvus runs it on import; it resets a child logger's level and
# handlers, never its filters), and the filter does nothing outside a wrapped call.
logging.getLogger(PYMILVUS_ERROR_LOGGER).addFilter(
    lambda record: not (_WRAPPED_CALL.get() and record.levelno >= logging.WARNING)
)


@contextlib.contextmanager
def milvus_errors(what: str = "the Milvus call") -> Iterator[None]:
    """Run Milvus calls so that their errors leave as :class:`MilvusError` subclasses.

    ``with milvus_errors(f"upsert into {name!r}"): client.upsert(...)`` raises
    :class:`MilvusUnavailableError`, :class:`NotFoundError` (:class:`CollectionNotFoundError`),
    :class:`PermissionDeniedError`, :class:`InvalidRequestError` or :class:`MilvusError` instead of
    ``MilvusException`` / ``grpc.RpcError``, with Milvus' code and the original as ``__cause__``;
    pymilvus' own ERROR log of the failure is dropped (it is logged here at DEBUG). HiVLPErrors and
    other exceptions pass through unchanged.

    Args:
        what: the operation, for the message.
    """
    token = _WRAPPED_CALL.set(True)
    try:
        yield
    except Exception as exc:
        import grpc
        from pymilvus.exceptions import MilvusException

        # Only what from_milvus translates; a HiVLPError is neither, and leaves as it came.
        if not isinstance(exc, MilvusException | grpc.RpcError):
            raise
        logger.debug("%s failed in pymilvus", what, exc_info=exc)
        raise from_milvus(exc, what) from exc
    finally:
        _WRAPPED_CALL.reset(token)
