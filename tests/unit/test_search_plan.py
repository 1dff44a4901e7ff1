"""Plan selection and the size-derived default ``coarse_limit``, against brute force on real Milvus Lite.

``hierarchical_search(plan="auto")`` answers with one exact search on ``vec_high`` where the
profile's cost model (``schemas/profiles.yaml``) predicts it cheaper, and sizes the default
shortlist from the collection's row count by the profile's recall curve. Both plans must return
what the numpy reference of ``test_search_reference`` returns: the exact plan is the funnel whose
shortlist holds every row (brute force), the funnel is the exact low top-K re-ranked. Filters and
modalities must act identically on both.

The large-collection choice is checked through ``SizedCollection``, a named fake that reports a
row count this test cannot build (1M rows) around the real 3,000-row collection.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from collection_rows import created, row
from test_fusion_search import CAPTIONS, RECORDS, image_dir, model  # noqa: F401 - fixtures reused
from test_search_reference import (
    HIGH,
    LIMIT,
    LOW,
    PER_MODALITY,
    TIE,
    correlated,
    make_rows,
    numpy_funnel,
)

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import connect
from hivlp_milvus.content import ContentOptions
from hivlp_milvus.errors import ProfileError, QueryError
from hivlp_milvus.ids import text_key
from hivlp_milvus.model.embedding import HierarchicalEmbedding
from hivlp_milvus.profiles import PlanCost, PlanModel, load_profile
from hivlp_milvus.search import hierarchical_search

N_ROWS = 2 * PER_MODALITY
N_QUERIES = 6
CUT = 700  # the filter's attributes["i"] < CUT: 700 of the image partition's rows


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261130)
    low, high = correlated(rng, N_ROWS)
    q_low, q_high = correlated(rng, 20 * N_QUERIES)
    # Keep the queries whose expected answers are unambiguous at every cut the tests use.
    profile = load_profile("lite")
    ks = {N_ROWS, 100, *(profile.default_coarse_limit(LIMIT, num_rows=n, lite=True) for n in (N_ROWS, 1_000_000))}
    subsets = (np.arange(N_ROWS), np.arange(PER_MODALITY), np.arange(PER_MODALITY, N_ROWS), np.arange(CUT))

    def unambiguous(q: int) -> bool:
        try:
            for k in ks:
                for rows in subsets:
                    numpy_funnel(q_low[q], q_high[q], low[rows], high[rows], min(k, len(rows)), LIMIT)
        except AssertionError:
            return False
        return True

    keep = [q for q in range(len(q_low)) if unambiguous(q)][:N_QUERIES]
    assert len(keep) == N_QUERIES
    return {"low": low, "high": high, "q_low": q_low[keep], "q_high": q_high[keep]}


def _built(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray], name: str, profile: str
) -> Iterator[HierarchicalCollection]:
    client = connect(str(tmp_path_factory.mktemp(name) / "hivlp.db"))
    with created(client, name, low_dim=LOW, high_dim=HIGH, profile=profile, expected_rows=N_ROWS) as c:
        assert c.upsert(make_rows(data["low"], data["high"])) == N_ROWS
        c.flush()
        yield c


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> Iterator[HierarchicalCollection]:
    """The rows under the default Lite profile (IVF_FLAT on vec_low), sealed and indexed."""
    yield from _built(tmp_path_factory, data, "plan", "lite")


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory, data: dict[str, np.ndarray]) -> Iterator[HierarchicalCollection]:
    """The same rows with an exact (FLAT) coarse index: the funnel equals numpy's exactly."""
    yield from _built(tmp_path_factory, data, "planflat", "lite:FLAT")


class SizedCollection:
    """Fake: a real collection that reports ``rows`` rows to the planner (a size not buildable here)."""

    def __init__(self, col: HierarchicalCollection, rows: int) -> None:
        self._col, self._rows = col, rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self._col, name)

    def approx_num_rows(self) -> int:
        return self._rows


def _queries(data: dict[str, np.ndarray], n: int = N_QUERIES) -> HierarchicalEmbedding:
    return HierarchicalEmbedding(data["q_low"][:n], data["q_high"][:n])


def _ids(data: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray([r["id"] for r in make_rows(data["low"], data["high"])], dtype=np.int64)


def _assert_reference(res: Any, data: dict[str, np.ndarray], k: int, rows: np.ndarray | None = None) -> None:
    """Each query's hits are numpy's funnel at shortlist ``k`` over ``rows`` (default: all), scores too."""
    rows = np.arange(N_ROWS) if rows is None else rows
    low, high, ids = data["low"][rows], data["high"][rows], _ids(data)[rows]
    for q, hits in enumerate(res):
        best, s_high, s_low = numpy_funnel(data["q_low"][q], data["q_high"][q], low, high, min(k, len(rows)), LIMIT)
        assert [h["id"] for h in hits] == [int(i) for i in ids[best]], f"query {q}"
        np.testing.assert_allclose([h["distance"] for h in hits], s_high, atol=TIE)
        np.testing.assert_allclose([h["coarse_distance"] for h in hits], s_low, atol=TIE)


# ---------------------------------------------------------------------- the model in the yaml


def test_yaml_plan_for_every_profile_and_engine() -> None:
    assert load_profile("lite").plan_model(lite=True) is not None
    for name in ("cpu", "gpu"):
        assert load_profile(name).plan_model(lite=False) is not None
    assert load_profile("lite").plan_model(lite=False) is None  # Lite's profile never runs on a server


def test_lite_plan_is_exact_when_small_and_hierarchical_when_large_for_single_queries() -> None:
    profile = load_profile("lite")
    pm = profile.plan_model(lite=True)
    assert pm is not None

    def chosen(rows: int, nq: int = 1) -> str:
        return pm.choose(rows, nq, profile.default_coarse_limit(LIMIT, num_rows=rows, lite=True))

    assert chosen(3_000) == chosen(10_000) == "exact"
    assert chosen(1_000_000) == "hierarchical"
    assert pm.choose(None, 1, 100) == "hierarchical"  # unknown size: the plan that scales


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_server_plan_is_exact_when_small_and_hierarchical_when_large(name: str) -> None:
    profile = load_profile(name)
    pm = profile.plan_model(lite=False)
    assert pm is not None

    def chosen(rows: int, nq: int) -> str:
        return pm.choose(rows, nq, profile.default_coarse_limit(LIMIT, num_rows=rows, lite=False))

    assert chosen(5_000, 1) == "exact"
    assert chosen(1_000_000, 1) == chosen(1_000_000, 32) == "hierarchical"


def test_choose_compares_the_two_costs() -> None:
    pm = PlanModel(
        engine="lite",
        exact=PlanCost(per_row=1e-6),
        hierarchical=PlanCost(base=0.01, per_candidate=1e-4),
        coarse_curve=((1000, 10.0),),
    )
    # exact 1e-6 * rows vs hierarchical 0.01 + nq * cl * 1e-4 = 0.02 at cl=100 (nq=1); the funnel only
    # where predicted <= 0.8x exact (switch_ratio): from 25k rows.
    assert pm.choose(24_000, 1, 100) == "exact"
    assert pm.choose(26_000, 1, 100) == "hierarchical"
    assert pm.choose(26_000, 8, 100) == "exact"  # eight shortlists cost more than one shared scan
    assert dataclasses.replace(pm, switch_ratio=1.0).choose(21_000, 1, 100) == "hierarchical"


@pytest.mark.parametrize("rows", [500, 3_000, 10_000, 50_000, 100_000, 300_000, 1_000_000, 3_000_000])
@pytest.mark.parametrize("limit", [1, 10, 25])
def test_default_coarse_limit_is_at_least_what_the_curve_says(rows: int, limit: int) -> None:
    profile = load_profile("lite")
    pm = profile.plan_model(lite=True)
    assert pm is not None
    curve = pm.coarse_curve
    got = profile.default_coarse_limit(limit, num_rows=rows, lite=True)
    # The first measured size at or above `rows` holds >= 0.99 with per_hit * limit: never fewer.
    covering = [p for n, p in curve if n >= rows]
    if covering:
        assert got >= min(math.ceil(covering[0] * limit), profile.coarse_cap)
    else:  # past the last measured size the shortlist keeps growing
        assert got >= math.ceil(curve[-1][1] * limit)
    assert limit <= got <= profile.coarse_cap
    # ...and it grows with the collection.
    assert profile.default_coarse_limit(limit, num_rows=10 * rows, lite=True) >= got


def test_default_coarse_limit_at_1m_rows_is_larger_than_the_old_default() -> None:
    """The old default (max(10 * limit, 100) = 100) kept 0.972 of the top-10 at 1M rows."""
    assert load_profile("lite").default_coarse_limit(10, num_rows=1_000_000, lite=True) > 100


def test_a_profile_without_a_plan_keeps_the_old_default() -> None:
    assert load_profile("lite").default_coarse_limit(10, num_rows=1_000_000, lite=False) == 100


def test_curve_must_be_at_least_one_per_hit() -> None:
    from hivlp_milvus.profiles import _plan_models  # noqa: PLC2701 - the yaml loader's check itself

    with pytest.raises(ProfileError, match="per_hit"):
        _plan_models(
            {"lite": {"cost": {"exact": {}, "hierarchical": {}}, "coarse_curve": [{"rows": 10, "per_hit": 0.5}]}}
        )


# ---------------------------------------------------------------------- both plans on real Milvus Lite


def test_auto_on_a_small_collection_is_the_exact_plan_and_equals_brute_force(
    col: HierarchicalCollection, data: dict[str, np.ndarray]
) -> None:
    res = hierarchical_search(col, _queries(data), limit=LIMIT, modality="all", output_fields=[])
    assert res.plan == "exact"
    assert res.rerank == "client"  # the funnel's path on Lite, which this plan did not need
    assert res.coarse_limit == load_profile("lite").default_coarse_limit(LIMIT, num_rows=N_ROWS, lite=True)
    assert res.timings["coarse_s"] == 0.0
    assert res.timings["fine_s"] > 0
    _assert_reference(res, data, N_ROWS)  # a shortlist of every row = brute force on vec_high
    assert all(h["entity"] == {} for hits in res for h in hits)


@pytest.mark.parametrize("rerank", ["client", "server"])
def test_forced_hierarchical_with_the_default_shortlist_equals_the_numpy_funnel(
    flat: HierarchicalCollection, data: dict[str, np.ndarray], rerank: str
) -> None:
    res = hierarchical_search(flat, _queries(data), limit=LIMIT, plan="hierarchical", rerank=rerank, modality="all")
    assert res.plan == "hierarchical"
    assert res.rerank == rerank
    k = flat.profile.default_coarse_limit(LIMIT, num_rows=N_ROWS, lite=True)
    assert res.coarse_limit == k
    _assert_reference(res, data, k)


def test_forced_exact_ignores_an_explicit_shortlist(col: HierarchicalCollection, data: dict[str, np.ndarray]) -> None:
    res = hierarchical_search(col, _queries(data), limit=LIMIT, coarse_limit=20, plan="exact", modality="all")
    assert res.plan == "exact"
    _assert_reference(res, data, N_ROWS)


def test_an_explicit_shortlist_keeps_the_funnel_under_auto(
    flat: HierarchicalCollection, data: dict[str, np.ndarray]
) -> None:
    res = hierarchical_search(flat, _queries(data), limit=LIMIT, coarse_limit=100, modality="all")
    assert res.plan == "hierarchical"
    assert res.coarse_limit == 100
    _assert_reference(res, data, 100)


def test_a_large_collection_gets_the_funnel_and_a_curve_sized_shortlist(
    flat: HierarchicalCollection, data: dict[str, np.ndarray]
) -> None:
    big = SizedCollection(flat, 1_000_000)
    res = hierarchical_search(big, _queries(data, 1), limit=LIMIT, modality="all")
    assert res.plan == "hierarchical"
    assert res.coarse_limit == flat.profile.default_coarse_limit(LIMIT, num_rows=1_000_000, lite=True) > 100
    _assert_reference(res, data, res.coarse_limit)


@pytest.mark.parametrize("plan", ["exact", "hierarchical"])
def test_a_filter_acts_identically_on_both_plans(
    flat: HierarchicalCollection, data: dict[str, np.ndarray], plan: str
) -> None:
    """``attributes["i"] < cut`` on the image partition: both plans equal brute force over those rows."""
    cut = CUT
    res = hierarchical_search(
        flat,
        _queries(data),
        limit=LIMIT,
        coarse_limit=N_ROWS,  # the funnel over every row: its answer is brute force too
        plan=plan,
        filter='attributes["i"] < {cut}',
        filter_params={"cut": cut},
        modality="image",
        output_fields=["attributes", "modality"],
    )
    assert res.plan == plan
    _assert_reference(res, data, N_ROWS, rows=np.arange(cut))
    assert all(h["entity"]["attributes"]["i"] < cut and h["entity"]["modality"] == "image" for q in res for h in q)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_exact_plan_searches_only_the_target_modality(
    col: HierarchicalCollection, data: dict[str, np.ndarray], modality: str
) -> None:
    rows = np.arange(PER_MODALITY) if modality == "image" else np.arange(PER_MODALITY, N_ROWS)
    res = hierarchical_search(col, _queries(data), limit=LIMIT, plan="exact", modality=modality)
    _assert_reference(res, data, N_ROWS, rows=rows)


def test_the_collection_method_passes_the_plan_through(
    flat: HierarchicalCollection, data: dict[str, np.ndarray]
) -> None:
    """``col.hierarchical_search(plan=...)`` reaches the search (it was not a parameter of the method)."""
    for plan in ("exact", "hierarchical"):
        res = flat.hierarchical_search(_queries(data), limit=LIMIT, plan=plan, modality="all")
        assert res.plan == plan
        _assert_reference(res, data, N_ROWS if plan == "exact" else res.coarse_limit)


def test_unknown_plan_is_a_query_error(col: HierarchicalCollection, data: dict[str, np.ndarray]) -> None:
    with pytest.raises(QueryError, match="plan must be one of"):
        hierarchical_search(col, _queries(data), plan="fastest")


# ---------------------------------------------------------------------- the fusion stage on both plans


@pytest.fixture(scope="module")
def fused(tmp_path_factory: pytest.TempPathFactory, model: Any) -> Iterator[HierarchicalCollection]:  # noqa: F811
    """test_fusion_search's records (a real ``micro`` model with a fusion block), images by reference."""
    img, txt = model.embed_images([r.image for r in RECORDS]), model.embed_texts(CAPTIONS)
    rows = []
    for i in range(len(RECORDS)):
        for key, modality, ref, emb in (
            (str(i), "image", f"img_{i:03d}.png", img),
            (text_key(str(i), 0), "text", CAPTIONS[i], txt),
        ):
            rows.append(row(key, modality, emb.low[i], emb.high[i], reference=ref))
    client = connect(str(tmp_path_factory.mktemp("planfus") / "hivlp.db"))
    with created(client, "planfus", model=model) as c:
        c.upsert(rows)
        c.flush()
        yield c


def test_fusion_on_the_exact_plan_rescores_the_exact_top_m(fused: HierarchicalCollection, image_dir: Any) -> None:  # noqa: F811
    """Exact top-M then fusion == the funnel over the whole partition then fusion (same ids, same scores)."""
    content = ContentOptions(root=str(image_dir))
    queries = [CAPTIONS[3], RECORDS[8].image]  # text -> images, image -> captions
    kw: dict[str, Any] = {"limit": 5, "fusion_limit": 12, "content": content}
    exact = hierarchical_search(fused, queries, plan="exact", **kw)
    funnel = hierarchical_search(fused, queries, plan="hierarchical", coarse_limit=len(RECORDS), **kw)
    assert exact.plan == "exact+fusion"
    assert funnel.plan == "hierarchical+fusion"
    assert "fusion_s" in exact.timings
    for a, b in zip(exact, funnel, strict=True):
        assert [h["id"] for h in a] == [h["id"] for h in b]
        np.testing.assert_allclose([h["fusion_score"] for h in a], [h["fusion_score"] for h in b], atol=1e-5)
        np.testing.assert_allclose([h["coarse_distance"] for h in a], [h["coarse_distance"] for h in b], atol=1e-5)


def test_costs_written_without_a_dot_are_numbers() -> None:
    """YAML 1.1 reads ``3e-07`` as a string: the loader must still compute with it."""
    from hivlp_milvus.profiles import _plan_models  # noqa: PLC2701 - the yaml loader itself

    spec = {
        "cost": {"exact": {"per_row": "3e-07"}, "hierarchical": {"base": 1}},
        "coarse_curve": [{"rows": 10, "per_hit": 2}],
    }
    pm = _plan_models({"lite": spec})["lite"]
    assert pm.exact.seconds(1_000_000, 1) == pytest.approx(0.3)
    assert pm.choose(1_000_000, 1, 10) == "exact"  # 0.3 s against the funnel's 1 s
