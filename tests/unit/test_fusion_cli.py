"""``hivlp-milvus search --fusion-limit M``: the third stage from the command line.

Real micro model with a small fusion block (random init: the order only has to be the scorer's),
real Milvus Lite, the real entry point, in the quickstart's layout so ``search`` needs no path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cli_helpers import enter_without_hivlp_env, search_json
from demo_layout import DemoLayout, build_demo_layout
from model_helpers import micro_fusion_config

from hivlp_milvus.cli import main

N_RECORDS = 12  # 12 image rows, 60 caption rows
QUERY = "a small red circle"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> DemoLayout:
    return build_demo_layout(tmp_path_factory.mktemp("fusion_demo"), N_RECORDS, micro_fusion_config())


@pytest.fixture
def in_layout(layout: DemoLayout, monkeypatch: pytest.MonkeyPatch) -> DemoLayout:
    enter_without_hivlp_env(monkeypatch, layout.root)
    return layout


def test_fusion_limit_orders_the_fine_top_m_by_the_scorer(
    in_layout: DemoLayout, capsys: pytest.CaptureFixture[str]
) -> None:
    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.content import read_image

    model = in_layout.model
    out = search_json([QUERY, "--limit", "3", "--fusion-limit", "8", "--coarse-limit", "12"], capsys)
    # The fine stage's top 8 (no fusion), each scored by the model with the query: the hand ranking.
    collection = HierarchicalCollection.open("quickstart", uri=in_layout.uri, model=model)
    fine = collection.hierarchical_search(QUERY, limit=8, coarse_limit=12)[0]
    images = [read_image(h["entity"]["reference"]) for h in fine]
    scores = model.score_pairs(images, [QUERY] * len(images))
    order = np.argsort(-scores, kind="stable")[:3]
    assert [h["id"] for h in out["hits"]] == [fine[i]["id"] for i in order]
    assert [h["fusion_score"] for h in out["hits"]] == pytest.approx(scores[order].tolist(), abs=1e-4)
    assert [h["distance"] for h in out["hits"]] == pytest.approx([fine[i]["distance"] for i in order], abs=1e-5)
    assert out["fusion_skipped"] == []
    assert out["timings"]["fusion_s"] > 0

    # The text output: the fusion score per hit and the fusion stage's time.
    assert main(["search", QUERY, "--limit", "3", "--fusion-limit", "8", "--coarse-limit", "12"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4
    assert lines[0].split()[1:3] == ["fusion", f"{scores[order[0]]:+7.3f}".strip()]
    assert "fusion_s=" in lines[-1]
    assert lines[-1].startswith("(3 hits;")


def test_content_root_reaches_the_resolver_and_unreadable_images_keep_their_fine_rank(
    in_layout: DemoLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "images_are_not_here"
    elsewhere.mkdir()
    # The stored references are absolute paths outside this root: every candidate is refused.
    argv = [QUERY, "--limit", "3", "--fusion-limit", "6", "--coarse-limit", "12", "--content-root", str(elsewhere)]
    out = search_json(argv, capsys)
    plain = search_json([QUERY, "--limit", "3", "--coarse-limit", "12"], capsys)
    assert [h["id"] for h in out["hits"]] == [h["id"] for h in plain["hits"]]  # fine order kept
    assert all(h["fusion_score"] is None for h in out["hits"])
    assert len(out["fusion_skipped"]) == 6
    assert all("outside the content root" in s["reason"] for s in out["fusion_skipped"])
    assert main(["search", *argv]) == 0
    text = capsys.readouterr().out
    assert "n/a" in text
    assert text.count("not fused (kept its fine rank)") == 6


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--level", "high", "--fusion-limit", "8"], "--fusion-limit needs --level hierarchical"),  # single level
        (["--limit", "5", "--fusion-limit", "2"], "fusion_limit must be an int >= limit=5"),  # below --limit
    ],
)
def test_a_fusion_limit_that_cannot_apply_is_refused_saying_why(
    in_layout: DemoLayout, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main(["search", QUERY, *argv]) == 2
    assert message in capsys.readouterr().err


def test_fusion_config_and_content_options_are_exported_without_loading_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, hivlp_milvus\n"
        "from hivlp_milvus import ContentOptions, FusionConfig\n"
        "from hivlp_milvus.model import FusionConfig as F2\n"
        "assert FusionConfig is F2 and ContentOptions(allow_http=True).allow_http\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"  # the config classes are light; the model's torch loads on use
