"""Smoke versions of the benchmarks: they run, and their JSON / report is well-formed.

No timing is asserted (the machine is shared); only shapes, keys, ranges, and the one
correctness property a funnel must have: with coarse_limit >= N the hierarchical search returns
exactly the exact high-dim top-10 (fidelity 1.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def search_result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from benchmarks import search

    tmp = tmp_path_factory.mktemp("bench")
    path = search.run(
        [500],
        smoke=True,
        results_dir=tmp / "results",
        plots_dir=tmp / "plots",
        cache_dir=tmp / "cache",
        name="search_smoke",
    )
    doc = json.loads(Path(path).read_text())
    doc["_tmp"] = str(tmp)
    return doc


def test_search_smoke_json(search_result: dict) -> None:
    doc = search_result
    assert {"benchmark", "date", "machine", "sizes", "generator", "plots"} <= set(doc)
    assert doc["machine"]["versions"]["pymilvus"]
    sizes = doc["sizes"]
    assert [s["rows"] for s in sizes] == [500]
    kinds = {r["kind"] for r in sizes[0]["contenders"]}
    assert {"hier-client", "hier-server", "exact-high", "ann-high", "low-only", "faiss-funnel", "faiss-exact"} <= kinds
    for r in sizes[0]["contenders"]:
        assert 0.0 <= r["fidelity@10"] <= 1.0
        for mode in ("single", "batch32"):
            st = r[mode]
            assert st["n"] >= 1
            assert st["qps"] > 0
            assert st["p50_ms"] <= st["p99_ms"]
        assert 0.0 <= r["R@1"] <= r["R@10"] <= 1.0
    for f in doc["plots"]:
        assert Path(f).is_file()
        assert Path(f).stat().st_size > 1000


def test_engine_profile_measures_the_database_it_is_given(tmp_path: Path) -> None:
    """Every gallery size has its own database with a collection of the same name: the engine
    profile must find this size's one (it once profiled the 10k database for the 1M row)."""
    import numpy as np

    from benchmarks.galleries import build_or_open
    from benchmarks.profiler import profile_engine
    from benchmarks.vectors import normalize

    rng = np.random.default_rng(0)
    cols = {}
    for rows in (60, 90):
        low = normalize(rng.standard_normal((rows, 8)))
        high = normalize(rng.standard_normal((rows, 16)))
        col, _, _ = build_or_open(tmp_path / f"g{rows}.db", low, high, with_ann_high=False)
        cols[rows] = (col, tmp_path / f"g{rows}.db", low, high)
    for rows, (col, path, low, high) in cols.items():
        prof = profile_engine(col, path, low[:3], high[:3], 1, 10)
        assert sum(prof["segments"]) == rows, prof


def test_full_shortlist_is_exact(search_result: dict) -> None:
    size = search_result["sizes"][0]
    full = [r for r in size["contenders"] if r["kind"].startswith("hier") and r["coarse_limit"] >= size["rows"]]
    assert full, "the smoke sweep must include coarse_limit >= N"
    for r in full:
        assert r["fidelity@10"] == pytest.approx(1.0), r["name"]
    exact = next(r for r in size["contenders"] if r["kind"] == "exact-high")
    assert exact["fidelity@10"] == pytest.approx(1.0)


def test_generated_vectors_are_normalised() -> None:
    import numpy as np

    from benchmarks.metrics import coarse_recall_curve
    from benchmarks.vectors import GenParams, generate_vectors

    g = generate_vectors(300, GenParams(low_dim=8, high_dim=32, n_clusters=20), n_queries=20)
    for k in ("low", "high", "q_low", "q_high"):
        assert np.allclose(np.linalg.norm(g[k], axis=1), 1.0, atol=1e-4)
    curve = coarse_recall_curve(g, ks=(10, 50, 300))
    assert curve["300"] == pytest.approx(1.0)
    assert 0.0 <= curve["10"] <= curve["50"] <= 1.0


def test_ingest_and_train_smoke_and_report(search_result: dict) -> None:
    from benchmarks import ingest, report, train

    tmp = Path(search_result["_tmp"])
    rd = tmp / "results"
    p = ingest.run(smoke=True, results_dir=rd, name="ingest")
    doc = json.loads(Path(p).read_text())
    pre = doc["precomputed"]
    assert set(pre["contenders"]) == {"bare-insert", "bare-upsert", "ingest()"}
    assert pre["ingest_vs_bare_insert"] > 0
    assert doc["encode_write"]["pipelined_over_sequential"] > 0
    train.run(smoke=True, results_dir=rd, name="train")
    (rd / "search_smoke.json").rename(rd / "search.json")
    out = report.write_report(results_dir=rd, out=tmp / "BENCHMARKS.md")
    text = out.read_text()
    for heading in (
        "# Benchmarks",
        "## Search",
        "## Ingest",
        "## Serving",
        "## Training",
        "## Quality",
        "## Reproduce",
    ):
        assert heading in text


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["search", "--smoke", "--sizes", "500"], {"what": "search", "smoke": True, "sizes": ["500"]}),
        (
            ["quality", "--steps", "60", "--low-dims", "8", "32", "--smoke"],
            {"what": "quality", "steps": 60, "low_dims": [8, 32], "smoke": True, "ablation_low_dim": None},
        ),
        (["quality", "--ablation-low-dim", "8"], {"ablation_low_dim": 8}),
        (
            ["engine", "--uri", "http://h:19530", "--token", "t", "--sizes", "1M"],
            {"what": "engine", "uri": "http://h:19530", "token": "t", "lite25_python": None, "sizes": ["1M"]},
        ),
        (["engine", "--lite25-python", "/v/bin/python"], {"lite25_python": "/v/bin/python"}),
    ],
)
def test_bench_command_flags(argv: list[str], expected: dict) -> None:
    from hivlp_milvus.cli import build_parser

    args = vars(build_parser().parse_args(["bench", *argv]))
    assert {name: args[name] for name in expected} == expected


def test_bench_quality_data_emoji_routes_to_the_emoji_benchmarks(monkeypatch) -> None:
    from benchmarks import emoji_heads, emoji_sweep
    from hivlp_milvus.cli import build_parser
    from hivlp_milvus.commands import bench

    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(emoji_heads, "run", lambda **kw: calls.append(("heads", kw)))
    monkeypatch.setattr(emoji_sweep, "run", lambda **kw: calls.append(("sweep", kw)))
    p = build_parser()
    assert p.parse_args(["bench", "quality"]).data == "shapes"  # the synthetic benchmark stays the default
    with pytest.raises(SystemExit):
        p.parse_args(["bench", "quality", "--data", "flickr"])
    bench.run(p.parse_args(["bench", "quality", "--data", "emoji", "--data-dir", "d", "--model", "m", "--no-report"]))
    bench.run(p.parse_args(["bench", "quality", "--data", "emoji", "--steps", "30", "--low-dims", "4", "8"]))
    assert calls == [
        ("heads", {"model_dir": "m", "data_dir": "d", "name": "quality_emoji_heads"}),
        ("sweep", {"data_dir": "data/emoji", "steps": 30, "low_dims": (4, 8), "name": "quality_emoji"}),
    ]


@pytest.mark.parametrize("kwargs", [{}, {"uri": "http://h:19530", "lite25_python": "/v/bin/python"}])
def test_engine_needs_exactly_one_milvus(kwargs: dict, tmp_path: Path) -> None:
    from benchmarks import engine
    from hivlp_milvus.errors import ConfigError

    with pytest.raises(ConfigError, match="exactly one of --uri"):
        engine.run([500], smoke=True, results_dir=tmp_path, cache_dir=tmp_path, **kwargs)


def test_in_process_loop_passes_the_step_to_the_loss() -> None:
    """The shortlist term is off before its start step and on from it (the collapse fix)."""
    from benchmarks.common import Recipe, train_in_process
    from hivlp_milvus.data import synthetic
    from hivlp_milvus.model import create_model

    recipe = Recipe.quickstart()
    cfg = recipe.loss_config(240)
    assert 0 < cfg.shortlist_start_step < 240
    assert cfg.shortlist_start_step == round(240 * recipe.shortlist_start_fraction)
    assert recipe.loss_config(240, shortlist_start_step=0).shortlist_start_step == 0
    records = synthetic.generate(24, seed=3, image_size=32)
    seen = {}
    for steps in (2, 3):
        model = create_model("micro", texts=[c for r in records for c in r.captions], seed=0)
        info = train_in_process(
            model, records, steps=steps, batch_size=8, loss=recipe.loss_config(steps, shortlist_start_step=2)
        )
        assert info["steps"] == steps
        assert not model.training
        seen[steps] = info["last_loss"]
    assert "shortlist" not in seen[2]  # the last step of a 2-step run is step 1 < 2
    assert "shortlist" in seen[3]


def test_train_tiny_model_saves_a_model_with_its_recipe(tmp_path: Path) -> None:
    from benchmarks.common import train_tiny_model
    from hivlp_milvus.model import HiVLP

    out = train_tiny_model(tmp_path / "m", steps=2, n_train=24, batch_size=8, config="micro")
    info = json.loads((out / "bench_train.json").read_text())
    assert info["steps"] == 2
    assert info["recipe"]["source"] == "training/configs/quickstart.yaml"
    assert info["loss_config"]["shortlist_start_step"] == round(2 * info["recipe"]["shortlist_start_fraction"])
    assert HiVLP.from_pretrained(out).config.low_dim == 16


def test_quality_smoke_json_and_report(tmp_path: Path) -> None:
    from benchmarks import quality, report

    rd = tmp_path / "results"
    doc = json.loads(Path(quality.run(smoke=True, low_dims=(4, 8), ablation_low_dim=8, results_dir=rd)).read_text())
    assert doc["benchmark"] == "quality"
    assert doc["smoke"]
    assert doc["config"] == "micro"
    assert [r["low_dim"] for r in doc["sweep"]] == [4, 8]
    assert [r["name"] for r in doc["ablation"]] == list(quality.ABLATION)
    assert doc["ablation"][-1]["reused"] == "full@8"
    assert all(r["low_dim"] == 8 for r in doc["ablation"])
    for r in doc["sweep"] + doc["ablation"]:
        assert set(r["rows"]) == {"low", "high", "hier@10", "hier@50"}
        assert r["eval_meta"]["low_dim"] == r["low_dim"]
        assert r["eval_meta"]["n_images"] == doc["n_test"]
        for row in r["rows"].values():
            assert 0.0 <= row["text_to_image_R@1"] <= row["text_to_image_R@5"] <= row["text_to_image_R@10"] <= 1.0
            assert 0.0 < row["AR"] <= 1.0
        s = r["summary"]
        assert s["AR"]["low"] == r["rows"]["low"]["AR"]
        assert s["low_over_high"] == pytest.approx(r["rows"]["low"]["AR"] / r["rows"]["high"]["AR"])
        assert 0.0 <= s["shortlist_recall@10"] <= s["shortlist_recall@50"] <= 1.0
        assert r["train"]["steps"] == doc["steps"] >= 1
        lc = r["train"]["loss_config"]
        assert {k: lc[k] for k in r["weights"]} == r["weights"]
        assert 0 <= lc["shortlist_start_step"] <= doc["steps"]
    # text -> image: a shortlist of 50 >= the 40-image gallery, so the funnel is the high-only ranking
    for r in doc["sweep"]:
        assert r["summary"]["t2i_R@1"]["hier@50"] == r["summary"]["t2i_R@1"]["high"]
    fd = doc["findings"]
    assert set(fd["low_trails_at"]) | set(fd["funnel_holds_at"]) <= {4, 8}
    out = report.write_report(results_dir=rd, out=tmp_path / "BENCHMARKS.md")
    text = out.read_text()
    for heading in ("## Quality", "`low_dim` sweep", "### Loss ablation", "| full | 1 / 1 / 1 / 0.5 |"):
        assert heading in text


def test_bench_load_command_passes_only_the_flags_given(tmp_path: Path) -> None:
    from hivlp_milvus.cli import build_parser
    from hivlp_milvus.commands.bench import load_command

    p = build_parser()
    flags = ["--url", "http://h:1", "--api-key", "k", "--clients", "4", "--mix", "encode=1"]
    given = load_command(p.parse_args(["bench", "load", *flags]), tmp_path / "load.py")
    assert given[2:] == flags
    args = p.parse_args(["bench", "load", "--compare-batching", "--levels", "1", "8", "--start"])
    cmd = load_command(args, tmp_path / "load.py")
    assert cmd[2:] == ["--start", "--compare-batching", "--levels", "1", "8"]
    # Every flag the command passes is one benchmarks/load.py accepts, with the value it means.
    from benchmarks import load

    parsed = load.build_parser().parse_args(given[2:])
    assert (parsed.url, parsed.api_key, parsed.clients, parsed.mix) == ("http://h:1", "k", 4, "encode=1")
    smoke = load_command(p.parse_args(["bench", "load", "--compare-batching", "--smoke"]), tmp_path / "load.py")
    parsed = load.build_parser().parse_args(smoke[2:])
    assert (parsed.compare_batching, parsed.levels, parsed.duration, parsed.repeats) == (True, [1, 4], 2.0, 1)


def test_bench_load_with_a_missing_workdir_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from hivlp_milvus.cli import main

    missing = tmp_path / "nowhere"
    assert main(["bench", "load", "--workdir", str(missing), "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line, no traceback
    assert err.startswith("hivlp-milvus bench: error: --workdir "), err
    assert str(missing) in err
    assert "no such directory" in err


def test_load_mix_percentiles_and_summary() -> None:
    from benchmarks.load import parse_mix, percentile, summarize

    assert parse_mix("search_text=3,encode=1") == {
        "search_text": 3.0,
        "search_image": 0.0,
        "encode": 1.0,
        "ingest": 0.0,
    }
    for bad in ("nope=1", "encode=-1", "encode=0"):
        with pytest.raises(ValueError, match="mix"):
            parse_mix(bad)
    assert percentile([], 99) == 0.0
    assert percentile([float(i) for i in range(1, 101)], 50) == 51.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    records = [
        ("encode", 200, 0.010),
        ("encode", 503, 0.001),
        ("search_text", 200, 0.030),
        ("ingest", "transport:X", 1),
    ]
    s = summarize(records, wall=2.0, clients=2)
    assert (s["requests"], s["ok"], s["rps"], s["errors"]) == (4, 2, 2.0, {"503": 1, "transport:X": 1})
    assert s["routes"]["encode"]["errors"] == {"503": 1}
    assert s["routes"]["encode"]["p99_ms"] == 10.0  # failed requests do not count in the latencies
    assert set(s["routes"]) == {"encode", "search_text", "ingest"}


def test_report_load_section_and_plot(tmp_path: Path) -> None:
    from benchmarks.load_compare import summarize_runs
    from benchmarks.report_load import load_section, plot

    def run(clients: int, batching: bool, rps: float, p99: float) -> dict:
        return {
            "clients": clients,
            "batching": batching,
            "rps": rps,
            "p50_ms": p99 / 2,
            "p99_ms": p99,
            "mean_query_batch": 4.0 if batching else 1.0,
            "requests": 100,
            "ok": 100,
            "checked": 10,
            "wrong_answers": 0,
            "cpu": {"cores_busy": 1.5},
        }

    runs = [
        run(1, True, 10.0, 100.0),
        run(1, False, 10.0, 100.0),
        run(8, True, 40.0, 200.0),
        run(8, False, 20.0, 400.0),
    ]
    res = {"levels": [1, 8], "duration_s": 5, "repeats": 1, "rows": 600, "model": "tiny", "runs": runs}
    res["summary"] = summarize_runs(runs)
    text = load_section(res, None)
    assert "| HTTP `POST /search` | 8 | on | 40.0 | 100.0 | 200.0 | 4.00 | 0 | 0 / 10 | 1.50 |" in text
    assert "http at 8 clients 2.00× the requests/s, p99 0.50×" in text
    assert plot(res, tmp_path).stat().st_size > 1000
    assert "Not measured yet" in load_section(None, None)
    route = {"requests": 10, "rps": 5.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "errors": {}}
    mixed = {"clients": 8, "wall_s": 2.0, "started": True, "collection": "quickstart", "collection_rows": 360}
    mixed |= {"mix": {"encode": 1.0, "ingest": 0.0}, "requests": 10, "rps": 5.0, "errors": {}, "wrong_answers": 0}
    mixed |= {"checked": 4, "cpu": {"cores_busy": 1.2, "machine_cores": 2}, "routes": {"encode": route}}
    text = load_section(None, mixed)
    assert "| `encode` | 10 | 5.0 | 1.0 | 2.0 | 3.0 | - |" in text
    assert "collection `quickstart` (360 rows)" in text
    assert "wrong answers 0 of 4 checked" in text


def test_coarse_fields_compares_both_requests_on_the_same_ids(tmp_path: Path) -> None:
    """The all-fields and key-only coarse requests return the same ids; the section renders them."""
    from benchmarks import coarse_fields
    from benchmarks.report_coarse_fields import coarse_fields_section

    argv = ["--rows", "1500", "--queries", "3", "--nq", "4", "--batches", "2", "--results-dir", str(tmp_path)]
    assert coarse_fields.main(argv) == 0
    doc = json.loads((tmp_path / "coarse_fields.json").read_text())
    assert [(r["nq"], r["queries"]) for r in doc["runs"]] == [(1, 3), (4, 8)]
    for run in doc["runs"]:
        assert run["rows"] == 1500
        assert run["same_ids"] == {"100": True, "1000": True}
        assert set(run["stats"]) == {
            'coarse cl=100 output_fields=["id"]',
            "coarse cl=100 output_fields=[]",
            'coarse cl=1000 output_fields=["id"]',
            "coarse cl=1000 output_fields=[]",
            "funnel cl=1000",
            "exact-high",
        }
        assert all(s["n"] == run["queries"] // run["nq"] for s in run["stats"].values())
    section = coarse_fields_section(doc)
    assert "| `funnel cl=1000` |" in section
    assert section.count("same ids: yes") == 2
