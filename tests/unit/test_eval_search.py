"""Evaluation through Milvus (``evaluate_collection``) against the exact in-memory metrics.

Where both are exact — the FLAT high level, and the funnel with a shortlist as large as the
gallery — the recalls measured through real Milvus Lite searches must equal ``evaluate_embeddings``.
"""

from __future__ import annotations

import numpy as np
import pytest
from collection_rows import row, unit
from model_helpers import micro_fusion_model

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.data.record import Record
from hivlp_milvus.errors import SearchLimitError
from hivlp_milvus.eval import evaluate_embeddings
from hivlp_milvus.eval_search import evaluate_collection
from hivlp_milvus.ids import text_key
from hivlp_milvus.model.embedding import HierarchicalEmbedding

N_IMAGES, CAPTIONS, LOW, HIGH = 30, 2, 8, 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    rng = np.random.default_rng(3)
    img_low, img_high = unit(rng.normal(size=(N_IMAGES, LOW))), unit(rng.normal(size=(N_IMAGES, HIGH)))
    # Captions are noisy copies of their image, so retrieval is far from perfect and from chance.
    txt_low = unit(np.repeat(img_low, CAPTIONS, 0) + 0.9 * rng.normal(size=(N_IMAGES * CAPTIONS, LOW)))
    txt_high = unit(np.repeat(img_high, CAPTIONS, 0) + 0.9 * rng.normal(size=(N_IMAGES * CAPTIONS, HIGH)))
    records = [
        Record(id=f"r{i}", image=f"images/r{i}.png", captions=[f"caption {i}.{j}" for j in range(CAPTIONS)])
        for i in range(N_IMAGES)
    ]
    rows = [row(r.id, "image", img_low[i], img_high[i], reference=r.image_uri) for i, r in enumerate(records)]
    rows += [
        row(text_key(r.id, j), "text", txt_low[i * CAPTIONS + j], txt_high[i * CAPTIONS + j], reference=caption)
        for i, r in enumerate(records)
        for j, caption in enumerate(r.captions)
    ]
    uri = str(tmp_path_factory.mktemp("evalsearch") / "e.db")
    col = HierarchicalCollection.create("evalsearch", uri=uri, low_dim=LOW, high_dim=HIGH, expected_rows=len(rows))
    col.upsert(rows)
    reference = evaluate_embeddings(
        HierarchicalEmbedding(img_low, img_high),
        HierarchicalEmbedding(txt_low, txt_high),
        [r.id for r in records],
        [r.id for r in records for _ in r.captions],
        coarse_ks=(N_IMAGES * CAPTIONS,),
    )
    return col, records, reference


@pytest.mark.parametrize("rerank", ["client", "server"])
def test_exact_rows_equal_the_in_memory_metrics(setup: tuple, rerank: str) -> None:
    col, records, reference = setup
    gallery = N_IMAGES * CAPTIONS  # a shortlist this large keeps every candidate: the funnel is exact
    table = evaluate_collection(col, records, coarse_ks=(gallery,), rerank=rerank, batch_size=7, progress=False)
    assert set(table.rows) == {"low", "high", f"hier@{gallery}"}
    assert table.meta["n_images"] == N_IMAGES
    assert table.meta["n_texts"] == N_IMAGES * CAPTIONS
    want = {key: reference.rows["high"][key] for key in table.rows["high"]}  # R@K both ways and AR
    assert table.rows["high"] == pytest.approx(want)
    assert table.rows[f"hier@{gallery}"] == pytest.approx({**want, "shortlist_recall": 1.0})
    # A real task (neither perfect nor chance), so equal recalls are not equal by accident.
    assert table.rows["high"]["text_to_image_R@10"] > 10 / N_IMAGES
    assert table.rows["high"]["AR"] < 1.0
    assert 0.0 < table.rows["low"]["AR"] <= 1.0


def test_shared_shortlist_rows_equal_hierarchical_search(setup: tuple) -> None:
    """``client`` computes ``hier@K`` from the shortlist search; ``server`` runs ``hierarchical_search`` per batch."""
    col, records, _ = setup
    kw = {"coarse_ks": (4, 12), "ks": (1, 2, 4), "batch_size": 7, "progress": False}
    shared = evaluate_collection(col, records, rerank="client", **kw)
    searched = evaluate_collection(col, records, rerank="server", **kw)
    assert shared.rows == searched.rows
    # Shortlists this short lose relevant items, so the two funnels are not equal by being exact.
    assert shared.rows["hier@4"]["shortlist_recall"] < 1.0
    assert shared.rows["hier@4"]["AR"] < shared.rows["hier@12"]["AR"]
    # The fine stage re-orders the shortlist: R@1 is not the coarse ranking's.
    assert shared.rows["hier@4"]["text_to_image_R@1"] != shared.rows["low"]["text_to_image_R@1"]
    with pytest.raises(SearchLimitError, match="coarse_limit=3 is smaller than limit=4"):
        evaluate_collection(col, records, rerank="client", **{**kw, "coarse_ks": (3,)})


def test_rows_outside_the_evaluated_records_still_compete_in_the_fine_stage(setup: tuple) -> None:
    """Evaluating part of a collection: the other rows are coarse hits too, and the client re-rank must
    score them on their stored ``vec_high`` (not drop them), as ``hierarchical_search`` does."""
    col, records, _ = setup
    kw = {"coarse_ks": (6, 12), "ks": (1, 2, 4), "batch_size": 7, "progress": False}
    part = records[: N_IMAGES // 3]
    shared = evaluate_collection(col, part, rerank="client", **kw)
    searched = evaluate_collection(col, part, rerank="server", **kw)
    assert shared.meta["n_images"] == len(part)
    assert shared.rows == searched.rows


def test_rows_missing_from_the_collection_are_not_queries(setup: tuple) -> None:
    col, records, _ = setup
    extra = [*records, Record(id="never-ingested", image="images/x.png", captions=["nothing"])]
    table = evaluate_collection(col, extra, coarse_ks=(20,), progress=False)
    assert table.meta["n_images"] == N_IMAGES
    assert table.meta["n_texts"] == N_IMAGES * CAPTIONS


FUSION_M, FUSION_KS = 4, (1, 2, 3)


@pytest.fixture(scope="module")
def fusion_setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random-init micro model with a fusion block over 10 synthetic scenes (images on disk), ingested."""

    import hivlp_milvus
    from hivlp_milvus.data import load_source, synthetic

    root = tmp_path_factory.mktemp("evalfusion")
    synthetic.write_splits(root / "data", {"test": 10}, seed=1)
    records = list(load_source(root / "data", split="test"))
    model = micro_fusion_model([c for r in records for c in r.captions])
    model.eval()
    uri = str(root / "f.db")
    hivlp_milvus.ingest(records, uri=uri, collection_name="evalfusion", model=model, progress=False)
    col = HierarchicalCollection.open("evalfusion", uri=uri, model=model)
    images = [r.image for r in records]
    captions = [c for r in records for c in r.captions]
    groups = {
        "image": [r.relevance_group for r in records],
        "text": [r.relevance_group for r in records for _ in r.captions],
    }
    return {"col": col, "records": records, "model": model, "images": images, "captions": captions, "groups": groups}


def _expected(setup: dict, n: int | None, m: int | None) -> dict[str, np.ndarray]:
    """First relevant ranks per direction by hand, on the first ``n`` queries; ``m=None``: two stages."""
    model, images, captions, groups = setup["model"], setup["images"], setup["captions"], setup["groups"]
    return {
        "text_to_image": _firsts(model, captions[:n], images, groups["text"], groups["image"], True, m),
        "image_to_text": _firsts(model, images[:n], captions, groups["image"], groups["text"], False, m),
    }


def _firsts(model, queries, targets, query_groups, target_groups, text_queries: bool, m: int | None) -> np.ndarray:
    """Exact fine ranking by high-level dot product; with ``m``, its top-m in the scorer's (stable) order."""
    q_emb = model.embed_texts(queries) if text_queries else model.embed_images(queries)
    t_emb = model.embed_images(targets) if text_queries else model.embed_texts(targets)
    firsts = np.full(len(queries), np.inf)
    for i, query in enumerate(queries):
        ranked = np.argsort(-(t_emb.high @ q_emb.high[i]), kind="stable")[: max(FUSION_KS)]
        if m is not None:
            top = np.argsort(-(t_emb.high @ q_emb.high[i]), kind="stable")[:m]
            cands = [targets[j] for j in top]
            scores = model.score_pairs(cands, query) if text_queries else model.score_pairs(query, cands)
            ranked = top[np.argsort(-scores, kind="stable")]
        hits = [r for r, j in enumerate(ranked, start=1) if target_groups[j] == query_groups[i]]
        firsts[i] = hits[0] if hits else np.inf
    return firsts


def _assert_row(row: dict, expected: dict[str, np.ndarray]) -> None:
    for direction, firsts in expected.items():
        for k in FUSION_KS:
            assert row[f"{direction}_R@{k}"] == pytest.approx(float(np.mean(firsts <= k))), (direction, k)


def test_fusion_row_equals_a_hand_computed_three_stage_ranking(fusion_setup: dict) -> None:
    gallery = len(fusion_setup["captions"])  # a shortlist this large keeps every candidate
    table = evaluate_collection(
        fusion_setup["col"],
        fusion_setup["records"],
        coarse_ks=(gallery,),
        ks=FUSION_KS,
        fusion_limits=(FUSION_M,),
        batch_size=7,
        progress=False,
    )
    name = f"hier@{gallery}+fusion@{FUSION_M}"
    assert set(table.rows) == {"low", "high", f"hier@{gallery}", name}
    row, two_stage = table.rows[name], table.rows[f"hier@{gallery}"]
    _assert_row(row, _expected(fusion_setup, None, FUSION_M))
    # The scorer changed the order somewhere, so this equality is no two-stage row in disguise.
    assert any(row[key] != two_stage[key] for key in two_stage if "_R@" in key)
    assert row["fusion_skipped"] == 0
    assert row["ms_per_query"] > 0


def test_fusion_queries_compares_both_funnels_on_the_same_first_queries(fusion_setup: dict) -> None:
    gallery, n = len(fusion_setup["captions"]), 6
    table = evaluate_collection(
        fusion_setup["col"],
        fusion_setup["records"],
        coarse_ks=(gallery,),
        ks=FUSION_KS,
        fusion_limits=(FUSION_M,),
        fusion_queries=n,
        batch_size=4,
        progress=False,
    )
    assert list(table.rows) == [
        "low",
        "high",
        f"hier@{gallery}",
        f"hier@{gallery} n={n}",
        f"hier@{gallery}+fusion@{FUSION_M} n={n}",
    ]
    _assert_row(table.rows[f"hier@{gallery} n={n}"], _expected(fusion_setup, n, None))
    _assert_row(table.rows[f"hier@{gallery}+fusion@{FUSION_M} n={n}"], _expected(fusion_setup, n, FUSION_M))
    assert table.meta["fusion_queries"] == n


@pytest.mark.parametrize(("fusion_limits", "message"), [((2,), "below max"), ((100,), "larger than every coarse_ks")])
def test_fusion_limits_that_cannot_give_a_row_say_why(setup: tuple, fusion_limits: tuple, message: str) -> None:
    col, records, _ = setup
    with pytest.raises(SearchLimitError, match=message):
        evaluate_collection(col, records, coarse_ks=(20,), fusion_limits=fusion_limits, progress=False)
