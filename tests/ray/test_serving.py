"""Ray Serve, for real: the app of serving/ over HTTP, the micro model, a Milvus Lite .db, no mocks.

One module fixture builds quickstart-sized artefacts (100 synthetic scenes written as PNG files,
a micro model with a fusion block saved with ``save_pretrained``, 600 rows ingested into a Lite
``.db``) and runs three Serve applications on the session's Ray cluster (``tests/conftest.py``):

* ``hivlp`` at ``/`` — exactly ``serving.build_app(...)`` with an API key and small size limits;
* ``extra`` at ``/extra`` — the same ``Ingress`` wired to a text encoder whose forward pass fails
  for any batch holding :data:`POISON` (test-specific code: a subclass overriding ``_embed``,
  whose batch size and wait a test can set) and a ``Searcher`` pointed at a Milvus that does not
  exist, with credentials in its URI. It shows what a batch-level fault and an
  unreachable Milvus look like to clients.
* ``outage`` at ``/outage`` — the real ``Ingress``, ``TextEncoder`` and ``Searcher`` on a
  ``milvus-lite server`` subprocess (``tests/milvus_server.py``) that the tests pause (SIGSTOP),
  stop, restart on the same data and port, and drop the collection of. Its ingress's
  ``backend_timeout_s`` is :data:`OUTAGE_TIMEOUT_S`, not 60 s.

The untrained micro model cannot match a caption to its image, so relevance is checked where it
is exact: a caption finds itself among the text rows, an image finds itself among the images.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serving_helpers import assert_error, png, wait_until

pytestmark = [pytest.mark.ray]

API_KEY = "test-key-3f9a"
COLLECTION = "serve_test"
N_RECORDS = 100
MAX_IMAGE_BYTES = 200_000
MAX_IMAGE_PIXELS = 1_000_000
POISON = "<<this batch fails>>"
TIMEOUT = httpx.Timeout(60.0)
#: The password in the Milvus URIs of the extra and outage apps: it must never reach a client.
SECRET = "pw-3c9f-never-echoed"
OUTAGE_COLLECTION = "outage_test"
OUTAGE_TIMEOUT_S = 5.0  # the outage app's backend timeout (the real default is 60 s)
EVENT_DEADLINE_S = 120.0  # generous: waits below end on an event, this only bounds a hang


@dataclass
class Served:
    """What the tests need: the base URL, the local copy of the model, the ingested records."""

    url: str
    model: Any
    records: list[Any]
    faulty: Any  # DeploymentHandle of the faulty text encoder
    milvus: Any  # the LiteServer behind /outage
    outage_ids: dict[str, int]  # key -> row id of the special rows of the outage collection

    def client(self, key: str | None = API_KEY, app: str = "") -> httpx.Client:
        """A client of the ``hivlp`` app, or of the ``/extra`` or ``/outage`` app (no API key) by its prefix."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url + app, headers=headers, timeout=TIMEOUT)


def _outage_collection(tmp: Path, uri: str, model: Any, records: list[Any]) -> dict[str, int]:
    """Four records' rows plus image rows whose references are not servable local files."""
    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.data import EmbeddingRecord
    from hivlp_milvus.ids import row_id
    from hivlp_milvus.ingest import ingest

    col = HierarchicalCollection.create(OUTAGE_COLLECTION, uri=uri, model=model)
    assert not ingest(records[:4], collection=col, model=model, progress=False).failed
    vec = model.embed_images([records[0].image])
    special = {
        "missing": str(tmp / "no-such-dir" / "missing.png"),
        "remote": "https://example.com/hivlp/cat.png",
        "bucket": "s3://hivlp-bucket/cat.png",
        "relative": str(Path(records[1].image).relative_to(tmp)),  # resolved against media_root
    }
    rows = [EmbeddingRecord(key, "image", vec.low[0], vec.high[0], reference=ref) for key, ref in special.items()]
    assert not ingest(rows, collection=col, progress=False).failed
    col.client.close()
    return {key: row_id(key, "image") for key in special}


def _faulty_text_encoder_class() -> type:
    """The real TextEncoder with a forward pass that fails for batches containing POISON."""
    from serving.encoders import TextEncoder

    class FaultyTextEncoder(TextEncoder.func_or_class):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.batch_log: list[list[str]] = []

        def _embed(self, prepared: list[str]) -> tuple[Any, Any]:
            self.batch_log.append(list(prepared))
            if POISON in prepared:
                raise RuntimeError("injected fault: the forward pass of this batch failed")
            return super()._embed(prepared)

        def batches(self) -> list[list[str]]:
            return self.batch_log

        def configure_batching(self, max_batch_size: int, batch_wait_timeout_s: float) -> None:
            # Serve reads both when a batch's first caller arrives.
            self.encode_batch.set_max_batch_size(max_batch_size)
            self.encode_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    return FaultyTextEncoder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, ray_session: None, serve_collection: Callable) -> Iterator[Served]:
    from milvus_server import LiteServer, free_port
    from model_helpers import micro_fusion_config
    from ray import cloudpickle, serve

    from hivlp_milvus.data import load_source, synthetic
    from hivlp_milvus.model import HiVLP
    from serving import AppArgs, build_app
    from serving.encoders import TextEncoder
    from serving.ingress import Ingress, IngressSettings
    from serving.searcher import Searcher

    tmp = tmp_path_factory.mktemp("serving")
    t0 = time.monotonic()
    # Images as files, so image rows reference paths and /media can serve thumbnails.
    synthetic.write_splits(tmp / "data", {"test": N_RECORDS}, seed=11, progress=False)
    records = list(load_source(tmp / "data" / "test"))
    # With a fusion block: the app builds its FusionScorer (the third stage) for this checkpoint.
    cfg = micro_fusion_config()
    db = str(tmp / "hivlp.db")
    model, report = serve_collection(tmp, records, COLLECTION, db, config=cfg)
    assert report.rows_written == N_RECORDS * 6, str(report)
    (tmp / "milvus-server").mkdir()
    lite = LiteServer(str(tmp / "milvus-server"))

    print(f"\n[serving fixture] artefacts {time.monotonic() - t0:.1f}s", file=sys.stderr)
    # The faulty encoder subclass lives in this module, which Ray workers cannot import by name.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    port = free_port()  # not 8000: another Serve on this machine must not be hit by mistake
    try:
        lite.start()
        outage_uri = f"http://hivlp:{SECRET}@127.0.0.1:{lite.port}"
        outage_ids = _outage_collection(tmp, outage_uri, model, records)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = AppArgs(
            checkpoint=str(tmp / "model"),
            milvus_uri=db,
            collection=COLLECTION,
            api_key=API_KEY,
            max_batch_size=32,
            batch_wait_timeout_s=0.05,
            max_encoder_replicas=1,
            max_image_bytes=MAX_IMAGE_BYTES,
            max_image_pixels=MAX_IMAGE_PIXELS,
        )
        # The extra app reserves no CPU, so both apps fit the two logical CPUs; its one text encoder
        # also stands in for the image encoder (only texts are sent there).
        none = {"ray_actor_options": {"num_cpus": 0}}
        faulty = serve.deployment(_faulty_text_encoder_class(), name="FaultyTextEncoder", max_ongoing_requests=64)
        faulty_app = faulty.options(**none).bind(str(tmp / "model"), 32, 0.25, False)
        unreachable = f"http://hivlp:{SECRET}@127.0.0.1:{free_port()}"  # nothing listens there
        searcher = Searcher.options(name="UnreachableSearcher", **none).bind(str(tmp / "model"), unreachable, "nope")
        extra = Ingress.options(**none).bind(faulty_app, faulty_app, searcher, IngressSettings(collection="nope"))
        # The outage app's one text encoder also stands in for the image encoder.
        outage_text = TextEncoder.options(name="OutageTextEncoder", **none).bind(str(tmp / "model"), 32, 0.01, False)
        outage_searcher = Searcher.options(name="OutageSearcher", **none).bind(
            str(tmp / "model"), outage_uri, OUTAGE_COLLECTION
        )
        # backend_timeout_s (a builder arg) short, so a paused Milvus is a 504 within the test's patience.
        settings = IngressSettings(
            collection=OUTAGE_COLLECTION, media_root=str(tmp), backend_timeout_s=OUTAGE_TIMEOUT_S
        )
        outage = Ingress.options(name="OutageIngress", **none).bind(outage_text, outage_text, outage_searcher, settings)
        # The apps start together: replica start-up dominates the fixture's time.
        serve.run_many(
            [
                serve.RunTarget(build_app(args), name="hivlp", route_prefix="/"),
                serve.RunTarget(extra, name="extra", route_prefix="/extra"),
                serve.RunTarget(outage, name="outage", route_prefix="/outage"),
            ]
        )
        faulty_handle = serve.get_deployment_handle("FaultyTextEncoder", app_name="extra")
        print(f"[serving fixture] apps {time.monotonic() - t0:.1f}s", file=sys.stderr)
        yield Served(
            url=f"http://127.0.0.1:{port}",
            model=HiVLP.from_pretrained(tmp / "model"),
            records=records,
            faulty=faulty_handle,
            milvus=lite,
            outage_ids=outage_ids,
        )
    finally:
        serve.shutdown()  # Ray itself belongs to the session (tests/conftest.py)
        lite.stop()


# -- helpers -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _assert_encoded(body: dict[str, Any], local: Any, row: int, what: str = "") -> None:
    """An /encode answer is row ``row`` of the local model's ``local`` embedding: both vectors and their dimensions."""
    assert (body["low_dim"], body["high_dim"]) == (local.low.shape[1], local.high.shape[1]), what
    # assert_allclose also fails on a shape mismatch: the vectors have the model's dimensions.
    np.testing.assert_allclose(body["low"], local.low[row], atol=1e-4, err_msg=what)
    np.testing.assert_allclose(body["high"], local.high[row], atol=1e-4, err_msg=what)


def _unique_record(served: Served) -> Any:
    """A record whose scene (hence image) is not repeated in the data set."""
    groups = Counter(r.relevance_group for r in served.records)
    return next(r for r in served.records if groups[r.relevance_group] == 1)


# -- health and auth -----------------------------------------------------------------------------


def test_healthz_needs_no_key_and_reports_milvus(served: Served) -> None:
    r = served.client(key=None).get("/healthz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    assert body["milvus"] == "ok"
    assert body["collection"] == COLLECTION
    assert body["count"] >= N_RECORDS * 6


def test_a_good_api_key_is_accepted_as_bearer_or_basic(served: Served) -> None:
    """Missing or wrong keys are in the error table (``_error_cases``); these two get through."""
    basic = base64.b64encode(f"me:{API_KEY}".encode()).decode()
    # A browser after the Basic prompt: any user name, the key as password.
    for auth in (f"Bearer {API_KEY}", f"Basic {basic}"):
        with httpx.Client(base_url=served.url, headers={"Authorization": auth}, timeout=TIMEOUT) as client:
            assert client.post("/search", json={"text": "a red circle", "limit": 3}).status_code == 200, auth


# -- search --------------------------------------------------------------------------------------


def test_text_search_finds_the_exact_caption_first(served: Served) -> None:
    record = served.records[3]
    caption = record.captions[1]
    with served.client() as c:
        r = c.post("/search", json={"text": caption, "limit": 5, "modality": "text"})
        # An explicit shortlist keeps the funnel, and both stages are timed.
        funnel = c.post("/search", json={"text": caption, "limit": 5, "modality": "text", "coarse_limit": 50}).json()
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["hits"]
    assert body["query"] == "text"
    assert body["modality"] == "text"
    assert [h["modality"] for h in hits] == ["text"] * 5
    assert hits[0]["reference"] == caption
    assert hits[0]["score"] > 0.999  # the same text, encoded by the server and at ingest
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all(h["coarse_score"] is not None for h in hits)
    timings = body["timings"]
    assert set(timings) == {
        "encode_ms",
        "coarse_ms",
        "fine_ms",
        "search_ms",
        "total_ms",
        "batch_size",
        "fusion_ms",
        "fusion_batch_size",
    }
    assert timings["fusion_ms"] is None  # no fusion_limit: no third stage
    assert timings["encode_ms"] > 0
    # A collection this small is answered by one exact search (the plan choice): no coarse stage.
    assert body["plan"] == "exact"
    assert timings["coarse_ms"] == 0
    assert timings["fine_ms"] > 0
    assert timings["total_ms"] >= timings["encode_ms"] + timings["search_ms"] * 0.99
    assert funnel["plan"] == "hierarchical"
    assert funnel["coarse_limit"] == 50
    assert funnel["timings"]["coarse_ms"] > 0
    assert funnel["timings"]["fine_ms"] > 0
    assert [h["id"] for h in funnel["hits"]][0] == hits[0]["id"]
    assert timings["batch_size"] >= 1


def test_text_search_defaults_to_images_with_thumbnails(served: Served) -> None:
    from PIL import Image

    with served.client() as c:
        body = c.post("/search", json={"text": "a small red circle", "limit": 4}).json()
        assert body["modality"] == "image"
        assert [h["modality"] for h in body["hits"]] == ["image"] * 4
        for hit in body["hits"]:
            assert hit["media_url"] == f"media/{hit['id']}"
            assert set(hit["attributes"]) >= {"n_objects", "colors"}
        thumb = c.get("/" + body["hits"][0]["media_url"])
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(thumb.content))
    assert max(image.size) <= 256


def test_image_search_base64_and_multipart(served: Served) -> None:
    record = _unique_record(served)
    data = Path(record.image).read_bytes()
    with served.client() as c:
        by_json = c.post("/search", json={"image": _b64(data), "limit": 3, "modality": "image"})
        by_form = c.post(
            "/search/image",
            files={"file": ("query.png", data, "image/png")},
            data={"limit": "3", "modality": "image"},
        )
        captions = c.post("/search/image", files={"file": ("q.png", data, "image/png")}, data={"limit": "5"})
    for r in (by_json, by_form):
        assert r.status_code == 200, r.text
        hits = r.json()["hits"]
        assert hits[0]["key"] == record.id
        assert hits[0]["score"] > 0.999
    assert [h["id"] for h in by_json.json()["hits"]] == [h["id"] for h in by_form.json()["hits"]]
    # An image query searches captions by default (cross-modal).
    assert captions.status_code == 200
    assert captions.json()["modality"] == "text"
    assert all(h["modality"] == "text" and h["media_url"] is None for h in captions.json()["hits"])


def test_structured_filter(served: Served) -> None:
    record = _unique_record(served)
    n = record.attributes["n_objects"]
    with served.client() as c:
        many = c.post(
            "/search",
            json={
                "text": "shapes",
                "limit": 20,
                "filter": [{"field": "attributes.n_objects", "op": "==", "value": n}],
            },
        )
        one = c.post(
            "/search",
            json={
                "text": "shapes",
                "limit": 5,
                "filter": [{"field": "key", "op": "in", "value": [record.id]}],
            },
        )
    assert many.status_code == 200, many.text
    assert {h["attributes"]["n_objects"] for h in many.json()["hits"]} == {n}  # some hits, all with n objects
    assert 'attributes["n_objects"]' in many.json()["filter"]
    assert [h["key"] for h in one.json()["hits"]] == [record.id]


# -- ingest --------------------------------------------------------------------------------------


def test_ingest_writes_rows_and_reports_bad_records(served: Served) -> None:
    data = Path(served.records[5].image).read_bytes()
    payload = {
        "records": [
            {
                "key": "http-1",
                "image": _b64(data),
                "captions": ["an unmistakable zebra kite"],
                "attributes": {"src": "http"},
            },
            {"key": "http-bad", "image": _b64(b"not an image at all")},
        ]
    }
    with served.client() as c:
        first = c.post("/ingest", json=payload)
        again = c.post("/ingest", json=payload)
        hits = c.post("/search", json={"text": "an unmistakable zebra kite", "limit": 1, "modality": "text"}).json()
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["inserted"], body["updated"], body["rows_written"]) == (2, 0, 2)
    assert [f["key"] for f in body["failed"]] == ["http-bad"]
    assert "cannot be decoded" in body["failed"][0]["reason"]
    assert (again.json()["inserted"], again.json()["updated"]) == (0, 2)  # same keys: an upsert
    top = hits["hits"][0]
    assert top["key"] == "http-1#0"
    assert top["attributes"] == {"src": "http"}


# -- errors: the client's mistakes are 4xx with a JSON message, never 500 ---------------------------


def _c(
    name: str, method: str, path: str, status: int, code: str | None, key: str | None = API_KEY, **kwargs: Any
) -> Any:
    """One request (``kwargs`` for ``httpx.Client.request``, sent with ``key``) and the error it must get."""
    return pytest.param(key, method, path, status, code, kwargs, id=name)


UNDECODABLE, INVALID, NOT_JSON = "undecodable_image", "invalid_request", "unsupported_media_type"


def _form(file: bytes | None = None, **fields: str) -> dict[str, Any]:
    files = {"file": ("q.png", file, "image/png")} if file is not None else {"other": ("a.txt", b"x", "text/plain")}
    return {"data": fields, "files": files}


def _error_cases() -> list[Any]:
    image = png((32, 32), noise=True)  # a valid PNG (as the data set's images are)
    truncated = image[: len(image) // 2]
    big_bytes = png((400, 400), noise=True)
    assert len(big_bytes) > MAX_IMAGE_BYTES
    many_pixels = png((1200, 1200))
    assert len(many_pixels) < MAX_IMAGE_BYTES
    cond = {"field": "key", "op": "==", "value": "a"}
    # fmt: off
    return [
        _c("no key", "POST", "/search", 401, "unauthorized", key=None, json=dict(text="x")),
        _c("wrong key", "POST", "/search", 401, "unauthorized", key="wrong-key", json=dict(text="x")),
        *(_c(f"no key {path}", "GET", path, 401, "unauthorized", key=None)
          for path in ("/", "/openapi.json", "/docs", "/stats", "/static/app.js")),
        _c("no key ingest", "POST", "/ingest", 401, "unauthorized", key=None,
           json={"records": [{"key": "x", "captions": ["y"]}]}),
        _c("malformed json", "POST", "/search", 400, "invalid_json", content=b'{"text": "x",',
           headers={"content-type": "application/json"}),
        _c("json array", "POST", "/search", 422, INVALID, json=["text"]),
        _c("not json", "POST", "/search", 415, NOT_JSON, content=b"text=x",
           headers={"content-type": "text/plain"}),
        _c("unknown field", "POST", "/search", 422, "unknown_field", json=dict(text="x", limt=3)),
        _c("unknown filter key", "POST", "/search", 422, "unknown_field",
           json=dict(text="x", filter=[{**cond, "x": 2}])),
        _c("limit 0", "POST", "/search", 422, INVALID, json=dict(text="x", limit=0)),
        _c("limit too big", "POST", "/search", 422, INVALID, json=dict(text="x", limit=101)),
        _c("limit not int", "POST", "/search", 422, INVALID, json=dict(text="x", limit="many")),
        _c("coarse < limit", "POST", "/search", 422, INVALID,
           json=dict(text="x", limit=10, coarse_limit=5)),
        _c("coarse too big", "POST", "/search", 422, INVALID, json=dict(text="x", coarse_limit=20000)),
        _c("text and image", "POST", "/search", 422, INVALID, json=dict(text="x", image=_b64(image))),
        _c("neither", "POST", "/search", 422, INVALID, json=dict(limit=3)),
        _c("empty text", "POST", "/search", 422, INVALID, json=dict(text="")),
        _c("bad filter op", "POST", "/search", 422, INVALID,
           json=dict(text="x", filter=[{**cond, "op": "~="}])),
        _c("bad filter field", "POST", "/search", 422, "invalid_filter",
           json=dict(text="x", filter=[{**cond, "field": "vec_low"}])),
        _c("injection in field", "POST", "/search", 422, "invalid_filter",
           json=dict(text="x", filter=[{**cond, "field": "key == 1 or id"}])),
        _c("filter in needs list", "POST", "/search", 422, "invalid_filter",
           json=dict(text="x", filter=[{**cond, "op": "in"}])),
        _c("bad modality", "POST", "/search", 422, INVALID, json=dict(text="x", modality="video")),
        _c("invalid base64", "POST", "/search", 400, "invalid_base64", json=dict(image="!!not base64!!")),
        _c("undecodable image", "POST", "/search", 415, UNDECODABLE, json=dict(image=_b64(b"GIF89a, not"))),
        _c("truncated image", "POST", "/search", 415, UNDECODABLE, json=dict(image=_b64(truncated))),
        _c("oversized image", "POST", "/search", 413, "image_too_large", json=dict(image=_b64(big_bytes))),
        _c("too many pixels", "POST", "/search", 413, "image_too_large", json=dict(image=_b64(many_pixels))),
        _c("body too large", "POST", "/search", 413, "body_too_large", json=dict(text="x" * 2_000_000)),
        _c("encode unknown field", "POST", "/encode", 422, "unknown_field",
           json={"text": "x", "normalize": False}),
        _c("encode undecodable", "POST", "/encode", 415, UNDECODABLE,
           json={"image": _b64(b"\x89PNG\r\n\x1a\nnope")}),
        _c("multipart no file", "POST", "/search/image", 422, None, **_form(limit="3")),
        _c("multipart not an image", "POST", "/search/image", 415, UNDECODABLE, **_form(b"plain text")),
        _c("multipart limit", "POST", "/search/image", 422, INVALID, **_form(image, limit="0")),
        _c("multipart bad filter json", "POST", "/search/image", 400, "invalid_json",
           **_form(image, filter="[{")),
        _c("multipart unknown field", "POST", "/search/image", 422, "unknown_field", **_form(image, limt="3")),
        _c("search/image with json", "POST", "/search/image", 415, NOT_JSON, json={"text": "x"}),
        _c("ingest empty", "POST", "/ingest", 422, INVALID, json={"records": []}),
        _c("ingest no content", "POST", "/ingest", 422, INVALID, json={"records": [{"key": "k"}]}),
        _c("media unknown id", "GET", "/media/12345", 404, "not_found"),
        _c("media traversal", "GET", "/media/..%2F..%2Fetc%2Fpasswd", 404, "not_found"),
        _c("media negative id", "GET", "/media/-1", 404, "not_found"),
        _c("static traversal", "GET", "/static/..%2Fapp.py", 404, "not_found"),
        _c("unknown route", "GET", "/nope", 404, "not_found"),
        _c("wrong method", "GET", "/search", 405, "method_not_allowed"),
    ]
    # fmt: on


@pytest.mark.parametrize(("key", "method", "path", "status", "code", "kwargs"), _error_cases())
def test_client_errors_are_4xx_with_a_json_message(
    served: Served, key: str | None, method: str, path: str, status: int, code: str | None, kwargs: dict[str, Any]
) -> None:
    with served.client(key) as c:
        r = c.request(method, path, **kwargs)
    assert_error(r, status, code)
    # Every refusal of the key lets a browser prompt for it.
    assert status != 401 or "basic" in r.headers["www-authenticate"].lower(), r.headers


def test_openapi_and_page(served: Served) -> None:
    with served.client() as c:
        spec = c.get("/openapi.json").json()
        docs, page, js = (c.get(path) for path in ("/docs", "/", "/static/app.js"))
    assert {"/search", "/search/image", "/encode", "/ingest", "/healthz", "/media/{row_id}"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/search/image"]["post"]["requestBody"]["content"]
    assert [r.status_code for r in (docs, page, js)] == [200, 200, 200]
    assert "swagger" in docs.text.lower()
    assert 'id="q"' in page.text
    assert 'id="file"' in page.text
    assert "://" not in page.text  # no absolute URL: the page loads nothing from elsewhere
    assert js.headers["content-type"].startswith("text/javascript")


# -- batching --------------------------------------------------------------------------------------


async def _post_all(
    url: str, path: str, bodies: list[dict[str, Any]], key: str | None = API_KEY
) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=TIMEOUT, limits=limits) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


# Whether N concurrent calls share a batch depends on when they reach the replica; on a loaded
# machine a burst can trickle in one by one. The batching tests repeat a checked burst (it returns
# the batch sizes) until one was batched, with a generous deadline: the test is about batching, not
# about the machine's speed.
BATCHED = "a burst of concurrent calls to share a batch"


def test_concurrent_encodes_are_batched_and_each_caller_gets_its_own_vector(served: Served) -> None:
    texts = [c for r in served.records[:8] for c in r.captions][:32]
    assert len(set(texts)) == len(texts) == 32
    local = served.model.embed_texts(texts)

    def burst() -> list[int]:
        responses = asyncio.run(_post_all(served.url, "/encode", [{"text": t} for t in texts]))
        assert [r.status_code for r in responses] == [200] * 32, [r.text for r in responses if r.status_code != 200]
        for row, (text, r) in enumerate(zip(texts, responses, strict=True)):
            _assert_encoded(r.json(), local, row, text)
        return [r.json()["batch_size"] for r in responses]

    wait_until(BATCHED, lambda: max(burst()) > 1, EVENT_DEADLINE_S)
    with served.client() as c:
        stats = c.get("/stats").json()["text"]
    assert stats["max_seen_batch_size"] > 1
    assert (stats["max_batch_size"], stats["failed_batches"]) == (32, 0)


def test_concurrent_fused_searches_share_a_fusion_batch_and_keep_the_scorer_order(served: Served) -> None:
    """The FusionScorer batches concurrent searches; each answer is ``model.score_pairs``' order."""
    from hivlp_milvus.model.preprocess import load_image

    captions = [r.captions[0] for r in served.records[:8]]
    common = {"modality": "image", "coarse_limit": 200}
    with served.client() as c:
        fine = [c.post("/search", json={"text": t, "limit": 20, **common}).json()["hits"] for t in captions]
    images = {h["reference"]: load_image(h["reference"]) for hits in fine for h in hits}
    expected = []
    for text, hits in zip(captions, fine, strict=True):
        scores = served.model.score_pairs([images[h["reference"]] for h in hits], text)
        order = sorted(range(len(hits)), key=lambda i: -scores[i])[:5]  # sorted is stable, as the stage
        expected.append(([hits[i]["id"] for i in order], [float(scores[i]) for i in order]))
    assert any(ids != [h["id"] for h in hits[:5]] for (ids, _), hits in zip(expected, fine, strict=True))
    bodies = [{"text": t, "limit": 5, "fusion_limit": 20, **common} for t in captions]

    def burst() -> list[int]:
        responses = asyncio.run(_post_all(served.url, "/search", bodies))
        assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
        for r, (ids, scores) in zip(responses, expected, strict=True):
            hits = r.json()["hits"]
            assert [h["id"] for h in hits] == ids
            np.testing.assert_allclose([h["fusion_score"] for h in hits], scores, rtol=1e-4, atol=1e-5)
        return [r.json()["timings"]["fusion_batch_size"] for r in responses]

    wait_until(BATCHED, lambda: max(burst()) > 1, EVENT_DEADLINE_S)


def test_an_undecodable_image_fails_only_its_own_caller(served: Served) -> None:
    paths = [r.image for r in served.records[:7]]
    good = [_b64(Path(p).read_bytes()) for p in paths]
    # A valid PNG header (passes the ingress's check) with broken data: fails in the encoder batch.
    broken = _b64(Path(paths[0]).read_bytes()[:60] + b"\x00" * 200)
    bodies = [{"image": g} for g in good[:3]] + [{"image": broken}] + [{"image": g} for g in good[3:]]
    local = served.model.embed_images(paths)
    with served.client() as c:
        before = c.get("/stats").json()["image"]

    def burst() -> list[int]:
        responses = asyncio.run(_post_all(served.url, "/encode", bodies))
        statuses = [r.status_code for r in responses]
        assert statuses == [200, 200, 200, 415, 200, 200, 200, 200], [r.text for r in responses]
        assert responses[3].json()["error"] == "undecodable_image"
        ok = responses[:3] + responses[4:]
        for row, r in enumerate(ok):
            _assert_encoded(r.json(), local, row)
        return [r.json()["batch_size"] for r in ok]

    # They were batched (the bad one counts in its batch), and only the bad one failed.
    wait_until(BATCHED, lambda: max(burst()) > 1, EVENT_DEADLINE_S)
    with served.client() as c:
        after = c.get("/stats").json()["image"]
    assert after["failed_batches"] == before["failed_batches"]  # a per-item failure, not a batch one
    assert after["max_seen_batch_size"] > 1


def test_a_failing_batch_fails_every_caller_of_that_batch_only(served: Served) -> None:
    texts = [f"{c} ({i})" for i, c in enumerate(r.captions[0] for r in served.records[:12])]
    texts[5] = POISON
    # A batch closes when it is full or its wait ends; with room for exactly these twelve and a
    # long wait, they form ONE batch however slowly they arrive: the composition is an event.
    served.faulty.configure_batching.remote(len(texts), EVENT_DEADLINE_S).result(timeout_s=30)
    try:
        first = asyncio.run(_post_all(served.url, "/extra/encode", [{"text": t} for t in texts], key=None))
    finally:
        served.faulty.configure_batching.remote(32, 0.25).result(timeout_s=30)
    second = asyncio.run(_post_all(served.url, "/extra/encode", [{"text": t} for t in texts[6:]], key=None))
    log = served.faulty.batches.remote().result(timeout_s=30)
    # The fault hit one real batch, of all twelve.
    assert [sorted(b) for b in log if POISON in b] == [sorted(texts)], log
    for r in first:
        assert_error(r, 500, "internal_error")  # a server fault, reported to every caller of the batch
    # The next batches are fine: the fault did not poison the replica.
    assert [r.status_code for r in second] == [200] * len(second)
    local = served.model.embed_texts(texts[6:])
    for row, r in enumerate(second):
        _assert_encoded(r.json(), local, row)


# -- Milvus unreachable --------------------------------------------------------------------------


def test_unreachable_milvus_is_a_503_not_a_hang_and_keeps_its_credentials(served: Served) -> None:
    """The extra app's Milvus URI is ``http://hivlp:<SECRET>@127.0.0.1:<port>``, never reachable."""
    with served.client(None, "/extra") as c:
        health = c.get("/healthz")
        started = time.monotonic()
        search = c.post("/search", json={"text": "a red circle"})
        elapsed = time.monotonic() - started
    assert health.status_code == 503, health.text
    assert health.json()["status"] == "unavailable"
    assert "unreachable" in health.json()["milvus"]
    assert_error(search, 503, "milvus_unavailable")
    assert elapsed < 15, elapsed
    for r in (health, search):
        assert "127.0.0.1:" in r.text  # it still says which Milvus
        assert SECRET not in r.text, r.text


# -- the outage app: a real Milvus server that pauses, stops, restarts and loses its collection ------


def _search_ok(c: httpx.Client, deadline_s: float = EVENT_DEADLINE_S) -> httpx.Response:
    """A search that succeeds, waiting (bounded) for the searcher to be connected first."""

    def attempt() -> httpx.Response | None:
        r = c.post("/search", json={"text": "a red circle", "limit": 5, "modality": "image"})
        return r if r.status_code == 200 else None

    return wait_until("a search on the outage app to succeed", attempt, deadline_s)


def test_media_serves_local_image_files_only(served: Served) -> None:
    from hivlp_milvus.ids import row_id, text_key

    ids = served.outage_ids
    record = served.records[0]
    only_special = [{"field": "key", "op": "in", "value": list(ids)}]
    with served.client(None, "/outage") as c:
        image = c.get(f"/media/{row_id(record.id, 'image')}")  # an ingested file (absolute path)
        relative = c.get(f"/media/{ids['relative']}")  # a path relative to media_root
        text = c.get(f"/media/{row_id(text_key(record.id, 0), 'text')}")
        missing, remote, bucket = (c.get(f"/media/{ids[k]}") for k in ("missing", "remote", "bucket"))
        search = c.post("/search", json={"text": "x", "limit": 10, "modality": "image", "filter": only_special})
    for r in (image, relative):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
    assert assert_error(text, 404, "not_found")["message"].endswith("is not an image row with a local file")
    assert "is not on this server" in assert_error(missing, 404, "not_found")["message"]
    for r in (remote, bucket):  # never fetched by the server: the browser loads http(s) itself
        assert "is not an image row with a local file" in assert_error(r, 404, "not_found")["message"]
    assert search.status_code == 200, search.text
    urls = {h["key"]: h["media_url"] for h in search.json()["hits"]}
    assert urls == {
        "missing": f"media/{ids['missing']}",  # the server cannot know before it looks
        "relative": f"media/{ids['relative']}",
        "remote": "https://example.com/hivlp/cat.png",
        "bucket": None,
    }


def test_a_backend_that_does_not_answer_is_a_504(served: Served) -> None:
    with served.client(None, "/outage") as c:
        _search_ok(c)
        served.milvus.proc.send_signal(signal.SIGSTOP)  # Milvus hangs: connections open, no answers
        try:
            started = time.monotonic()
            r = c.post("/search", json={"text": "a red circle", "limit": 3})
            elapsed = time.monotonic() - started
        finally:
            served.milvus.proc.send_signal(signal.SIGCONT)
    body = assert_error(r, 504, "timeout")
    assert "did not answer in time" in body["message"]
    assert f"({OUTAGE_TIMEOUT_S:g} s, the backend_timeout_s" in body["message"]  # which limit ran out
    assert OUTAGE_TIMEOUT_S * 0.9 <= elapsed < 60, elapsed


def test_the_searcher_reconnects_after_a_milvus_outage(served: Served) -> None:
    server = served.milvus
    with served.client(None, "/outage") as c:
        before = _search_ok(c).json()["hits"]
        server.stop()
        try:
            started = time.monotonic()
            down = c.post("/search", json={"text": "a red circle", "limit": 5, "modality": "image"})
            elapsed = time.monotonic() - started
            health = c.get("/healthz")
        finally:
            server.start()  # the same data directory and port
        body = assert_error(down, 503, "milvus_unavailable")
        assert elapsed < OUTAGE_TIMEOUT_S, elapsed  # a quick 503, not a hang until the timeout
        assert f"127.0.0.1:{server.port}" in body["message"]
        assert SECRET not in down.text
        assert health.status_code == 503, health.text
        assert health.json()["status"] == "unavailable"
        assert SECRET not in health.text
        # Back: the same rows answer the same query, and the health check recovers. The replica
        # itself reconnects (every RECONNECT_EVERY_S = 5 s): the deadline stays under the 60 s
        # after which Serve would replace an unhealthy replica, which would also "recover".
        after = _search_ok(c, deadline_s=45).json()["hits"]
        assert [h["id"] for h in after] == [h["id"] for h in before]
        assert [h["score"] for h in after] == pytest.approx([h["score"] for h in before], abs=1e-5)
        wait_until("/healthz to recover", lambda: c.get("/healthz").status_code == 200, EVENT_DEADLINE_S)


def test_a_collection_that_is_gone_is_a_503_for_healthz_and_search(served: Served) -> None:
    from pymilvus import MilvusClient

    with served.client(None, "/outage") as c:
        _search_ok(c)
        client = MilvusClient(uri=served.milvus.uri)
        try:
            client.drop_collection(OUTAGE_COLLECTION)
        finally:
            client.close()
        health = c.get("/healthz")
        search = c.post("/search", json={"text": "a red circle", "limit": 3})
    assert health.status_code == 503, health.text
    assert health.json()["status"] == "unavailable"
    assert OUTAGE_COLLECTION in health.json()["milvus"]
    body = assert_error(search, 503, "misconfigured")
    assert OUTAGE_COLLECTION in body["message"]


if __name__ == "__main__":
    sys.exit(pytest.main(["-v", "-s", __file__, *os.environ.get("PYTEST_ARGS", "").split()]))
