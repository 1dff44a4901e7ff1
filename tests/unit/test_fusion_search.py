"""Three-stage search on a real Milvus Lite: coarse → fine → fusion, with a real ``micro`` model.

The fusion block is random-init, so its order is arbitrary — which is what makes the checks
sharp: the stage-3 order must equal the order of ``score_pairs`` on the fine top-M, computed
here independently from the two-stage search and the image files, and it differs from the
fine order.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from collection_rows import row
from model_helpers import micro_fusion_model
from PIL import Image

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import connect
from hivlp_milvus.content import ContentOptions
from hivlp_milvus.data import synthetic
from hivlp_milvus.errors import ConfigError, QueryError, SearchLimitError
from hivlp_milvus.ids import text_key
from hivlp_milvus.model import create_model

N = 40
LIMIT, M, COARSE = 5, 12, 40
RECORDS = synthetic.generate(N, seed=11, image_size=32, captions_per_image=1)
CAPTIONS = [r.captions[0] for r in RECORDS]


def _image_file(i: int) -> str:
    return f"img_{i:03d}.png"


@pytest.fixture(scope="module")
def model() -> Any:
    return micro_fusion_model(CAPTIONS)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i, r in enumerate(RECORDS):
        img = r.image if isinstance(r.image, Image.Image) else Image.fromarray(np.asarray(r.image))
        img.save(root / _image_file(i))
    return root


def _rows(model: Any) -> list[dict[str, Any]]:
    img = model.embed_images([r.image for r in RECORDS])
    txt = model.embed_texts(CAPTIONS)
    rows = []
    for i in range(N):
        # Image references are relative: the content root says where they live.
        rows.append(row(str(i), "image", img.low[i], img.high[i], reference=_image_file(i)))
        rows.append(row(text_key(str(i), 0), "text", txt.low[i], txt.high[i], reference=CAPTIONS[i]))
    return rows


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return connect(str(tmp_path_factory.mktemp("lite") / "fusion.db"))


@pytest.fixture(scope="module")
def col(client: Any, model: Any) -> Iterator[HierarchicalCollection]:
    collection = HierarchicalCollection.create(f"fus_{uuid.uuid4().hex[:8]}", client=client, model=model)
    collection.upsert(_rows(model))
    collection.flush()
    yield collection
    collection.drop()


def _fine(col: HierarchicalCollection, query: Any, rerank: str) -> list[dict[str, Any]]:
    """The two-stage top-M, which the fusion stage re-scores."""
    return col.hierarchical_search(query, limit=M, coarse_limit=COARSE, rerank=rerank)[0]


def _expected(model: Any, query: Any, fine: list[dict[str, Any]], root: Path) -> tuple[list[int], np.ndarray]:
    """The fusion order of the fine top-M, from score_pairs on the rows' content read here."""
    refs = [h["entity"]["reference"] for h in fine]
    if isinstance(query, str):
        scores = model.score_pairs([Image.open(root / ref) for ref in refs], query)
    else:
        scores = model.score_pairs(query, refs)
    order = np.argsort(-scores, kind="stable")
    return [fine[j]["id"] for j in order], scores[order]


@pytest.mark.parametrize("rerank", ["client", "server"])
def test_stage_three_order_is_the_scorers_order_on_the_fine_top_m(col, model, image_dir, rerank) -> None:
    content = ContentOptions(root=str(image_dir))
    queries = [CAPTIONS[3], CAPTIONS[17], RECORDS[8].image]  # two text→image, one image→text
    res = col.hierarchical_search(
        queries, limit=LIMIT, coarse_limit=COARSE, fusion_limit=M, rerank=rerank, content=content
    )
    assert len(res) == len(queries)
    assert res.fusion_skipped == []
    assert {"encode_s", "coarse_s", "fine_s", "fusion_s", "total_s"} <= set(res.timings)
    reordered = False
    for query, hits in zip(queries, res, strict=True):
        fine = _fine(col, query, rerank)
        assert len(fine) == M
        ids, scores = _expected(model, query, fine, image_dir)
        assert [h["id"] for h in hits] == ids[:LIMIT]
        np.testing.assert_allclose([h["fusion_score"] for h in hits], scores[:LIMIT], atol=1e-5)
        # Hits keep both earlier scores of the same row.
        by_id = {h["id"]: h for h in fine}
        for h in hits:
            assert h["distance"] == pytest.approx(by_id[h["id"]]["distance"], abs=1e-5)
            assert h["coarse_distance"] == pytest.approx(by_id[h["id"]]["coarse_distance"], abs=1e-5)
            assert h["entity"] == by_id[h["id"]]["entity"]
        reordered |= ids[:LIMIT] != [h["id"] for h in fine[:LIMIT]]
    assert reordered  # otherwise this test could not tell the fusion stage from the fine one


def test_limit_output_fields_and_the_two_stage_default(col, image_dir) -> None:
    content = ContentOptions(root=str(image_dir))
    res = col.hierarchical_search(CAPTIONS[5], limit=3, fusion_limit=M, output_fields=["key"], content=content)
    assert len(res[0]) == 3
    for hit in res[0]:
        assert set(hit) == {"id", "distance", "coarse_distance", "fusion_score", "entity"}
        assert set(hit["entity"]) == {"key"}  # reference and modality were read, not returned
    two = col.hierarchical_search(CAPTIONS[5], limit=3)
    assert "fusion_score" not in two[0][0]
    assert "fusion_s" not in two.timings


def test_fusion_limit_is_validated(col) -> None:
    with pytest.raises(SearchLimitError, match="fusion_limit must be an int >= limit=5"):
        col.hierarchical_search(CAPTIONS[0], limit=5, fusion_limit=4)
    with pytest.raises(SearchLimitError, match="fusion_limit"):
        col.hierarchical_search(CAPTIONS[0], limit=5, fusion_limit=True)
    with pytest.raises(SearchLimitError, match="coarse_limit=10 is smaller than limit=20"):
        col.hierarchical_search(CAPTIONS[0], limit=5, coarse_limit=10, fusion_limit=20)
    with pytest.raises(QueryError, match="embedding query"):
        col.hierarchical_search(col.model.embed_texts(CAPTIONS[0]), limit=5, fusion_limit=10)


def test_an_unreadable_image_keeps_its_fine_rank_and_is_reported(col, model, image_dir, tmp_path) -> None:
    query = CAPTIONS[21]
    fine = _fine(col, query, "client")
    broken_dir = tmp_path / "images"
    shutil.copytree(image_dir, broken_dir)
    missing, corrupt = fine[1], fine[3]  # fine positions 1 and 3
    (broken_dir / missing["entity"]["reference"]).unlink()
    (broken_dir / corrupt["entity"]["reference"]).write_bytes(b"not a png")
    res = col.hierarchical_search(
        query, limit=LIMIT, coarse_limit=COARSE, fusion_limit=M, content=ContentOptions(root=str(broken_dir))
    )
    hits = res[0]
    assert len(hits) == LIMIT
    for pos, broken in ((1, missing), (3, corrupt)):
        assert hits[pos]["id"] == broken["id"]
        assert hits[pos]["fusion_score"] is None
        assert broken["entity"]["reference"] in hits[pos]["fusion_error"]
        assert hits[pos]["distance"] == pytest.approx(broken["distance"], abs=1e-5)
    assert [(s["query"], s["id"]) for s in res.fusion_skipped] == [(0, missing["id"]), (0, corrupt["id"])]
    assert "not found" in res.fusion_skipped[0]["reason"]
    # The readable candidates fill the other positions in the scorer's order.
    readable = [h for h in fine if h["id"] not in (missing["id"], corrupt["id"])]
    ids, scores = _expected(model, query, readable, image_dir)
    assert [hits[p]["id"] for p in (0, 2, 4)] == ids[:3]
    np.testing.assert_allclose([hits[p]["fusion_score"] for p in (0, 2, 4)], scores[:3], atol=1e-5)


def test_same_modality_candidates_are_reported_not_scored(col, image_dir) -> None:
    res = col.hierarchical_search(
        CAPTIONS[2], limit=LIMIT, fusion_limit=M, modality="all", content=ContentOptions(root=str(image_dir))
    )
    texts = [h for h in res[0] if h["entity"]["modality"] == "text"]
    assert texts  # the caption's own row is its best match
    assert all(h["fusion_score"] is None and "cannot be fused" in h["fusion_error"] for h in texts)
    assert {s["id"] for s in res.fusion_skipped} >= {h["id"] for h in texts}


def test_a_model_without_fusion_block_is_a_config_error(client) -> None:
    plain = create_model("micro", texts=CAPTIONS, seed=0)
    collection = HierarchicalCollection.create(f"plain_{uuid.uuid4().hex[:8]}", client=client, model=plain)
    try:
        emb = plain.embed_texts(CAPTIONS[:2])
        collection.upsert([row(str(i), "text", emb.low[i], emb.high[i], reference=CAPTIONS[i]) for i in range(2)])
        with pytest.raises(ConfigError, match="no fusion block"):
            collection.hierarchical_search(CAPTIONS[0], limit=1, fusion_limit=2, modality="text")
        assert len(collection.hierarchical_search(CAPTIONS[0], limit=1, modality="text")[0]) == 1
        collection.model = None
        with pytest.raises(ConfigError, match="has no model"):
            collection.hierarchical_search(CAPTIONS[0], limit=1, fusion_limit=2)
    finally:
        collection.drop()


@pytest.fixture
def weighted(model: Any) -> Iterator[Any]:
    """The module's model with a score mix set for one test, then restored."""
    yield model
    model.set_fusion_score_weight(None)


@pytest.mark.parametrize("rerank", ["client", "server"])
def test_score_weight_zero_gives_the_two_stage_order_exactly(col, weighted, image_dir, rerank) -> None:
    weighted.set_fusion_score_weight(0.0)
    queries = [CAPTIONS[3], CAPTIONS[17], RECORDS[8].image]
    res = col.hierarchical_search(
        queries,
        limit=LIMIT,
        coarse_limit=COARSE,
        fusion_limit=M,
        rerank=rerank,
        content=ContentOptions(root=str(image_dir)),
    )
    for query, hits in zip(queries, res, strict=True):
        fine = _fine(col, query, rerank)
        assert [h["id"] for h in hits] == [h["id"] for h in fine[:LIMIT]]
        assert all(h["fusion_score"] is not None for h in hits)  # scored, yet in the fine order


def test_the_stage_three_order_is_the_mixed_score_order(col, weighted, image_dir) -> None:
    queries = [CAPTIONS[3], CAPTIONS[17], RECORDS[8].image]
    fines, scores = [], []
    for query in queries:
        fine = _fine(col, query, "client")
        refs = [h["entity"]["reference"] for h in fine]
        images = [Image.open(image_dir / r) for r in refs] if isinstance(query, str) else query
        fines.append(fine)
        scores.append(weighted.score_pairs(images, query if isinstance(query, str) else refs))
    # A weight that puts the random block's logit spread on the scale of the fine distances' spread,
    # so that neither pure order is the mixed one.
    spread = np.ptp([h["distance"] for h in fines[0]]) / np.ptp(scores[0])
    weight = float(spread / 2)
    weighted.set_fusion_score_weight(weight)
    res = col.hierarchical_search(
        queries, limit=LIMIT, coarse_limit=COARSE, fusion_limit=M, content=ContentOptions(root=str(image_dir))
    )
    differs_from_both = False
    for fine, score, hits in zip(fines, scores, res, strict=True):
        mixed = np.array([h["distance"] for h in fine]) + weight * score
        expected = [fine[j]["id"] for j in np.argsort(-mixed, kind="stable")][:LIMIT]
        got = [h["id"] for h in hits]
        assert got == expected
        fusion_only = [fine[j]["id"] for j in np.argsort(-score, kind="stable")][:LIMIT]
        differs_from_both |= got not in ([h["id"] for h in fine[:LIMIT]], fusion_only)
    assert differs_from_both  # otherwise the mix could not be told from either pure order
