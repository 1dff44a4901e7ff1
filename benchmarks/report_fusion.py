"""The ``fusion.json`` section of ``BENCHMARKS.md``: two-stage vs three-stage search, and its price."""

from __future__ import annotations

from typing import Any

from benchmarks.report import fmt, md_table

TARGET_POINTS = 5.0  # DESIGN.md: the fusion stage adds >= 5 points of t2i R@1 at M = 20
HEAD = ["model", "search", "t2i R@1", "t2i R@5", "t2i R@10", "i2t R@1", "i2t R@5", "i2t R@10", "AR", "ms/query"]
STAGE_HEAD = ["model", "M", "encode", "coarse", "fine", "fusion", "total", "fusion per candidate"]


def _pct(row: dict[str, Any], key: str) -> str:
    return fmt(100 * row[key], 1) if key in row else "–"


def _quality_rows(label: str, model: dict[str, Any]) -> list[list[str]]:
    out = []
    for name, row in model["rows"].items():
        if "n=" not in name:  # only the rows compared on the same queries
            continue
        ms = fmt(row["ms_per_query"], 1) if "ms_per_query" in row else "–"
        cells = [_pct(row, f"{d}_R@{k}") for d in ("text_to_image", "image_to_text") for k in (1, 5, 10)]
        out.append([label, f"`{name}`", *cells, fmt(100 * row["AR"], 1), ms])
    return out


def _verdict(label: str, model: dict[str, Any]) -> str:
    rows = model["rows"]
    two = next((r for n, r in rows.items() if "n=" in n and "fusion" not in n), None)
    three = next((r for n, r in rows.items() if "+fusion@20 " in n), None)
    if two is None or three is None:
        return f"`{label}`: no M = 20 row."
    gain = 100 * (three["text_to_image_R@1"] - two["text_to_image_R@1"])
    met = "target met" if gain >= TARGET_POINTS else f"target ({TARGET_POINTS:g} points) not met"
    weight = model.get("score_weight")
    mix = "fusion score alone" if weight is None else f"distance + {weight:g} × fusion score"
    return f"`{label}` (order: {mix}): t2i R@1 at M = 20 {gain:+.1f} points over two stages ({met})."


def fusion_section(doc: dict[str, Any]) -> str:
    """Render ``results/fusion.json``: quality rows per model, the verdict at M = 20, per-stage times."""
    models: dict[str, dict[str, Any]] = doc.get("models", {})
    if not models:
        return (
            "## Fusion (third stage)\n\n"
            "Not measured through Milvus yet (`python -m benchmarks.fusion --model QS/model --data QS/data` writes "
            "`results/fusion.json`). The in-memory measurement of the score mix and the fusion fine-tune on the "
            "quickstart model (t2i R@1 at M = 20: 68.6 two-stage, 70.8 three-stage) is in docs/objective.md.\n"
        )
    quality = [r for label, m in models.items() for r in _quality_rows(label, m)]
    stages = [
        [
            label,
            m_,
            *(fmt(t.get(k, float("nan")), 1) for k in ("encode", "coarse", "fine", "fusion", "total")),
            fmt(t.get("fusion_per_candidate", float("nan")), 2),
        ]
        for label, m in models.items()
        for m_, t in m.get("stage_p50_ms", {}).items()
    ]
    parts = [
        "## Fusion (third stage)",
        "",
        "Synthetic test split (1,000 scenes, 5,000 captions) through Milvus Lite; the two-stage and "
        "three-stage rows use the same first `n` queries of each direction. `python -m benchmarks.fusion`.",
        "",
        md_table(HEAD, quality),
        "",
        *(f"- {_verdict(label, m)}" for label, m in models.items()),
        "",
        "Median milliseconds per single-caption three-stage search, per stage (this shared CPU):",
        "",
        md_table(STAGE_HEAD, stages),
        "",
    ]
    return "\n".join(parts)
