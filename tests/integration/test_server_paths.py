"""The library's server code paths, run here against the suite's Milvus through a named fake.

Without Docker the suite's "server" is ``milvus-lite server``, so ``is_lite()`` is true and the
server branches (``rerank="auto"`` -> server, filter templating, the gpu/cpu index profiles and
the GPU -> CPU fallback) would never run. ``tests/fakes.py``'s :class:`ServerLikeClient` presents
the real Lite server as a Milvus server, emulates the filter templating Lite 3.2 lacks, and can
refuse GPU indexes like a CPU-only Milvus; every other call reaches the real engine.

What only a real server can show (its own templating, a GPU index actually built on a GPU, a CPU
server's refusal) is at the end: those tests skip only when the suite's Milvus is Milvus Lite.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from collection_rows import assert_same, brute_force, row, unique, unit
from fakes import ServerLikeClient

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import connect, is_lite
from hivlp_milvus.errors import ProfileError, SearchLimitError
from hivlp_milvus.model.embedding import HierarchicalEmbedding
from hivlp_milvus.profiles import resolve_profile

pytestmark = pytest.mark.integration

LOW, HIGH = 16, 64
PER_MODALITY = 150
ON_LITE = "the suite's Milvus is Milvus Lite (no HIVLP_TEST_MILVUS_URI, no Docker): this needs a real Milvus server"


def make_rows() -> list[dict[str, Any]]:
    rng = np.random.default_rng(11)
    high = unit(rng.standard_normal((2 * PER_MODALITY, HIGH)))
    low = unit(high[:, :LOW] + 0.5 * rng.standard_normal((2 * PER_MODALITY, LOW)) / np.sqrt(LOW))
    return [
        row(
            f"k{i:04d}",
            "image" if i < PER_MODALITY else "text",
            low[i],
            high[i],
            attributes={"i": i, "color": ("red", "green", "blue")[i % 3]},
        )
        for i in range(2 * PER_MODALITY)
    ]


@pytest.fixture
def real(milvus_server: Any) -> Iterator[Any]:
    client = connect(milvus_server.uri, token=milvus_server.token)
    before = set(client.list_collections())
    yield client
    for name in set(client.list_collections()) - before:  # whatever a test left behind
        client.drop_collection(name)


def server_like(real: Any, engine: str, **faults: Any) -> ServerLikeClient:
    """The fake around the suite's Milvus; on a real server it is not needed, so tests skip there."""
    if engine != "lite":
        pytest.skip("the suite's Milvus is a real server: its server paths run without the fake")
    fake = ServerLikeClient(real, **faults)
    assert is_lite(real)
    assert not is_lite(fake), "the library no longer tells Lite from a server by get_server_version()"
    return fake


def test_auto_profile_probes_the_gpu_index_and_drops_the_probe(milvus_server: Any, real: Any) -> None:
    fake = server_like(real, milvus_server.engine)
    before = set(real.list_collections())
    assert resolve_profile("auto", fake).tag == "gpu:GPU_IVF_FLAT"
    assert set(real.list_collections()) == before


def test_gpu_refused_auto_falls_back_to_cpu(milvus_server: Any, real: Any, caplog: pytest.LogCaptureFixture) -> None:
    fake = server_like(real, milvus_server.engine, refuse_gpu="always")
    with caplog.at_level(logging.WARNING):
        assert resolve_profile("auto", fake).tag == "cpu:IVF_FLAT"
        col = HierarchicalCollection.create(unique("fb"), client=fake, low_dim=LOW, high_dim=HIGH)
    assert any("GPU_IVF_FLAT" in r.getMessage() and "cpu:IVF_FLAT" in r.getMessage() for r in caplog.records)
    assert set(fake.refused) == {"GPU_IVF_FLAT"}
    assert col.profile.tag == "cpu:IVF_FLAT"
    assert real.describe_collection(col.name)["properties"]["hivlp.profile"] == "cpu:IVF_FLAT"
    assert real.describe_index(col.name, "vec_low")["index_type"] == "IVF_FLAT"
    assert HierarchicalCollection.open(col.name, client=fake).profile.tag == "cpu:IVF_FLAT"


def test_gpu_refused_at_the_real_build_falls_back_to_cpu(milvus_server: Any, real: Any) -> None:
    """The probe accepts the GPU index, the real collection's build is refused: create() rebuilds it as cpu."""
    fake = server_like(real, milvus_server.engine, refuse_gpu="build")
    name = unique("fb_build")
    col = HierarchicalCollection.create(name, client=fake, low_dim=LOW, high_dim=HIGH)
    assert fake.refused == ["GPU_IVF_FLAT"]
    assert col.profile.tag == "cpu:IVF_FLAT"
    assert [n for n in real.list_collections() if n == name] == [name]
    assert real.describe_index(name, "vec_low")["index_type"] == "IVF_FLAT"
    assert sorted(real.list_partitions(name)) == ["_default", "image", "text"]
    rows = make_rows()
    assert col.upsert(rows) == len(rows)
    assert col.count() == len(rows)


def test_refused_explicit_gpu_profile_is_a_profile_error_and_leaves_no_collection(
    milvus_server: Any, real: Any
) -> None:
    fake = server_like(real, milvus_server.engine, refuse_gpu="always")
    name = unique("gpu")
    with pytest.raises(ProfileError, match=r"GPU_IVF_FLAT.*GPU Milvus image.*profile='cpu'"):
        HierarchicalCollection.create(name, client=fake, low_dim=LOW, high_dim=HIGH, profile="gpu")
    assert not real.has_collection(name)
    col = HierarchicalCollection.create(name, client=fake, low_dim=LOW, high_dim=HIGH, profile="cpu")
    assert col.profile.tag == "cpu:IVF_FLAT"


def test_gpu_profile_on_a_server_applies_the_gpu_caps(milvus_server: Any, real: Any) -> None:
    fake = server_like(real, milvus_server.engine)
    col = HierarchicalCollection.create(unique("gpu"), client=fake, low_dim=LOW, high_dim=HIGH)
    assert col.profile.tag == "gpu:GPU_IVF_FLAT"
    assert real.describe_index(col.name, "vec_low")["index_type"] == "GPU_IVF_FLAT"
    q = HierarchicalEmbedding(np.ones((1, LOW), np.float32), np.ones((1, HIGH), np.float32))
    with pytest.raises(SearchLimitError, match=r"coarse_limit=257 exceeds the top-k cap 256 of GPU_IVF_FLAT"):
        col.hierarchical_search(q, limit=10, coarse_limit=257)


@pytest.fixture
def server_col(milvus_server: Any, real: Any) -> Iterator[tuple[HierarchicalCollection, ServerLikeClient, list]]:
    """A collection made through the server paths (HNSW: ef is raised to the shortlist, near-exact here)."""
    fake = server_like(real, milvus_server.engine)
    rows = make_rows()
    col = HierarchicalCollection.create(unique("srv"), client=fake, low_dim=LOW, high_dim=HIGH, profile="cpu:HNSW")
    col.upsert(rows)
    col.flush()
    yield col, fake, rows
    col.drop()


def test_auto_rerank_on_a_server_is_the_server_path_and_filters_travel_as_parameters(server_col: tuple) -> None:
    col, fake, rows = server_col
    assert not col.is_lite
    red = 'attributes["color"] == {c} and attributes["i"] >= {lo}'
    params = {"c": "red", "lo": 30}
    q = HierarchicalEmbedding(
        np.stack([rows[3]["vec_low"], rows[200]["vec_low"]]), np.stack([rows[3]["vec_high"], rows[200]["vec_high"]])
    )
    fake.calls.clear()
    res = col.hierarchical_search(q, limit=8, coarse_limit=len(rows), filter=red, filter_params=params)
    assert res.rerank == "server"
    keep = lambda r: r["attributes"]["color"] == "red" and r["attributes"]["i"] >= 30  # noqa: E731
    for qi in range(2):
        assert_same(res[qi], brute_force(rows, q.high[qi], 8, keep), atol=1e-5)
    # Both stages sent the user's filter as a template with its values as parameters (never inlined).
    searches = [c for m, c in fake.calls if m == "search"]
    assert len(searches) == 1 + 2  # one coarse multi-query search per target (all), one fine search per query
    for call in searches:
        assert red in call["filter"]
        assert {k: call["filter_params"][k] for k in params} == params
    # The fine stage's shortlist travels as a parameter too.
    assert all(len(c["filter_params"]) == len(params) + 1 for c in searches[1:])
    # The client path on a server agrees.
    client_path = col.hierarchical_search(
        q, limit=8, coarse_limit=len(rows), filter=red, filter_params=params, rerank="client"
    )
    assert [[h["id"] for h in hits] for hits in client_path] == [[h["id"] for h in hits] for hits in res]


def test_count_query_delete_template_their_filters_on_a_server(server_col: tuple) -> None:
    col, fake, rows = server_col
    fake.calls.clear()
    assert col.count('attributes["i"] < {n}', {"n": 40}) == 40
    assert [h["key"] for h in col.query("key == {k}", filter_params={"k": "k0005"}, output_fields=["key"])] == ["k0005"]
    assert col.delete(ids=[rows[0]["id"], rows[1]["id"]], filter='attributes["i"] < {n}', filter_params={"n": 1}) == 1
    assert col.count() == len(rows) - 1
    filtered = [c for _, c in fake.calls if c["filter"]]
    assert len(filtered) >= 4  # count, query, the delete's count and the delete itself
    assert all("{" in c["filter"] and c["filter_params"] for c in filtered)
    assert not any("k0005" in c["filter"] for c in filtered)


# ---------------------------------------------------------------------- only on a real server


def test_a_real_server_binds_filter_templates_itself(milvus_server: Any, real: Any) -> None:
    if milvus_server.engine == "lite":
        pytest.skip(f"{ON_LITE} (Milvus Lite 3.2 rejects filter templates: \"unexpected character '{{'\")")
    rows = make_rows()
    col = HierarchicalCollection.create(unique("tpl"), client=real, low_dim=LOW, high_dim=HIGH, profile="cpu:HNSW")
    col.upsert(rows)
    assert col.bind_filter("key == {k}", {"k": "k0001"}) == ("key == {k}", {"k": "k0001"})
    q = HierarchicalEmbedding(rows[3]["vec_low"][None], rows[3]["vec_high"][None])
    res = col.hierarchical_search(
        q, limit=5, coarse_limit=len(rows), filter='attributes["i"] < {n}', filter_params={"n": 100}
    )
    assert res.rerank == "server"
    expected = brute_force(rows, q.high[0], 5, lambda r: r["attributes"]["i"] < 100)
    assert [h["id"] for h in res[0]] == [i for i, _ in expected]


def test_a_gpu_server_builds_the_gpu_index(milvus_server: Any, real: Any) -> None:
    if milvus_server.engine != "gpu":
        pytest.skip("needs a GPU Milvus (HIVLP_TEST_MILVUS_GPU=1 with Docker, or HIVLP_TEST_MILVUS_ENGINE=gpu)")
    col = HierarchicalCollection.create(unique("gpu"), client=real, low_dim=LOW, high_dim=HIGH)
    assert col.profile.tag == "gpu:GPU_IVF_FLAT"
    assert real.describe_index(col.name, "vec_low")["index_type"] == "GPU_IVF_FLAT"


def test_a_cpu_server_refuses_the_gpu_index(milvus_server: Any, real: Any) -> None:
    if milvus_server.engine != "cpu":
        pytest.skip("needs a CPU-only Milvus server (the default Docker image, or HIVLP_TEST_MILVUS_ENGINE=cpu)")
    assert resolve_profile("auto", real).tag == "cpu:IVF_FLAT"
    with pytest.raises(ProfileError, match="GPU Milvus image"):
        HierarchicalCollection.create(unique("gpu"), client=real, low_dim=LOW, high_dim=HIGH, profile="gpu")
