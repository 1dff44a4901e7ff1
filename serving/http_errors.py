"""Errors of the HTTP API: :class:`ApiError` and the map from the library's error family to statuses.

Every error the ingress answers is JSON ``{"error": code, "message": ..., "details": ...}``. Errors
from the request path are mapped by their *type* (never their words): the client's faults are
4xx; Milvus refusing the service itself (its token, its collection gone) is a 503 for the
operator; a server fault is a 500. Messages never carry the credentials of a URI (:func:`redact`).
"""

# No `from __future__ import annotations`: the module sits under the Serve ingress, as ingress.py.

import asyncio
import logging
import re
from typing import Any

from fastapi.responses import JSONResponse

from hivlp_milvus.errors import (
    BadRecordError,
    CheckpointError,
    DimensionMismatchError,
    FilterError,
    HiVLPError,
    InvalidRequestError,
    MilvusError,
    MilvusUnavailableError,
    ModelMismatchError,
    NotFoundError,
    PermissionDeniedError,
    QueryError,
    SchemaMismatchError,
    SearchLimitError,
)
from serving import metrics
from serving.encoders import ImageTooLargeError
from serving.schemas import ErrorResponse

logger = logging.getLogger("ray.serve")


class ApiError(Exception):
    """An error answered as JSON with a status code."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        """The JSON answer; every error answer of the app passes here, so it is counted here."""
        metrics.count_error(self.code, self.status)
        body = ErrorResponse(error=self.code, message=self.message, details=self.details).model_dump(exclude_none=True)
        return JSONResponse(body, status_code=self.status, headers=headers)


# By type, most specific first (ImageTooLargeError is a BadRecordError; every Milvus error is a
# MilvusError). The client's faults are 4xx; Milvus refusing the *service* (its token, its
# collection gone) is the operator's to fix, so a 503 that says so, never a 4xx that blames the client.
_ERROR_MAP: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int, str], ...] = (
    (ImageTooLargeError, 413, "image_too_large"),
    (BadRecordError, 415, "undecodable_image"),
    (FilterError, 422, "invalid_filter"),
    (SearchLimitError, 422, "limit_out_of_range"),
    (DimensionMismatchError, 422, "invalid_query"),
    (QueryError, 422, "invalid_query"),
    (MilvusUnavailableError, 503, "milvus_unavailable"),
    # The service's own token (or its privileges) refused: the client can do nothing about it.
    (PermissionDeniedError, 503, "milvus_refused"),
    # Configuration faults of the server, not of the request (NotFoundError: the app's collection,
    # partition or database is gone).
    (
        (CheckpointError, NotFoundError, SchemaMismatchError, ModelMismatchError),
        503,
        "misconfigured",
    ),
    # Milvus refused the arguments of a request the app let through: the request's values.
    (InvalidRequestError, 400, "rejected_by_milvus"),
    # Any other Milvus error: the upstream answered, but with an error nothing above describes.
    (MilvusError, 502, "milvus_error"),
    (HiVLPError, 400, "bad_request"),
)

# Credentials in a URI (scheme://user:password@host) never leave the server in a message. The
# user-info part alone is replaced, as hivlp_milvus.connection.redact_uri does for one URI: a URI
# inside a sentence may end in punctuation that would not parse as a host and port.
_URI_USER_INFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#@'\"]*@")


def redact(text: str) -> str:
    """``text`` with every ``scheme://user:pw@host`` shown as ``scheme://***@host`` (for messages and logs)."""
    return _URI_USER_INFO.sub(lambda m: m.group("scheme") + "***@", text)


def root_cause(exc: BaseException) -> BaseException:
    """The user exception inside Ray's wrappers (``RayTaskError.cause``)."""
    seen = 0
    while getattr(exc, "cause", None) is not None and isinstance(exc.cause, BaseException) and seen < 5:
        exc, seen = exc.cause, seen + 1
    return exc


def to_api_error(exc: BaseException) -> ApiError:
    """Map any exception from the request path to an :class:`ApiError` (4xx for the client's faults)."""
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

    if isinstance(exc, ApiError):
        return exc
    cause = root_cause(exc)
    if isinstance(cause, ApiError):
        return cause
    for classes, status, code in _ERROR_MAP:
        if isinstance(cause, classes):
            return ApiError(status, code, redact(str(cause)) or type(cause).__name__)
    if isinstance(cause, BackPressureError | DeploymentUnavailableError | RayActorError):
        return ApiError(503, "backend_unavailable", f"a backend deployment is unavailable: {type(cause).__name__}")
    if isinstance(cause, asyncio.TimeoutError | TimeoutError):
        return ApiError(504, "timeout", "a backend deployment did not answer in time")
    logger.error("internal error on the request path: %s", redact(repr(cause)), exc_info=cause)
    return ApiError(500, "internal_error", f"internal server error ({type(cause).__name__}); see the server log")
