"""What ``ingest()`` decides before the first row: the index profile and size, the device, image paths.

Real Milvus Lite and the real ``micro`` model; every assertion reads the result back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import byo

from hivlp_milvus import cli
from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.data import Record, load_source, synthetic
from hivlp_milvus.errors import ConfigError, DataError
from hivlp_milvus.ids import row_id, text_key
from hivlp_milvus.ingest import ingest
from hivlp_milvus.model import HiVLP, create_model
from hivlp_milvus.profiles import nlist_for


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return synthetic.generate(4, seed=7, image_size=32, captions_per_image=2)


@pytest.fixture(scope="module")
def model(records: list[Record]) -> HiVLP:
    return create_model("micro", texts=[c for r in records for c in r.captions], seed=0)


def test_profile_and_expected_rows_shape_the_index_of_a_new_collection(tmp_path: Path) -> None:
    db = str(tmp_path / "t.db")
    ingest(byo(50), uri=db, collection_name="hnsw", profile="lite:HNSW", progress=False)
    ingest(byo(50), uri=db, collection_name="sized", expected_rows=20_000, progress=False)
    ingest(byo(50), uri=db, collection_name="estimated", progress=False)

    assert HierarchicalCollection.open("hnsw", uri=db).count() == 50  # its HNSW index: checked at the end
    sized = HierarchicalCollection.open("sized", uri=db).describe()["low_index"]
    assert (sized["index_type"], sized["nlist"]) == ("IVF_FLAT", nlist_for(20_000)) == ("IVF_FLAT", 512)
    # Without expected_rows the source's length (50 rows) sizes it.
    assert HierarchicalCollection.open("estimated", uri=db).describe()["low_index"]["nlist"] == nlist_for(50)
    # An existing collection keeps its own profile (HNSW, which lite:HNSW gave it above).
    ingest(byo(5), uri=db, collection_name="hnsw", profile="lite:FLAT", progress=False)
    assert HierarchicalCollection.open("hnsw", uri=db).profile.low.index_type == "HNSW"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a usable GPU")
def test_device_cuda_without_a_gpu_is_refused_with_the_reason(tmp_path: Path, model: HiVLP) -> None:
    with pytest.raises(ConfigError, match=r"device 'cuda' cannot be used: .*device='cpu'"):
        ingest([Record("r", captions=["a caption"])], uri=str(tmp_path / "t.db"), model=model, device="cuda")
    assert not (tmp_path / "t.db").exists()  # refused before connecting


def test_device_cpu_encodes_a_checkpoint_like_the_live_model(tmp_path: Path, model: HiVLP) -> None:
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    db = str(tmp_path / "t.db")
    report = ingest([Record("r", captions=["a red circle"])], uri=db, model=ckpt, device="cpu", progress=False)
    assert report.inserted == 1
    row = HierarchicalCollection.open("hivlp", uri=db).get([row_id(text_key("r", 0), "text")], ["vec_high"])[0]
    np.testing.assert_allclose(row["vec_high"], model.embed_texts(["a red circle"]).high[0], atol=1e-5)


# ------------------------------------------------------------------ image_root


def _karpathy(tmp_path: Path, records: list[Record]) -> tuple[Path, Path]:
    """A Flickr30K-style split file in ann/ whose images live elsewhere (images/flickr30k-images)."""
    images = tmp_path / "images" / "flickr30k-images"
    images.mkdir(parents=True)
    entries = []
    for i, r in enumerate(records):
        r.image.save(images / f"{i}.jpg")
        entries.append(
            {"filename": f"{i}.jpg", "imgid": i, "split": "test", "sentences": [{"raw": c} for c in r.captions]}
        )
    ann = tmp_path / "ann" / "dataset_flickr30k.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"images": entries}), encoding="utf-8")
    return ann, images


def test_cli_image_root_finds_karpathy_images_kept_elsewhere(
    tmp_path: Path, model: HiVLP, records: list[Record], capsys: pytest.CaptureFixture[str]
) -> None:
    ann, images = _karpathy(tmp_path, records)
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    db = str(tmp_path / "k.db")
    base = ["ingest", str(ann), "--model", str(ckpt), "--uri", db, "--no-progress", "--json", str(tmp_path / "r.json")]

    # Without --image-root every image is looked for next to the JSON file: nothing to ingest.
    assert cli.main([*base, "--collection", "without"]) == 0
    without = json.loads((tmp_path / "r.json").read_text())
    assert without["rows_written"] == 0
    assert len(without["source_skipped"]) == len(records)
    assert "image file not found" in without["source_skipped"][0]["reason"]

    assert cli.main([*base, "--collection", "with", "--image-root", str(images)]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["inserted"], report["source_skipped"]) == (len(records) * 3, [])
    coll = HierarchicalCollection.open("with", uri=db)
    row = coll.get([row_id("0.jpg", "image")], ["reference"])[0]
    assert row["reference"] == str(images / "0.jpg")
    capsys.readouterr()


def test_image_root_resolves_manifest_paths(tmp_path: Path, model: HiVLP, records: list[Record]) -> None:
    images = tmp_path / "pictures"
    images.mkdir()
    lines = []
    for i, r in enumerate(records):
        r.image.save(images / f"p{i}.png")
        lines.append(json.dumps({"id": f"m{i}", "image": f"p{i}.png", "captions": r.captions}))
    manifest = tmp_path / "meta" / "manifest.jsonl"
    manifest.parent.mkdir()
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")

    db = str(tmp_path / "m.db")
    report = ingest(manifest, uri=db, model=model, image_root=images, progress=False)
    assert (report.inserted, report.source_skipped, report.failed) == (len(records) * 3, [], [])
    refs = HierarchicalCollection.open("hivlp", uri=db).get([row_id("m1", "image")], ["reference"])
    assert refs[0]["reference"] == str(images / "p1.png")
    # Without it the paths are relative to the manifest's directory, where the images are not.
    source = load_source(manifest)
    assert list(source) == []
    assert len(source.report.skipped) == len(records)
    assert all("image file not found" in s.reason for s in source.report.skipped)


def test_image_root_is_refused_for_in_memory_records(tmp_path: Path, records: list[Record]) -> None:
    with pytest.raises(DataError, match="image_root= applies to a data path"):
        ingest(records, uri=str(tmp_path / "t.db"), image_root=tmp_path, progress=False)
