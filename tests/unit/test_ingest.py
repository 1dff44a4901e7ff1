"""ingest() into an in-process Milvus Lite .db: exact rows, idempotence, bad records, dims, model path.

Real Milvus Lite and the real ``micro`` model: every assertion reads the rows back from Milvus.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_collection_holds, byo, byo_rows, encoded_rows

from hivlp_milvus import cli
from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import connect
from hivlp_milvus.data import EmbeddingRecord, Record, Skipped, synthetic
from hivlp_milvus.errors import ConfigError, DimensionMismatchError, MilvusUnavailableError, ModelMismatchError
from hivlp_milvus.ids import row_id, text_key
from hivlp_milvus.ingest import IngestReport, ingest
from hivlp_milvus.model import HiVLP, create_model

LOW, HIGH = 8, 32


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return synthetic.generate(16, seed=3, image_size=32, captions_per_image=2)


@pytest.fixture(scope="module")
def model(records: list[Record]) -> HiVLP:
    return create_model("micro", texts=[c for r in records for c in r.captions], seed=0)


def test_byo_rows_land_exactly(tmp_path: Path) -> None:
    recs = byo(300)
    report = ingest(recs, uri=str(tmp_path / "t.db"), collection_name="byo", write_batch_rows=64, progress=False)

    assert (report.inserted, report.updated, report.rows_written) == (300, 0, 300)
    assert report.failed == []
    assert report.source_skipped == []
    coll = HierarchicalCollection.open("byo", uri=str(tmp_path / "t.db"))
    assert (coll.low_dim, coll.high_dim) == (LOW, HIGH)
    expected = byo_rows(recs)
    got = assert_collection_holds(coll, expected, atol=0)  # 300 rows, vectors bit for bit
    assert [got[rid]["attributes"] for rid in expected] == [r.attributes for r in recs]


def test_reingest_is_an_update_and_skip_existing_skips(tmp_path: Path) -> None:
    uri = str(tmp_path / "t.db")
    recs = byo(120, seed=1)
    first = ingest(recs, uri=uri, collection_name="c", write_batch_rows=50, progress=False)
    assert (first.inserted, first.updated) == (120, 0)

    # Same keys, new vectors: the rows are overwritten in place, never duplicated.
    changed = byo(120, seed=2)
    again = ingest(changed, uri=uri, collection_name="c", write_batch_rows=50, progress=False)
    assert (again.inserted, again.updated, again.rows_written) == (0, 120, 120)
    coll = HierarchicalCollection.open("c", uri=uri)
    assert_collection_holds(coll, byo_rows(changed), atol=0)  # 120 rows holding the new vectors

    # Resume semantics: present rows are skipped before any work, new ones are inserted.
    more = byo(150, seed=2)
    resumed = ingest(more, uri=uri, collection_name="c", skip_existing=True, progress=False)
    assert (resumed.skipped_existing, resumed.inserted, resumed.updated) == (120, 30, 0)
    assert coll.count() == 150

    # A key repeated inside one run is one row; the second occurrence counts as an update.
    dup = byo(3, seed=4, prefix="dup")
    rerun = ingest(dup + dup, uri=uri, collection_name="c", write_batch_rows=2, progress=False)
    assert (rerun.inserted, rerun.updated) == (3, 3)
    assert coll.count() == 153


def test_bad_records_are_reported_and_the_rest_lands(tmp_path: Path, model: HiVLP, records: list[Record]) -> None:
    good = tmp_path / "good.png"
    records[0].image.save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    recs = [
        Record("ok", image=str(good), captions=["a red thing", "a blue thing"], attributes={"k": 1}),
        Record("corrupt", image=str(corrupt), captions=["still a caption"]),
        Record("missing", image=str(tmp_path / "nope.png"), captions=["caption of a missing image"]),
        Record("blank", image=str(good), captions=["first", "   ", "third"]),
        Record("long", captions=["x" * 70000, "short one"]),
        Record("empty"),
    ]
    report = ingest(recs, uri=str(tmp_path / "t.db"), model=model, batch_size=4, write_batch_rows=3, progress=False)

    reasons = {s.key: s.reason for s in report.failed}
    assert set(reasons) == {"corrupt", "missing", text_key("long", 0)}
    assert "decode" in reasons["corrupt"] or "identify" in reasons["corrupt"]
    assert "not found" in reasons["missing"]
    assert "65535" in reasons[text_key("long", 0)]
    assert [s.key for s in report.source_skipped] == ["empty"]
    assert report.dropped_captions == 1  # load_source drops the blank caption of "blank"
    assert f"  source empty: {report.source_skipped[0].reason}" in str(report).splitlines()  # the printed report

    expected = {
        row_id("ok", "image"), row_id(text_key("ok", 0), "text"), row_id(text_key("ok", 1), "text"),
        row_id(text_key("corrupt", 0), "text"), row_id(text_key("missing", 0), "text"),
        row_id("blank", "image"), row_id(text_key("blank", 0), "text"), row_id(text_key("blank", 1), "text"),
        row_id(text_key("long", 1), "text"),
    }  # fmt: skip
    coll = HierarchicalCollection.open("hivlp", uri=str(tmp_path / "t.db"))
    assert report.inserted == len(expected) == coll.count()
    got = {int(r["id"]): r for r in coll.get(list(expected), ["id", "reference", "attributes"])}
    assert set(got) == expected
    assert got[row_id("ok", "image")]["reference"] == str(good)
    assert got[row_id(text_key("blank", 1), "text")]["reference"] == "third"
    assert got[row_id(text_key("ok", 0), "text")]["attributes"] == {"k": 1}


def test_dimension_mismatch_raises_before_any_write(tmp_path: Path, model: HiVLP) -> None:
    uri = str(tmp_path / "t.db")
    coll = HierarchicalCollection.create("c", uri=uri, low_dim=LOW, high_dim=HIGH)

    with pytest.raises(DimensionMismatchError, match="low_dim=8"):
        ingest(byo(50, low=LOW + 1), collection=coll, write_batch_rows=1, progress=False)
    assert coll.count() == 0
    with pytest.raises(DimensionMismatchError):
        ingest(byo(50, high=HIGH * 2), uri=uri, collection_name="c", write_batch_rows=1, progress=False)
    assert coll.count() == 0
    # The micro model makes 16/64-d vectors: refused before encoding or writing anything.
    with pytest.raises(ModelMismatchError, match="low_dim"):
        ingest([Record("r", captions=["a caption"])], collection=coll, model=model, progress=False)
    assert coll.count() == 0

    # After a good first batch, one malformed vector is just a failed record.
    recs = byo(40)
    recs[30] = EmbeddingRecord("bad-dims", "image", np.zeros(LOW + 3, np.float32), np.zeros(HIGH, np.float32))
    recs[31] = EmbeddingRecord("nan", "text", np.full(LOW, np.nan, np.float32), np.zeros(HIGH, np.float32))
    report = ingest(recs, collection=coll, batch_size=16, progress=False)
    assert {s.key: s.reason for s in report.failed}.keys() == {"bad-dims", "nan"}
    assert "NaN" in {s.key: s.reason for s in report.failed}["nan"]
    assert report.inserted == coll.count() == 38


def test_records_without_a_model_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need a model"):
        ingest([Record("r", captions=["text"])], uri=str(tmp_path / "t.db"), progress=False)
    assert not (tmp_path / "t.db").exists() or "hivlp" not in connect(str(tmp_path / "t.db")).list_collections()
    # After precomputed vectors, a record to encode is that record's failure only.
    report = ingest([*byo(2), Record("r", captions=["text"])], uri=str(tmp_path / "t.db"), progress=False)
    assert (report.inserted, report.failed) == (
        2,
        [Skipped(text_key("r", 0), "needs a model to encode (none was given)")],
    )


def test_model_ingest_matches_local_encoding(tmp_path: Path, model: HiVLP, records: list[Record]) -> None:
    uri = str(tmp_path / "t.db")
    report = ingest(records, uri=uri, model=model, batch_size=8, write_batch_rows=10, progress=False)

    expected = encoded_rows(model, records)  # every image and caption, with its key, reference and vectors
    assert (report.inserted, report.failed) == (len(expected), [])
    coll = HierarchicalCollection.open("hivlp", uri=uri, model=model)  # fingerprint recorded at create
    assert coll.fingerprint == model.fingerprint
    got = assert_collection_holds(coll, expected)
    assert got[row_id(records[0].id, "image")]["attributes"] == json.loads(json.dumps(records[0].attributes))


def test_pipelined_run_reports_encode_write_split(tmp_path: Path, model: HiVLP, records: list[Record]) -> None:
    kw = {"model": model, "batch_size": 4, "write_batch_rows": 4, "progress": False}
    seq = ingest(records, uri=str(tmp_path / "s.db"), pipeline=False, **kw)
    pipe = ingest(records, uri=str(tmp_path / "p.db"), pipeline=True, **kw)

    for r in (seq, pipe):
        assert r.rows_written == len(records) * 3
        assert r.encode_seconds > 0
        assert r.write_seconds > 0
        assert r.seconds >= max(r.encode_seconds, r.write_seconds)
        assert r.rows_per_s == pytest.approx(r.rows_written / r.seconds)
    # Sequential: the two sides add up inside the wall time. Pipelined: writes ran while the next
    # batches were encoded, so the sides overlap in time.
    assert seq.seconds >= seq.encode_seconds + seq.write_seconds
    assert seq.overlap == 0.0
    assert pipe.encode_seconds + pipe.write_seconds > pipe.seconds
    assert pipe.overlap > 0.0

    d = pipe.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert {"inserted", "updated", "failed", "rows_per_s", "encode_seconds", "write_seconds"} <= set(d)
    text = str(pipe)
    assert "inserted" in text
    assert f"{pipe.inserted:,}" in text


def test_empty_source_does_nothing(tmp_path: Path) -> None:
    report = ingest([], uri=str(tmp_path / "t.db"), progress=False)
    assert isinstance(report, IngestReport)
    assert (report.rows_written, report.failed) == (0, [])


def test_cli_ingest(tmp_path: Path, model: HiVLP, capsys: pytest.CaptureFixture[str]) -> None:
    synthetic.write_splits(tmp_path / "data", {"test": 6}, seed=5, image_size=32, captions_per_image=2, progress=False)
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    db = str(tmp_path / "cli.db")
    argv = ["ingest", str(tmp_path / "data" / "test"), "--model", str(ckpt), "--uri", db, "--collection", "cli"]
    argv += ["--batch-size", "5", "--no-progress", "--json", str(tmp_path / "r.json")]
    assert cli.main([*argv, "--profile", "lite:FLAT", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    # 6 records x (1 image + 2 captions): the printed report's own "inserted" line says 18.
    assert re.search(r"^\s*inserted\s+(\S+)$", out, re.MULTILINE).group(1) == "18"
    assert re.search(r"^\s*failed\s+(\S+)$", out, re.MULTILINE).group(1) == "0"
    assert json.loads((tmp_path / "r.json").read_text())["inserted"] == 18
    assert cli.main([*argv, "--skip-existing"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["skipped_existing"] == 18
    coll = HierarchicalCollection.open("cli", uri=db)
    assert (coll.profile.low.index_type, coll.count()) == ("FLAT", 18)  # --profile made the new collection


def test_package_level_ingest_is_the_function_even_after_the_submodule_is_imported() -> None:
    import importlib

    import hivlp_milvus

    importlib.import_module("hivlp_milvus.ingest")  # what any `from hivlp_milvus.ingest import ...` does
    # The function itself (so callable), not the submodule the import set as an attribute.
    assert hivlp_milvus.ingest is importlib.import_module("hivlp_milvus.ingest").ingest


@pytest.mark.parametrize("pipeline", [True, False])
def test_a_failed_write_stops_the_run_and_nothing_after_it_is_written(tmp_path: Path, pipeline: bool) -> None:
    # Fault injection, named so: Milvus Lite cannot be made to refuse one upsert of valid rows, so
    # the collection's second upsert raises what an outage raises.
    coll = HierarchicalCollection.create("w", uri=str(tmp_path / "t.db"), low_dim=LOW, high_dim=HIGH)
    calls: list[int] = []
    real_upsert = coll.upsert

    def upsert_failing_the_second_request(rows: list, **kwargs: object) -> int:
        calls.append(len(rows))
        if len(calls) == 2:
            raise MilvusUnavailableError("injected fault: Milvus went away")
        return real_upsert(rows, **kwargs)

    coll.upsert = upsert_failing_the_second_request  # type: ignore[method-assign]
    with pytest.raises(MilvusUnavailableError, match="injected fault"):
        ingest(byo(60), collection=coll, batch_size=10, write_batch_rows=10, pipeline=pipeline, progress=False)
    # The writer stopped at the failed request: the batches queued behind it were never sent.
    assert calls == [10, 10]
    assert coll.count() == 10
