"""The ``engine.json`` section of ``BENCHMARKS.md``: the hierarchy's requests on Milvus' C++ engine."""

from __future__ import annotations

from typing import Any

from benchmarks.report import HEAD as SEARCH_HEAD
from benchmarks.report import TARGET_FIDELITY, TARGET_SPEEDUP, best_at, fmt, md_table

# The search tables' columns without R@K: generated vectors carry no labels.
HEAD = [h for h in SEARCH_HEAD if not h.startswith("R@")]


def _row(r: dict[str, Any]) -> list[str]:
    return [
        f"`{r['name']}`",
        fmt(r["single"]["qps"]),
        fmt(r["single"]["p50_ms"], 2),
        fmt(r["single"]["p99_ms"], 2),
        fmt(r["batch32"]["qps"]),
        fmt(r["fidelity@10"], 3),
        fmt(r["speedup_qps_single"], 2) + "×",
        fmt(r["speedup_qps_batch32"], 2) + "×",
    ]


def _verdict(size: dict[str, Any]) -> str:
    parts = []
    for mode, label in (("single", "single queries"), ("batch32", "batches of 32")):
        kinds = ("hier-client", "hier-server", "hier-server-flat-low")
        picks = [p for p in (best_at(size, k, mode=mode) for k in kinds) if p]
        if not picks:
            parts.append(f"{label}: no hierarchical configuration reached fidelity@10 ≥ {TARGET_FIDELITY}")
            continue
        key = "speedup_qps_single" if mode == "single" else "speedup_qps_batch32"
        b = max(picks, key=lambda r: r[key])
        met = "target met" if b[key] >= TARGET_SPEEDUP else f"{TARGET_SPEEDUP / b[key]:.1f}× short of the target"
        parts.append(f"{label}: `{b['name']}` **{b[key]:.2f}×** exact at fidelity {b['fidelity@10']:.3f} ({met})")
    return "; ".join(parts)


def engine_section(res: dict[str, Any], lite3: dict[str, Any] | None = None) -> str:
    """Markdown for ``engine.json``; ``lite3`` (``search.json``) adds the same-size Lite 3 comparison."""
    eng = res.get("engine", {})
    name = (
        f"Milvus Lite {eng.get('milvus_lite')} C++ server (segcore + knowhere)"
        if eng.get("milvus_lite")
        else f"a Milvus server ({eng.get('uri')})"
    )
    lines = [
        "## Engine check: the same requests on Milvus' C++ engine",
        "",
        "Milvus Lite 3 answers every request with pure-Python loops over all primary keys, so at 1M rows "
        "each request costs ~0.5 s whatever the index does. `benchmarks/engine.py` sends the requests of "
        "`hierarchical_search` (coarse IVF_FLAT search on `vec_low` with the `cpu` profile's nprobe, then "
        "`get` of the shortlist's `vec_high` + numpy re-rank, or a FLAT search filtered to the shortlist) "
        f"to **{name}**, on the generated vectors of the search benchmark (same fitted generator). Raw "
        "`MilvusClient` calls: Lite 2.5 has neither partitions nor filter templates, which the collection "
        "layer needs. `hier-server flat-low` is the server path on a copy whose `vec_low` is FLAT (an "
        "exact coarse stage): Lite 2.5 does not honour the IVF parameters (small galleries are searched "
        "brute force; at 1M a built-in index with fixed parameters answers, with the same recall from "
        "nprobe 1 to nlist), so its IVF rows show the engine's speed but not the funnel's recall; "
        "`faiss-funnel` rows show that recall with the profile's nprobe. "
        f"Command: `{res.get('command')}` ({res.get('date')}, {res.get('wall_s', 0) / 60:.0f} min).",
        "",
    ]
    lite3_sizes = {s["rows"]: s for s in (lite3 or {}).get("sizes", []) if s["label"].startswith("gen-")}
    for size in res["sizes"]:
        n = size["rows"]
        lines += [
            f"### {n:,} rows (nlist {size['nlist']}), {size['n_single']} single queries, "
            f"{size['n_batches']} batches of 32, interleaved",
            "",
        ]
        lines += [md_table(HEAD, [_row(r) for r in size["contenders"]]), ""]
        lines += [f"**Against the target (≥ {TARGET_SPEEDUP:.0f}× at ≥ {TARGET_FIDELITY}):** {_verdict(size)}.", ""]
        st = size.get("stages") or {}
        if st:
            rows = [
                [
                    f"`{k}`",
                    fmt(v.get("coarse_ms"), 2),
                    fmt(v.get("get_ms"), 2),
                    fmt(v.get("numpy_ms"), 2),
                    fmt(v.get("filtered_search_ms"), 2),
                    fmt(v.get("total_ms"), 2),
                ]
                for k, v in st.items()
            ]
            lines += [
                "Where a single query's time goes (median ms). The client path's `get` fetches the shortlist's "
                "`vec_high` in pieces of 1,000 ids (Lite 2.5's `get` of vectors is quadratic in the id count); "
                "the server paths send one FLAT search on `vec_high` filtered to `id in [shortlist]`:",
                "",
                md_table(["path", "coarse search", "get vec_high", "numpy re-rank", "filtered search", "total"], rows),
                "",
            ]
        old = lite3_sizes.get(n)
        if old:
            pairs = []
            for kind in ("exact-high", "low-only"):
                a = next((r for r in old["contenders"] if r["kind"] == kind), None)
                b = next((r for r in size["contenders"] if r["kind"] == kind), None)
                if a and b:
                    pairs.append([f"`{kind}` p50 ms", fmt(a["single"]["p50_ms"]), fmt(b["single"]["p50_ms"], 2)])
            # The C++ side's server path may only reach the fidelity with its exact (FLAT) coarse stage.
            for kind, here in (
                ("hier-client", ("hier-client",)),
                ("hier-server", ("hier-server", "hier-server-flat-low")),
            ):
                a = best_at(old, kind)
                found = [r for r in (best_at(size, k) for k in here) if r]
                b = max(found, key=lambda r: r["speedup_qps_single"]) if found else None
                if a and b:
                    pairs.append(
                        [
                            f"best `{kind}` ≥ {TARGET_FIDELITY}: × exact (1 q)",
                            f"{a['speedup_qps_single']:.2f}× (`{a['name']}`)",
                            f"{b['speedup_qps_single']:.2f}× (`{b['name']}`)",
                        ]
                    )
            if pairs:
                lines += [
                    f"Same size in the search benchmark (Milvus Lite 3, `{old['label']}`) vs here:",
                    "",
                    md_table(["", "Milvus Lite 3 (search.json)", name.split(" (")[0]], pairs),
                    "",
                ]
    return "\n".join(lines)
