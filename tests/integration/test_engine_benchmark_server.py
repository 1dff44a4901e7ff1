"""The engine benchmark (``benchmarks/engine.py``) runs against a real Milvus server.

It is meant for Milvus' C++ engine (Milvus Lite 2.5's binary or a standalone server); here it
talks to the suite's server, which speaks the same protocol. No timing is asserted: the test
checks the output is well-formed, and the property every funnel must have: with a shortlist as
large as the gallery, both re-rank paths return exactly the exact high-dim top-10.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("faiss")

pytestmark = pytest.mark.integration

ROWS = 600


@pytest.fixture(scope="module")
def engine_doc(milvus_server, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from benchmarks import engine

    tmp = tmp_path_factory.mktemp("engine")
    path = engine.run(
        [ROWS], uri=milvus_server.uri, smoke=True, results_dir=tmp / "results", cache_dir=tmp, name="engine_smoke"
    )
    return json.loads(Path(path).read_text())


def test_engine_json_is_well_formed(engine_doc: dict) -> None:
    assert engine_doc["engine"]["kind"] == "Milvus server"
    (size,) = engine_doc["sizes"]
    assert size["rows"] == ROWS
    kinds = {r["kind"] for r in size["contenders"]}
    assert kinds == {
        "hier-client",
        "hier-server",
        "hier-server-flat-low",
        "faiss-funnel",
        "exact-high",
        "low-only",
        "ann-high",
        "faiss-exact",
    }
    for r in size["contenders"]:
        assert 0.0 <= r["fidelity@10"] <= 1.0
        for mode in ("single", "batch32"):
            assert r[mode]["n"] >= 1
            assert r[mode]["qps"] > 0
            assert r[mode]["p50_ms"] <= r[mode]["p99_ms"]
    assert size["stages"]["exact-high"]["total_ms"] > 0
    # Medians: every query's stage is inside its total, so each stage's median is at most the total's
    # (a sum of medians is not bounded by the median of sums).
    parts = {"hier-client": ("coarse_ms", "get_ms", "numpy_ms"), "hier-server": ("coarse_ms", "filtered_search_ms")}
    for name, st in size["stages"].items():
        if name == "exact-high":
            continue
        stages = parts["hier-client" if name.startswith("hier-client") else "hier-server"]
        assert set(st) == {*stages, "total_ms"}
        for stage in stages:
            assert 0 < st[stage] <= st["total_ms"]


def test_whole_gallery_shortlist_is_exact(engine_doc: dict) -> None:
    rows = {r["name"]: r for r in engine_doc["sizes"][0]["contenders"]}
    assert rows["exact-high"]["fidelity@10"] == 1.0
    for path in ("client", "server", "server flat-low"):
        assert rows[f"hier-{path} cl={ROWS}"]["fidelity@10"] == 1.0
        assert rows[f"hier-{path} cl={ROWS}"]["fidelity@10_batch"] == 1.0


def test_a_second_run_reuses_the_collections(milvus_server, engine_doc: dict) -> None:
    from pymilvus import MilvusClient

    from benchmarks import engine

    client = MilvusClient(milvus_server.uri)
    data = engine.generate_vectors(ROWS, engine.GenParams(), n_queries=0)
    info = engine.build(client, data["low"], data["high"], nlist=16)
    assert all(info[name] == {"cached": True} for name in (engine.GALLERY, engine.GALLERY_FLAT, engine.ANN))
    # Another nlist is another index: rebuilt, not silently reused.
    info = engine.build(client, data["low"], data["high"], nlist=17)
    assert info[engine.GALLERY]["cached"] is False


def test_engine_section_renders(engine_doc: dict) -> None:
    from benchmarks.report_engine import engine_section

    md = engine_section(engine_doc)
    assert md.startswith("## Engine check")
    assert f"`hier-client cl={ROWS}`" in md
    assert "`exact-high`" in md
    assert "Where a single query's time goes" in md
