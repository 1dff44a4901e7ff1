"""The training data path: records → a deterministic Ray Dataset → per-worker torch batches.

Driver side (once per run):

* :func:`prepare_sources` generates the synthetic split (if configured) and loads the records.
* :func:`build_train_table` tokenizes every caption once (the vocabulary belongs to the model the
  driver created) and fixes the row order with one seeded shuffle. Each row keeps up to
  ``max_captions`` tokenized captions, the image reference, a global integer relevance group and
  a stable integer id.
* :func:`build_train_dataset` wraps the table in a Ray Dataset whose ``map_batches`` decodes and
  pre-processes the images on the cluster's CPUs. With the cache (:func:`should_cache_decoded`,
  ``data.cache_decoded``) that happens once, before training, and every epoch streams the decoded
  blocks from the object store; without it, every epoch decodes again, in parallel with training.

Worker side (every step):

* :func:`select_captions` draws one caption per image per epoch from ``(seed, epoch, uid)``, so
  the draw is identical on every rank, on every restart and for every worker count.

Why the order is deterministic: the Ray Data ingest runs with ``preserve_order=True`` and without
locality hints (see ``training/trainer.py``), so Ray's ``streaming_split`` hands the same blocks
to the same rank every epoch, and each rank's local shuffle is seeded with
:func:`shuffle_seed`. A resumed run can therefore skip the micro-batches it already trained on and
see exactly the batches the crashed run would have seen.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivlp_milvus.errors import BadRecordError, ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    import ray.data
    import torch

    from hivlp_milvus.data.record import Record
    from hivlp_milvus.model.preprocess import ImageProcessor
    from training.config import TrainConfig

logger = logging.getLogger(__name__)

__all__ = [
    "TrainTable",
    "batch_fingerprint",
    "build_train_dataset",
    "build_train_table",
    "decode_images",
    "prepare_sources",
    "decoded_bytes",
    "select_captions",
    "should_cache_decoded",
    "shuffle_seed",
]

# Columns a worker receives per row (image pixels replace the image reference columns).
TENSOR_COLUMNS = ("pixel_values", "input_ids", "attention_mask", "num_captions", "group", "uid")
_MASK63 = 0x7FFF_FFFF_FFFF_FFFF
# ``cache_decoded: auto`` caches when the decoded set takes at most this share of the object store:
# the rest stays free for the batches in flight, checkpoints and other jobs on the cluster.
CACHE_SHARE = 0.5


@dataclass(frozen=True)
class Sources:
    """What :func:`prepare_sources` found.

    Attributes:
        train: the training records (in source order).
        val: how rank 0 opens the validation set: ``{"source", "split", "image_root"}`` for
            ``load_source``, or ``None`` without validation.
        skipped: how many training rows the source skipped (bad rows), for the run report.
    """

    train: list[Record]
    val: dict[str, str | None] | None
    skipped: int


@dataclass(frozen=True)
class TrainTable:
    """The training set as columns, in the (seeded) order the dataset streams them.

    Attributes:
        columns: ``uid`` (int64), ``group`` (int64), ``image_path`` (str), ``image_bytes``
            (bytes), ``input_ids`` / ``attention_mask`` (``(N, K, L)``, int32 / uint8) and
            ``num_captions`` (int32).
    """

    columns: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.columns["uid"])


# -- driver: sources -------------------------------------------------------------------------------


def prepare_sources(cfg: TrainConfig, work_dir: Path) -> Sources:
    """Generate synthetic data if configured, then load the training records.

    A synthetic split is written once into ``<work_dir>/data`` and reused when its
    ``dataset.json`` records the same sizes and seed (resuming must not change the data).

    Args:
        cfg: the training config.
        work_dir: the run's local working directory.

    Returns:
        The training records and the validation source.

    Raises:
        DataError: the training source cannot be read or has no usable pairs.
    """
    from hivlp_milvus.data import load_source

    data = cfg.data
    train_src: Any = data.train
    train_split, val_split = data.train_split, data.val_split
    val_src = data.val
    if data.synthetic is not None:
        syn = data.synthetic
        root = work_dir / "data"
        sizes = {"train": syn.train, **({"val": syn.val} if syn.val > 0 else {})}
        if not _synthetic_is_current(root, sizes, syn.seed, syn.image_size):
            from hivlp_milvus.data import synthetic

            synthetic.write_splits(root, sizes, seed=syn.seed, image_size=syn.image_size, progress=False)
        train_src, train_split = str(root / "train"), None
        val_src, val_split = (str(root / "val"), None) if syn.val > 0 else (None, None)
    source = load_source(train_src, split=train_split, image_root=data.image_root)
    records = [r for r in source if r.image is not None and r.captions]
    if not records:
        raise DataError(
            f"the training source {train_src} has no image with a caption; check data.train "
            "(a Karpathy .json, a manifest directory, .csv/.jsonl/.parquet) and data.train_split"
        )
    val = None
    if val_src is not None and cfg.validation.enabled:
        val = {"source": str(val_src), "split": val_split, "image_root": data.image_root}
    return Sources(train=records, val=val, skipped=len(source.report.skipped))


def _synthetic_is_current(root: Path, sizes: dict[str, int], seed: int, image_size: int) -> bool:
    try:  # OSError: no dataset.json (not written yet)
        info = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    same = info.get("sizes") == sizes and info.get("seed") == seed and info.get("image_size") == image_size
    return same and all((root / split / "manifest.jsonl").is_file() for split in sizes)


# -- driver: table ---------------------------------------------------------------------------------


def build_train_table(
    records: Sequence[Record],
    tokenize: Any,
    *,
    max_captions: int,
    seed: int,
    chunk_size: int = 4096,
) -> TrainTable:
    """Tokenize every caption once and lay the training set out as seeded-order columns.

    Args:
        records: training records, each with an image and at least one caption.
        tokenize: ``model.tokenize``: ``list[str] -> {"input_ids", "attention_mask"}`` (N, L).
        max_captions: keep at most this many captions per image (``K``).
        seed: the row order is one permutation drawn from ``seed``.
        chunk_size: captions tokenized per call (bounds peak memory on large sets).

    Returns:
        The :class:`TrainTable`.
    """
    n = len(records)
    # Sorted group ids would be nicer, but first-seen order is deterministic for a given source.
    groups: dict[str, int] = {}
    group_ids = [groups.setdefault(record.relevance_group, len(groups)) for record in records]
    captions = [list(record.captions)[:max_captions] for record in records]
    texts = [text for kept in captions for text in kept + [""] * (max_captions - len(kept))]
    references = [_image_reference(record) for record in records]
    ids_chunks, mask_chunks = [], []
    for start in range(0, len(texts), chunk_size):
        tokens = tokenize(texts[start : start + chunk_size])
        ids_chunks.append(tokens["input_ids"].numpy().astype(np.int32))
        mask_chunks.append(tokens["attention_mask"].numpy().astype(np.uint8))
    order = np.random.default_rng(seed).permutation(n)
    columns = {
        "uid": np.asarray([stable_uid(record.id) for record in records], dtype=np.int64),
        "group": np.asarray(group_ids, dtype=np.int64),
        "image_path": np.asarray([path for path, _ in references], dtype=object),
        "image_bytes": np.asarray([blob for _, blob in references], dtype=object),
        "input_ids": np.concatenate(ids_chunks).reshape(n, max_captions, -1),
        "attention_mask": np.concatenate(mask_chunks).reshape(n, max_captions, -1),
        "num_captions": np.asarray([len(kept) for kept in captions], dtype=np.int32),
    }
    return TrainTable(columns={name: column[order] for name, column in columns.items()})


def stable_uid(record_id: str) -> int:
    """A positive int64 derived from a record id (same id, same number, on every machine)."""
    digest = hashlib.blake2b(str(record_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _MASK63


def _image_reference(record: Record) -> tuple[str, bytes]:
    """A path when the image is a file (workers read it), else PNG/original bytes carried in the row."""
    image = record.image
    if isinstance(image, (str, Path)):
        return str(image), b""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "", bytes(image)
    from hivlp_milvus.model.preprocess import load_image

    buffer = io.BytesIO()
    load_image(image).save(buffer, format="PNG")
    return "", buffer.getvalue()


# -- driver: dataset -------------------------------------------------------------------------------


def decoded_bytes(num_images: int, image_size: int) -> int:
    """Bytes of the decoded training set: float32 ``(3, S, S)`` pixels per image."""
    return num_images * 3 * image_size * image_size * 4


def should_cache_decoded(setting: bool | str, *, num_images: int, image_size: int, object_store_bytes: float) -> bool:
    """Whether to decode the images once and keep the pixels in the object store (``data.cache_decoded``).

    Args:
        setting: ``True`` / ``False``, or ``"auto"``: cache when :func:`decoded_bytes` is at most
            :data:`CACHE_SHARE` of the object store. A larger set would push other objects out
            (Ray spills to disk), so it is decoded every epoch, streaming, as before.
        num_images: training images.
        image_size: side of the decoded square images.
        object_store_bytes: the cluster's object store memory (``ray.cluster_resources()``).

    Returns:
        Whether :func:`build_train_dataset` should materialize the decoded set.
    """
    if isinstance(setting, bool):
        return setting
    return decoded_bytes(num_images, image_size) <= CACHE_SHARE * object_store_bytes


def build_train_dataset(
    table: TrainTable,
    processor: ImageProcessor,
    *,
    num_blocks: int,
    preprocess_batch_size: int,
    cache_decoded: bool = False,
) -> ray.data.Dataset:
    """The training Ray Dataset: the table's rows, images decoded in ``map_batches``.

    Args:
        table: the training table (already in seeded order).
        processor: the model's :class:`ImageProcessor` (small and picklable; shipped to the tasks).
        num_blocks: blocks to cut the table into (the unit of parallel decoding and of sharding).
        preprocess_batch_size: rows per ``map_batches`` call.
        cache_decoded: decode now, once, and return the materialized dataset (its blocks stay in
            the object store; every epoch and every rank reads them, on any node, without decoding
            again). ``False``: a lazy dataset that decodes on every pass.

    Returns:
        A dataset with the columns of :data:`TENSOR_COLUMNS`, in the table's order either way.
    """
    import ray.data

    n = len(table)
    items = [{name: column[i] for name, column in table.columns.items()} for i in range(n)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(num_blocks, n)))
    ds = ds.map_batches(
        decode_images,
        fn_kwargs={"processor": processor},
        batch_size=preprocess_batch_size,
        batch_format="numpy",
    )
    if not cache_decoded:
        return ds
    # The cached blocks must be in the table's order, as the streaming path delivers them: the
    # equal split hands each rank the same rows every epoch, and a resumed run (a new driver that
    # decodes again) must see the same order for "skip the consumed batches" to be exact.
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False
    return ds.materialize()


def decode_images(batch: dict[str, np.ndarray], processor: ImageProcessor) -> dict[str, np.ndarray]:
    """``map_batches`` UDF: decode + resize + normalise each image; drop rows whose image is bad.

    A row whose image is missing or undecodable is dropped with a warning instead of failing the
    whole run (the equal split after this step keeps per-rank batch counts equal).

    Args:
        batch: numpy columns of the table.
        processor: the model's image processor.

    Returns:
        The batch with ``pixel_values`` (float32 ``(N, 3, S, S)``) instead of the image columns.
    """
    keep: list[int] = []
    pixels = []
    for i, (path, blob) in enumerate(zip(batch["image_path"], batch["image_bytes"], strict=True)):
        source: Any = path if path else bytes(blob)
        try:
            pixels.append(processor.process(source).numpy())
        except BadRecordError as exc:
            logger.warning("skipping training image %s: %s", path or f"uid {batch['uid'][i]}", exc)
            continue
        keep.append(i)
    size = processor.image_size
    out = {name: batch[name][keep] for name in TENSOR_COLUMNS if name != "pixel_values"}
    out["pixel_values"] = np.stack(pixels) if pixels else np.empty((0, 3, size, size), dtype=np.float32)
    return out


# -- worker side -----------------------------------------------------------------------------------


def shuffle_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of rank ``rank``'s local shuffle buffer in ``epoch`` (a new order every epoch)."""
    return mix_seed(seed, epoch, rank, 0x5EED) & 0xFFFF_FFFF


def select_captions(batch: dict[str, torch.Tensor], *, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one caption per image, deterministically from ``(seed, epoch, uid)``.

    Args:
        batch: a worker batch with ``uid`` (B,), ``num_captions`` (B,), ``input_ids`` and
            ``attention_mask`` (B, K, L).
        seed: the run seed.
        epoch: the epoch (a new draw every epoch).

    Returns:
        ``(input_ids, attention_mask)``, each ``(B, L)``.
    """
    import torch

    uids = batch["uid"].tolist()
    counts = batch["num_captions"].tolist()
    choice = [mix_seed(seed, epoch, uid, 0xCA7) % max(1, count) for uid, count in zip(uids, counts, strict=True)]
    index = torch.tensor(choice, dtype=torch.long, device=batch["input_ids"].device)
    rows = torch.arange(len(choice), device=index.device)
    return batch["input_ids"][rows, index].long(), batch["attention_mask"][rows, index].long()


def batch_fingerprint(uids: Iterable[int]) -> str:
    """A short hash of the image ids of a batch, in order (to audit that resumes replay exactly)."""
    data = b"".join(int(uid).to_bytes(8, "big", signed=True) for uid in uids)
    return hashlib.blake2b(data, digest_size=6).hexdigest()


def plan_epoch(num_rows: int, *, world_size: int, batch_size: int, grad_accum_steps: int) -> tuple[int, int]:
    """Micro-batches per rank and optimizer steps per epoch.

    Ray's equal ``streaming_split`` gives every rank ``num_rows // world_size`` rows and each rank
    drops its last partial batch, so these numbers are exact when no image fails to decode.

    Args:
        num_rows: training images.
        world_size: workers.
        batch_size: per-worker micro-batch.
        grad_accum_steps: micro-batches per optimizer step.

    Returns:
        ``(micro_batches_per_epoch, steps_per_epoch)``.

    Raises:
        ConfigError: the data set is too small for one optimizer step per epoch.
    """
    micro = (num_rows // world_size) // batch_size
    steps = micro // grad_accum_steps
    if steps == 0:
        need = world_size * batch_size * grad_accum_steps
        raise ConfigError(
            f"{num_rows} training images are fewer than one optimizer step needs "
            f"({world_size} workers x batch_size {batch_size} x grad_accum_steps {grad_accum_steps} "
            f"= {need}); "
            "lower optim.batch_size or scaling.num_workers, or use more data"
        )
    return micro, steps


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions, unlike ``hash``)."""
    digest = hashlib.blake2b(",".join(str(int(v)) for v in values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _MASK63
