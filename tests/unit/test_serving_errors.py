"""The ingress answers each error of the library's family by its type, with the JSON error body.

Milvus refusing the *service* (its token, its collection gone) is a 503 for the operator, never a
4xx blaming the client; Milvus refusing a request's values is a 400; anything else Milvus says is a
502. Credentials in a URI never reach a client. No Ray: ``to_api_error`` and the handlers are plain.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from ray.exceptions import RayTaskError

from hivlp_milvus.errors import (
    BadRecordError,
    CheckpointError,
    CollectionNotFoundError,
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
from serving.encoders import ImageTooLargeError
from serving.ingress import ApiError, api, redact, to_api_error

TABLE = [
    (PermissionDeniedError("token refused", code=1800), 503, "milvus_refused"),
    (NotFoundError("partition gone", code=200), 503, "misconfigured"),
    (CollectionNotFoundError("collection gone", code=100), 503, "misconfigured"),
    (InvalidRequestError("bad value", code=1100), 400, "rejected_by_milvus"),
    (MilvusUnavailableError("down", code=2), 503, "milvus_unavailable"),
    (MilvusError("something else", code=65535), 502, "milvus_error"),
    (CheckpointError("no model"), 503, "misconfigured"),
    (SchemaMismatchError("old schema"), 503, "misconfigured"),
    (ModelMismatchError("other model"), 503, "misconfigured"),
    (FilterError("bad filter"), 422, "invalid_filter"),
    (QueryError("bad query"), 422, "invalid_query"),
    (SearchLimitError("limit"), 422, "limit_out_of_range"),
    (DimensionMismatchError("dims"), 422, "invalid_query"),
    (BadRecordError("bad image"), 415, "undecodable_image"),
    (ImageTooLargeError("big image"), 413, "image_too_large"),
    (HiVLPError("other"), 400, "bad_request"),
]


@pytest.mark.parametrize(("exc", "status", "code"), TABLE, ids=[type(e).__name__ for e, _, _ in TABLE])
def test_error_family_maps_by_type(exc: BaseException, status: int, code: str) -> None:
    for raised in (exc, RayTaskError("search", "tb", exc).as_instanceof_cause()):  # also from another replica
        err = to_api_error(raised)
        assert (err.status, err.code) == (status, code)
        # The body (built from err.code and err.message) carries the reason as the library worded it.
        assert json.loads(err.response().body) == {"error": code, "message": str(exc)}


def test_error_body_through_the_app_handler() -> None:
    handler = api.exception_handlers[ApiError]
    response = asyncio.run(handler(None, to_api_error(PermissionDeniedError("the token was refused"))))
    assert response.status_code == 503
    assert json.loads(response.body) == {"error": "milvus_refused", "message": "the token was refused"}


def test_credentials_never_reach_the_client() -> None:
    exc = MilvusUnavailableError(
        "could not connect to Milvus at 'http://user:pw@milvus.internal:19530' after 3 attempt(s): "
        "Fail connecting to server on https://admin:s3cr3t@10.0.0.1:443/db; check the server"
    )
    err = to_api_error(exc)
    assert err.status == 503
    for secret in ("pw", "s3cr3t", "user:", "admin"):  # the response body is err.message (the TABLE test)
        assert secret not in err.message
    assert "http://***@milvus.internal:19530" in err.message
    assert "https://***@10.0.0.1:443/db" in err.message
    assert redact("no uri here; http://host:19530 stays") == "no uri here; http://host:19530 stays"


def test_metrics_are_no_ops_outside_a_replica_but_check_the_stage() -> None:
    from serving import metrics

    metrics.observe_stage("coarse", 0.1)
    metrics.count_hits("search", 3)
    metrics.count_error("invalid_filter", 422)
    assert not metrics.recording()  # unit tests and the in-process app record nothing
    with pytest.raises(ValueError, match="unknown stage 'rerank'"):
        metrics.observe_stage("rerank", 0.1)  # a typo is caught here, not silently lost in production
