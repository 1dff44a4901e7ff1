"""The ``coarse_fields.json`` section of ``BENCHMARKS.md``: what asking for every field cost the coarse stage.

Standalone (it does not import ``benchmarks.report``), so ``report.py`` can import it at the top.
"""

from __future__ import annotations

from typing import Any

HEADING = "### The coarse request's output fields (measured after the search tables above)"


def coarse_fields_section(res: dict[str, Any] | None) -> str:
    """Markdown for ``benchmarks/results/coarse_fields.json`` (empty when it was not measured)."""
    if not res:
        return ""
    lines = [
        HEADING,
        "",
        "Milvus Lite 3.2 answers a search with `output_fields=[]` with every field of each hit (both "
        "vectors and the JSON attributes). Until 2026-11-30 `hierarchical_search` sent `[]` for its "
        'coarse stage; it now sends `["id"]` (`hivlp_milvus/search.py`). The search tables above were '
        "measured before that change, so their hierarchical rows include the all-fields answer. "
        f"Re-measured on {res['gallery']} ({res['rows']:,} rows), {res['queries']} interleaved single "
        f"queries (`{res['command']}`, {res['date'][:10]}):",
        "",
        "| request | p50 ms | p99 ms |",
        "|---|---:|---:|",
    ]
    lines += [f"| `{name}` | {s['p50_ms']:,.1f} | {s['p99_ms']:,.1f} |" for name, s in res["stats"].items()]
    ratios = ", ".join(f"{r:.2f}x at cl={cl}" for cl, r in res["all_fields_over_key_p50"].items())
    same = all(res["same_ids"].values())
    lines += [
        "",
        f"Asking for every field made the coarse request {ratios} slower (p50), for the same ids: "
        f"{'yes' if same else 'NO'}. The funnel as it runs now (client re-rank) is "
        f"**{res['funnel_speedup_vs_exact_p50']:.2f}x** exact high-dim search (p50, single queries).",
        "",
    ]
    return "\n".join(lines)
