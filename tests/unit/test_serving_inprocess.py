"""The HTTP API over the real encoders and Searcher, in this process (``serving.inprocess``, no Ray):
``modality: "all"`` searches both modalities and equals exact search over every row; the fusion
stage (``fusion_limit``) orders hits as ``model.score_pairs`` does.

The quickstart's layout at a tiny size (``tests/demo_layout.py``: a random-init ``micro`` model and
Milvus Lite holding 16 images and their 80 captions).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from demo_layout import DemoLayout, build_demo_layout
from fastapi.testclient import TestClient
from serving_helpers import ingest_with_a_fusion_model

from hivlp_milvus.connection import ConnectionOptions, connect

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
    assert (out["plan"], out["coarse_limit"]) == ("hierarchical", ALL_ROWS)  # an explicit shortlist keeps the funnel
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


def test_fusion_limit_on_a_model_without_fusion_block_is_422(client: TestClient, layout: DemoLayout) -> None:
    files = {"file": ("q.png", _image(layout), "image/png")}
    for r in (
        client.post("/search", json={"text": "a red circle", "limit": 3, "fusion_limit": 10}),
        client.post("/search/image", files=files, data={"fusion_limit": "10"}),
    ):
        assert (r.status_code, r.json()["error"]) == (422, "no_fusion_block"), r.text
        assert "needs a model with a fusion block" in r.json()["message"]


# -- the fusion stage (third stage) over HTTP ----------------------------------------------------
# The fusion app below replaces `client`'s while it is open (one `api` per process), so every test
# of `client` sits above this line.
# A micro model WITH a fusion block (random-init, so its order is arbitrary and differs from the
# fine order: the checks are sharp), 12 scenes, plus two image rows whose vectors are scene 0's: one
# whose file is missing (unreadable: keeps its fine position, fusion_score null) and one whose
# reference is relative (resolved against the app's media root, as /media resolves it).
N_FUSION = 12
FUSION_IMAGES = N_FUSION + 2  # every image row: M covers them all, so both special rows are candidates
FUSION_ROWS = N_FUSION * 6 + 2


@dataclass
class FusionSite:
    client: TestClient
    model: Any
    records: list[Any]
    root: Path


@pytest.fixture(scope="module")
def fusion_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FusionSite]:
    import hivlp_milvus
    from hivlp_milvus.data import EmbeddingRecord, load_source, synthetic
    from serving.ingress import IngressSettings
    from serving.inprocess import local_app

    root = tmp_path_factory.mktemp("fusion")
    synthetic.write_splits(root / "data", {"test": N_FUSION}, seed=3, progress=False)
    records = list(load_source(root / "data", split="test"))
    uri = str(root / "hivlp.db")
    model = ingest_with_a_fusion_model(records, root / "model", uri, "fusion")
    vec = model.embed_images([records[0].image])
    special = [
        EmbeddingRecord("missing", "image", vec.low[0], vec.high[0], reference=str(root / "gone.png")),
        EmbeddingRecord(
            "relative", "image", vec.low[0], vec.high[0], reference=str(Path(records[0].image).relative_to(root))
        ),
    ]
    report = hivlp_milvus.ingest(special, uri=uri, collection_name="fusion", progress=False)
    assert not report.failed, str(report)
    settings = IngressSettings(collection="fusion", media_root=str(root))
    with (
        local_app(str(root / "model"), ConnectionOptions(uri=uri), "fusion", settings=settings) as app,
        TestClient(app) as test_client,
    ):
        yield FusionSite(test_client, model, records, root)


def _expected_fusion(site: FusionSite, query: Any, kind: str, fine: list[dict[str, Any]], limit: int) -> list[Any]:
    """The library's order rule, computed here: score_pairs on the readable candidates, sorted into their slots."""
    from hivlp_milvus.model.preprocess import load_image

    slots, images, texts = [], [], []
    for pos, hit in enumerate(fine):
        if kind == "text":
            path = Path(hit["reference"])
            path = path if path.is_absolute() else site.root / path
            if not path.is_file():
                continue
            images.append(load_image(path))
            texts.append(query)
        else:
            images.append(query)
            texts.append(hit["reference"])
        slots.append(pos)
    scores = site.model.score_pairs(images, texts)
    ranked = iter(sorted(zip(slots, scores, strict=True), key=lambda s: -s[1]))  # stable: ties keep fine order
    order = [next(ranked) if pos in slots else (pos, None) for pos in range(len(fine))]
    return [(fine[pos]["id"], score) for pos, score in order[:limit]]


def _check_fusion_hits(hits: list[dict[str, Any]], expected: list[Any]) -> None:
    assert [h["id"] for h in hits] == [i for i, _ in expected]
    for hit, (_, score) in zip(hits, expected, strict=True):
        if score is None:
            assert hit["fusion_score"] is None, hit
            assert hit["fusion_error"], hit
        else:
            assert hit["fusion_score"] == pytest.approx(float(score), rel=1e-4, abs=1e-5), hit
            assert hit["fusion_error"] is None, hit


def test_a_small_collection_is_answered_by_one_exact_search_and_says_so(client: TestClient, layout: DemoLayout) -> None:
    text = layout.records[0].captions[0]
    body = {"text": text, "modality": "all", "limit": 7}
    high = client.post("/encode", json={"text": text}).json()["high"]
    out = client.post("/search", json=body).json()
    assert out["plan"] == "exact"
    assert out["coarse_limit"] >= 7
    assert [h["id"] for h in out["hits"]] == [i for i, _ in _exact_top(layout, high, 7)]


def test_fusion_order_over_http_equals_score_pairs_order(fusion_site: FusionSite) -> None:
    caption = fusion_site.records[0].captions[0]
    base = {"text": caption, "modality": "image", "coarse_limit": FUSION_ROWS}
    fine = fusion_site.client.post("/search", json={**base, "limit": FUSION_IMAGES}).json()["hits"]
    r = fusion_site.client.post("/search", json={**base, "limit": 5, "fusion_limit": FUSION_IMAGES})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = _expected_fusion(fusion_site, caption, "text", fine, limit=FUSION_IMAGES)
    assert [i for i, _ in expected] != [h["id"] for h in fine]  # the stage re-orders: the check is sharp
    _check_fusion_hits(body["hits"], expected[:5])
    assert body["timings"]["fusion_ms"] > 0
    assert body["timings"]["fusion_batch_size"] == 1
    assert body["plan"] == "hierarchical+fusion"
    # All M candidates, unreadable included: it keeps its fine position and says why.
    r = fusion_site.client.post("/search", json={**base, "limit": FUSION_IMAGES, "fusion_limit": FUSION_IMAGES})
    hits = r.json()["hits"]
    _check_fusion_hits(hits, expected)
    by_key = {h["key"]: (pos, h) for pos, h in enumerate(hits)}
    pos, missing = by_key["missing"]  # its null fusion_score is in expected (checked above)
    assert "gone.png" in missing["fusion_error"]
    assert pos == [h["key"] for h in fine].index("missing")
    assert by_key["relative"][1]["fusion_score"] is not None  # read through the media root
    # Without fusion_limit the answer has no fusion stage.
    assert all(h["fusion_score"] is None for h in fine)


def test_fusion_through_the_upload_route_scores_the_query_image(fusion_site: FusionSite) -> None:
    image = Path(fusion_site.records[1].image).read_bytes()
    files = {"file": ("q.png", image, "image/png")}
    data = {"coarse_limit": str(FUSION_ROWS), "modality": "text"}
    fine = fusion_site.client.post("/search/image", files=files, data={**data, "limit": "20"}).json()["hits"]
    r = fusion_site.client.post("/search/image", files=files, data={**data, "limit": "6", "fusion_limit": "20"})
    assert r.status_code == 200, r.text
    expected = _expected_fusion(fusion_site, image, "image", fine, limit=6)
    _check_fusion_hits(r.json()["hits"], expected)


def test_fusion_with_modality_all_keeps_same_modality_candidates_in_place(fusion_site: FusionSite) -> None:
    caption = fusion_site.records[2].captions[0]
    r = fusion_site.client.post(
        "/search", json={"text": caption, "modality": "all", "limit": 10, "fusion_limit": 10, "coarse_limit": 80}
    )
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    texts = [h for h in hits if h["modality"] == "text"]
    assert texts
    assert all(h["fusion_score"] is None and "text query" in h["fusion_error"] for h in texts)


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"limit": 10, "fusion_limit": 5}, "fusion_limit (5) must be >= limit (10)"),
        ({"fusion_limit": 201}, "fusion_limit"),
        ({"fusion_limit": 0}, "fusion_limit"),
        ({"fusion_limit": 30, "coarse_limit": 20}, "coarse_limit (20) must be >= fusion_limit (30)"),
    ],
)
def test_fusion_limit_out_of_range_is_422(fusion_site: FusionSite, extra: dict[str, Any], where: str) -> None:
    form = {k: str(v) for k, v in extra.items()}
    image = Path(fusion_site.records[0].image).read_bytes()
    for r in (
        fusion_site.client.post("/search", json={"text": "a red circle", **extra}),
        fusion_site.client.post("/search/image", files={"file": ("q.png", image, "image/png")}, data=form),
    ):
        assert r.status_code == 422, r.text
        assert where in r.json()["message"]


def test_a_batch_scores_each_search_and_a_bad_query_image_fails_only_its_own(fusion_site: FusionSite) -> None:
    """``score_many`` is a FusionScorer batch's body: several searches, one score_pairs call."""
    import asyncio

    from hivlp_milvus.errors import BadRecordError
    from serving.fusion import FusionScorer

    scorer = FusionScorer.func_or_class(str(fusion_site.root / "model"), media_root=str(fusion_site.root))
    images = [
        {"id": i, "modality": "image", "reference": str(r.image), "score": 0.0}
        for i, r in enumerate(fusion_site.records[:6])
    ]
    captions = [
        {"id": 100 + i, "modality": "text", "reference": r.captions[0], "score": 0.0}
        for i, r in enumerate(fusion_site.records)
    ]
    good_image = Path(fusion_site.records[2].image).read_bytes()
    requests = [
        {"query": fusion_site.records[0].captions[1], "kind": "text", "limit": 4, "candidates": images},
        {"query": good_image[:60] + b"\0" * 100, "kind": "image", "limit": 3, "candidates": captions},  # no image
        {"query": good_image, "kind": "image", "limit": 3, "candidates": captions},
    ]
    out = asyncio.run(scorer.score_many(requests))
    assert isinstance(out[1], BadRecordError)
    for request, result in ((requests[0], out[0]), (requests[2], out[2])):
        alone = asyncio.run(scorer.score_now(request))
        assert [r["index"] for r in result["ranked"]] == [r["index"] for r in alone["ranked"]]
        assert len(result["ranked"]) == request["limit"]
        scores = [r["fusion_score"] for r in result["ranked"]]
        assert scores == sorted(scores, reverse=True)
    with pytest.raises(BadRecordError):
        asyncio.run(scorer.score_now(requests[1]))
