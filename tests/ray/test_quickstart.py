"""``hivlp-milvus quickstart`` end to end at a tiny size, then again to show it is safe to re-run.

Real Ray Train (2 CPU workers on the module's cluster), real Milvus Lite, the real CLI entry point.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hivlp_milvus.cli import main
from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.model import HiVLP

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TEST_SIZE = 40
ROWS = TEST_SIZE * 6  # one image row and five caption rows per test scene


def test_quickstart_runs_every_stage_and_reruns_from_its_work_dir(
    ray_cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "qs"
    args = [
        "quickstart",
        "--work-dir",
        str(work),
        "--train-size",
        "256",
        "--val-size",
        "32",
        "--test-size",
        str(TEST_SIZE),
        "--epochs",
        "1",
        "--coarse-limit",
        "20",
        "--fusion-limit",
        "20",
        "--fusion-queries",
        "10",  # of 200 captions: keeps the three-stage rows' image-tower cost to seconds
        "--fusion-steps",
        "5",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    for stage in range(1, 7):
        assert f"[{stage}/6]" in out
    table = json.loads((work / "eval.json").read_text())
    # The tiny config has a fusion block and the quickstart trains it: the table has its three-stage row,
    # next to the two-stage row on the same 10 queries per direction.
    assert set(table["rows"]) == {"low", "high", "hier@20", "hier@20 n=10", "hier@20+fusion@20 n=10"}
    assert table["rows"]["hier@20+fusion@20 n=10"]["fusion_skipped"] == 0
    assert "hier@20+fusion@20 n=10" in out
    assert "fusion block fine-tuned on funnel negatives: 5 steps" in out
    for row in table["rows"].values():
        assert 0.0 <= row["AR"] <= 1.0
    assert table["meta"]["n_images"] == TEST_SIZE
    latency = json.loads((work / "latency.json").read_text())
    assert latency["gallery_rows"] == ROWS
    assert latency["hierarchical_p50_ms"] > 0
    assert latency["fusion@20_fusion_p50_ms"] > 0  # stage 5 times the fusion stage too
    assert "text -> images" in out
    assert "image -> captions" in out

    model = HiVLP.from_pretrained(work / "model")
    assert model.fusion_score_weight is not None  # the mix chosen on validation is saved with the model
    collection = HierarchicalCollection.open("quickstart", uri=str(work / "hivlp.db"), model=model)
    assert collection.count() == ROWS

    # Again on the same work dir: data and the finished training run are reused, rows not duplicated.
    assert main(args) == 0
    again = capsys.readouterr().out
    assert "reusing the existing data set" in again
    assert collection.count() == ROWS
    assert HiVLP.from_pretrained(work / "model").fingerprint == model.fingerprint
