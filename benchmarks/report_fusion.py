"""The ``fusion.json`` section of ``BENCHMARKS.md``: two-stage vs three-stage search, and its price."""

from __future__ import annotations

from typing import Any

from benchmarks.report import fmt, md_table

TARGET_POINTS = 5.0  # DESIGN.md: the fusion stage adds >= 5 points of t2i R@1 at M = 20
RECALLS = [f"{d} R@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)]
HEAD = ["case", "data (gallery)", "search", *RECALLS, "AR", "ms/query"]
STAGE_HEAD = ["case", "M", "encode", "coarse", "fine", "fusion", "total", "fusion per candidate"]


def _pct(row: dict[str, Any], key: str) -> str:
    return fmt(100 * row[key], 1) if key in row else "–"


def _gallery(case: dict[str, Any]) -> str:
    """``emoji heldout (191 images, 760 captions)``: which data, which split, how large a gallery."""
    meta = case.get("meta", {})
    size = f" ({meta['n_images']:,} images, {meta['n_texts']:,} captions)" if "n_images" in meta else ""
    return f"{case.get('data', '?')} {case.get('split', 'test')}{size}"


def _quality_rows(label: str, case: dict[str, Any]) -> list[list[str]]:
    out = []
    for name, row in case["rows"].items():
        if "n=" not in name:  # only the rows compared on the same queries
            continue
        ms = fmt(row["ms_per_query"], 1) if "ms_per_query" in row else "–"
        cells = [_pct(row, f"{d}_R@{k}") for d in ("text_to_image", "image_to_text") for k in (1, 5, 10)]
        out.append([label, _gallery(case), f"`{name}`", *cells, fmt(100 * row["AR"], 1), ms])
    return out


def gain_points(case: dict[str, Any], m: int = 20, direction: str = "text_to_image") -> float | None:
    """R@1 of ``hier@K+fusion@M`` minus ``hier@K`` on the same queries, in points (``None``: no such rows)."""
    rows = case["rows"]
    two = next((r for n, r in rows.items() if "n=" in n and "fusion" not in n), None)
    three = next((r for n, r in rows.items() if f"+fusion@{m} " in n), None)
    if two is None or three is None:
        return None
    return 100 * (three[f"{direction}_R@1"] - two[f"{direction}_R@1"])


def _verdict(label: str, case: dict[str, Any]) -> str:
    gain = gain_points(case)
    if gain is None:
        return f"`{label}`: no M = 20 row."
    i2t = gain_points(case, direction="image_to_text")
    met = "target met" if gain >= TARGET_POINTS else f"target ({TARGET_POINTS:g} points) not met"
    weight = case.get("score_weight")
    mix = "fusion score alone" if weight is None else f"distance + {weight:g} × fusion score"
    return (
        f"`{label}` (order: {mix}): t2i R@1 at M = 20 {gain:+.1f} points over two stages ({met}); i2t R@1 {i2t:+.1f}."
    )


def fusion_section(doc: dict[str, Any]) -> str:
    """Render ``results/fusion.json``: quality rows per case, the verdict at M = 20, per-stage times."""
    cases: dict[str, dict[str, Any]] = doc.get("cases", {})
    if not cases:
        return (
            "## Fusion (third stage)\n\n"
            "Not measured through Milvus yet (`python -m benchmarks.fusion --case LABEL=QS/model:QS/data` writes "
            "`results/fusion.json`). The in-memory measurement of the score mix and the fusion fine-tune on the "
            "quickstart model (t2i R@1 at M = 20: 68.6 two-stage, 70.8 three-stage) is in docs/objective.md.\n"
        )
    quality = [r for label, c in cases.items() for r in _quality_rows(label, c)]
    stages = [
        [
            label,
            m_,
            *(fmt(t.get(k, float("nan")), 1) for k in ("encode", "coarse", "fine", "fusion", "total")),
            fmt(t.get("fusion_per_candidate", float("nan")), 2),
        ]
        for label, c in cases.items()
        for m_, t in c.get("stage_p50_ms", {}).items()
    ]
    models = {c.get("fingerprint", "?"): c.get("model", "?") for c in cases.values()}
    parts = [
        "## Fusion (third stage)",
        "",
        f"Each case's split ingested into Milvus Lite and searched through it (coarse K = {doc.get('coarse_limit')}); "
        "the two-stage and three-stage rows of a case use the same `n` queries of each direction (a seeded "
        "sample of the split), the gallery is the whole split. Recalls in %; one query of 200 is 0.5 points. "
        "`python -m benchmarks.fusion`; the cases and their reading: docs/objective.md.",
        "",
        md_table(HEAD, quality),
        "",
        *(f"- {_verdict(label, c)}" for label, c in cases.items()),
        "",
        "Models: " + "; ".join(f"`{fp}` ({path})" for fp, path in models.items()) + ".",
        "",
        "Median milliseconds per single-caption three-stage search, per stage (this shared CPU):",
        "",
        md_table(STAGE_HEAD, stages),
        "",
    ]
    return "\n".join(parts)
