"""The HTTP front door: a FastAPI app inside the ``Ingress`` deployment.

Routes (OpenAPI at ``/openapi.json``; Swagger UI at ``/docs`` and ReDoc at ``/redoc``, their scripts
served from the ``fastapi-offline`` package so they work offline). Every route but ``/healthz``
depends on :func:`require_api_key`; request bodies, the multipart form included, are parsed and
validated by FastAPI from the models in :mod:`serving.schemas`, which are also the OpenAPI schema:

* ``POST /search`` — JSON: a text or a base64 image, limits, structured filter, modality, and
  ``fusion_limit`` for the third stage (the fine top-M re-ranked by the ``FusionScorer``);
* ``POST /search/image`` — multipart: an image file plus the same options as form fields;
* ``POST /encode`` — a text or a base64 image -> its ``low`` and ``high`` vectors;
* ``POST /ingest`` — a small batch of records (base64 images and/or captions);
* ``GET /healthz`` — liveness and Milvus reachability (never needs the API key);
* ``GET /media/{id}`` — a thumbnail of an image row's file (only files the collection references);
* ``GET /`` — the web page; ``GET /static/{name}`` its assets; ``GET /stats`` encoder batch sizes.

Errors are JSON ``{"error": code, "message": ..., "details": ...}``: 400 malformed JSON or bad
base64 or values Milvus refuses, 401 API key, 404 unknown media, 413 too large, 415 not an image /
not JSON, 422 invalid fields and limits (``fusion_limit`` too, and when the model has no fusion
block), 502 any other Milvus error, 503 Milvus or a backend unavailable, the service's token
refused, or its collection gone, 504 a backend too slow. A client's input never produces a 500;
a 500 means a server fault (e.g. an encoder batch failing). Messages never carry the credentials
of a URI (:func:`redact`).
"""

# No `from __future__ import annotations`: Serve's class-based FastAPI view needs the route
# annotations (Request, the body models) as real objects, not strings.

import asyncio
import base64
import binascii
import hmac
import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from hivlp_milvus.errors import FilterError, HiVLPError
from serving import metrics
from serving.fusion import CANDIDATE_FIELDS

# ApiError and to_api_error are part of this module's API too (tests, callers import them from here).
from serving.http_errors import ApiError, redact, root_cause, to_api_error
from serving.images import BodyLimit, check_image_bytes, decode_base64_image, thumbnail
from serving.schemas import (
    EncodeRequest,
    EncodeResponse,
    ErrorResponse,
    HealthResponse,
    ImageSearchForm,
    IngestRequest,
    IngestResponse,
    SearchRequest,
    SearchResponse,
)

logger = logging.getLogger("ray.serve")

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Swagger UI / ReDoc files served by /docs-assets, from the fastapi-offline package.
DOCS_ASSETS = {
    name: resources.files("fastapi_offline").joinpath("static", name)
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")
}
FILTERABLE_FIELDS = ("key", "modality", "reference", "attributes")
_HEALTH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class IngressSettings:
    """What the ingress enforces; built by :func:`serving.app.build_app` from its args.

    Attributes:
        collection: the collection name (reported by /healthz).
        api_key: required as ``Authorization: Bearer <key>`` on every route but /healthz; ``None``
            disables it.
        max_image_bytes: largest encoded image accepted (413 above).
        max_image_pixels: largest ``width * height`` accepted (413 above).
        max_body_bytes: largest request body (413 above); base64 images need 4/3 of their size.
        media_root: directory that relative image references are resolved against.
        backend_timeout_s: how long a request waits for a backend deployment (an encoder, the
            Searcher, the FusionScorer) before it is a 504; long enough to ride out a replica's
            replacement, which Serve's router retries in-flight calls on.
    """

    collection: str
    api_key: str | None = None
    max_image_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_body_bytes: int = 12 * 1024 * 1024
    media_root: str = "."
    backend_timeout_s: float = 60.0


# -- the FastAPI app: module level, routes bound to the deployment class below ----------------------

api = FastAPI(
    title="hivlp-milvus",
    version="0.1.0",
    description=(
        "HiVLP coarse-to-fine image-text search on Milvus. Send `Authorization: Bearer <key>` when the "
        "server has an API key. Errors are `{error, message, details}`."
    ),
    # Own /docs and /openapi.json routes below, so they sit behind the API key like the rest.
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 413, 415, 422, 500, 502, 503, 504)}


@api.exception_handler(ApiError)
async def _api_error_handler(request: Request, exc: ApiError) -> JSONResponse:
    headers = None
    if exc.status == 401:
        # Basic lets a browser prompt for the key on the page; API clients use Bearer.
        headers = {"WWW-Authenticate": 'Basic realm="hivlp-milvus", charset="UTF-8"'}
    return exc.response(headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown routes (404) and wrong methods (405) answer in the same JSON shape as everything else.
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return ApiError(exc.status_code, code, str(exc.detail)).response(dict(exc.headers or {}) or None)


@api.exception_handler(RequestValidationError)
async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    types = {str(e.get("type")) for e in errors}
    if "json_invalid" in types:
        where = next((e for e in errors if e.get("type") == "json_invalid"), {})
        reason = (where.get("ctx") or {}).get("error", "parse error")
        return ApiError(400, "invalid_json", f"the request body is not valid JSON: {reason}").response()
    ctype = request.headers.get("content-type", "")
    if request.method == "POST" and ctype and not _is_json(ctype) and "model_attributes_type" in types:
        return ApiError(415, "unsupported_media_type", f"send Content-Type: application/json, not {ctype!r}").response()
    # No "input" (it can be a multi-megabyte base64 image) and no "ctx" (not always JSON).
    details = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
        for e in errors
    ]
    code = "unknown_field" if "extra_forbidden" in types else "invalid_request"
    message = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
    return ApiError(422, code, message or "invalid request", details).response()


def _is_json(content_type: str) -> bool:
    main = content_type.split(";")[0].strip().lower()
    return main == "application/json" or main.endswith("+json")


# Serve freezes a copy of `api` when the class is decorated and pickles the Ingress class by value,
# so neither `api.state` nor a global seen from Ingress methods reaches the middleware and the
# dependencies that serve requests. This module's own state does: they and configure() are imported
# (pickled by reference) in the replica. One Ingress replica per process, so one setting each.
_STATE: dict[str, Any] = {"body_bytes": 12 * 1024 * 1024, "api_key": None}


def configure(settings: IngressSettings) -> None:
    """Set the body limit and the API key of this process's ingress (called by ``Ingress.__init__``)."""
    _STATE["body_bytes"] = int(settings.max_body_bytes)
    _STATE["api_key"] = settings.api_key or None


# Declares the scheme in the OpenAPI document; the header itself is read by require_api_key, which
# also takes Basic (what a browser sends after the page's login prompt).
_BEARER = HTTPBearer(auto_error=False, description="the server's API key (when it has one)")


async def require_api_key(request: Request, _: Any = Security(_BEARER)) -> None:
    """The one authentication check: every route but ``/healthz`` depends on it.

    ``Authorization: Bearer <key>``, or ``Basic`` with any user name and the key as password; the
    comparison is timing-safe.

    Raises:
        ApiError: 401 without a key or with a wrong one (only when the server has a key).
    """
    key = _STATE["api_key"]
    if not key:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    given = ""
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            given = ""
    if not given:
        raise ApiError(401, "unauthorized", "this server needs an API key: send 'Authorization: Bearer <key>'")
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise ApiError(401, "unauthorized", "the API key is wrong")


AUTH = [Depends(require_api_key)]


async def require_multipart(request: Request) -> None:
    """415 for a body that is not ``multipart/form-data`` (FastAPI would report missing fields)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise ApiError(415, "unsupported_media_type", f"send multipart/form-data with a 'file' part, not {ctype!r}")


def body_limit() -> int:
    """The body limit of this process's ingress (a module function: pickled by reference, see _STATE)."""
    return int(_STATE["body_bytes"])


api.add_middleware(BodyLimit, limit=body_limit)


@serve.deployment(
    name="Ingress",
    # Many concurrent requests per replica, or the encoders never see full batches.
    max_ongoing_requests=128,
    ray_actor_options={"num_cpus": 0.25},
    max_constructor_retry_count=3,
)
@serve.ingress(api)
class Ingress:
    """Routes HTTP requests to the encoders (batched) and the searcher.

    Args:
        text_encoder: handle of the TextEncoder deployment.
        image_encoder: handle of the ImageEncoder deployment.
        searcher: handle of the Searcher deployment.
        settings: limits and the API key.
        fusion: handle of the FusionScorer deployment; ``None`` when the checkpoint has no fusion
            block (a search with ``fusion_limit`` is then a 422).
    """

    def __init__(
        self,
        text_encoder: DeploymentHandle,
        image_encoder: DeploymentHandle,
        searcher: DeploymentHandle,
        settings: IngressSettings,
        fusion: DeploymentHandle | None = None,
    ) -> None:
        self._text = text_encoder
        self._image = image_encoder
        self._searcher = searcher
        self._fusion = fusion
        self._settings = settings
        configure(settings)
        self._static = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else {}
        self._media_root = Path(settings.media_root)

    # -- helpers -----------------------------------------------------------------------------------

    async def _backend(self, call: Any) -> Any:
        try:
            return await asyncio.wait_for(call, timeout=self._settings.backend_timeout_s)
        except ApiError:
            raise
        except TimeoutError as exc:  # asyncio.wait_for's own timeout: say which limit ran out
            raise self._timeout() from exc
        except Exception as exc:
            raise to_api_error(exc) from exc

    def _timeout(self) -> ApiError:
        return ApiError(
            504,
            "timeout",
            f"a backend deployment did not answer in time ({self._settings.backend_timeout_s:g} s, the "
            "backend_timeout_s builder arg / HIVLP_BACKEND_TIMEOUT_S); retry, or raise it for slow backends",
        )

    async def _encode(self, kind: str, payload: Any) -> dict[str, Any]:
        handle = self._text if kind == "text" else self._image
        started = time.perf_counter()
        out = await self._backend(handle.encode.remote(payload))
        out["encode_ms"] = (time.perf_counter() - started) * 1000
        return out

    def _filter(self, conditions: list[Any]) -> tuple[str, dict[str, Any]]:
        from hivlp_milvus.filters import structured_filter

        try:
            return structured_filter([c.model_dump() for c in conditions], FILTERABLE_FIELDS)
        except FilterError as exc:
            raise ApiError(422, "invalid_filter", str(exc)) from exc

    async def _search(self, kind: str, payload: Any, req: SearchRequest | ImageSearchForm) -> dict[str, Any]:
        started = time.perf_counter()
        target = req.modality or ("image" if kind == "text" else "text")  # cross-modal by default
        expr, params = self._filter(req.filter)
        fusion_limit = req.fusion_limit
        if fusion_limit is not None and self._fusion is None:
            raise ApiError(
                422,
                "no_fusion_block",
                "fusion_limit needs a model with a fusion block, but this server's checkpoint has none; search "
                "without fusion_limit, or serve a checkpoint trained with a fusion block (config 'fusion')",
            )
        enc = await self._encode(kind, payload)
        t0 = time.perf_counter()
        res = await self._backend(
            self._searcher.search.remote(
                enc["low"],
                enc["high"],
                # The fine stage hands the fusion stage its top-M, as the library's three-stage search.
                limit=fusion_limit or req.limit,
                coarse_limit=req.coarse_limit,
                filter=expr,
                filter_params=params,
                modality=target,
            )
        )
        search_ms = (time.perf_counter() - t0) * 1000
        hits = [
            {
                "id": str(h["id"]),
                "key": str(h.get("key") or ""),
                "modality": str(h.get("modality") or ""),
                "reference": str(h.get("reference") or ""),
                "score": h["score"],
                "coarse_score": h.get("coarse_score"),
                "attributes": h.get("attributes") or {},
                "media_url": self._media_url(h),
            }
            for h in res["hits"]
        ]
        timings = res.get("timings") or {}
        fusion_timings: dict[str, Any] = {}
        if fusion_limit is not None:
            hits, fusion_timings = await self._fuse(kind, payload, res["hits"], hits, req.limit)
        return {
            "query": kind,
            "modality": target,
            "filter": expr,
            # What ran: one exact search or the funnel (the library's plan choice), then fusion if asked.
            "plan": f"{res['plan']}+fusion" if fusion_limit is not None else res["plan"],
            "coarse_limit": res.get("coarse_limit"),
            "hits": hits,
            "timings": {
                "encode_ms": round(enc["encode_ms"], 3),
                "coarse_ms": round(1000 * float(timings.get("coarse_s", 0.0)), 3),
                "fine_ms": round(1000 * float(timings.get("fine_s", 0.0)), 3),
                "search_ms": round(search_ms, 3),
                "total_ms": round((time.perf_counter() - started) * 1000, 3),
                "batch_size": int(enc["batch_size"]),
                **fusion_timings,
            },
        }

    async def _fuse(
        self, kind: str, payload: Any, rows: list[dict[str, Any]], hits: list[dict[str, Any]], limit: int
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The fine top-M (``rows`` from the searcher, ``hits`` as answered) re-ranked by the FusionScorer."""
        candidates = [{f: row.get(f) for f in CANDIDATE_FIELDS} for row in rows]
        t0 = time.perf_counter()
        out = await self._backend(
            self._fusion.score.remote({"query": payload, "kind": kind, "limit": limit, "candidates": candidates})
        )
        seconds = time.perf_counter() - t0
        metrics.observe_stage("fusion", seconds)
        fused = [
            {**hits[r["index"]], "fusion_score": r["fusion_score"], "fusion_error": r["fusion_error"]}
            for r in out["ranked"]
        ]
        return fused, {"fusion_ms": round(1000 * seconds, 3), "fusion_batch_size": int(out["batch_size"])}

    @staticmethod
    def _media_url(hit: dict[str, Any]) -> str | None:
        reference = str(hit.get("reference") or "")
        if hit.get("modality") != "image" or not reference:
            return None
        if reference.startswith(("http://", "https://")):
            return reference  # the browser fetches remote images itself
        if "://" in reference:
            return None  # s3:// and friends: nothing a browser can show
        return f"media/{hit['id']}"  # relative: works under any route prefix

    # -- routes ------------------------------------------------------------------------------------

    @api.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}}, tags=["ops"])
    async def healthz(self) -> Any:
        """Liveness plus a Milvus round trip. No API key needed (for load balancers and probes)."""
        try:
            info = await asyncio.wait_for(self._searcher.ping.remote(), timeout=_HEALTH_TIMEOUT_S)
        except Exception as exc:
            cause = root_cause(exc)
            message = redact(str(cause) if isinstance(cause, HiVLPError) else f"{type(cause).__name__}: {cause}")
            body = HealthResponse(status="unavailable", milvus=message[:500], collection=self._settings.collection)
            return JSONResponse(body.model_dump(), status_code=503)
        return HealthResponse(status="ok", milvus="ok", collection=info["collection"], count=info.get("count"))

    @api.post("/search", response_model=SearchResponse, responses=_ERRORS, tags=["search"], dependencies=AUTH)
    async def search(self, req: SearchRequest) -> Any:
        """Search with a text or a base64 image; ``filter`` is a list of ``{field, op, value}``."""
        kind = "text" if req.text is not None else "image"
        payload = req.text if kind == "text" else decode_base64_image(req.image or "", self._settings)
        return await self._search(kind, payload, req)

    @api.post(
        "/search/image",
        response_model=SearchResponse,
        responses=_ERRORS,
        tags=["search"],
        dependencies=[*AUTH, Depends(require_multipart)],
    )
    async def search_image(self, form: Annotated[ImageSearchForm, Form(media_type="multipart/form-data")]) -> Any:
        """Search with an uploaded image (multipart/form-data: ``file`` plus optional fields)."""
        payload = check_image_bytes(await form.file.read(), self._settings)
        return await self._search("image", payload, form)

    @api.post("/encode", response_model=EncodeResponse, responses=_ERRORS, tags=["encode"], dependencies=AUTH)
    async def encode(self, req: EncodeRequest) -> Any:
        """Embed a text or a base64 image; returns both levels (L2-normalised)."""
        kind = "text" if req.text is not None else "image"
        payload = req.text if kind == "text" else decode_base64_image(req.image or "", self._settings)
        out = await self._encode(kind, payload)
        low, high = out["low"], out["high"]
        return {
            "modality": kind,
            "low": [float(x) for x in low],
            "high": [float(x) for x in high],
            "low_dim": len(low),
            "high_dim": len(high),
            "batch_size": int(out["batch_size"]),
            "encode_ms": round(out["encode_ms"], 3),
        }

    @api.post("/ingest", response_model=IngestResponse, responses=_ERRORS, tags=["ingest"], dependencies=AUTH)
    async def ingest(self, req: IngestRequest) -> Any:
        """Encode and upsert a small batch of records. Bad records are reported, the rest written."""
        from hivlp_milvus.data.record import EmbeddingRecord, Record, Skipped
        from hivlp_milvus.ingest.rows import record_items

        started = time.perf_counter()
        skipped: list[Skipped] = []
        items = []
        for rec in req.records:
            image = None
            if rec.image is not None:
                try:
                    image = decode_base64_image(rec.image, self._settings)
                except ApiError as exc:
                    skipped.append(Skipped(rec.key, exc.message))
                    if not rec.captions:
                        continue
            # The same items (keys, references, checks) as library ingest. Uploaded bytes are not
            # kept on the server: the image row has no file reference.
            record = Record(rec.key, image=image, captions=list(rec.captions), attributes=rec.attributes)
            items += record_items(record, skipped)
        calls = [(self._image if it.kind == "image" else self._text).encode.remote(it.payload) for it in items]
        # All at once, so the encoders batch them.
        outs = await asyncio.gather(
            *(asyncio.wait_for(c, self._settings.backend_timeout_s) for c in calls), return_exceptions=True
        )
        failed = [{"key": s.key, "reason": s.reason} for s in skipped]
        records = []
        for it, out in zip(items, outs, strict=True):
            if isinstance(out, BaseException):
                err = self._timeout() if isinstance(out, TimeoutError) else to_api_error(out)
                if err.status >= 500:  # a server fault fails the request; the client may retry it
                    raise err
                failed.append({"key": it.key, "reason": err.message})
                continue
            records.append(EmbeddingRecord(it.key, it.modality, out["low"], out["high"], it.reference, it.attributes))
        report: dict[str, Any] = {"inserted": 0, "updated": 0, "rows_written": 0, "failed": []}
        if records:
            report = await self._backend(self._searcher.ingest.remote(records))
        return {
            "collection": self._settings.collection,
            "inserted": report["inserted"],
            "updated": report["updated"],
            "rows_written": report["rows_written"],
            "failed": failed + list(report["failed"]),
            "seconds": round(time.perf_counter() - started, 4),
        }

    @api.get(
        "/media/{row_id}",
        responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}, **_ERRORS, 404: {"model": ErrorResponse}},
        tags=["search"],
        dependencies=AUTH,
    )
    async def media(self, row_id: str) -> Response:
        """A thumbnail of an image row's file. Only files referenced by the collection are served."""
        # isdigit() alone accepts '²' and other Unicode digits that int() refuses.
        if not (row_id.isascii() and row_id.isdigit()) or len(row_id) > 19:
            raise ApiError(404, "not_found", f"no image row {row_id!r} (ids are decimal integers)")
        row = await self._backend(self._searcher.reference.remote(int(row_id)))
        reference = str((row or {}).get("reference") or "")
        if not row or row.get("modality") != "image" or not reference or "://" in reference:
            raise ApiError(404, "not_found", f"row {row_id} is not an image row with a local file")
        path = Path(reference)
        if not path.is_absolute():
            path = self._media_root / path
        if not path.is_file():
            raise ApiError(404, "not_found", f"the file of row {row_id} is not on this server")
        try:
            data, media_type = await asyncio.to_thread(thumbnail, path)
        except Exception as exc:  # a referenced file that is not a readable image
            raise ApiError(404, "not_found", f"the file of row {row_id} is not a readable image") from exc
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    @api.get("/stats", tags=["ops"], responses=_ERRORS, dependencies=AUTH)
    async def stats(self) -> Any:
        """Batch statistics of one replica of each encoder (batch sizes seen, failures)."""
        text, image = await asyncio.gather(
            self._backend(self._text.stats.remote()), self._backend(self._image.stats.remote())
        )
        return {"text": text, "image": image}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False, dependencies=AUTH)
    async def index(self) -> Response:
        page = self._static.get("index.html")
        if page is None:
            raise ApiError(404, "not_found", "the web page is not installed (serving/static/index.html)")
        return HTMLResponse(page.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @api.get("/static/{name}", include_in_schema=False, dependencies=AUTH)
    async def static(self, name: str) -> Response:
        path = self._static.get(name)  # a fixed set of file names: no paths from the request
        if path is None:
            raise ApiError(404, "not_found", f"no static file {name!r}")
        media = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}
        return Response(path.read_bytes(), media_type=media.get(path.suffix, "application/octet-stream"))

    @api.get("/openapi.json", include_in_schema=False, dependencies=AUTH)
    async def openapi(self) -> Any:
        return JSONResponse(api.openapi())

    # The API pages load their scripts from a Python package (fastapi-offline ships Swagger UI and
    # ReDoc), not from a CDN: they work on a machine without internet access.

    @api.get("/docs", include_in_schema=False, dependencies=AUTH)
    async def docs(self) -> Response:
        """Swagger UI."""
        return get_swagger_ui_html(
            openapi_url="openapi.json",
            title="hivlp-milvus API",
            swagger_js_url="docs-assets/swagger-ui-bundle.js",
            swagger_css_url="docs-assets/swagger-ui.css",
            swagger_favicon_url="docs-assets/favicon.png",
        )

    @api.get("/redoc", include_in_schema=False, dependencies=AUTH)
    async def redoc(self) -> Response:
        """ReDoc."""
        return get_redoc_html(
            openapi_url="openapi.json",
            title="hivlp-milvus API",
            redoc_js_url="docs-assets/redoc.standalone.js",
            redoc_favicon_url="docs-assets/favicon.png",
            with_google_fonts=False,
        )

    @api.get("/docs-assets/{name}", include_in_schema=False, dependencies=AUTH)
    async def docs_assets(self, name: str) -> Response:
        asset = DOCS_ASSETS.get(name)  # a fixed set of names: no paths from the request
        if asset is None:
            raise ApiError(404, "not_found", f"no API page asset {name!r}")
        media = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}
        return Response(asset.read_bytes(), media_type=media.get(Path(name).suffix, "application/octet-stream"))
