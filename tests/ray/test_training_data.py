"""The training data set with and without the decoded-image cache (``data.cache_decoded``), on real Ray Data.

Both are split the way Ray Train splits them (``streaming_split(2, equal=True)`` with
``preserve_order``) and read for two epochs: each rank must get the same rows in the same order
and the same pixels either way, an undecodable image must be dropped the same way, and the
cached set must not read the image files again after it was built.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from hivlp_milvus.data import load_source, synthetic
from hivlp_milvus.model.hivlp import create_model
from training.config import load_config
from training.data import build_train_dataset, build_train_table, stable_uid

pytestmark = [pytest.mark.ray]

IMAGES = 40
BAD = 3  # the row whose PNG is truncated


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("cache_data")
    synthetic.write_splits(root, {"train": IMAGES}, seed=0, image_size=32, progress=False)
    records = list(load_source(str(root / "train")))
    bad = Path(records[BAD].image)
    bad.write_bytes(bad.read_bytes()[:40])  # a PNG header and nothing else: undecodable
    cfg = load_config("quickstart", ["model.config=micro", "loss.itm=0"])
    model = create_model(cfg.model.resolve(), texts=[c for r in records for c in r.captions], seed=0)
    table = build_train_table(records, model.tokenize, max_captions=2, seed=0)
    return root, table, model.image_processor, stable_uid(records[BAD].id)


def _read_epochs(ds, epochs: int = 2) -> list[list[dict[str, np.ndarray]]]:
    """Per epoch, per rank: the rank's rows concatenated (uid, pixels), as Ray Train's ingest splits them."""
    ds.context.execution_options.preserve_order = True
    splits = ds.streaming_split(2, equal=True)
    out: list[list[dict[str, np.ndarray]]] = []
    for _ in range(epochs):
        got: list[dict[str, np.ndarray]] = [{}, {}]

        def read(rank: int, got: list[dict[str, np.ndarray]] = got) -> None:
            # The split's iterators must be consumed concurrently, one consumer per rank.
            batches = list(splits[rank].iter_batches(batch_size=8, batch_format="numpy"))
            got[rank] = {k: np.concatenate([b[k] for b in batches] or [np.empty(0)]) for k in ("uid", "pixel_values")}

        threads = [threading.Thread(target=read, args=(rank,)) for rank in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        out.append(got)
    return out


def test_cached_set_gives_each_rank_the_same_rows_and_pixels_every_epoch(ray_cluster: None, data) -> None:
    root, table, processor, bad_uid = data
    kw = {"num_blocks": 5, "preprocess_batch_size": 4}
    streamed = _read_epochs(build_train_dataset(table, processor, cache_decoded=False, **kw))
    cached_ds = build_train_dataset(table, processor, cache_decoded=True, **kw)
    # Decoded once: the image files are not needed any more (a streaming set would drop every row).
    for png in (root / "train" / "images").iterdir():
        png.unlink()
    cached = _read_epochs(cached_ds)

    per_rank = (IMAGES - 1) // 2  # the undecodable image is dropped, then the split is equal
    for epoch in range(2):
        for rank in range(2):
            a, b = streamed[epoch][rank], cached[epoch][rank]
            assert len(b["uid"]) == per_rank
            np.testing.assert_array_equal(a["uid"], b["uid"])
            np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
        np.testing.assert_array_equal(cached[epoch][0]["uid"], cached[0][0]["uid"])  # same shard every epoch
    seen = np.concatenate([cached[0][r]["uid"] for r in range(2)])
    assert len(set(seen.tolist())) == len(seen)  # no row twice across ranks
    assert bad_uid in table.columns["uid"]
    assert bad_uid not in seen
