"""benchmarks/fusion.py's argument parsing and result merging (the measurement itself runs in the benchmark)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from benchmarks.fusion import Case, data_name, main, merge_cases, parse_case

SETUP = {"fusion_limits": [10, 20, 50], "coarse_limit": 50}


def test_a_case_names_model_data_and_split() -> None:
    assert parse_case("heldout=runs/m:data/emoji:heldout") == Case(
        "heldout", Path("runs/m"), Path("data/emoji"), "heldout"
    )
    assert parse_case("syn=/tmp/qs/model:/tmp/qs/data") == Case("syn", Path("/tmp/qs/model"), Path("/tmp/qs/data"))
    assert parse_case("syn=/tmp/qs/model:/tmp/qs/data").split == "test"


@pytest.mark.parametrize("spec", ["runs/m:data", "=runs/m:data", "x=runs/m", "x=runs/m:data:test:more", "x=m::test"])
def test_a_malformed_case_says_how_to_write_one(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="LABEL=MODEL_DIR:DATA_DIR"):
        parse_case(spec)


def test_two_cases_with_one_label_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--case", "a=m:d", "--case", "a=m:d:heldout"])
    assert "--case labels must differ" in capsys.readouterr().err


def test_the_data_set_is_named_by_its_generator(tmp_path: Path) -> None:
    (tmp_path / "emoji").mkdir()
    (tmp_path / "emoji" / "dataset.json").write_text(json.dumps({"generator": "hivlp_milvus.data.emoji"}))
    assert data_name(tmp_path / "emoji") == "emoji"
    (tmp_path / "plain").mkdir()  # no dataset.json: the directory's name
    assert data_name(tmp_path / "plain") == "plain"


def test_merge_keeps_other_cases_replaces_the_same_label_and_drops_another_setup() -> None:
    old = {**SETUP, "cases": {"twitter": {"v": 1}, "heldout": {"v": 1}}}
    merged = merge_cases(old, {"twitter": {"v": 2}, "synthetic": {"v": 2}}, SETUP)
    assert merged == {"twitter": {"v": 2}, "heldout": {"v": 1}, "synthetic": {"v": 2}}
    other = {**SETUP, "coarse_limit": 100, "cases": {"heldout": {"v": 1}}}
    assert merge_cases(other, {"twitter": {"v": 2}}, SETUP) == {"twitter": {"v": 2}}
    assert merge_cases(None, {"twitter": {"v": 2}}, SETUP) == {"twitter": {"v": 2}}
