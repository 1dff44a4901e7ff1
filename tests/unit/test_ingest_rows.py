"""The one row builder (``hivlp_milvus.ingest.rows``): keys, references, checks, and the limits it reads.

The Ray Data stage that explodes records into items must give the same items as the in-process
path: both are checked here against the same records (no cluster needed, the stage is a function).
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from hivlp_milvus.data import EmbeddingRecord, Record, Skipped
from hivlp_milvus.ids import row_id, text_key
from hivlp_milvus.ingest import rows

# The VARCHAR limits as the collection schema declares them (the row builder must read the same ones).
_SPEC = json.loads(resources.files("schemas").joinpath("collection.json").read_text(encoding="utf-8"))
LIMITS = {f["name"]: int(f["max_length"]) for f in _SPEC["fields"] if "max_length" in f}
KEY_CAP, REF_CAP = LIMITS["key"], LIMITS["reference"]
EMOJI = "\N{GRINNING FACE}"  # 4 bytes in UTF-8


def _items(records: list, failed: list[Skipped]) -> list[rows.Item]:
    """Every record's items, in order, as the local driver builds them."""
    return [it for record in records for it in rows.record_items(record, failed)]


@pytest.mark.parametrize(
    ("key", "reference", "reason"),
    [
        ("k" * KEY_CAP, "", None),
        ("k" * (KEY_CAP + 1), "", f"key is longer than {KEY_CAP} bytes"),
        # Bytes, not characters: a 4-byte character counts four times.
        (EMOJI * (KEY_CAP // 4), "", None),
        (EMOJI * (KEY_CAP // 4) + "x", "", f"key is longer than {KEY_CAP} bytes"),
        ("k", "é" * (REF_CAP // 2 + 1), f"reference (image uri or caption) is longer than {REF_CAP} bytes"),
        ("", "r", "empty key (record id)"),
    ],
)
def test_varchar_limits_are_the_schemas_counted_in_utf8_bytes(key: str, reference: str, reason: str | None) -> None:
    assert rows.check_text_fields(key, reference, {}) == reason


def test_a_record_becomes_an_image_item_and_one_item_per_caption() -> None:
    failed: list[Skipped] = []
    record = Record("r1", image="/data/a.png", captions=["one", "  ", "three"], attributes={"a": 1})
    items = list(rows.record_items(record, failed))

    assert [(it.key, it.modality, it.kind, it.reference) for it in items] == [
        ("r1", "image", "image", "/data/a.png"),
        (text_key("r1", 0), "text", "text", "one"),
        (text_key("r1", 2), "text", "text", "three"),
    ]
    assert [it.id for it in items] == [row_id(it.key, it.modality) for it in items]
    assert all(it.attributes == {"a": 1} for it in items)
    assert failed == [Skipped(text_key("r1", 1), "empty caption")]

    row = items[0].row(np.zeros(2, np.float32), np.ones(3, np.float32))
    assert sorted(row) == sorted(["id", "key", "modality", "reference", "attributes", "vec_low", "vec_high"])


def test_records_that_cannot_become_rows_are_reported_not_raised() -> None:
    failed: list[Skipped] = []
    vec = EmbeddingRecord("e", "audio", np.zeros(2), np.zeros(3))
    nan = Record("nan", captions=["c"], attributes={"x": float("nan")})
    got = list(_items([Record("empty"), vec, "not a record", Record("x" * 2000, captions=["c"]), nan], failed))
    assert got == []
    reasons = {
        "empty": "neither an image nor captions",
        "e": "modality",
        "?": "not a Record",
        "x" * 2000: "longer than",
        "nan": "attributes are not JSON",
    }
    assert [s.key for s in failed] == list(reasons)
    assert all(reasons[s.key] in s.reason for s in failed), failed


def test_vector_rows_check_dims_and_finiteness_per_row() -> None:
    good = rows.Item(1, "a", "text", "", {}, "vectors", (np.ones(2), np.ones(3)))
    short = rows.Item(2, "b", "text", "", {}, "vectors", (np.ones(1), np.ones(3)))
    nan = rows.Item(3, "c", "text", "", {}, "vectors", (np.array([1.0, np.nan]), np.ones(3)))
    failed: list[Skipped] = []
    out = rows.vector_rows([good, short, nan], 2, 3, failed)
    assert [r["id"] for r in out] == [1]
    assert out[0]["vec_low"].dtype == np.float32
    assert [(s.key, s.reason) for s in failed] == [
        ("b", "vector dims (1, 3) differ from the collection's (low_dim=2, high_dim=3)"),
        ("c", rows.NOT_FINITE),
    ]


def test_the_ray_explode_stage_builds_the_same_items_as_the_local_path() -> None:
    ray_stages = pytest.importorskip("hivlp_milvus.ingest.ray_stages")
    records = [
        Record("a", image="/img/a.png", captions=["first", "second"], attributes={"n": 1}),
        Record("b", captions=["only text"], attributes={"tags": ["x", "y"]}),
        Record("c", image="/img/c.png"),
        Record("toolong", image="/img/t.png", captions=["y" * 70_000]),
    ]
    failed: list[Skipped] = []
    local = list(_items(records, failed))

    captions = np.empty(len(records), dtype=object)  # one list per cell, as Ray's numpy batches hold them
    captions[:] = [r.captions for r in records]
    batch = {
        "id": np.asarray([r.id for r in records], dtype=object),
        "image": np.asarray([r.image_uri for r in records], dtype=object),
        "captions": captions,
        "attributes": np.asarray([json.dumps(r.attributes) for r in records], dtype=object),
    }
    out = ray_stages.explode(batch)
    ok = [i for i, e in enumerate(out["error"]) if not e]
    assert [int(out["id"][i]) for i in ok] == [it.id for it in local]
    assert [(out["key"][i], out["modality"][i], out["reference"][i]) for i in ok] == [
        (it.key, it.modality, it.reference) for it in local
    ]
    assert [json.loads(out["attributes"][i]) for i in ok] == [it.attributes for it in local]
    errors = [(out["key"][i], out["error"][i]) for i, e in enumerate(out["error"]) if e]
    assert errors == [(s.key, s.reason) for s in failed]
