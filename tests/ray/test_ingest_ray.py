"""The Ray Data ingest path, for real: an encoder actor pool with the micro model, no mocks.

(a) a ``ray.data.Dataset`` into Milvus Lite (.db): the actors encode, the driver writes;
(b) in-memory records with ``distributed=True`` into a Milvus server: the write tasks on the
    workers upsert (``MilvusDatasink``), the driver never touches the rows.
Both must give exactly one row per image / caption, with the vectors the model gives locally.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_collection_holds, byo, byo_rows, encoded_rows
from milvus_server import MilvusEndpoint, milvus_endpoint

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.data import Record, synthetic
from hivlp_milvus.errors import ConfigError
from hivlp_milvus.ids import row_id
from hivlp_milvus.ingest import ingest
from hivlp_milvus.model import create_model
from hivlp_milvus.profiles import nlist_for

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def server() -> Iterator[MilvusEndpoint]:
    with milvus_endpoint() as endpoint:
        yield endpoint


def test_ray_data_ingest_lite_and_server(ray_session: None, server: MilvusEndpoint, tmp_path: Path) -> None:
    import ray

    records = synthetic.generate(200, seed=11, image_size=32, captions_per_image=2)
    model = create_model("micro", texts=[c for r in records for c in r.captions], seed=0)
    expected = encoded_rows(model, records)
    ckpt = model.save_pretrained(tmp_path / "ckpt")

    # (a) A Ray Dataset (HWC arrays + captions) into a Lite .db: encoded in the actor, written by
    # the driver. One corrupt image and one blank caption must be reported, not written.
    items = [
        {"id": r.id, "image": np.asarray(r.image), "captions": r.captions, "attributes": {"n": i}}
        for i, r in enumerate(records)
    ]
    items.append({"id": "broken", "image": np.zeros((0, 0, 3), np.uint8), "captions": [" "], "attributes": {}})
    ds = ray.data.from_items(items)
    db = str(tmp_path / "ray.db")
    report = ingest(ds, uri=db, collection_name="lite", model=ckpt, batch_size=32, progress=False)
    assert report.distributed
    assert [s.key for s in report.failed] == ["broken"]
    assert report.dropped_captions == 1
    assert (report.inserted, report.updated) == (len(expected), 0)
    assert report.encode_seconds > 0
    assert report.write_seconds > 0
    lite = HierarchicalCollection.open("lite", uri=db, model=model)
    assert assert_collection_holds(lite, expected)[row_id(records[5].id, "image")]["attributes"] == {"n": 5}

    # skip_existing on Lite: the driver hands the actors the stored ids; nothing is re-encoded.
    again = ingest(ds, uri=db, collection_name="lite", model=model, skip_existing=True, progress=False)
    assert (again.skipped_existing, again.rows_written) == (len(expected), 0)

    # Precomputed vectors as a Ray Dataset: validated on the workers, one NaN row reported.
    vectors = byo(100, low=16, high=64, prefix="v")
    vectors[7].vec_low = np.full(16, np.nan, np.float32)
    # expected_rows and pipeline reach this path too (they were dropped before): the index of
    # the new collection is sized for 20k rows, not the 100k default; the driver writes in line.
    by_vectors = ingest(
        ray.data.from_items([dataclasses.asdict(r) for r in vectors]),
        uri=db,
        collection_name="byo",
        expected_rows=20_000,
        pipeline=False,
        num_workers=1,
        progress=False,
    )
    assert [(s.key, s.reason) for s in by_vectors.failed] == [("v7", "vectors contain NaN or infinity")]
    assert by_vectors.inserted == 99
    stored = HierarchicalCollection.open("byo", uri=db)
    assert stored.describe()["low_index"]["nlist"] == nlist_for(20_000)
    assert_collection_holds(stored, byo_rows(vectors[:7] + vectors[8:]), atol=0)  # the 99 others, bit for bit

    # A GPU encode on a cluster without GPUs fails at once instead of waiting for a GPU forever.
    if not ray.cluster_resources().get("GPU"):
        with pytest.raises(ConfigError, match="has no GPU"):
            ingest(ds, uri=db, collection_name="never", model=ckpt, device="cuda", progress=False)
        assert "never" not in lite.client.list_collections()

    # (b) In-memory records (+ one image given by path), distributed=True, into a Milvus server:
    # the workers write.
    records[0].image.save(tmp_path / "by_path.png")
    records = [*records, Record("by-path", image=str(tmp_path / "by_path.png"), captions=["a file on disk"])]
    expected = encoded_rows(model, records)
    token = server.token or None
    name = "ray_ingest_server"
    try:
        rep = ingest(
            records,
            uri=server.uri,
            token=token,
            collection_name=name,
            model=model,
            distributed=True,
            batch_size=32,
            write_batch_rows=100,
            progress=False,
        )
        assert rep.distributed
        assert rep.failed == []
        assert (rep.inserted, rep.updated) == (len(expected), 0)
        assert rep.write_seconds > 0
        assert_collection_holds(HierarchicalCollection.open(name, uri=server.uri, token=token, model=model), expected)
        kw = {"uri": server.uri, "token": token, "collection_name": name, "model": model, "progress": False}
        rerun = ingest(records, distributed=True, **kw)
        assert (rerun.inserted, rerun.updated) == (0, len(expected))
    finally:
        HierarchicalCollection.open(name, uri=server.uri, token=token).drop()
