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
    runs = res["runs"]
    head = " | ".join(f"p50 ms, nq = {r['nq']} ({r['queries'] // r['nq']} calls)" for r in runs)
    lines = [
        HEADING,
        "",
        "Milvus Lite 3.2 answers a search with `output_fields=[]` with every field of each hit (both "
        "vectors and the JSON attributes). Until 2026-11-30 `hierarchical_search` sent `[]` for its "
        'coarse stage; it now sends `["id"]` (`hivlp_milvus/search.py`). The search tables above were '
        "measured before that change, so their hierarchical rows include the all-fields answer. "
        f"Re-measured on {res['gallery']} ({runs[0]['rows']:,} rows), interleaved "
        f"(`{res['command']}`, {res['date'][:10]}):",
        "",
        f"| request | {head} |",
        "|---|" + "---:|" * len(runs),
    ]
    for name in runs[0]["stats"]:
        lines.append(f"| `{name}` | " + " | ".join(f"{r['stats'][name]['p50_ms']:,.1f}" for r in runs) + " |")
    lines.append("")
    for r in runs:
        ratios = ", ".join(f"{x:.2f}x at cl={cl}" for cl, x in r["all_fields_over_key_p50"].items())
        same = "yes" if all(r["same_ids"].values()) else "NO"
        lines.append(
            f"* nq = {r['nq']}: every field / the key alone = {ratios} (p50; same ids: {same}); the funnel as it "
            f"runs now is **{r['funnel_speedup_vs_exact_p50']:.2f}x** exact high-dim search."
        )
    lines.append("")
    return "\n".join(lines)
