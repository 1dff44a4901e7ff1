"""The HTTP layer's contract without Ray: the OpenAPI schema tells the truth, the API-key dependency
accepts exactly the key (that it guards every route but /healthz: tests/unit/test_media_security.py),
the API pages work offline, the encoders' GPU share and replica range (builder-arg precedence:
tests/unit/test_serving_schemas.py).

tests/ray/test_serving.py drives the same app over real HTTP; these checks are the fast half.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Annotated, Any

import jsonschema
import pytest
from fastapi import Depends, FastAPI, Form
from fastapi.testclient import TestClient
from pydantic import ValidationError
from serving_helpers import assert_error
from starlette.requests import Request

from hivlp_milvus.errors import ConfigError
from serving.app import AppArgs, env_var, gpus_per_encoder_replica, resolve_args
from serving.ingress import (
    AUTH,
    DOCS_ASSETS,
    ApiError,
    Ingress,
    IngressSettings,
    api,
    configure,
    require_api_key,
    require_multipart,
)
from serving.schemas import (
    FUSION_LIMIT_DOC,
    MAX_FUSION_LIMIT,
    EncodeRequest,
    ImageSearchForm,
    IngestRequest,
    SearchRequest,
)

SPEC = api.openapi()


def _schema_accepts(model: str, body: Any) -> bool:
    # The component schema as a client generating from /openapi.json sees it: its refs are
    # "#/components/schemas/X", so the root carries the components.
    schema = {**SPEC["components"]["schemas"][model], "components": SPEC["components"]}
    return jsonschema.Draft202012Validator(schema).is_valid(body)


def _app_accepts(model: type, body: Any) -> bool:
    try:
        model.model_validate(body)
    except ValidationError:
        return False
    return True


SEARCH_BODIES = [
    {"text": "a red circle"},
    {"image": "aGk="},
    {"text": "a", "image": "aGk="},  # both
    {},  # neither
    {"text": None, "image": "aGk="},  # a null counts as absent, in the schema too
    {"text": None},
    {"text": "x", "limit": 0},
    {"text": "x", "limit": 100},
    {"text": "x", "limit": 101},
    {"text": "x", "coarse_limit": 0},
    {"text": "x", "coarse_limit": 16384},
    {"text": "   "},  # blank
    {"text": "\x1c"},  # blank for Python's str.strip(), not for every regex dialect
    {"text": "\ufeff"},
    {"text": "x\x1c"},
    {"text": "x", "limt": 3},
    {"text": "x", "modality": "video"},
    {"text": "x", "filter": [{"field": "key", "op": "==", "value": True}]},
]


@pytest.mark.parametrize("body", SEARCH_BODIES)
def test_search_schema_accepts_exactly_what_the_app_accepts(body: dict[str, Any]) -> None:
    # coarse_limit >= limit is the one cross-field rule a JSON schema cannot state; the bodies above
    # keep coarse_limit unset or >= the default limit, as a schema-driven client would not know it.
    assert _schema_accepts("SearchRequest", body) == _app_accepts(SearchRequest, body), body
    encode = {k: v for k, v in body.items() if k in ("text", "image", "limt")}
    assert _schema_accepts("EncodeRequest", encode) == _app_accepts(EncodeRequest, encode), encode


@pytest.mark.parametrize(
    "record",
    [
        {"key": "k", "captions": ["a cat"]},
        {"key": "k", "image": "aGk="},
        {"key": "k"},
        {"key": "k", "captions": []},
        {"key": "k", "captions": [" "]},
        {"key": "k", "image": None, "captions": ["a"]},
        {"key": "k", "captions": ["a"], "attributes": {"n": 2**63}},  # beyond INT64: a float, not a 500
        {"key": "k", "captions": ["a"], "attributes": {"n": 2**63 - 1, "x": [1.5, {"y": None}]}},
        {"key": "k", "captions": ["a"], "attributes": {"n": -(2**63)}},
    ],
)
def test_ingest_schema_accepts_exactly_what_the_app_accepts(record: dict[str, Any]) -> None:
    body = {"records": [record]}
    assert _schema_accepts("IngestRequest", body) == _app_accepts(IngestRequest, body), record


def _record(**fields: Any) -> dict[str, Any]:
    return {"records": [{"key": "k", "captions": ["a"], **fields}]}


# Each of these reached Milvus before and came back as pymilvus' DataNotMatchException (a 500).
@pytest.mark.parametrize(
    ("model", "body"),
    [
        *(
            (IngestRequest, _record(attributes={"v": bad}))
            for bad in (float("nan"), float("inf"), {"deep": float("-inf")}, "x\ud800", ["\udfff"])
        ),
        (IngestRequest, _record(attributes={"\ud800": 1})),
        (IngestRequest, {"records": [{"key": "k\ud800", "captions": ["a"]}]}),
        (IngestRequest, {"records": [{"key": "k", "captions": ["a\ud800"]}]}),
        (SearchRequest, {"text": "x", "filter": [{"field": "key", "op": "==", "value": "\ud800"}]}),
    ],
)
def test_values_milvus_cannot_store_are_422_not_500(model: type, body: dict[str, Any]) -> None:
    assert not _app_accepts(model, body)


def test_integers_beyond_int64_are_stored_as_floats() -> None:
    # An integer beyond INT64 is a JSON number the schema allows: stored as a float, not refused by Milvus.
    big = IngestRequest.model_validate(_record(attributes={"n": 2**64, "m": 2**63 - 1}))
    assert big.records[0].attributes == {"n": float(2**64), "m": 2**63 - 1}
    assert isinstance(big.records[0].attributes["n"], float)
    assert isinstance(big.records[0].attributes["m"], int)


def test_image_search_form_is_described_by_fastapi() -> None:
    body = SPEC["paths"]["/search/image"]["post"]["requestBody"]
    assert body["required"] is True
    ref = body["content"]["multipart/form-data"]["schema"]["$ref"]
    form = SPEC["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert form["required"] == ["file"]
    assert form["additionalProperties"] is False  # an unknown form field is a 422, as the schema says
    assert set(form["properties"]) == {"file", "limit", "coarse_limit", "fusion_limit", "modality", "filter"}
    assert form["properties"]["limit"]["minimum"] == 1
    # A form field is absent or a string: the schema offers no null for the optional limits.
    assert form["properties"]["fusion_limit"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_FUSION_LIMIT,
        "description": FUSION_LIMIT_DOC,
        "title": "Fusion Limit",
    }
    assert form["properties"]["filter"]["contentMediaType"] == "application/json"


def test_every_4xx_is_documented_with_the_error_body() -> None:
    assert SPEC["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, methods in SPEC["paths"].items():
        for method, op in methods.items():
            if path == "/healthz":
                continue
            for status in ("401", "422"):
                assert status in op["responses"], (method, path, status)
                assert op["responses"][status]["content"]["application/json"]["schema"]["$ref"].endswith(
                    "/ErrorResponse"
                ), (method, path, status)


# -- the API key -------------------------------------------------------------------------------------


def _request(authorization: str | None) -> Request:
    headers = [(b"authorization", authorization.encode())] if authorization is not None else []
    return Request({"type": "http", "method": "GET", "path": "/search", "headers": headers})


@pytest.mark.parametrize(
    ("authorization", "ok"),
    [
        ("Bearer s3cret", True),
        ("bearer   s3cret ", True),
        ("Basic " + base64.b64encode(b"anyone:s3cret").decode(), True),
        (None, False),
        ("Bearer", False),
        ("Bearer s3cre", False),
        ("Bearer s3cret2", False),
        ("Bearer S3CRET", False),
        ("Basic " + base64.b64encode(b"s3cret").decode(), False),  # no user:password pair
        ("Basic !!!", False),
        ("Token s3cret", False),
    ],
)
def test_api_key_dependency(authorization: str | None, ok: bool) -> None:
    configure(IngressSettings(collection="c", api_key="s3cret"))
    try:
        if ok:
            assert asyncio.run(require_api_key(_request(authorization))) is None
        else:
            with pytest.raises(ApiError) as info:
                asyncio.run(require_api_key(_request(authorization)))
            assert (info.value.status, info.value.code) == (401, "unauthorized")
        configure(IngressSettings(collection="c"))  # no key: everything passes
        assert asyncio.run(require_api_key(_request(None))) is None
    finally:
        configure(IngressSettings(collection="c"))


# -- offline API pages -------------------------------------------------------------------------------


def test_api_pages_load_their_assets_from_the_server() -> None:
    for name, asset in DOCS_ASSETS.items():
        assert len(asset.read_bytes()) > 1000, name  # read_bytes raises for a missing file
    view = Ingress.func_or_class
    for page in (view.docs, view.redoc):
        html = asyncio.run(page(None)).body.decode()
        assert "docs-assets/" in html
        assert "http://" not in html
        assert "https://" not in html, html  # no CDN, no web fonts
    asset = asyncio.run(view.docs_assets(None, "swagger-ui-bundle.js"))
    assert asset.media_type == "text/javascript"
    with pytest.raises(ApiError) as info:
        asyncio.run(view.docs_assets(None, "../app.py"))
    assert info.value.status == 404


# -- builder args: one precedence -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "ceiling", "share"),
    [(0, 2, 0.0), (1, 1, 0.5), (1, 2, 0.25), (1, 3, 0.1666), (4, 2, 1.0), (8, 2, 1.0), (2, 3, 0.3333)],
)
def test_default_gpu_share_fits_both_encoders(gpus: float, ceiling: int, share: float) -> None:
    got = gpus_per_encoder_replica(gpus, ceiling)
    assert got == share
    assert 2 * ceiling * got <= gpus  # every replica up to the autoscaling ceiling can be scheduled


def test_encoder_replica_floor_and_ceiling_reach_autoscaling(tmp_path: Path) -> None:
    """``min_encoder_replicas`` / ``max_encoder_replicas`` become each encoder's autoscaling range."""
    from hivlp_milvus.model import create_model
    from serving.app import build_app

    create_model("micro", texts=["a red circle"], seed=0).save_pretrained(tmp_path / "model")
    args = {"checkpoint": str(tmp_path / "model"), "milvus_uri": str(tmp_path / "x.db"), "num_gpus": 0}
    app = build_app({**args, "min_encoder_replicas": 2, "max_encoder_replicas": 3})
    # Ray has no public accessor for a bound graph: the Ingress's init args are the other deployments.
    encoders = {
        d.name: d._deployment_config.autoscaling_config
        for d in (getattr(a, "_bound_deployment", None) for a in app._bound_deployment.init_args)
        if d is not None and d.name.endswith("Encoder")
    }
    assert {name: (c.min_replicas, c.max_replicas) for name, c in encoders.items()} == {
        "TextEncoder": (2, 3),
        "ImageEncoder": (2, 3),
    }
    with pytest.raises(ConfigError, match=r"min_encoder_replicas \(3\) is above max_encoder_replicas \(2\)"):
        resolve_args(AppArgs(min_encoder_replicas=3, max_encoder_replicas=2), environ={})
    with pytest.raises(ConfigError, match="min_encoder_replicas"):  # from the environment alike
        resolve_args(AppArgs(), environ={env_var("min_encoder_replicas"): "5"})
    # Checked once the sources are merged: a floor given as an arg may rest on a ceiling from the environment.
    mixed = resolve_args(AppArgs(min_encoder_replicas=3), environ={env_var("max_encoder_replicas"): "4"})
    assert (mixed.args.min_encoder_replicas, mixed.args.max_encoder_replicas) == (3, 4)


# -- the same models, dependencies and error handlers over HTTP, without Ray ---------------------------


@pytest.fixture
def client() -> Any:
    """A plain FastAPI app wired like the ingress: its error handlers, its models, its dependencies."""
    app = FastAPI()
    for exc_class, handler in api.exception_handlers.items():
        app.add_exception_handler(exc_class, handler)

    @app.post("/search", dependencies=AUTH)
    async def search(req: SearchRequest) -> dict[str, Any]:
        return {"text": req.text}

    @app.post("/search/image", dependencies=[*AUTH, Depends(require_multipart)])
    async def search_image(form: Annotated[ImageSearchForm, Form(media_type="multipart/form-data")]) -> Any:
        return {"bytes": len(await form.file.read()), "limit": form.limit, "filter": [f.field for f in form.filter]}

    configure(IngressSettings(collection="c", api_key="k"))
    try:
        yield TestClient(app, headers={"Authorization": "Bearer k"})
    finally:
        configure(IngressSettings(collection="c"))


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"text": "x"}}, 200, None),
        ({"content": b'{"text": "x",', "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
        ({"content": b"text=x", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"json": {"text": "x", "limt": 3}}, 422, "unknown_field"),
        ({"json": {"text": "x", "image": "aGk="}}, 422, "invalid_request"),
        ({"json": {"text": "x", "limit": 5, "coarse_limit": 4}}, 422, "invalid_request"),
        ({"content": b'{"text": "x\\ud800"}', "headers": {"content-type": "application/json"}}, 422, "invalid_request"),
        ({"json": {"text": "x"}, "headers": {"Authorization": "Bearer nope"}}, 401, "unauthorized"),
    ],
)
def test_json_route_errors(client: Any, kwargs: dict[str, Any], status: int, code: str | None) -> None:
    r = client.post("/search", **kwargs)
    if code is None:
        assert r.status_code == status, r.text
    else:
        assert_error(r, status, code)


FILE = {"file": ("q.png", b"\x89PNG not really", "image/png")}


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"files": FILE, "data": {"limit": "3", "filter": '[{"field": "key", "op": "==", "value": "a"}]'}}, 200, None),
        ({"files": FILE, "data": {"limt": "3"}}, 422, "unknown_field"),
        ({"files": FILE, "data": {"limit": "0"}}, 422, "invalid_request"),
        ({"files": FILE, "data": {"filter": "[{"}}, 400, "invalid_json"),
        ({"files": FILE, "data": {"filter": '[{"field": "key", "op": "~", "value": 1}]'}}, 422, "invalid_request"),
        ({"files": {"other": FILE["file"]}}, 422, None),
        ({"json": {"text": "x"}}, 415, "unsupported_media_type"),
        ({"files": FILE, "headers": {"Authorization": ""}}, 401, "unauthorized"),
    ],
)
def test_multipart_route_errors(client: Any, kwargs: dict[str, Any], status: int, code: str | None) -> None:
    r = client.post("/search/image", **kwargs)
    if status == 200:
        assert (r.status_code, r.json()) == (200, {"bytes": len(FILE["file"][1]), "limit": 3, "filter": ["key"]})
    else:
        assert_error(r, status, code)
    if status == 401:
        assert "basic" in r.headers["www-authenticate"].lower()
