"""The Fusion section of BENCHMARKS.md (benchmarks/report_fusion.py) from a fusion.json document."""

from __future__ import annotations

from benchmarks.report_fusion import fusion_section


def _row(t2i_r1: float, **extra: float) -> dict[str, float]:
    recalls = {f"{d}_R@{k}": t2i_r1 for d in ("text_to_image", "image_to_text") for k in (1, 5, 10)}
    return {**recalls, "AR": t2i_r1, **extra}


def _doc(two: float, three: float, weight: float | None) -> dict:
    rows = {
        "hier@50": _row(0.9),  # all queries: not a compared row
        "hier@50 n=100": _row(two),
        "hier@50+fusion@20 n=100": _row(three, ms_per_query=80.0, fusion_skipped=0),
    }
    stages = {
        "20": {"encode": 5.0, "coarse": 2.0, "fine": 1.0, "fusion": 80.0, "total": 88.0, "fusion_per_candidate": 4.0}
    }
    meta = {"n_images": 191, "n_texts": 760}
    case = {"rows": rows, "score_weight": weight, "stage_p50_ms": stages, "data": "emoji", "split": "heldout"}
    return {"coarse_limit": 50, "cases": {"after": {**case, "meta": meta, "fingerprint": "abc", "model": "QS/model"}}}


def test_the_verdict_reads_the_m20_gain_against_the_target() -> None:
    text = fusion_section(_doc(0.686, 0.708, 0.01))
    assert "t2i R@1 at M = 20 +2.2 points over two stages (target (5 points) not met); i2t R@1 +2.2." in text
    assert "| after | emoji heldout (191 images, 760 captions) | `hier@50 n=100` | 68.6 |" in text
    assert "Models: `abc` (QS/model)." in text
    assert "distance + 0.01 × fusion score" in text
    assert "`hier@50`" not in text.replace("`hier@50 n=100`", "").replace("`hier@50+fusion@20 n=100`", "")
    assert "| after | 20 | 5.0 | 2.0 | 1.0 | 80.0 | 88.0 | 4.00 |" in text
    met = fusion_section(_doc(0.60, 0.66, None))
    assert "+6.0 points over two stages (target met)" in met
    assert "fusion score alone" in met


def test_no_results_is_said_so() -> None:
    assert "Not measured through Milvus yet" in fusion_section({})
