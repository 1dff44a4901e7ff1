"""The Ray Data driver of :func:`hivlp_milvus.ingest`: encode in an actor pool, write in parallel.

Stages (the worker side is :mod:`hivlp_milvus.ingest.ray_stages`)::

    records ──map_batches(explode)──▶ one item per image / caption          (Ray tasks)
            ──map_batches(RowStage, ActorPoolStrategy)──▶ rows              (Ray actors, model loaded once)
            ──▶ Milvus server: write_datasink(MilvusDatasink)               (write tasks on the workers)
            ──▶ Milvus Lite (.db): iter_batches → writer thread on the driver

The encoder pool is sized from the cluster's *free* resources (:mod:`.resources`); precomputed vectors
skip ``explode`` and are checked by a pool of CPU actors of the same size. The model
reaches the workers as a checkpoint directory, never pickled: on a multi-node cluster pass
``model`` as a directory on shared storage (a live model is saved to a local temporary directory,
which only a single-node cluster can read). A Milvus Lite ``.db`` is locked by the driver, so for
Lite the encoded batches stream back to the driver, which writes them; for a server every write
task connects with the run's connection options (token and TLS included).

Accepted ``ray.data.Dataset`` columns:

* records: ``id`` (str; falls back to ``path``), ``image`` (a path, relative ones resolved against
  ``image_root``; encoded bytes or an HWC uint8 array, e.g. from
  ``ray.data.read_images(..., include_paths=True)``; optional), ``captions`` (list of str) or
  ``caption`` (str) (optional), ``attributes`` (dict or JSON string, optional);
* precomputed vectors: ``id``, ``modality`` (``image`` | ``text``), ``vec_low``, ``vec_high``,
  ``reference`` and ``attributes`` (optional).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivlp_milvus.connection import is_server_uri
from hivlp_milvus.data.record import EmbeddingRecord
from hivlp_milvus.errors import ConfigError
from hivlp_milvus.ingest import is_ray_dataset, ray_stages
from hivlp_milvus.ingest.options import IngestOptions
from hivlp_milvus.ingest.report import IngestReport
from hivlp_milvus.ingest.resources import plan_encoders
from hivlp_milvus.ingest.rows import check_first_batch, record_items
from hivlp_milvus.ingest.setup import NEEDS_MODEL, load_model, resolve_collection
from hivlp_milvus.ingest.writer import writing

if TYPE_CHECKING:
    import ray.data

    from hivlp_milvus.collection import HierarchicalCollection


def run_ray(
    dataset: Any, *, model: Any, collection: HierarchicalCollection | None, options: IngestOptions
) -> IngestReport:
    """Ingest with Ray Data; same contract and report as :func:`hivlp_milvus.ingest`.

    ``encode_seconds`` and ``write_seconds`` of the report are summed over the actors and write
    tasks; ``distributed`` is true.
    """
    import ray

    if not ray.is_initialized():
        ray.init()
    started = time.perf_counter()
    # The driver only checks the model and creates the collection: it stays on the CPU, the
    # actors put their copy on the device.
    live_model = load_model(model, "cpu")

    report = IngestReport(distributed=True)
    # A Ray Dataset holds records, exploded into items on the workers; another source is read (and
    # exploded) here.
    given = is_ray_dataset(dataset)
    ds, estimate = (dataset, None) if given else _dataset_from_source(dataset, options.image_root, report)
    schema = ds.schema()
    byo = {"vec_low", "vec_high"} <= set(schema.names if schema is not None else [])
    if not byo and live_model is None:
        raise ConfigError(NEEDS_MODEL)

    # Sized before the collection is touched: a GPU encode with no free GPU fails here, at once.
    # Precomputed vectors are only checked: on CPUs.
    plan = plan_encoders(
        ray.available_resources(),
        ray.cluster_resources(),
        device="cpu" if byo else options.device,
        num_workers=options.num_workers,
    )
    first_batch = ds.take_batch(options.batch_size, batch_format="numpy") if byo else None
    first = None
    if first_batch and len(first_batch.get("id", [])):
        first = EmbeddingRecord("", "image", first_batch["vec_low"][0], first_batch["vec_high"][0])
    coll = resolve_collection(collection, options, model=live_model, first=first, estimate=estimate)
    report.collection = str(getattr(coll, "name", options.collection_name))
    report.setup_seconds = time.perf_counter() - started
    if coll is None:
        return report
    low_dim, high_dim = int(coll.low_dim), int(coll.high_dim)
    if first is not None:
        pairs = list(zip(first_batch["vec_low"], first_batch["vec_high"], strict=True))
        check_first_batch(pairs, low_dim, high_dim)

    # Workers write only to a server this run connected to itself: a Lite .db is locked by the
    # driver, and a collection handed in gives no connection to repeat on the workers.
    workers_write = collection is None and is_server_uri(options.connection.uri)
    skip: dict[str, Any] | None = None
    if options.skip_existing:
        # Server: the actors ask Milvus per batch. Lite: workers cannot open the .db, so the driver
        # hands them the ids already present (Lite collections are small enough for that).
        skip = {"connection": options.connection, "name": coll.name} if workers_write else {"ids": _all_ids(coll)}

    tmp_ckpt: str | None = None
    try:
        # Precomputed vectors need no model on the workers: only a check.
        ckpt_dir, tmp_ckpt = (None, None) if byo else _checkpoint_dir(model, live_model)
        if given and not byo:
            ds = ds.map_batches(ray_stages.explode, batch_format="numpy", fn_kwargs={"image_root": options.image_root})
        rows_ds = ds.map_batches(
            ray_stages.RowStage,
            fn_constructor_kwargs={
                "dims": (low_dim, high_dim),
                "skip": skip,
                "checkpoint_dir": ckpt_dir,
                "fingerprint": "" if byo else str(live_model.fingerprint),
                # Ray hands each actor its GPU share as CUDA_VISIBLE_DEVICES: "cuda" is that one.
                "device": plan.device,
            },
            # Encode batch_size items at a time; check precomputed vectors a whole block at a time.
            batch_size=None if byo else options.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan.actors),
            num_gpus=plan.num_gpus,
            num_cpus=plan.num_cpus,
        )
        if workers_write:
            rows_per_write = options.write_batch_rows or coll.max_rows_per_request
            sink = ray_stages.MilvusDatasink(options.connection, coll.name, rows_per_write)
            rows_ds.write_datasink(sink)
            for part in sink.parts:
                report.merge(part)
        else:
            with writing(coll, report, options) as w:
                for batch in rows_ds.iter_batches(batch_size=w.batch_rows, batch_format="numpy", prefetch_batches=2):
                    w.add(ray_stages.rows_for_milvus(batch, report))
    finally:
        if tmp_ckpt:
            shutil.rmtree(tmp_ckpt, ignore_errors=True)

    report.seconds = time.perf_counter() - started - report.setup_seconds
    return report


def _dataset_from_source(source: Any, image_root: str | None, report: IngestReport) -> tuple[ray.data.Dataset, int]:
    """Read a non-Ray source on the driver into a ``ray.data.Dataset`` of items, or of precomputed vectors.

    The records are exploded into items here (:func:`record_items`, as the local driver does), so
    the workers only encode; what cannot become a row, and what the source skipped, go to ``report``.
    Returns the dataset and its length (to size the index of a collection this run creates).
    """
    import ray.data

    from hivlp_milvus.data import load_source

    loaded = load_source(source, image_root=image_root)
    every = [it for record in loaded for it in record_items(record, report.failed)]
    items = [ray_stages.item_cells(it) for it in every if it.kind != "vectors"]
    vectors = [
        {
            "id": it.key,
            "modality": it.modality,
            "reference": it.reference,
            "attributes": json.dumps(it.attributes),
            "vec_low": np.asarray(it.payload[0], dtype=np.float32),
            "vec_high": np.asarray(it.payload[1], dtype=np.float32),
        }
        for it in every
        if it.kind == "vectors"
    ]
    report.add_source_report(loaded)
    if items and vectors:
        raise ConfigError(
            "distributed ingest takes either records with images/captions or precomputed "
            "EmbeddingRecords in one run, not both; ingest them in two runs"
        )
    return ray.data.from_items(items or vectors), len(items) + len(vectors)


def _all_ids(coll: HierarchicalCollection) -> set[int]:
    """Every primary key in the collection (for ``skip_existing`` on Milvus Lite)."""
    ids: set[int] = set()
    iterator = coll.client.query_iterator(coll.name, batch_size=10_000, filter="id >= 0", output_fields=["id"])
    try:
        while page := iterator.next():
            ids.update(int(r["id"]) for r in page)
    finally:
        iterator.close()
    return ids


def _checkpoint_dir(model: Any, live_model: Any) -> tuple[str, str | None]:
    """A directory the actors load the model from, and the temp dir to delete afterwards (if any)."""
    if isinstance(model, (str, Path)):
        return str(model), None
    tmp = tempfile.mkdtemp(prefix="hivlp-ingest-model-")
    live_model.save_pretrained(tmp)
    return tmp, tmp
