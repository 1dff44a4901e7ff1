"""Hostile input at the HTTP API, in this process (``serving.inprocess``, no Ray): ``/media`` reads only
the collection's own image references, body and upload limits hold, and the API key guards every
route but ``/healthz``.

The collection is the quickstart's layout at a tiny size (``tests/demo_layout.py``) plus image rows
whose references an operator might have written by mistake (``/etc/passwd``, a ``file://`` URL, a
symlink to a file that is no image, a path climbing out of the media root) and caption rows whose
*text* is the path of a real image. ``/media`` re-encodes what it serves (a PNG/JPEG thumbnail), so
the bytes of a file that is not an image can never reach a client; the tests also check that no
answer carries them.
"""

from __future__ import annotations

import base64
import io
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from hivlp_milvus.connection import ConnectionOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo_layout import DemoLayout, build_demo_layout  # noqa: E402
from serving_helpers import assert_error, png  # noqa: E402

API_KEY = "media-sec-7d1e"
MAX_IMAGE_BYTES = 20_000
MAX_BODY_BYTES = 40_000
MAX_IMAGE_PIXELS = 256 * 256
PASSWD = "/etc/passwd"
#: A line of a file that is no image, kept outside the media root: it must never reach a client.
SECRET_LINE = b"root:x:0:0:secret-3b7f:/root:/bin/bash\n"


@dataclass
class Setup:
    layout: DemoLayout
    client: TestClient
    ids: dict[str, int]  # key of a hostile row -> its row id
    outside_png: Path  # a real image outside the media root


def _hostile_rows(layout: DemoLayout, outside: Path) -> dict[str, int]:
    """Image rows with references that point where /media must not read, and caption rows naming files."""
    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.data import EmbeddingRecord
    from hivlp_milvus.ids import row_id
    from hivlp_milvus.ingest import ingest

    root = layout.root
    secret = outside / "shadow"
    secret.write_bytes(SECRET_LINE)
    (root / "link-to-secret.png").symlink_to(secret)  # inside the root, a file that is no image
    references = {
        "passwd": PASSWD,
        "passwd-url": f"file://{PASSWD}",
        "passwd-localhost-url": f"file://localhost{PASSWD}",
        "secret-climb": "../" * 12 + str(secret).lstrip("/"),  # relative, climbing out of the root
        "secret-link": "link-to-secret.png",
        "secret-dir": str(outside),  # a directory
        "proc": "/proc/self/environ",
        "dev": "/dev/zero",
        "outside-png-url": (outside / "real.png").as_uri(),  # a real image, but as a file:// URL
    }
    vec = layout.model.embed_images([layout.records[0].image])
    rows = [EmbeddingRecord(key, "image", vec.low[0], vec.high[0], reference=ref) for key, ref in references.items()]
    # Caption rows whose text is the path of a real image: text rows are never files.
    text_vec = layout.model.embed_texts(["x"])
    captions = {"caption-is-a-path": str(outside / "real.png"), "caption-is-passwd": PASSWD}
    rows += [
        EmbeddingRecord(key, "text", text_vec.low[0], text_vec.high[0], reference=ref) for key, ref in captions.items()
    ]
    col = HierarchicalCollection.open(layout.collection, uri=layout.uri, model=layout.model)
    report = ingest(rows, collection=col, progress=False)
    assert not report.failed, str(report)
    col.client.close()
    ids = {key: row_id(key, "image") for key in references}
    ids.update({key: row_id(key, "text") for key in captions})
    return ids


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    from milvus_lite.server_manager import server_manager_instance

    from serving.ingress import IngressSettings
    from serving.inprocess import local_app

    base = tmp_path_factory.mktemp("media")
    layout = build_demo_layout(base / "root")
    outside = base / "outside"
    outside.mkdir()
    (outside / "real.png").write_bytes(png())
    ids = _hostile_rows(layout, outside)
    server_manager_instance.release_server(layout.uri)  # hand the .db over to the Searcher
    settings = IngressSettings(
        collection=layout.collection,
        api_key=API_KEY,
        max_image_bytes=MAX_IMAGE_BYTES,
        max_image_pixels=MAX_IMAGE_PIXELS,
        max_body_bytes=MAX_BODY_BYTES,
        media_root=str(layout.root),
    )
    with (
        local_app(str(layout.model_dir), ConnectionOptions(uri=layout.uri), layout.collection, settings) as app,
        TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client,
    ):
        yield Setup(layout, client, ids, outside / "real.png")


def _no_leak(r: Any) -> None:
    assert SECRET_LINE.strip() not in r.content
    assert b"root:x:0:0" not in r.content


# -- /media ---------------------------------------------------------------------------------------


def test_media_serves_an_ingested_image_as_a_reencoded_thumbnail(setup: Setup) -> None:
    from hivlp_milvus.ids import row_id

    record = setup.layout.records[0]
    r = setup.client.get(f"/media/{row_id(record.id, 'image')}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == Image.open(record.image).size  # 64 px scenes: below the thumbnail side


NOT_AN_IMAGE_ROW = "is not an image row with a local file"
NOT_READABLE = "is not a readable image"
NOT_HERE = "is not on this server"
#: Each hostile row's key -> the reason /media gives for refusing it.
REFUSALS = {
    "passwd": NOT_READABLE,
    "passwd-url": NOT_AN_IMAGE_ROW,
    "passwd-localhost-url": NOT_AN_IMAGE_ROW,
    "secret-climb": NOT_READABLE,
    "secret-link": NOT_READABLE,
    "secret-dir": NOT_HERE,
    "proc": NOT_READABLE,
    "dev": NOT_HERE,
    "outside-png-url": NOT_AN_IMAGE_ROW,  # file:// URLs are not followed, even to a real image
    "caption-is-a-path": NOT_AN_IMAGE_ROW,  # a caption row is never read, even when its text is a path
    "caption-is-passwd": NOT_AN_IMAGE_ROW,
}


@pytest.mark.parametrize("key", list(REFUSALS))
def test_media_never_serves_what_is_not_an_image_file(setup: Setup, key: str) -> None:
    r = setup.client.get(f"/media/{setup.ids[key]}")
    body = assert_error(r, 404, "not_found")
    _no_leak(r)
    assert REFUSALS[key] in body["message"]
    assert PASSWD not in body["message"]  # nor says where the file is
    assert str(setup.outside_png.parent) not in body["message"]


@pytest.mark.parametrize(
    "row",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "1%2F..%2F..%2Fetc%2Fpasswd",
        "12%00",
        "-1",
        "1e3",
        "0x10",
        "99999999999999999999",  # 20 digits
        "9999999999999999999",  # 19 digits, above INT64
        "%C2%B2",  # '²': str.isdigit() says yes, int() says no (it was a 500)
        "%D9%A1%D9%A2",  # Arabic-Indic digits: not the decimal ids the API hands out
        "%EF%BC%91",  # a full-width '1'
    ],
)
def test_media_ids_are_ascii_decimal_integers_only(setup: Setup, row: str) -> None:
    r = setup.client.get(f"/media/{row}")
    assert_error(r, 404, "not_found")
    _no_leak(r)


def test_media_of_a_row_ingested_over_http_has_no_file_to_serve(setup: Setup) -> None:
    """A client cannot choose an image row's reference: uploaded bytes are not kept, whatever the key."""
    from hivlp_milvus.ids import row_id

    key = "../../../../etc/passwd"
    image = base64.b64encode(png(color=(1, 2, 3))).decode()
    r = setup.client.post("/ingest", json={"records": [{"key": key, "image": image, "captions": [PASSWD]}]})
    assert r.status_code == 200, r.text
    assert r.json()["failed"] == []
    for rid in (row_id(key, "image"), row_id(f"{key}#0", "text")):
        got = setup.client.get(f"/media/{rid}")
        assert_error(got, 404, "not_found")
        _no_leak(got)


# -- body and upload limits -------------------------------------------------------------------------


def _chunks() -> Iterator[bytes]:
    yield b'{"text": "'
    for _ in range(MAX_BODY_BYTES // 1000 + 2):
        yield b"a" * 1000
    yield b'"}'


# A declared length over the limit is refused before the body is read; a chunked one while it is read.
@pytest.mark.parametrize(
    "body", [lambda: b'{"text": "' + b"a" * MAX_BODY_BYTES + b'"}', _chunks], ids=["declared", "chunked"]
)
def test_a_body_over_the_limit_is_a_413(setup: Setup, body: Any) -> None:
    r = setup.client.post("/search", content=body(), headers={"content-type": "application/json"})
    assert_error(r, 413, "body_too_large")


def test_an_upload_over_the_image_limit_is_a_413(setup: Setup) -> None:
    noise = png((100, 100), noise=True)  # ~30 kB: above the image limit, below the body limit
    assert MAX_IMAGE_BYTES < len(noise) < MAX_BODY_BYTES
    r = setup.client.post("/search/image", files={"file": ("q.png", noise, "image/png")})
    assert_error(r, 413, "image_too_large")


def test_an_image_over_the_pixel_limit_is_a_413(setup: Setup) -> None:
    flat = png((1024, 1024))  # a few kB, a million pixels
    assert len(flat) < MAX_IMAGE_BYTES
    for r in (
        setup.client.post("/search/image", files={"file": ("q.png", flat, "image/png")}),
        setup.client.post("/search", json={"image": base64.b64encode(flat).decode()}),
    ):
        assert_error(r, 413, "image_too_large")


# -- the API key ----------------------------------------------------------------------------------


def _routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in."""
    from serving.ingress import api
    from serving.inprocess import api_routes

    found = {
        (method, route.path.replace("{row_id}", "1").replace("{name}", "app.js"))
        for route in api_routes(api.routes)
        for method in route.methods - {"HEAD"}
    }
    return sorted(found)


def test_every_route_but_healthz_needs_the_key(setup: Setup) -> None:
    routes = _routes()
    assert len(routes) >= 12, routes  # the walk found the class's routes, not just the app's own
    bare = TestClient(setup.client.app)
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic " + _basic("u", "wrong")}):
            r = bare.request(method, path, headers=headers)
            if path == "/healthz":
                assert r.status_code == 200, (method, path, r.text)
            else:
                assert_error(r, 401, "unauthorized")
    # The right key, as Bearer or as the Basic password, gets past the check on every route.
    for method, path in routes:
        for auth in (f"Bearer {API_KEY}", "Basic " + _basic("anyone", API_KEY)):
            r = bare.request(method, path, headers={"Authorization": auth})
            assert r.status_code != 401, (method, path, r.text)


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_a_transparent_image_is_served_on_white_not_black(tmp_path: Path) -> None:
    """Emoji are RGBA PNGs: their thumbnails composite the transparency on white, as the model sees them."""
    from serving.images import thumbnail

    img = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (8, 8, 24, 24))
    path = tmp_path / "emoji.png"
    img.save(path)
    data, mime = thumbnail(path)
    out = Image.open(io.BytesIO(data)).convert("RGB")
    assert mime == "image/png"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((16, 16)) == (255, 0, 0)
