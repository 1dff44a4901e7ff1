"""The Ray Data path of :func:`hivlp_milvus.ingest`: encode in an actor pool, write in parallel.

Stages::

    records ──map_batches(_explode)──▶ one item per image / caption        (Ray tasks)
            ──map_batches(_Encode, ActorPoolStrategy, num_gpus=1)──▶ rows  (Ray actors, model loaded once)
            ──▶ Milvus server: write_datasink(_MilvusDatasink)             (write tasks on the workers)
            ──▶ Milvus Lite (.db): iter_batches → writer thread on the driver

The model reaches the workers as a *checkpoint directory* (``save_pretrained`` format): each actor
loads it with ``HiVLP.from_pretrained`` and checks the fingerprint, so a live model is never
pickled. On a multi-node cluster pass ``model`` as a directory on shared storage; a live model is
saved to a local temporary directory, which only a single-node cluster can read.

**Milvus Lite is single-process**: a ``.db`` data directory is locked by the process that opened
it (the driver), so Ray workers cannot open it. For a Lite URI the encoded batches therefore stream
back to the driver (``iter_batches``), which writes them on a background thread while the actors
keep encoding. For a Milvus server (``http(s)://``) every write task opens the collection by
uri / name / token and upserts its own blocks, so writes scale with the cluster.

Accepted ``ray.data.Dataset`` columns:

* records: ``id`` (str; falls back to ``path``), ``image`` (a path, encoded bytes or an HWC uint8
  array, e.g. from ``ray.data.read_images(..., include_paths=True)``; optional), ``captions``
  (list of str) or ``caption`` (str) (optional), ``attributes`` (dict or JSON string, optional);
* precomputed vectors: ``id``, ``modality`` (``image`` | ``text``), ``vec_low``, ``vec_high``,
  ``reference`` and ``attributes`` (optional).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from ray.data import Datasink
from ray.data.block import BlockAccessor

from hivlp_milvus.data.record import EmbeddingRecord, Record, Skipped
from hivlp_milvus.errors import ConfigError, DimensionMismatchError, ModelMismatchError
from hivlp_milvus.ids import MODALITIES, row_id, text_key
from hivlp_milvus.ingest import (
    IngestReport,
    _progress_bar,
    _RunIds,
    _Writer,
    check_text_fields,
    check_vectors,
    load_model,
    resolve_collection,
    write_rows,
)

if TYPE_CHECKING:
    import ray.data

    from hivlp_milvus.collection import HierarchicalCollection
    from hivlp_milvus.model import HiVLP

# Columns between the stages. Attributes travel as JSON text so blocks with different attribute
# keys never need an Arrow schema merge.
_ITEM_COLUMNS = (
    "id",
    "key",
    "modality",
    "reference",
    "attributes",
    "kind",
    "image_path",
    "image_bytes",
    "text",
    "error",
)
_ROW_COLUMNS = (
    "id",
    "key",
    "modality",
    "reference",
    "attributes",
    "vec_low",
    "vec_high",
    "error",
    "existing",
    "encode_s",
)
_NPY_MAGIC = b"\x93NUMPY"
# Blank captions are dropped, as load_source drops them (and caption indexes count kept captions
# only, so a Ray Dataset and the same records as a list give the same keys). They travel as an
# item with this error so the driver can count them.
_DROPPED = "blank caption (dropped)"


def ingest_ray(
    dataset: Any,
    *,
    collection: HierarchicalCollection | None = None,
    uri: str = "./hivlp.db",
    collection_name: str = "hivlp",
    token: str | None = None,
    model: HiVLP | str | Path | None = None,
    batch_size: int = 64,
    write_batch_rows: int | None = None,
    skip_existing: bool = False,
    progress: bool = True,
    create: bool = True,
    num_workers: int | None = None,
) -> IngestReport:
    """Ingest with Ray Data; same arguments and report as :func:`hivlp_milvus.ingest`.

    Args:
        dataset: a ``ray.data.Dataset`` (columns in the module docstring) or anything
            ``load_source`` accepts (read on the driver, then spread over the cluster).
        collection: an open collection; for worker-side writes it must expose ``uri`` (else the
            driver writes). ``None`` = open/create ``collection_name`` at ``uri``.
        uri: Milvus Lite path (driver writes) or server URL (workers write).
        collection_name: the collection to open or create when ``collection`` is ``None``.
        token: Milvus token for a server; handed to the write tasks.
        model: a :class:`HiVLP` or a checkpoint directory (shared storage on a multi-node cluster).
        batch_size: items per encoder call in the actors.
        write_batch_rows: rows per upsert request (``None`` = ``max_rows_per_request``).
        skip_existing: drop rows already in the collection in the actors, before encoding.
        progress: a tqdm bar (rows) when the driver writes; Ray Data draws its own per-operator
            bars as its ``DataContext`` says.
        create: create the collection when it does not exist.
        num_workers: maximum encoder actors; default one per GPU, else half the CPUs.

    Returns:
        An :class:`IngestReport` with ``distributed=True``; ``encode_seconds`` and
        ``write_seconds`` are summed over the actors and write tasks.

    Raises:
        ModelMismatchError, DimensionMismatchError, ConfigError, CollectionNotFoundError: as for
        :func:`hivlp_milvus.ingest`, before anything is written.
    """
    import ray

    if not ray.is_initialized():
        ray.init()
    started = time.perf_counter()
    live_model = load_model(model)

    source_skipped: list[Skipped] = []
    dropped = 0
    if _is_ray_dataset(dataset):
        ds = dataset
    else:
        ds, source_skipped, dropped = _dataset_from_source(dataset)
    columns = _column_names(ds)
    byo = {"vec_low", "vec_high"} <= set(columns)
    if not byo and live_model is None:
        raise ConfigError(
            "these records have images/captions and need a model to encode them: pass a HiVLP "
            "or a checkpoint directory as model=, or give vec_low / vec_high columns"
        )

    first_batch = _first_batch(ds, batch_size) if byo else None
    first = _first_embedding(first_batch)
    coll = resolve_collection(
        collection,
        uri=uri,
        collection_name=collection_name,
        token=token,
        model=live_model,
        first=first,
        create=create,
    )
    report = IngestReport(collection=str(getattr(coll, "name", collection_name)), distributed=True)
    report.source_skipped = source_skipped
    report.dropped_captions = dropped
    if coll is None:
        report.setup_seconds = time.perf_counter() - started
        return report
    if live_model is not None:
        coll.check_model(live_model)
    low_dim, high_dim = int(coll.low_dim), int(coll.high_dim)
    if first_batch is not None:
        _check_first_batch(first_batch, low_dim, high_dim)

    rows_per_write = int(write_batch_rows or coll.max_rows_per_request)
    coll_uri = str(getattr(coll, "uri", "") or (uri if collection is None else ""))
    workers_write = _is_server_uri(coll_uri)
    coll_token = token if token is not None else getattr(coll, "token", None)
    skip: dict[str, Any] | None = None
    if skip_existing:
        # Server: actors ask Milvus per batch. Lite: workers cannot open the .db, so the driver
        # hands them the ids already present (Lite collections are small enough for that).
        skip = {"uri": coll_uri, "token": coll_token, "name": coll.name} if workers_write else {"ids": _all_ids(coll)}

    tmp_ckpt: str | None = None
    loop_started = time.perf_counter()
    report.setup_seconds = loop_started - started
    try:
        if byo:
            rows_ds = ds.map_batches(
                _validate_vectors,
                batch_format="numpy",
                fn_kwargs={"low_dim": low_dim, "high_dim": high_dim, "skip": skip},
            )
        else:
            ckpt_dir, tmp_ckpt = _checkpoint_dir(model, live_model)
            gpus = int(ray.cluster_resources().get("GPU", 0))
            cpus = int(ray.cluster_resources().get("CPU", 1))
            max_actors = num_workers or (gpus if gpus else max(1, cpus // 2))
            items_ds = ds.map_batches(_explode, batch_format="numpy")
            rows_ds = items_ds.map_batches(
                _Encode,
                fn_constructor_kwargs={
                    "checkpoint_dir": ckpt_dir,
                    "fingerprint": str(live_model.fingerprint),
                    "skip": skip,
                },
                batch_size=int(batch_size),
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_actors),
                num_gpus=1 if gpus else 0,
                num_cpus=1,
            )
        if workers_write:
            sink = _MilvusDatasink(coll_uri, coll_token, coll.name, rows_per_write)
            rows_ds.write_datasink(sink)
            _merge(report, sink.totals)
        else:
            _write_on_driver(rows_ds, coll, rows_per_write, report, progress)
    finally:
        if tmp_ckpt:
            shutil.rmtree(tmp_ckpt, ignore_errors=True)

    report.seconds = time.perf_counter() - loop_started
    return report


# --------------------------------------------------------------------------------------------------
# Driver-side preparation


def _is_ray_dataset(obj: Any) -> bool:
    from hivlp_milvus.ingest import _is_ray_dataset as check

    return check(obj)


def _is_server_uri(uri: str) -> bool:
    from hivlp_milvus.connection import is_server_uri

    return bool(uri) and is_server_uri(uri)


def _column_names(ds: ray.data.Dataset) -> list[str]:
    schema = ds.schema()
    return list(schema.names) if schema is not None else []


def _dataset_from_source(source: Any) -> tuple[ray.data.Dataset, list[Skipped], int]:
    """Read a non-Ray source on the driver into a ``ray.data.Dataset`` of plain columns."""
    import ray.data

    from hivlp_milvus.data import load_source

    loaded = load_source(source)
    records, embeddings = [], []
    for r in loaded:
        if isinstance(r, EmbeddingRecord):
            embeddings.append(
                {
                    "id": str(r.id),
                    "modality": str(r.modality),
                    "reference": str(r.reference or ""),
                    "attributes": _json(r.attributes),
                    "vec_low": np.asarray(r.vec_low, dtype=np.float32),
                    "vec_high": np.asarray(r.vec_high, dtype=np.float32),
                }
            )
        elif isinstance(r, Record):
            path = r.image_uri
            # Typed placeholders rather than None: an all-null column would reach the workers as NaN.
            data, error = b"", ""
            if not path and r.image is not None:
                # In-memory images travel as bytes (encoded, or a raw .npy dump of an array).
                try:
                    data = _image_bytes(r.image)
                except Exception as exc:  # an unusable image object fails this record only
                    error = f"cannot serialise image of type {type(r.image).__name__}: {exc}"
            records.append(
                {
                    "id": str(r.id),
                    "image": path,
                    "image_bytes": data,
                    "captions": [str(c) for c in r.captions],
                    "attributes": _json(r.attributes),
                    "ingest_error": error,
                }
            )
    skipped = list(getattr(getattr(loaded, "report", None), "skipped", []))
    dropped = int(getattr(getattr(loaded, "report", None), "dropped_captions", 0))
    if records and embeddings:
        raise ConfigError(
            "distributed ingest takes either records with images/captions or precomputed "
            "EmbeddingRecords in one run, not both; ingest them in two runs"
        )
    return ray.data.from_items(embeddings or records), skipped, dropped


def _image_bytes(image: Any) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, image, allow_pickle=False)
        return buf.getvalue()
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # a PIL image
    return buf.getvalue()


def _json(attributes: Any) -> str:
    if attributes is None:
        return "{}"
    if isinstance(attributes, str):
        return attributes
    try:
        return json.dumps(attributes, allow_nan=False)
    except (TypeError, ValueError):
        # Keep the row moving; _explode / _validate_vectors report it with the reason.
        return "\x00" + repr(attributes)[:200]


def _first_batch(ds: ray.data.Dataset, batch_size: int) -> dict[str, np.ndarray] | None:
    batch = ds.take_batch(int(batch_size), batch_format="numpy")
    return batch if batch and len(batch.get("id", [])) else None


def _first_embedding(batch: dict[str, np.ndarray] | None) -> dict[str, Any] | None:
    if batch is None:
        return None
    return {"vec_low": batch["vec_low"][0], "vec_high": batch["vec_high"][0]}


def _check_first_batch(batch: dict[str, np.ndarray], low_dim: int, high_dim: int) -> None:
    # Same rule as the local path: the dims of the first batch decide whether the data fits.
    pairs = zip(batch["vec_low"], batch["vec_high"], strict=True)
    shapes = Counter((np.shape(lo), np.shape(hi)) for lo, hi in pairs)
    (lo_shape, hi_shape), _ = shapes.most_common(1)[0]
    if (tuple(lo_shape), tuple(hi_shape)) != ((low_dim,), (high_dim,)):
        raise DimensionMismatchError(
            f"precomputed vectors have shapes vec_low {tuple(lo_shape)} / vec_high {tuple(hi_shape)} "
            f"but the collection has low_dim={low_dim}, high_dim={high_dim}; ingest into a "
            "collection created for these vectors or recompute them with the collection's model"
        )


def _all_ids(coll: HierarchicalCollection) -> np.ndarray:
    """Every primary key in the collection, sorted (for ``skip_existing`` on Milvus Lite)."""
    ids: list[int] = []
    iterator = coll.client.query_iterator(coll.name, batch_size=10_000, filter="id >= 0", output_fields=["id"])
    try:
        while page := iterator.next():
            ids.extend(int(r["id"]) for r in page)
    finally:
        iterator.close()
    return np.unique(np.asarray(ids, dtype=np.int64))


def _checkpoint_dir(model: Any, live_model: Any) -> tuple[str, str | None]:
    """A directory the actors load the model from, and the temp dir to delete afterwards (if any)."""
    if isinstance(model, (str, Path)):
        return str(model), None
    tmp = tempfile.mkdtemp(prefix="hivlp-ingest-model-")
    live_model.save_pretrained(tmp)
    return tmp, tmp


# --------------------------------------------------------------------------------------------------
# Worker stages (module-level so Ray pickles them by reference)


def _rows_of(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def _missing(value: Any) -> bool:
    """A null cell: ``None``, or the NaN Arrow → numpy makes of a null in a column."""
    return value is None or (isinstance(value, float) and value != value)


def _text(value: Any) -> str:
    if _missing(value):
        return ""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _attributes_json(value: Any) -> tuple[str, str | None]:
    """``(json_text, error)`` for an attributes cell (dict, JSON text or missing)."""
    if _missing(value):
        return "{}", None
    if isinstance(value, (str, bytes)):
        text = _text(value)
        if text.startswith("\x00"):
            return "{}", f"attributes are not JSON-serialisable: {text[1:]}"
        try:
            parsed = json.loads(text) if text else {}
        except ValueError as exc:
            return "{}", f"attributes are not valid JSON: {exc}"
        if not isinstance(parsed, dict):
            return "{}", f"attributes must be a JSON object, got {type(parsed).__name__}"
        return text or "{}", None
    if isinstance(value, dict):
        try:
            return json.dumps(value, allow_nan=False, default=_json_default), None
        except (TypeError, ValueError) as exc:
            return "{}", f"attributes are not JSON-serialisable: {exc}"
    return "{}", f"attributes must be a dict, got {type(value).__name__}"


def _json_default(x: Any) -> Any:
    # Arrow → numpy turns nested attribute values into numpy scalars / arrays.
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON-serialisable")


def _captions(row: dict[str, Any]) -> list[Any]:
    value = row.get("captions")
    if value is None:
        value = row.get("caption")
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    return list(value)


def _explode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Records → one item per image and per caption (failed items carry their ``error``)."""
    out: dict[str, list[Any]] = {c: [] for c in _ITEM_COLUMNS}

    def add(
        key: str,
        modality: str,
        reference: str,
        attrs: str,
        kind: str,
        *,
        path: str = "",
        data: bytes = b"",
        text: str = "",
        error: str = "",
    ) -> None:
        # A key that cannot be hashed to an id (empty) still needs an id column value.
        out["id"].append(row_id(key, modality) if key else 0)
        for col, val in (
            ("key", key),
            ("modality", modality),
            ("reference", reference),
            ("attributes", attrs),
            ("kind", kind),
            ("image_path", path),
            ("image_bytes", data),
            ("text", text),
            ("error", error),
        ):
            out[col].append(val)

    for raw in _rows_of(batch):
        row = {k: None if _missing(v) else v for k, v in raw.items()}
        rid = _text(row.get("id")) or _text(row.get("path"))
        attrs, attr_error = _attributes_json(row.get("attributes"))
        image = row.get("image")
        image_bytes = row.get("image_bytes")
        path = image if isinstance(image, str) else ""
        if isinstance(image, np.ndarray) and image.dtype != object:
            image_bytes = _image_bytes(image)
        elif isinstance(image, (bytes, bytearray)):
            image_bytes = bytes(image)
        reference = path or _text(row.get("path"))
        has_image = bool(path) or bool(image_bytes)
        raw_captions = [_text(c) for c in _captions(row)]
        captions = [c.strip() for c in raw_captions if c.strip()]
        for _ in range(len(raw_captions) - len(captions)):
            add(rid, "text", "", attrs, "text", error=_DROPPED)
        error = _text(row.get("ingest_error")) or attr_error or check_text_fields(rid, reference, {})
        if not has_image and not captions:
            error = error or "record has neither an image nor captions"
        if error:
            add(rid, "image", reference, attrs, "image", error=error)
            continue
        if has_image:
            add(rid, "image", reference, attrs, "image", path=path, data=bytes(image_bytes or b""))
        for i, text in enumerate(captions):
            key = text_key(rid, i)
            add(key, "text", text, attrs, "text", text=text, error=check_text_fields(key, text, {}) or "")
    return {c: np.asarray(v, dtype=np.int64) if c == "id" else np.asarray(v, dtype=object) for c, v in out.items()}


def _empty_rows(n: int, low_dim: int, high_dim: int) -> dict[str, Any]:
    return {
        "vec_low": np.zeros((n, low_dim), dtype=np.float32),
        "vec_high": np.zeros((n, high_dim), dtype=np.float32),
        "error": [""] * n,
        "existing": np.zeros(n, dtype=bool),
        "encode_s": np.zeros(n, dtype=np.float64),
    }


class _ExistingIds:
    """Which ids are already stored: from Milvus (server) or from the driver's snapshot (Lite)."""

    def __init__(self, skip: dict[str, Any] | None) -> None:
        self._ids: np.ndarray | None = None
        self._coll: Any = None
        if skip is None:
            return
        if "ids" in skip:
            self._ids = np.asarray(skip["ids"], dtype=np.int64)
        else:
            from hivlp_milvus.collection import HierarchicalCollection

            self._coll = HierarchicalCollection.open(skip["name"], uri=skip["uri"], token=skip["token"])

    def mask(self, ids: np.ndarray) -> np.ndarray:
        if self._ids is not None:
            return np.isin(ids, self._ids)
        if self._coll is not None and len(ids):
            present = self._coll.existing_ids([int(i) for i in ids])
            return np.fromiter((int(i) in present for i in ids), dtype=bool, count=len(ids))
        return np.zeros(len(ids), dtype=bool)


def _validate_vectors(
    batch: dict[str, np.ndarray], *, low_dim: int, high_dim: int, skip: dict[str, Any] | None
) -> dict[str, Any]:
    """Precomputed-vector rows → write-ready rows (bad vectors carry an ``error``)."""
    t0 = time.perf_counter()
    rows = _rows_of(batch)
    n = len(rows)
    out = _empty_rows(n, low_dim, high_dim)
    cols: dict[str, list[Any]] = {c: [] for c in ("id", "key", "modality", "reference", "attributes")}
    for i, row in enumerate(rows):
        key, modality = _text(row.get("id")), _text(row.get("modality"))
        reference = _text(row.get("reference"))
        attrs, error = _attributes_json(row.get("attributes"))
        if modality not in MODALITIES:
            error = error or f"modality must be one of {MODALITIES}, got {modality!r}"
        error = error or check_text_fields(key, reference, {})
        if not error:
            checked = check_vectors(row["vec_low"], row["vec_high"], low_dim, high_dim)
            if isinstance(checked, str):
                error = checked
            else:
                out["vec_low"][i], out["vec_high"][i] = checked
        cols["id"].append(row_id(key, modality) if not error else 0)
        for c, v in (("key", key), ("modality", modality), ("reference", reference), ("attributes", attrs)):
            cols[c].append(v)
        out["error"][i] = error or ""
    ids = np.asarray(cols["id"], dtype=np.int64)
    out["existing"] = _ExistingIds(skip).mask(ids) & (np.asarray(out["error"], dtype=object) == "")
    out["encode_s"][:] = (time.perf_counter() - t0) / max(n, 1)
    return _finish(cols, out, ids)


def _finish(cols: dict[str, list[Any]], out: dict[str, Any], ids: np.ndarray) -> dict[str, Any]:
    result = {"id": ids}
    for c in ("key", "modality", "reference", "attributes"):
        result[c] = np.asarray(cols[c], dtype=object)
    result.update(out)
    result["error"] = np.asarray(out["error"], dtype=object)
    return {c: result[c] for c in _ROW_COLUMNS}


class _Encode:
    """Ray Data actor: loads the model once from a checkpoint directory and encodes item batches."""

    def __init__(self, checkpoint_dir: str, fingerprint: str, skip: dict[str, Any] | None = None) -> None:
        import torch

        from hivlp_milvus.model import HiVLP

        self.model = HiVLP.from_pretrained(checkpoint_dir)
        if str(self.model.fingerprint) != fingerprint:
            raise ModelMismatchError(
                f"the checkpoint at {checkpoint_dir!r} has fingerprint {self.model.fingerprint}, "
                f"not the driver's {fingerprint}: the directory changed during ingest"
            )
        if torch.cuda.is_available():
            self.model = self.model.to("cuda")
        self.low_dim, self.high_dim = int(self.model.config.low_dim), int(self.model.config.high_dim)
        self.existing = _ExistingIds(skip)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        from hivlp_milvus.errors import BadRecordError
        from hivlp_milvus.model.preprocess import load_image

        t0 = time.perf_counter()
        n = len(batch["id"])
        out = _empty_rows(n, self.low_dim, self.high_dim)
        out["error"] = [_text(e) for e in batch["error"]]
        ok = np.asarray([not e for e in out["error"]], dtype=bool)
        out["existing"] = self.existing.mask(batch["id"]) & ok
        todo = ok & ~out["existing"]

        images, image_idx = [], []
        for i in np.flatnonzero(todo & (batch["kind"] == "image")):
            try:
                images.append(load_image(_decode_image(batch["image_path"][i], batch["image_bytes"][i])))
                image_idx.append(i)
            except BadRecordError as exc:
                out["error"][i] = str(exc)
            except Exception as exc:  # one undecodable image is this record's problem only
                out["error"][i] = f"cannot load image: {type(exc).__name__}: {exc}"
        text_idx = list(np.flatnonzero(todo & (batch["kind"] == "text")))
        self._embed(images, image_idx, self.model.embed_images, out)
        self._embed([_text(batch["text"][i]) for i in text_idx], text_idx, self.model.embed_texts, out)

        out["encode_s"][:] = (time.perf_counter() - t0) / max(n, 1)
        cols = {c: list(batch[c]) for c in ("key", "modality", "reference", "attributes")}
        return _finish(cols, out, np.asarray(batch["id"], dtype=np.int64))

    def _embed(self, inputs: list[Any], idx: list[int], embed: Any, out: dict[str, Any]) -> None:
        if not inputs:
            return
        try:
            emb = embed(inputs, batch_size=len(inputs)).numpy()
        except Exception as exc:
            if len(inputs) == 1:
                out["error"][idx[0]] = f"encoding failed: {type(exc).__name__}: {exc}"
                return
            for x, i in zip(inputs, idx, strict=True):  # isolate the input that broke the batch
                self._embed([x], [i], embed, out)
            return
        out["vec_low"][idx] = emb.low
        out["vec_high"][idx] = emb.high


def _decode_image(path: Any, data: Any) -> Any:
    path = _text(path)
    if path:
        return path
    data = bytes(data or b"")
    if data.startswith(_NPY_MAGIC):
        return np.load(io.BytesIO(data), allow_pickle=False)
    return data


# --------------------------------------------------------------------------------------------------
# Writing


def _rows_for_milvus(
    batch: dict[str, np.ndarray],
) -> tuple[list[dict[str, Any]], int, list[Skipped], float, int]:
    """Encoded batch → ``(rows to write, existing count, failures, encode seconds, dropped captions)``."""
    rows: list[dict[str, Any]] = []
    failed: list[Skipped] = []
    existing = dropped = 0
    for i in range(len(batch["id"])):
        error = _text(batch["error"][i])
        if error == _DROPPED:
            dropped += 1
        elif error:
            failed.append(Skipped(_text(batch["key"][i]), error))
        elif bool(batch["existing"][i]):
            existing += 1
        else:
            rows.append(
                {
                    "id": int(batch["id"][i]),
                    "key": _text(batch["key"][i]),
                    "modality": _text(batch["modality"][i]),
                    "reference": _text(batch["reference"][i]),
                    "attributes": json.loads(_text(batch["attributes"][i]) or "{}"),
                    "vec_low": np.asarray(batch["vec_low"][i], dtype=np.float32),
                    "vec_high": np.asarray(batch["vec_high"][i], dtype=np.float32),
                }
            )
    return rows, existing, failed, float(np.sum(batch["encode_s"])), dropped


def _write_on_driver(
    rows_ds: ray.data.Dataset,
    coll: HierarchicalCollection,
    rows_per_write: int,
    report: IngestReport,
    progress: bool,
) -> None:
    bar = _progress_bar(progress)
    seen = _RunIds(active=coll.count() == 0)
    writer = _Writer(coll, rows_per_write, report, bar, pipelined=True, seen=seen)
    try:
        batches = rows_ds.iter_batches(batch_size=rows_per_write, batch_format="numpy", prefetch_batches=2)
        for batch in batches:
            rows, existing, failed, encode_s, dropped = _rows_for_milvus(batch)
            report.dropped_captions += dropped
            report.skipped_existing += existing
            report.failed.extend(failed)
            report.encode_seconds += encode_s
            writer.add(rows)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()


class _MilvusDatasink(Datasink):
    """Upserts encoded rows into a Milvus *server* collection from each write task.

    Holds only uri / token / name (never a client): every write task opens its own connection.
    Each task returns its counts; :meth:`on_write_complete` sums them on the driver.
    """

    def __init__(self, uri: str, token: str | None, name: str, rows_per_write: int) -> None:
        self.uri, self.token, self.name, self.rows_per_write = uri, token, name, int(rows_per_write)
        self.totals: dict[str, Any] = _zero_totals()

    def get_name(self) -> str:
        return "Milvus"

    def write(self, blocks: Iterable[Any], ctx: Any) -> dict[str, Any]:
        from hivlp_milvus.collection import HierarchicalCollection

        coll = HierarchicalCollection.open(self.name, uri=self.uri, token=self.token)
        out = _zero_totals()
        try:
            for block in blocks:
                batch = BlockAccessor.for_block(block).to_batch_format("numpy")
                rows, existing, failed, encode_s, dropped = _rows_for_milvus(batch)
                out["dropped_captions"] += dropped
                out["skipped_existing"] += existing
                out["failed"] += [(s.key, s.reason) for s in failed]
                out["encode_seconds"] += encode_s
                for start in range(0, len(rows), self.rows_per_write):
                    t0 = time.perf_counter()
                    inserted, updated = write_rows(coll, rows[start : start + self.rows_per_write])
                    out["write_seconds"] += time.perf_counter() - t0
                    out["inserted"] += inserted
                    out["updated"] += updated
        finally:
            close = getattr(coll, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()
        return out

    def on_write_complete(self, write_result: Any) -> None:
        # Runs on the driver, with every write task's return value.
        totals = _zero_totals()
        for part in write_result.write_returns:
            for k, v in (part or {}).items():
                totals[k] = totals[k] + v
        self.totals = totals


def _zero_totals() -> dict[str, Any]:
    return {
        "inserted": 0,
        "updated": 0,
        "skipped_existing": 0,
        "failed": [],
        "dropped_captions": 0,
        "encode_seconds": 0.0,
        "write_seconds": 0.0,
    }


def _merge(report: IngestReport, totals: dict[str, Any]) -> None:
    report.inserted += int(totals.get("inserted", 0))
    report.updated += int(totals.get("updated", 0))
    report.rows_written += int(totals.get("inserted", 0)) + int(totals.get("updated", 0))
    report.skipped_existing += int(totals.get("skipped_existing", 0))
    report.dropped_captions += int(totals.get("dropped_captions", 0))
    report.failed.extend(Skipped(str(k), str(r)) for k, r in totals.get("failed", []))
    report.encode_seconds += float(totals.get("encode_seconds", 0.0))
    report.write_seconds += float(totals.get("write_seconds", 0.0))
