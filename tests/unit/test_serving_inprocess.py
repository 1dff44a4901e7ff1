"""The HTTP API over the real encoders and Searcher, in this process (``serving.inprocess``, no Ray):
``modality: "all"`` searches both modalities and equals exact search over every row.

The quickstart's layout at a tiny size (``tests/demo_layout.py``: a random-init ``micro`` model and
Milvus Lite holding 16 images and their 80 captions).
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from hivlp_milvus.connection import ConnectionOptions, connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo_layout import DemoLayout, build_demo_layout  # noqa: E402

ALL_ROWS = 96  # 16 images + 80 captions: a coarse shortlist of every row makes the funnel exact


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> DemoLayout:
    return build_demo_layout(tmp_path_factory.mktemp("inprocess"))


@pytest.fixture(scope="module")
def client(layout: DemoLayout) -> Iterator[TestClient]:
    from serving.inprocess import local_app

    with (
        local_app(str(layout.model_dir), ConnectionOptions(uri=layout.uri), layout.collection) as app,
        TestClient(app) as test_client,
    ):
        yield test_client


def _exact_top(layout: DemoLayout, high: list[float], limit: int) -> list[tuple[str, float]]:
    """Brute force over every row of the collection: inner product on vec_high."""
    rows = connect(layout.uri).query(layout.collection, filter="", output_fields=["id", "vec_high"], limit=1000)
    assert len(rows) == ALL_ROWS
    scores = np.asarray([r["vec_high"] for r in rows], np.float32) @ np.asarray(high, np.float32)
    order = np.argsort(-scores, kind="stable")[:limit]
    return [(str(rows[i]["id"]), float(scores[i])) for i in order]


def _image(layout: DemoLayout) -> bytes:
    return Path(layout.records[0].image).read_bytes()


# The random-init model ranks every caption above every image for a text query, so the text query
# asks for all rows; the image query finds itself first and then mixes images and captions.
@pytest.mark.parametrize(("query", "limit"), [("text", ALL_ROWS), ("image", 30)])
def test_modality_all_returns_both_modalities_as_exact_search(
    client: TestClient, layout: DemoLayout, query: str, limit: int
) -> None:
    body: dict[str, Any] = (
        {"text": layout.records[0].captions[0]}
        if query == "text"
        else {"image": base64.b64encode(_image(layout)).decode()}
    )
    high = client.post("/encode", json=body).json()["high"]
    r = client.post("/search", json={**body, "modality": "all", "limit": limit, "coarse_limit": ALL_ROWS})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["modality"] == "all"
    hits = out["hits"]
    assert {h["modality"] for h in hits} == {"image", "text"}
    exact = _exact_top(layout, high, limit)
    assert [h["id"] for h in hits] == [i for i, _ in exact]
    np.testing.assert_allclose([h["score"] for h in hits], [s for _, s in exact], rtol=1e-4, atol=1e-5)
    if query == "image":  # the image itself is its own best match
        assert (hits[0]["key"], hits[0]["modality"]) == (layout.records[0].id, "image")


def test_modality_all_through_the_upload_route(client: TestClient, layout: DemoLayout) -> None:
    r = client.post(
        "/search/image",
        files={"file": ("q.png", _image(layout), "image/png")},
        data={"modality": "all", "limit": "30", "coarse_limit": str(ALL_ROWS)},
    )
    assert r.status_code == 200, r.text
    assert {h["modality"] for h in r.json()["hits"]} == {"image", "text"}
    # Without "all" an image query searches captions only (cross-modal by default).
    r = client.post("/search/image", files={"file": ("q.png", _image(layout), "image/png")}, data={"limit": "30"})
    assert {h["modality"] for h in r.json()["hits"]} == {"text"}
