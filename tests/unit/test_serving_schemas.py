"""The serving app's pure parts, without Ray: request models, error mapping, uploads, builder args.

Everything that decides a status code or a default is here, fast; tests/ray/test_serving.py checks
the same behaviour end to end over HTTP.
"""

from __future__ import annotations

import base64
import inspect
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from ray.exceptions import RayTaskError
from serving_helpers import png

from hivlp_milvus.content import ContentOptions
from hivlp_milvus.errors import BadRecordError
from serving import AppArgs, build_app, resolve_args
from serving.encoders import ImageEncoder, ImageTooLargeError, TextEncoder, check_image_header
from serving.images import check_image_bytes, decode_base64_image
from serving.ingress import ApiError, IngressSettings, api, to_api_error
from serving.schemas import (
    MAX_INGEST_RECORDS,
    MAX_LIMIT,
    EncodeRequest,
    ImageSearchForm,
    IngestRequest,
    SearchRequest,
)

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = IngressSettings(collection="c", max_image_bytes=50_000, max_image_pixels=250_000)


# -- request models ------------------------------------------------------------------------------


def test_search_request_defaults_and_bounds() -> None:
    req = SearchRequest.model_validate({"text": "a red circle"})
    assert (req.limit, req.coarse_limit, req.filter, req.modality) == (10, None, [], None)
    assert SearchRequest.model_validate({"image": "aGk=", "limit": MAX_LIMIT}).limit == MAX_LIMIT


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (SearchRequest, {"text": "x", "limit": 0}),
        (SearchRequest, {"text": "x", "limit": MAX_LIMIT + 1}),
        (SearchRequest, {"text": "x", "limit": 5, "coarse_limit": 4}),
        (SearchRequest, {"text": "x", "coarse_limit": 16385}),
        (SearchRequest, {"text": "x", "image": "aGk="}),
        (SearchRequest, {"limit": 3}),
        (SearchRequest, {"text": ""}),
        (SearchRequest, {"text": "x" * 1001}),
        (SearchRequest, {"text": "x", "modality": "video"}),
        # Filter conditions are typed.
        (SearchRequest, {"text": "x", "filter": [{"field": "key", "op": "=~", "value": "a"}]}),
        (SearchRequest, {"text": "x", "filter": [{"field": "key", "op": "==", "value": {"nested": 1}}]}),
        (SearchRequest, {"text": "x", "filter": [{"field": "", "op": "==", "value": 1}]}),
        (SearchRequest, {"text": "x", "filter": [{"field": "key", "op": "=="}]}),
        (IngestRequest, {"records": []}),
        (IngestRequest, {"records": [{"key": "k"}]}),  # neither image nor captions
        (IngestRequest, {"records": [{"key": "", "captions": ["c"]}]}),
        (IngestRequest, {"records": [{"key": "k", "captions": ["  "]}]}),
        (IngestRequest, {"records": [{"key": f"k{i}", "captions": ["c"]} for i in range(MAX_INGEST_RECORDS + 1)]}),
    ],
)
def test_requests_out_of_bounds_are_rejected(model: Any, body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(body)


def test_unknown_fields_are_rejected_everywhere() -> None:
    for model, body in (
        (SearchRequest, {"text": "x", "limt": 3}),
        (SearchRequest, {"text": "x", "filter": [{"field": "key", "op": "==", "value": 1, "extra": 0}]}),
        (EncodeRequest, {"text": "x", "normalize": True}),
        (ImageSearchForm, {"file": None, "limt": 3}),
        (IngestRequest, {"records": [{"key": "k", "captions": ["c"], "uri": "/etc/passwd"}]}),
    ):
        with pytest.raises(ValidationError) as info:
            model.model_validate(body)
        assert "extra_forbidden" in {e["type"] for e in info.value.errors()}


def test_filter_conditions_are_typed() -> None:
    ok = SearchRequest.model_validate(
        {
            "text": "x",
            "filter": [
                {"field": "attributes.n", "op": "in", "value": [1, 2]},
                {"field": "key", "op": "not in", "value": ["a"]},
            ],
        }
    )
    assert ok.filter[0].value == [1, 2]
    flag = SearchRequest.model_validate({"text": "x", "filter": [{"field": "attributes.f", "op": "==", "value": True}]})
    assert flag.filter[0].value is True  # stays a bool, not the integer 1


def test_ingest_request_limits() -> None:
    assert IngestRequest.model_validate({"records": [{"key": "k", "captions": ["a cat"]}]}).records[0].attributes == {}


# -- error mapping -------------------------------------------------------------------------------


# The HiVLPError family, also raised in another replica, is tests/unit/test_serving_errors.py's TABLE;
# these are the exceptions outside it.
@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (RuntimeError("boom"), 500, "internal_error"),
        (RayTaskError("encode", "tb", RuntimeError("cuda")), 500, "internal_error"),
        (TimeoutError(), 504, "timeout"),
        (ApiError(418, "teapot", "short and stout"), 418, "teapot"),
    ],
)
def test_exceptions_map_to_statuses(exc: BaseException, status: int, code: str) -> None:
    err = to_api_error(exc)
    assert (err.status, err.code) == (status, code)
    assert err.message


# -- images and uploads --------------------------------------------------------------------------


def test_base64_images_are_checked_before_any_encoder_sees_them() -> None:
    png32 = png((32, 32))
    assert decode_base64_image(base64.b64encode(png32).decode(), SETTINGS) == png32
    data_url = "data:image/png;base64," + base64.b64encode(png32).decode()
    assert decode_base64_image(data_url, SETTINGS) == png32
    cases = [
        ("!!!", 400, "invalid_base64"),
        (base64.b64encode(b"hello, not an image").decode(), 415, "undecodable_image"),
        (base64.b64encode(b"\0" * 60_000).decode(), 413, "image_too_large"),
        (base64.b64encode(png((600, 600))).decode(), 413, "image_too_large"),  # small file, many pixels
    ]
    for data, status, code in cases:
        with pytest.raises(ApiError) as info:
            decode_base64_image(data, SETTINGS)
        assert (info.value.status, info.value.code) == (status, code), info.value.message
    with pytest.raises(ApiError) as info:
        check_image_bytes(b"", SETTINGS)
    assert info.value.status == 415


def test_image_header_check() -> None:
    assert check_image_header(png((20, 10)), 1000) == ("PNG", 20, 10)
    assert ImageEncoder.func_or_class._prepare(None, png((32, 32))).size == (32, 32)  # and the encoder's check
    with pytest.raises(ImageTooLargeError):
        check_image_header(png((40, 40)), 1000)
    with pytest.raises(BadRecordError):
        check_image_header(b"GIF89a nope", 1000)


@pytest.mark.parametrize(
    ("encoder", "item"),
    [(ImageEncoder, b"\x89PNG\r\n\x1a\n" + b"\0" * 40), (ImageEncoder, "not bytes"), (TextEncoder, "   ")],
    ids=["broken-png", "not-bytes", "blank-text"],
)
def test_encoders_reject_bad_items_one_by_one(encoder: Any, item: Any) -> None:
    # _prepare runs per item before the forward pass; it needs no model.
    with pytest.raises(BadRecordError):
        encoder.func_or_class._prepare(None, item)


# -- builder -------------------------------------------------------------------------------------


def test_resolve_args_precedence_and_paths(tmp_path: Path) -> None:
    """One precedence for every arg: the builder arg, then its ``HIVLP_*`` variable, then the default."""
    env = {"HIVLP_CHECKPOINT": "/models/m", "HIVLP_COLLECTION": "from_env", "HIVLP_API_KEY": "k1"}
    env |= {"HIVLP_MAX_BATCH_SIZE": "8", "HIVLP_NUM_GPUS": "0.5"}
    r = resolve_args(AppArgs(collection="from_arg"), environ=env, cwd=str(tmp_path))
    assert r.checkpoint == "/models/m"
    assert r.collection == "from_arg"  # an explicit arg wins over the environment
    assert r.api_key == "k1"
    assert (r.args.max_batch_size, r.args.num_gpus) == (8, 0.5)  # typed as the args are
    assert r.milvus_uri == str(tmp_path / "hivlp_work" / "hivlp.db")  # quickstart default, made absolute
    assert r.lite
    assert r.workdir == str(tmp_path)
    default = resolve_args(AppArgs(), environ={"HIVLP_COLLECTION": ""}, cwd=str(tmp_path))  # empty = unset
    assert default.checkpoint == str(tmp_path / "hivlp_work" / "model")
    assert (default.collection, default.api_key, default.milvus_token) == ("quickstart", None, None)
    assert (default.args.max_batch_size, default.args.num_gpus) == (32, None)
    server = resolve_args(AppArgs(milvus_uri="http://milvus:19530"), environ={"HIVLP_MILVUS_TOKEN": "root:Milvus"})
    assert (server.milvus_uri, server.milvus_token, server.lite) == ("http://milvus:19530", "root:Milvus", False)


def test_builder_signature_and_args() -> None:
    # Serve turns `key=value` into the annotated pydantic model only if the annotation is a class.
    params = inspect.signature(build_app).parameters
    assert len(params) == 1
    assert next(iter(params.values())).annotation is AppArgs
    # Nothing is opened while building: the graph carries the validated args to each deployment.
    ingress = build_app({"checkpoint": "/nowhere", "max_batch_size": "8"})._bound_deployment
    text, image, searcher = (a._bound_deployment for a in ingress.init_args[:3])
    names = (ingress.name, text.name, image.name, searcher.name)
    assert names == ("Ingress", "TextEncoder", "ImageEncoder", "Searcher")
    assert text.init_args[:2] == image.init_args[:2] == ("/nowhere", 8)  # "8" validated into an int
    assert searcher.init_args[0] == "/nowhere"
    with pytest.raises(ValidationError):
        build_app({"chekpoint": "/typo"})
    with pytest.raises(ValidationError):
        AppArgs(max_batch_size=0)


def test_ingress_replicas_and_backend_timeout_reach_the_ingress(tmp_path: Path) -> None:
    default = build_app({"checkpoint": "/nowhere"})._bound_deployment
    assert default.num_replicas == 1
    assert default.init_args[3].backend_timeout_s == 60.0
    given = build_app({"checkpoint": "/nowhere", "ingress_replicas": "2", "backend_timeout_s": "7.5"})._bound_deployment
    assert given.num_replicas == 2
    assert given.init_args[3].backend_timeout_s == 7.5
    # The environment is the fallback, as for every arg.
    env = {"HIVLP_INGRESS_REPLICAS": "3", "HIVLP_BACKEND_TIMEOUT_S": "90"}
    resolved = resolve_args(AppArgs(), environ=env, cwd=str(tmp_path)).args
    assert (resolved.ingress_replicas, resolved.backend_timeout_s) == (3, 90.0)


def test_a_backend_slower_than_backend_timeout_s_is_a_504() -> None:
    import asyncio
    import time

    from serving.ingress import Ingress, configure
    from serving.inprocess import plain_class

    ingress = plain_class(Ingress)(None, None, None, IngressSettings(collection="c", backend_timeout_s=0.2))
    try:
        started = time.monotonic()
        with pytest.raises(ApiError) as info:
            asyncio.run(ingress._backend(asyncio.sleep(30)))
        assert (info.value.status, info.value.code) == (504, "timeout")
        assert time.monotonic() - started < 5  # the setting, not the 60 s default
    finally:
        configure(IngressSettings(collection="c"))  # the module's state as at import


@pytest.mark.parametrize(
    ("field", "value"),
    [("ingress_replicas", v) for v in (0, "two", 1.5)] + [("backend_timeout_s", v) for v in (0, -1, "soon")],
)
def test_ingress_replicas_and_backend_timeout_reject_bad_values(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        build_app({"checkpoint": "/nowhere", field: value})
    assert [e["loc"] for e in info.value.errors()] == [(field,)]  # the message names the arg
    with pytest.raises(ValidationError, match=field):  # a bad environment variable too
        resolve_args(AppArgs(), environ={f"HIVLP_{field.upper()}": str(value)})


def test_the_fusion_scorer_is_built_only_for_a_checkpoint_with_a_fusion_block(tmp_path: Path) -> None:
    plain, fused = tmp_path / "plain", tmp_path / "fused"
    for path, config in ((plain, {"low_dim": 16}), (fused, {"low_dim": 16, "fusion": {"layers": 1}})):
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))
    # No checkpoint, or one without a fusion block: no FusionScorer (fusion_limit is then a 422).
    for checkpoint in ("/nowhere", str(plain)):
        assert build_app({"checkpoint": checkpoint})._bound_deployment.init_args[4] is None
    ingress = build_app({"checkpoint": str(fused), "allow_http": "true", "fusion_max_batch_size": "4"})
    scorer = ingress._bound_deployment.init_args[4]._bound_deployment
    assert scorer.name == "FusionScorer"
    checkpoint, max_batch, _, content, media_root, use_gpu = scorer.init_args
    assert (checkpoint, max_batch, use_gpu) == (str(fused), 4, False)  # the CPU unless fusion_num_gpus
    assert content.allow_http is True  # http(s) references only when the app is started with it
    assert Path(media_root).is_absolute()  # relative references resolve as /media resolves them
    default = build_app({"checkpoint": str(fused), "num_gpus": "1"})._bound_deployment.init_args[4]._bound_deployment
    assert default.init_args[3] == ContentOptions(allow_http=False)
    assert "num_gpus" not in default.ray_actor_options  # encoders' GPUs do not make the scorer take one
    on_gpu = build_app({"checkpoint": str(fused), "fusion_num_gpus": "0.25"})._bound_deployment.init_args[4]
    assert on_gpu._bound_deployment.ray_actor_options["num_gpus"] == 0.25
    assert on_gpu._bound_deployment.init_args[5] is True


def test_package_exposes_a_built_app() -> None:
    from ray.serve import Application

    import serving

    assert isinstance(serving.app, Application)


def test_serve_config_args_are_builder_args_and_leave_deployment_values_to_the_environment() -> None:
    """The compose and KubeRay files set HIVLP_COLLECTION: serving/config.yaml must not hide it."""
    config = yaml.safe_load((ROOT / "serving" / "config.yaml").read_text(encoding="utf-8"))
    contract = {"checkpoint", "milvus_uri", "milvus_token", "collection", "api_key", "max_batch_size",
                "batch_wait_timeout_s", "num_gpus"}  # fmt: skip
    assert contract <= set(AppArgs.model_fields)
    for app in config["applications"]:
        args = app.get("args") or {}
        assert not {"checkpoint", "milvus_uri", "milvus_token", "collection", "api_key"} & set(args), args
        resolved = resolve_args(AppArgs.model_validate(args), environ={"HIVLP_COLLECTION": "hivlp"})
        assert resolved.collection == "hivlp"


def test_openapi_documents_the_json_bodies() -> None:
    spec = api.openapi()
    for path, model in (("/search", "SearchRequest"), ("/encode", "EncodeRequest"), ("/ingest", "IngestRequest")):
        op = spec["paths"][path]["post"]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith(f"/{model}")
        # A string annotation would turn the body and the request into query parameters.
        assert not op.get("parameters"), op.get("parameters")
    assert "/healthz" in spec["paths"]


def test_web_page_is_self_contained() -> None:
    static = ROOT / "serving" / "static"
    page = (static / "index.html").read_text(encoding="utf-8")
    for asset in ("static/app.js", "static/style.css"):
        assert asset in page
        assert (static / asset.split("/")[1]).is_file()
    for name in ("index.html", "app.js", "style.css"):
        text = (static / name).read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), f"{name} loads something from the network"


# The page's fetchRetrying, run by Node against scripted answers (the page's DOM stubbed: only the
# retry rule is under test; tests/e2e/test_web_page.py drives the real page in a browser).
_RETRY_SCRIPT = r"""
const fs = require("fs"), vm = require("vm");
const element = { addEventListener() {}, value: "", dataset: {}, files: [] };
Object.assign(globalThis, {
  document: { getElementById: () => element, addEventListener() {}, body: { dataset: {} } },
  location: { search: "" },
  history: { replaceState() {} },
});
vm.runInThisContext(fs.readFileSync(process.argv[2], "utf8"));
const plain = (status) => new Response("Internal Server Error", { status, headers: { "content-type": "text/plain" } });
const ours = (status) => new Response(JSON.stringify({ error: "internal_error", message: "m" }), {
  status, headers: { "content-type": "application/json" } });
const cases = {
  plain500_then_ok: [() => plain(500), () => new Response("{}", { status: 200 })],
  plain503_then_ok: [() => plain(503), () => new Response("{}", { status: 200 })],
  reset_then_ok: [() => { throw new TypeError("fetch failed"); }, () => new Response("{}", { status: 200 })],
  json500_is_final: [() => ours(500), () => new Response("{}", { status: 200 })],
  json504_is_final: [() => ours(504), () => new Response("{}", { status: 200 })],
  plain404_is_final: [() => plain(404), () => new Response("{}", { status: 200 })],
  retried_once_only: [() => plain(500), () => plain(500), () => new Response("{}", { status: 200 })],
};
(async () => {
  const out = {};
  for (const [name, answers] of Object.entries(cases)) {
    let calls = 0;
    globalThis.fetch = async () => answers[calls++]();
    let status;
    try { status = (await fetchRetrying("search", {}, 1)).status; } catch (err) { status = String(err); }
    out[name] = [status, calls];
  }
  console.log(JSON.stringify(out));
})();
"""


def test_the_web_page_retries_once_what_died_with_an_ingress_replica(tmp_path: Path) -> None:
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("needs Node.js to run serving/static/app.js")
    script = tmp_path / "retry.js"
    script.write_text(_RETRY_SCRIPT, encoding="utf-8")
    run = subprocess.run(
        [node, str(script), str(ROOT / "serving" / "static" / "app.js")], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    got = {name: tuple(v) for name, v in json.loads(run.stdout).items()}
    assert got == {
        "plain500_then_ok": (200, 2),  # Serve's proxy for a dead ingress: sent again, answered
        "plain503_then_ok": (200, 2),
        "reset_then_ok": (200, 2),  # a dropped connection
        "json500_is_final": (500, 1),  # the app's own errors are never retried
        "json504_is_final": (504, 1),
        "plain404_is_final": (404, 1),
        "retried_once_only": (500, 2),
    }


# -- base64 images: the schema's pattern is the ingress's rule ------------------------------------


def test_base64_pattern_in_the_schema_is_what_the_ingress_decodes() -> None:
    """Found by the fuzzer (tests/unit/test_fuzz_http.py): the schema said "any string" and the app
    answered 400 to most. Every short string over a telling alphabet: pattern match == decoded."""
    import itertools

    import jsonschema

    from serving.schemas import BASE64_PATTERN

    schema = {**api.openapi()["components"]["schemas"]["SearchRequest"]["properties"]["image"]}
    assert schema["pattern"] == BASE64_PATTERN
    validator = jsonschema.Draft202012Validator({"type": "string", "pattern": BASE64_PATTERN})
    settings = IngressSettings(collection="c")

    def decodes(text: str) -> bool:
        try:
            decode_base64_image(text, settings)
        except ApiError as exc:
            return exc.status != 400  # 415: base64 that is not an image; 400: not base64
        return True

    for n in range(7):  # 55,987 strings
        for chars in itertools.product("aG/=\n ", repeat=n):
            text = "".join(chars)
            assert validator.is_valid(text) == decodes(text), repr(text)
    for text in ("data:image/png;base64,aGk=", "DATA:x;BASE64,\n aG k=", "data:;base64,", "aGk==", "a\u00a0Gk="):
        assert validator.is_valid(text) == decodes(text), repr(text)
