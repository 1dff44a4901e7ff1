"""Readers and load_source: every format, bad rows reported not raised, unreadable sources raise."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from serving_helpers import png

from hivlp_milvus.data import EmbeddingRecord, Record, RecordSource, load_source
from hivlp_milvus.errors import DataError


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, value, value)).save(path)
    return path


def _reasons(source: RecordSource) -> list[str]:
    return [s.reason for s in source.report.skipped]


# --------------------------------------------------------------------------- Karpathy JSON


def _make_karpathy(tmp_path: Path) -> Path:
    for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        _png(tmp_path / "imgs" / "val2014" / name)

    def entry(name, split, sentences, **ids):
        return {"filename": name, "filepath": "val2014", "split": split, "sentences": sentences, **ids}

    data = {
        "images": [
            entry("a.jpg", "train", [{"raw": "A dog."}, {"raw": "  a brown dog  "}], cocoid=11, imgid=0),
            entry("b.jpg", "restval", [{"raw": "A cat."}], cocoid=12, imgid=1),
            entry("c.jpg", "test", [{"raw": "A bird."}, {"raw": "   "}], cocoid=13, imgid=2),
            entry("missing.jpg", "test", [{"raw": "Gone."}], cocoid=14, imgid=3),
            entry("d.jpg", "test", [{"raw": ""}], cocoid=15, imgid=4),
            entry("c.jpg", "val", [{"raw": "A val bird."}], cocoid=16, imgid=5),
        ]
    }
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(data))
    return path


def test_karpathy_split_selection_and_bad_entries(tmp_path):
    path = _make_karpathy(tmp_path)
    test = load_source(path, split="test", image_root=tmp_path / "imgs")
    records = list(test)
    assert [r.id for r in records] == ["13"]
    assert records[0].captions == ["A bird."]
    assert Path(records[0].image) == tmp_path / "imgs" / "val2014" / "c.jpg"
    assert records[0].attributes["split"] == "test"
    assert test.report.read == 1
    assert test.report.dropped_captions == 2
    reasons = dict((s.key, s.reason) for s in test.report.skipped)
    assert "image file not found" in reasons["14"]
    assert reasons["15"] == "no caption"
    assert len(test) == 3  # entries in the split, before bad ones are skipped

    train = list(load_source(path, split="train", image_root=tmp_path / "imgs"))
    assert [r.id for r in train] == ["11", "12"]  # "train" includes Karpathy's restval
    assert train[0].captions == ["A dog.", "a brown dog"]
    assert len(list(load_source(path, image_root=tmp_path / "imgs"))) == 4  # no split: all readable


# --------------------------------------------------------------------------- CSV / JSONL / Parquet


@pytest.mark.parametrize("name", ["manifest.csv", "manifest.tsv"])
def test_csv_manifest_merges_adjacent_rows_and_reports_bad_ones(tmp_path, name):
    _png(tmp_path / "img" / "1.png")
    _png(tmp_path / "img" / "2.png")
    rows = [
        ["image", "caption", "photographer"],
        ["img/1.png", "first caption", "ann"],
        ["img/1.png", "second caption", "ann"],  # same image, adjacent: merged
        ["img/2.png", "   ", "bob"],  # blank caption dropped; the image is kept
        ["img/404.png", "lost", "bob"],  # missing file
        ["", "", "x"],  # nothing at all
        ["img/1.png", "late duplicate", "ann"],  # not adjacent
        ["", "text only", "z"],
        ["img/2.png"],  # short row
    ]
    path = tmp_path / name
    with path.open("w", newline="") as f:
        csv.writer(f, delimiter="\t" if name.endswith(".tsv") else ",").writerows(rows)
    source = load_source(path)
    records = list(source)
    assert [r.id for r in records] == ["img/1.png", "img/2.png", f"{name}:8"]
    assert records[0].captions == ["first caption", "second caption"]
    assert Path(records[0].image) == tmp_path / "img" / "1.png"  # relative to the manifest
    assert records[0].attributes == {"photographer": "ann"}
    assert records[1].captions == []
    assert records[2].image is None
    assert records[2].captions == ["text only"]
    reasons = _reasons(source)
    assert len(reasons) == 4
    assert "image file not found" in reasons[0]
    assert reasons[1] == "no image and no caption"
    assert "duplicate id" in reasons[2]
    assert "cells" in reasons[3]
    assert source.report.dropped_captions == 2
    with pytest.raises(TypeError):
        len(source)


def test_csv_captions_list_ids_groups_and_split_column(tmp_path):
    _png(tmp_path / "a.png")
    path = tmp_path / "m.csv"
    path.write_text(
        'id,image,captions,group,split\nk1,a.png,"[""one"", ""two"", """"]",G,test\nk2,a.png,"[""x""]",,train\n'
    )
    (record,) = load_source(path, split="test")
    assert record.id == "k1"
    assert record.captions == ["one", "two"]
    assert record.group == "G"
    assert record.attributes == {"split": "test"}
    assert [r.relevance_group for r in load_source(path)] == ["G", "k2"]


def test_jsonl_manifest_bad_lines(tmp_path):
    _png(tmp_path / "a.png")
    lines = [
        json.dumps({"id": "a", "image": "a.png", "captions": ["x", " y "], "attributes": {"n": 1}, "tag": "t"}),
        "{broken json",
        "",
        json.dumps(["not", "an", "object"]),
        json.dumps({"id": "b", "captions": ["no image column"]}),
        json.dumps({"id": "c", "image": "a.png", "caption": "single", "group": "g"}),
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    source = load_source(path)
    records = list(source)
    assert [r.id for r in records] == ["a", "c"]
    assert records[0].captions == ["x", "y"]
    assert records[0].attributes == {"n": 1, "tag": "t"}
    assert records[1].captions == ["single"]
    assert records[1].group == "g"
    keys = [s.key for s in source.report.skipped]
    assert keys == ["m.jsonl:2", "m.jsonl:4", "m.jsonl:5"]
    reasons = _reasons(source)
    assert "malformed JSON" in reasons[0]
    assert "JSON object" in reasons[1]
    assert "missing column image" in reasons[2]


def test_parquet_manifest_with_bytes_and_paths(tmp_path):
    _png(tmp_path / "p.png")
    binary = pa.table({"image": [png(), b""], "caption": ["bytes image", "empty bytes"], "score": [0.5, 1]})
    pq.write_table(binary, tmp_path / "b.parquet")
    records = list(load_source(tmp_path / "b.parquet"))
    assert isinstance(records[0].image, bytes)
    assert records[0].id == "b.parquet:row 0"
    assert records[1].image is None  # empty bytes: a text-only record
    assert [r.attributes["score"] for r in records] == [0.5, 1.0]

    paths = pa.table({"image": [str(tmp_path / "p.png"), "nope.png"], "caption": ["absolute path", "missing"]})
    pq.write_table(paths, tmp_path / "s.parquet")
    source = load_source(tmp_path / "s.parquet", limit=5)
    records = list(source)
    assert [r.image for r in records] == [str(tmp_path / "p.png")]
    assert len(source.report.skipped) == 1
    assert [r.captions for r in load_source(tmp_path / "b.parquet", limit=1)] == [["bytes image"]]


# --------------------------------------------------------------------------- Hugging Face datasets


def test_hf_save_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    _png(tmp_path / "f.png", 200)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "n": datasets.Value("int32"),
        }
    )
    train = datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (4, 4), (1, 2, 3)), str(tmp_path / "f.png"), None],
            "caption": [["a red square", ""], ["from a file"], ["no image here"]],
            "n": [1, 2, 3],
        },
        features=features,
    )
    test = datasets.Dataset.from_dict({"image": [None], "caption": [[" "]], "n": [0]}, features=features)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hf"))

    with pytest.raises(DataError, match="choose one"):
        load_source(tmp_path / "hf")
    with pytest.raises(DataError, match="no split"):
        load_source(tmp_path / "hf", split="validation")
    source = load_source(tmp_path / "hf", split="train")
    assert len(source) == 3
    records = list(source)
    assert [r.id for r in records] == ["row 0", "row 1", "row 2"]
    with Image.open(io.BytesIO(records[0].image)) as im:
        assert im.getpixel((0, 0)) == (1, 2, 3)
    assert records[0].captions == ["a red square"]
    assert records[0].attributes == {"n": 1}
    assert records[2].image is None
    empty = load_source(tmp_path / "hf", split="test")
    assert list(empty) == []
    assert _reasons(empty) == ["no image and no caption"]
    # An in-memory Dataset object works too.
    assert [r.captions for r in load_source(train)][1] == ["from a file"]


# --------------------------------------------------------------------------- in-memory sources


def test_list_sources_validate_and_reiterate():
    vec = np.zeros(2, np.float32)
    items = [
        Record(id="a", image=np.zeros((2, 2, 3), np.uint8), captions=["x", "  "]),
        Record(id="b"),
        EmbeddingRecord(id="e", modality="text", vec_low=vec, vec_high=vec),
        EmbeddingRecord(id="f", modality="audio", vec_low=vec, vec_high=vec),
        "not a record",
    ]
    source = load_source(items)
    assert len(source) == 5
    first = list(source)
    assert [r.id for r in first] == ["a", "e"]
    assert first[0].captions == ["x"]
    assert items[0].captions == ["x", "  "]  # the caller's record is not mutated
    assert len(source.report.skipped) == 3
    assert [r.id for r in source] == ["a", "e"]  # a list source can be read again...
    assert len(source.report.skipped) == 3  # ...and its report describes the latest pass only
    assert source.report.read == 2
    assert [r.id for r in load_source(items, limit=1)] == ["a"]


def test_one_shot_iterator_source():
    source = load_source(Record(id=str(i), captions=["c"]) for i in range(3))
    assert [r.id for r in source] == ["0", "1", "2"]
    with pytest.raises(DataError, match="one-shot"):
        list(source)


# --------------------------------------------------------------------------- sources that cannot be read


def _write(path: Path, content: str | dict | None) -> None:
    """Create ``path``: a text file, a Parquet file (``content`` = its columns) or a directory (None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is None:
        path.mkdir()
    elif isinstance(content, dict):
        pq.write_table(pa.table(content), path)
    else:
        path.write_text(content)


_KARPATHY_TEST_ONLY = json.dumps({"images": [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "A."}]}]})
_TWO_SPLITS = {"root/train/manifest.jsonl": "", "root/test/manifest.jsonl": ""}
_ONE_RECORD = [Record(id="a", captions=["c"])]


@pytest.mark.parametrize(
    ("files", "source", "options", "match"),
    [
        pytest.param({"x.json": '{"annotations": []}'}, "x.json", {}, "images", id="karpathy-no-images"),
        pytest.param({"x.json": "{not json"}, "x.json", {}, "JSON", id="karpathy-not-json"),
        pytest.param(
            {"k.json": _KARPATHY_TEST_ONLY}, "k.json", {"split": "nonexistent"}, "splits", id="karpathy-split"
        ),
        pytest.param({"m.csv": "img,text\na.png,hello\n"}, "m.csv", {}, "'image' column", id="csv-columns"),
        pytest.param({"e.csv": ""}, "e.csv", {}, "is empty", id="csv-empty"),
        pytest.param({"m.parquet": {"image": ["a.png"]}}, "m.parquet", {}, "caption", id="parquet-columns"),
        pytest.param({"b.parquet": "PAR1 not"}, "b.parquet", {}, "not a readable Parquet", id="parquet-unreadable"),
        pytest.param({"ok.csv": "image,caption\n"}, "ok.csv", {"split": "test"}, "split", id="csv-split"),
        pytest.param(
            {"m.jsonl": '{"image": "a.png"}\n'}, "m.jsonl", {"split": "test"}, "'split' field", id="jsonl-split"
        ),
        pytest.param({}, "nothing.csv", {}, "does not exist", id="no-path"),
        pytest.param({"data.txt": "x"}, "data.txt", {}, "unknown file type", id="unknown-type"),
        pytest.param({"empty": None}, "empty", {}, "manifest.jsonl", id="empty-dir"),
        pytest.param(_TWO_SPLITS, "root", {}, r"\['test', 'train'\]", id="splits-dir"),
        pytest.param({}, 42, {}, "Record", id="int"),
        pytest.param({}, {"image": "a.png"}, {}, "dict", id="dict"),
        pytest.param({}, _ONE_RECORD, {"split": "test"}, "in-memory", id="list-split"),
        pytest.param({}, _ONE_RECORD, {"image_root": "/x"}, "image_root", id="list-image-root"),
        pytest.param({}, _ONE_RECORD, {"limit": -1}, "limit", id="negative-limit"),
    ],
)
def test_unreadable_sources_raise(tmp_path, files, source, options, match):
    for name, content in files.items():
        _write(tmp_path / name, content)
    with pytest.raises(DataError, match=match):
        load_source(tmp_path / source if isinstance(source, str) else source, **options)
