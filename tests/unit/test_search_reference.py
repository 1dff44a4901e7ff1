"""The funnel against an independent numpy funnel, with shortlists much smaller than the collection.

``hierarchical_search`` must return what this computation returns: the exact top-``K`` of the
collection by the low-level inner product (the coarse shortlist), re-ranked by the exact
high-level inner product, its best ``limit``. With an exact coarse index (the ``lite:FLAT``
profile) that holds to float32 rounding; with IVF it holds up to ANN loss, and exactly again when
every list is probed. The returned ``distance`` is the high-level dot product and
``coarse_distance`` the low-level one, for every hit.

The rows are random unit vectors whose low level is a noisy projection of the high level, so the
coarse ranking agrees only roughly with the fine one: the funnel's answer then depends on ``K``
and differs from exact high-level search (checked), so a funnel that ignored ``coarse_limit`` or
re-ranked by the wrong level would fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from collection_rows import row, unit

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import connect
from hivlp_milvus.model.embedding import HierarchicalEmbedding

LOW, HIGH = 16, 64
PER_MODALITY = 1500  # 3,000 rows: two partitions of 1,500
LIMIT = 10
N_QUERIES = 8
# Rows whose scores differ by less than this may be ordered either way by float32 arithmetic.
TIE = 1e-5


def correlated(rng: np.random.Generator, n: int, noise: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (low, high) unit-vector pairs; low = noisy projection of high onto its first LOW dims."""
    high = unit(rng.standard_normal((n, HIGH)))
    low = unit(high[:, :LOW] + noise * rng.standard_normal((n, LOW)) / np.sqrt(LOW))
    return low, high


def make_rows(low: np.ndarray, high: np.ndarray) -> list[dict[str, Any]]:
    """Row ``i`` keyed ``r{i:05d}``, attributes ``{"i": i}``: the first half images, the rest captions."""
    return [
        row(f"r{i:05d}", "image" if i < len(low) // 2 else "text", low[i], high[i], attributes={"i": i})
        for i in range(len(low))
    ]


def numpy_funnel(
    q_low: np.ndarray, q_high: np.ndarray, low: np.ndarray, high: np.ndarray, k: int, limit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: exact low top-k, re-ranked by exact high. Returns (row indices, high, low scores).

    Computed in float64; asserts the data leaves no near-tie at either cut (k-th/k+1-th coarse
    score, limit-th/limit+1-th fine score), so the expected answer is unambiguous.
    """
    s_low = low.astype(np.float64) @ q_low.astype(np.float64)
    order = np.argsort(-s_low, kind="stable")
    if k < len(order):
        assert s_low[order[k - 1]] - s_low[order[k]] > TIE, "ambiguous coarse cut: pick another seed"
    shortlist = order[:k]
    s_high = high[shortlist].astype(np.float64) @ q_high.astype(np.float64)
    fine = np.argsort(-s_high, kind="stable")
    if limit < len(fine):
        assert s_high[fine[limit - 1]] - s_high[fine[limit]] > TIE, "ambiguous fine cut: pick another seed"
    best = shortlist[fine[:limit]]
    return best, s_high[fine[:limit]], s_low[best]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return connect(str(tmp_path_factory.mktemp("ref") / "hivlp.db"))


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261129)
    low, high = correlated(rng, 2 * PER_MODALITY)
    # Keep the queries whose expected answers are unambiguous (no near-tie at a cut; see numpy_funnel).
    q_low, q_high = correlated(rng, 20 * N_QUERIES)
    keep = [q for q in range(len(q_low)) if _unambiguous(q_low[q], q_high[q], low, high)][:N_QUERIES]
    assert len(keep) == N_QUERIES
    return {"low": low, "high": high, "q_low": q_low[keep], "q_high": q_high[keep]}


def _unambiguous(q_low: np.ndarray, q_high: np.ndarray, low: np.ndarray, high: np.ndarray) -> bool:
    parts = (slice(None), slice(0, PER_MODALITY), slice(PER_MODALITY, None))
    try:
        for k in (100, 1000, len(low)):
            for part in parts:
                numpy_funnel(q_low, q_high, low[part], high[part], k, LIMIT)
    except AssertionError:
        return False
    return True


def _filled(client: Any, data: dict[str, np.ndarray], profile: str) -> Iterator[HierarchicalCollection]:
    col = HierarchicalCollection.create(
        unique("ref"), client=client, low_dim=LOW, high_dim=HIGH, profile=profile, expected_rows=2 * PER_MODALITY
    )
    try:
        assert col.upsert(make_rows(data["low"], data["high"])) == 2 * PER_MODALITY
        col.flush()  # sealed segments: the index (not a growing segment's brute force) answers
        yield col
    finally:
        col.drop()


@pytest.fixture(scope="module")
def exact(client: Any, data: dict[str, np.ndarray]) -> Iterator[HierarchicalCollection]:
    """The collection with an exact (FLAT) coarse index: the funnel must equal numpy's exactly."""
    yield from _filled(client, data, "lite:FLAT")


@pytest.fixture(scope="module")
def ivf(client: Any, data: dict[str, np.ndarray]) -> Iterator[HierarchicalCollection]:
    """The default Lite profile (IVF_FLAT on vec_low)."""
    yield from _filled(client, data, "lite")


def _queries(data: dict[str, np.ndarray]) -> HierarchicalEmbedding:
    return HierarchicalEmbedding(data["q_low"], data["q_high"])


def _assert_equals_reference(
    res: Any, data: dict[str, np.ndarray], ids: np.ndarray, k: int, rows: slice = slice(None)
) -> None:
    low, high = data["low"][rows], data["high"][rows]
    row_ids = ids[rows]
    assert len(res) == N_QUERIES
    for q, hits in enumerate(res):
        best, s_high, s_low = numpy_funnel(data["q_low"][q], data["q_high"][q], low, high, k, LIMIT)
        assert [h["id"] for h in hits] == [int(i) for i in row_ids[best]], f"query {q}"
        np.testing.assert_allclose([h["distance"] for h in hits], s_high, atol=TIE, err_msg=f"query {q} fine")
        np.testing.assert_allclose(
            [h["coarse_distance"] for h in hits], s_low, atol=TIE, err_msg=f"query {q} coarse_distance"
        )


def _row_ids(data: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray([r["id"] for r in make_rows(data["low"], data["high"])], dtype=np.int64)


def test_reference_depends_on_the_shortlist(data: dict[str, np.ndarray]) -> None:
    """The data makes the check meaningful: the funnel differs from exact high search, and K matters."""
    n_rows = len(data["low"])
    differs_from_exact = differs_between_ks = 0
    for q in range(N_QUERIES):
        args = (data["q_low"][q], data["q_high"][q], data["low"], data["high"])
        exact_high = numpy_funnel(*args, n_rows, LIMIT)[0]
        k100, k1000 = numpy_funnel(*args, 100, LIMIT)[0], numpy_funnel(*args, 1000, LIMIT)[0]
        differs_from_exact += list(k100) != list(exact_high)
        differs_between_ks += list(k100) != list(k1000)
    assert differs_from_exact >= N_QUERIES // 2
    assert differs_between_ks >= N_QUERIES // 2


@pytest.mark.parametrize("rerank", ["client", "server"])
@pytest.mark.parametrize("k", [100, 1000])
def test_funnel_equals_numpy_funnel_with_exact_coarse_index(
    exact: HierarchicalCollection, data: dict[str, np.ndarray], k: int, rerank: str
) -> None:
    assert exact.profile.low.index_type == "FLAT"
    res = exact.hierarchical_search(
        _queries(data), limit=LIMIT, coarse_limit=k, rerank=rerank, modality="all", output_fields=[]
    )
    assert res.rerank == rerank
    _assert_equals_reference(res, data, _row_ids(data), k)
    assert all(h["entity"] == {} for hits in res for h in hits)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_funnel_within_one_modality_equals_numpy_funnel_over_its_rows(
    exact: HierarchicalCollection, data: dict[str, np.ndarray], modality: str
) -> None:
    part = slice(0, PER_MODALITY) if modality == "image" else slice(PER_MODALITY, None)
    res = exact.hierarchical_search(
        _queries(data), limit=LIMIT, coarse_limit=100, modality=modality, output_fields=["modality"]
    )
    _assert_equals_reference(res, data, _row_ids(data), 100, rows=part)
    assert {h["entity"]["modality"] for hits in res for h in hits} == {modality}


def test_modality_all_searches_both_partitions(exact: HierarchicalCollection, data: dict[str, np.ndarray]) -> None:
    """``modality="all"`` is the union: both modalities appear, and it equals the default for embeddings."""
    q = _queries(data)
    every = exact.hierarchical_search(q, limit=LIMIT, coarse_limit=100, modality="all", output_fields=["modality"])
    default = exact.hierarchical_search(q, limit=LIMIT, coarse_limit=100, output_fields=["modality"])
    assert [[h["id"] for h in hits] for hits in every] == [[h["id"] for h in hits] for hits in default]
    assert {h["entity"]["modality"] for hits in every for h in hits} == {"image", "text"}
    low = exact.search(q, level="low", limit=50, modality="all", output_fields=["modality"])
    assert {h["entity"]["modality"] for hits in low for h in hits} == {"image", "text"}


def _recall(res: Any, data: dict[str, np.ndarray], k: int) -> float:
    ids = _row_ids(data)
    found = 0
    for q, hits in enumerate(res):
        best = numpy_funnel(data["q_low"][q], data["q_high"][q], data["low"], data["high"], k, LIMIT)[0]
        found += len({h["id"] for h in hits} & {int(i) for i in ids[best]})
    return found / (LIMIT * len(res))


def test_ivf_funnel_is_close_to_numpy_funnel(ivf: HierarchicalCollection, data: dict[str, np.ndarray]) -> None:
    """Up to ANN loss: the default IVF profile keeps most of the exact funnel's hits, with exact scores."""
    assert ivf.profile.low.index_type == "IVF_FLAT"
    res = ivf.hierarchical_search(_queries(data), limit=LIMIT, coarse_limit=100, output_fields=[])
    assert _recall(res, data, 100) >= 0.85  # measured 0.95; one probed list gives 0.125
    for q, hits in enumerate(res):  # whatever was found, its scores are the exact dot products
        by_id = {int(i): n for n, i in enumerate(_row_ids(data))}
        rows = [by_id[h["id"]] for h in hits]
        np.testing.assert_allclose([h["distance"] for h in hits], data["high"][rows] @ data["q_high"][q], atol=TIE)
        np.testing.assert_allclose([h["coarse_distance"] for h in hits], data["low"][rows] @ data["q_low"][q], atol=TIE)


def test_nprobe_override_changes_what_ivf_searches(ivf: HierarchicalCollection, data: dict[str, np.ndarray]) -> None:
    """``search_params`` reach the coarse search: one list loses hits, every list is exact."""
    nlist = ivf.describe()["low_index"]["nlist"]
    assert nlist >= 16
    q = _queries(data)
    every_list = ivf.hierarchical_search(
        q, limit=LIMIT, coarse_limit=100, modality="all", output_fields=[], search_params={"nprobe": nlist}
    )
    _assert_equals_reference(every_list, data, _row_ids(data), 100)
    one_list = ivf.hierarchical_search(
        q, limit=LIMIT, coarse_limit=100, output_fields=[], search_params={"params": {"nprobe": 1}}
    )
    assert _recall(one_list, data, 100) < 0.8
    # The flat form and the nested form are the same override.
    flat = ivf.hierarchical_search(q, limit=LIMIT, coarse_limit=100, output_fields=[], search_params={"nprobe": 1})
    assert [[h["id"] for h in hits] for hits in flat] == [[h["id"] for h in hits] for hits in one_list]


@pytest.mark.parametrize("rerank", ["client", "server"])
def test_no_output_field_fetches_only_the_key(
    exact: HierarchicalCollection, data: dict[str, np.ndarray], rerank: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No output field asks Milvus for the key alone: Lite 3.2 answers ``[]`` with every field.

    A spy records what each real search call sends (and calls through). With ``[]`` sent, the
    coarse stage of every funnel shipped and decoded both vectors of each shortlisted row: ~3x the
    time of a coarse search at limit 50.
    """
    sent: list[list[str]] = []
    real = exact.client.search

    def spy(*args: Any, **kwargs: Any) -> Any:
        sent.append(list(kwargs.get("output_fields") or []))
        return real(*args, **kwargs)

    monkeypatch.setattr(exact.client, "search", spy)
    q = _queries(data)
    res = exact.hierarchical_search(q, limit=LIMIT, coarse_limit=100, rerank=rerank, modality="all", output_fields=[])
    _assert_equals_reference(res, data, _row_ids(data), 100)
    low = exact.search(q, level="low", limit=LIMIT, modality="image", output_fields=[])
    assert all(h["entity"] == {} for hits in [*res, *low] for h in hits)
    assert sent
    assert all(fields == ["id"] for fields in sent), sent
