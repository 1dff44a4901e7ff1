"""``ingest()``: records → (encode) → upsert into a HiVLP collection, with progress and a report.

One record with an image and *k* captions becomes *k + 1* rows (:mod:`.rows`); an
:class:`EmbeddingRecord` becomes one row with the vectors the user computed, and needs no model.
Every row's primary key is ``row_id(key, modality)``, so running the same data twice upserts the
same rows: a run that was killed half-way can simply be started again (``skip_existing=True``
makes that resume skip the rows already written without encoding them again).

The package has one job per module (``options``, ``rows``, ``encode``, ``writer``, ``setup``,
``report``) and two drivers: ``local`` (in this process) and ``ray_data`` (a Ray Data actor pool,
imported only when used, so a plain ingest never imports Ray); docs/architecture.md draws it.

This module stays light (no torch, pymilvus or Ray at import): ``hivlp_milvus`` binds
``ingest`` from it at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivlp_milvus.connection import DEFAULT_URI, ConnectionOptions, connection_options
from hivlp_milvus.ingest.options import IngestOptions
from hivlp_milvus.ingest.report import IngestReport

if TYPE_CHECKING:
    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.model import HiVLP

__all__ = ["IngestOptions", "IngestReport", "ingest"]


def ingest(
    dataset: Any,
    *,
    collection: HierarchicalCollection | None = None,
    uri: str = DEFAULT_URI,
    collection_name: str = "hivlp",
    token: str | None = None,
    model: HiVLP | str | Path | None = None,
    batch_size: int = 64,
    write_batch_rows: int | None = None,
    skip_existing: bool = False,
    distributed: bool = False,
    progress: bool = True,
    create: bool = True,
    pipeline: bool = True,
    expected_rows: int | None = None,
    profile: str = "auto",
    device: str = "auto",
    connection: ConnectionOptions | None = None,
    image_root: str | Path | None = None,
    num_workers: int | None = None,
) -> IngestReport:
    """Encode a data set (or take its precomputed vectors) and upsert it into a HiVLP collection.

    Args:
        dataset: anything :func:`hivlp_milvus.data.load_source` accepts (a manifest / Karpathy /
            CSV / JSONL / Parquet path, an HF ``save_to_disk`` directory, :class:`Record` /
            :class:`EmbeddingRecord` values), or a ``ray.data.Dataset`` (columns in :mod:`.ray_data`).
        collection: an open :class:`HierarchicalCollection`; else ``collection_name`` is opened
            (or created, see ``create``) at ``connection`` / ``uri``.
        uri: ``./hivlp.db`` (Milvus Lite in this process) or ``http(s)://host:port`` (a server).
        collection_name: the collection to open or create when ``collection`` is ``None``.
        token: Milvus token (``"user:password"`` or an API key) for a server.
        model: a :class:`HiVLP` or a checkpoint directory; needed unless every row is an
            :class:`EmbeddingRecord`.
        batch_size: items (images or captions) encoded per forward pass (>= 1).
        write_batch_rows: rows per upsert request; ``None`` = the collection's
            ``max_rows_per_request`` (sized under Milvus' 64 MB request limit).
        skip_existing: skip rows already in the collection *before* encoding them (fast resume);
            without it, existing rows are re-encoded and overwritten.
        distributed: run the Ray Data path even for a non-Ray source.
        progress: show a tqdm progress bar (rows).
        create: create the collection when it does not exist (dims from the model, or from the
            first :class:`EmbeddingRecord`).
        pipeline: write on a background thread while the next batch is encoded (``False``: in
            line, to debug or to measure the overlap).
        expected_rows: rows the collection will hold, to size the ANN index (IVF ``nlist``) of a
            collection this call creates; default: estimated from the source's length.
        profile: index profile of a collection this call creates: ``auto`` (probe the server),
            ``lite``, ``cpu``, ``gpu`` or ``name:VARIANT`` (``schemas/profiles.yaml``).
        device: ``auto`` (CUDA when usable; a live model stays on its device), ``cpu``, ``cuda``
            or ``cuda:N``. CUDA runs in mixed precision (bf16 where native, else fp16).
        connection: where Milvus is and how to reach it, TLS and token included; instead of
            ``uri`` / ``token``.
        image_root: directory that relative image paths (of a Karpathy file, a manifest, a Ray
            Dataset's ``image`` column) are resolved against; default: the file's directory.
        num_workers: Ray Data encoder actors (or, for precomputed vectors, checker actors) at most;
            default: sized from the free GPUs / CPUs.

    Returns:
        An :class:`IngestReport` (inserted / updated / skipped / failed counts and timings).

    Raises:
        ModelMismatchError: the model's dims or fingerprint differ from the collection's.
        DimensionMismatchError: precomputed vectors do not have the collection's dims (checked on
            the first batch).
        ConfigError: a bad argument, records that need a model when none was given, a device
            that cannot be used, or (distributed) no free GPU for a GPU encode.
        CollectionNotFoundError: the collection does not exist and ``create`` is ``False``.
        MilvusUnavailableError: Milvus cannot be reached.

    Every check above happens before anything is written.
    """
    given = locals()  # the keyword arguments: each option is spelled once, in the signature
    options = IngestOptions.build(
        **{name: given[name] for name in IngestOptions.model_fields if name not in ("connection", "image_root")},
        connection=connection_options(connection, uri=uri, token=token),
        image_root=None if image_root is None else str(image_root),
    )
    if options.distributed or is_ray_dataset(dataset):
        from hivlp_milvus.ingest.ray_data import run_ray

        return run_ray(dataset, model=model, collection=collection, options=options)
    from hivlp_milvus.ingest.local import run_local

    return run_local(dataset, model=model, collection=collection, options=options)


def is_ray_dataset(obj: Any) -> bool:
    """Whether ``obj`` is a ``ray.data.Dataset``."""
    # Checked by class name so a plain (non-Ray) ingest never imports Ray.
    return any(c.__name__ == "Dataset" and c.__module__.startswith("ray.data") for c in type(obj).__mro__)
