"""The ``plan.json`` section of ``BENCHMARKS.md``: the search's plan choice and default shortlist, measured."""

from __future__ import annotations

from typing import Any

from benchmarks.report import fmt, md_table

#: The check's bounds (benchmarks/plan.py): never slower than exact by more than this, never less faithful.
MAX_TIME_VS_EXACT = 1.10
MIN_FIDELITY = 0.99


def _curve(res: dict[str, Any]) -> list[str]:
    curve = res.get("curve") or {}
    if not curve:
        return []
    ks = sorted({int(k) for p in curve.values() for k in p["recall"]})
    shown = [k for k in ks if k in (10, 20, 50, 100, 200, 300, 500, 1000, 2000, 3000)]
    rows = [
        [f"{p['rows']:,}", *(fmt(p["recall"].get(str(k)), 3) for k in shown), str(p["k"]), fmt(p["per_hit"], 1)]
        for p in sorted(curve.values(), key=lambda p: p["rows"])
    ]
    return [
        "### The recall curve behind the default `coarse_limit`",
        "",
        "Share of the exact high-dim top-10 inside the exact low-dim top-K (500 queries; the funnel's ceiling), "
        f"and the smallest K reaching {res.get('curve_target', 0.995)} (a margin over 0.99 for the IVF's own loss). "
        "`schemas/profiles.yaml` keeps `per_hit = K / 10` per size as `coarse_curve`; the default shortlist is "
        "`ceil(per_hit × limit)` of the first measured size at or above the collection's.",
        "",
        md_table(["rows", *(f"K={k}" for k in shown), "K ≥ target", "per_hit"], rows),
        "",
    ]


def _fit(res: dict[str, Any]) -> list[str]:
    rows_by_size = res.get("fit_rows") or {}
    if not rows_by_size:
        return []
    cost = res.get("cost") or {}
    table = [
        [
            f"{r['rows']:,}",
            str(r["nq"]),
            r["plan"] + (f" cl={r['cl']}" if r["cl"] else ""),
            fmt(r["mean_ms"], 1),
            fmt(r["p50_ms"], 1),
            str(r["n"]),
        ]
        for n in sorted(rows_by_size, key=int)
        for r in rows_by_size[n]
    ]
    terms = ("base", "per_query", "per_row", "per_row_query", "per_candidate")
    coef = [[plan, *(f"{c.get(t, 0.0):.3g}" for t in terms)] for plan, c in cost.items()]
    return [
        "### Cost of each plan (the fit)",
        "",
        "Both plans forced, interleaved per call (contenders shuffled), on Milvus Lite; a call is one "
        "batch of `nq` queries. The cost model per plan (seconds) is `base + nq·per_query + "
        "rows·(per_row + nq·per_row_query) + nq·coarse_limit·per_candidate`, fitted by least squares on "
        "relative error; `schemas/profiles.yaml` keeps it as `plan.lite.cost`.",
        "",
        md_table(["rows", "nq", "plan", "mean ms/call", "p50 ms/call", "calls"], table),
        "",
        md_table(["plan", *terms], coef),
        "",
    ]


def _check(res: dict[str, Any]) -> list[str]:
    check = res.get("check") or {}
    if not check:
        return []
    rows, held = [], True
    for n in sorted(check, key=int):
        for r in check[n]:
            # When auto chose exact, both contenders sent the same requests: the ratio is the noise.
            same = r["plan"] == "exact"
            ok = bool(r["holds"]) or (same and r["fidelity_auto"] >= r["fidelity_exact"])
            held &= ok
            rows.append(
                [
                    f"{r['rows']:,}",
                    str(r["nq"]),
                    f"`{r['plan']}`",
                    str(r["coarse_limit"]),
                    fmt(r["auto"]["mean_ms"], 1),
                    fmt(r["exact"]["mean_ms"], 1),
                    fmt(r["time_vs_exact"], 2) + "×",
                    fmt(r["fidelity_auto"], 3),
                    fmt(r["fidelity_exact"], 3),
                    ("yes" if r["holds"] else "yes (same requests: the ratio is noise)") if ok else "**no**",
                ]
            )
    verdict = "holds at every size and batch" if held else "does **not** hold everywhere (rows marked no)"
    return [
        '### Check: `plan="auto"` against one exact search',
        "",
        "Held-out queries, the yaml as committed, default `coarse_limit`; `auto` and forced `exact` interleaved. "
        f"Holds when the chosen plan takes ≤ {MAX_TIME_VS_EXACT:.2f}× exact's time and keeps fidelity@10 ≥ "
        f"{MIN_FIDELITY} (and never below exact's): **{verdict}**.",
        "",
        md_table(
            [
                "rows",
                "nq",
                "chosen plan",
                "coarse_limit",
                "auto ms/call",
                "exact ms/call",
                "time vs exact",
                "fidelity@10 auto",
                "fidelity@10 exact",
                "holds",
            ],
            rows,
        ),
        "",
    ]


def plan_section(res: dict[str, Any]) -> str:
    """Markdown for ``plan.json``."""
    gen = res.get("generator") or {}
    lines = [
        "## Search plan: never slower than exact search, never less faithful",
        "",
        '`hierarchical_search(plan="auto")` answers with one exact search on `vec_high` unless the profile\'s '
        "cost model predicts coarse → fine at most `switch_ratio` (0.8) of its time, and sizes the default "
        "`coarse_limit` from the collection's row count (docs/search.md). Data: the search benchmark's vectors "
        f"({gen.get('low_dim')}/{gen.get('high_dim')} dims, sigma={fmt(gen.get('sigma'), 4)}, fitted to the "
        "trained tiny model) in cached Milvus Lite databases. "
        f"Commands, in order: {'; '.join(f'`{c}`' for c in res.get('commands') or [res.get('command')])} "
        f"(last {res.get('date')}, {res.get('wall_s', 0) / 60:.0f} min in all). The machine was shared: "
        f"load average {', '.join(str(x) for x in (res.get('machine') or {}).get('loadavg_at_end', []))} on "
        f"{(res.get('machine') or {}).get('cores', '?')} cores at the end, so absolute times are several "
        "times this hardware's idle ones (compare the search section's); the plans were always interleaved.",
        "",
    ]
    lines += _curve(res) + _fit(res) + _check(res)
    return "\n".join(lines)
