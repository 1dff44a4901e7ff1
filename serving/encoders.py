"""The two encoder deployments: texts and images in, (low, high) vectors out, dynamically batched.

Each replica holds one HiVLP model. Callers send ONE item (``await handle.encode.remote(x)``);
``@serve.batch`` groups concurrent calls into one forward pass. Two kinds of failure are kept
apart on purpose:

* **per item** — an image that cannot be decoded is the caller's fault and only that caller's:
  it is decoded before the forward pass and its caller alone gets :class:`BadRecordError`;
  the rest of the batch is encoded as usual;
* **per batch** — the forward pass itself failing (out of memory, a CUDA fault) is the server's
  fault; ``@serve.batch`` raises it to every caller of that batch and the next batch runs as
  usual. After :data:`UNHEALTHY_AFTER_FAILED_BATCHES` failed batches in a row ``check_health``
  fails, so Serve replaces the replica (a poisoned CUDA context does not heal by itself).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

from ray import serve

from hivlp_milvus.errors import BadRecordError, CheckpointError, ConfigError
from serving import metrics

logger = logging.getLogger("ray.serve")

UNHEALTHY_AFTER_FAILED_BATCHES = 3
# Decoded images above this many pixels are refused before decoding (the ingress checks first;
# this guards direct handle callers). PIL's own bomb guard only starts at ~89 Mpx.
MAX_IMAGE_PIXELS = 40_000_000
_RECENT_BATCHES = 4096


def load_model(checkpoint: str, *, use_gpu: bool = False) -> Any:
    """Load a HiVLP checkpoint for serving, failing with a message that says what to do.

    Args:
        checkpoint: the checkpoint directory (``save_pretrained`` layout).
        use_gpu: put the model on ``cuda`` (the replica must have been given a GPU).

    Returns:
        The model, in eval mode.

    Raises:
        CheckpointError: the directory is missing or is not a HiVLP checkpoint.
        ConfigError: ``use_gpu`` but CUDA cannot be used here (the message says why, from
            :func:`hivlp_milvus.device.resolve_device`); the replica fails at start instead of
            encoding on the CPU while holding a GPU reservation nobody uses.
    """
    from hivlp_milvus.device import resolve_device
    from hivlp_milvus.model import HiVLP

    path = Path(checkpoint)
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"no HiVLP checkpoint at {str(path)!r} (no config.json). Run `make demo` (the quickstart writes "
            "hivlp_work/model), pass checkpoint=DIR to serving:build_app, or set HIVLP_CHECKPOINT"
        )
    import torch

    torch.set_num_threads(torch_threads_for_replica())
    if use_gpu:
        try:
            device = resolve_device("cuda")
        except ConfigError as exc:
            raise ConfigError(
                f"this encoder replica was given a GPU (num_gpus > 0) but cannot use it: {exc}. "
                "Fix the GPU setup, or run the encoders on the CPU with num_gpus=0 (HIVLP_NUM_GPUS=0)"
            ) from exc
    else:
        device = resolve_device("cpu")
    return HiVLP.from_pretrained(path, device=device)


def torch_threads_for_replica() -> int:
    """Intra-op threads for this replica: its Ray CPU reservation, rounded up, at least 1.

    torch defaults to one thread per core of the machine; several replicas (and Ray's own
    processes) on the same cores then oversubscribe them, and OpenMP's spinning threads make every
    forward pass far slower (measured on 2 shared cores: 7 texts/s at batch 1 with 2 threads versus
    150 texts/s with 1, for the tiny model). A replica uses what it reserved.
    """
    import math

    try:
        import ray

        # Outside a Ray worker (unit tests, Serve's local testing mode) asking would start Ray.
        cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)) if ray.is_initialized() else 0
    except Exception:  # a runtime context without resources
        cpus = 0.0
    return max(1, math.ceil(cpus))


def item_result(out: Any) -> Any:
    """One caller's result of a batch: its own result, or its own per-item error raised.

    A batch body returns one entry per caller; a caller's failure travels as the exception object
    itself (``@serve.batch`` hands each entry back as a value), so the rest of the batch succeeds.
    """
    if isinstance(out, Exception):
        raise out
    return out


class _EncoderBase:
    """What both encoders share: the model, batch statistics, health."""

    modality = ""

    def __init__(
        self,
        checkpoint: str,
        max_batch_size: int = 32,
        batch_wait_timeout_s: float = 0.01,
        use_gpu: bool = False,
    ) -> None:
        self.model = load_model(checkpoint, use_gpu=use_gpu)
        # The decorator's defaults are only placeholders: the builder's args win.
        self.encode_batch.set_max_batch_size(int(max_batch_size))
        self.encode_batch.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        self._batch_sizes: deque[int] = deque(maxlen=_RECENT_BATCHES)
        self._batches = 0
        self._items = 0
        self._failed_batches = 0
        self._failed_in_a_row = 0
        self._busy_s = 0.0

    # Subclasses define `encode_batch` with @serve.batch themselves: the batch queue lives on the
    # decorated function, so one shared definition would mix both encoders' items in one process.
    async def encode_batch(self, items: list[Any]) -> list[Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    async def encode(self, item: Any) -> dict[str, Any]:
        """Encode one item (batched with concurrent callers).

        Args:
            item: a text (TextEncoder) or encoded image bytes (ImageEncoder).

        Returns:
            ``{"low": float32 array, "high": float32 array, "batch_size": int}``.

        Raises:
            BadRecordError: this item cannot be encoded (e.g. undecodable image); only this caller.
            Exception: the forward pass failed; every caller of the batch gets the same error.
        """
        return item_result(await self.encode_batch(item))

    async def encode_now(self, item: Any) -> dict[str, Any]:
        """:meth:`encode` without waiting for a batch: the same checks, forward pass and errors, alone.

        ``@serve.batch`` only runs inside a Serve replica (it reads the replica's context when its
        queue starts), so in-process use (:mod:`serving.inprocess`) calls this instead.
        """
        return item_result((await self._run_batch([item]))[0])

    async def _run_batch(self, items: list[Any]) -> list[Any]:
        """Prepare every item on its own, then one forward pass for those that are usable."""
        started = time.perf_counter()
        self._batch_sizes.append(len(items))
        self._batches += 1
        self._items += len(items)
        prepared: list[Any] = []
        results: list[Any] = [None] * len(items)
        usable: list[int] = []
        for i, item in enumerate(items):
            try:
                prepared.append(self._prepare(item))
                usable.append(i)
            except BadRecordError as exc:
                results[i] = exc  # this caller's alone (item_result raises it)
        if usable:
            try:
                # A worker thread keeps the event loop free to collect the next batch meanwhile.
                low, high = await asyncio.to_thread(self._embed, prepared)
            except Exception:
                self._failed_batches += 1
                self._failed_in_a_row += 1
                logger.exception("%s: a batch of %d failed", type(self).__name__, len(items))
                raise
            finally:
                self._busy_s += time.perf_counter() - started
            self._failed_in_a_row = 0
            # Each caller waited for the whole forward pass: that is its encode latency.
            elapsed = time.perf_counter() - started
            for _ in usable:
                metrics.observe_stage("encode", elapsed)
            for row, i in enumerate(usable):
                results[i] = {"low": low[row], "high": high[row], "batch_size": len(items)}
        return results

    def _prepare(self, item: Any) -> Any:
        """Validate/decode one item; raise BadRecordError for this item only."""
        raise NotImplementedError

    def _embed(self, prepared: list[Any]) -> tuple[Any, Any]:
        """One forward pass over the prepared items: ``(low, high)`` float32 arrays."""
        embed = self.model.embed_texts if self.modality == "text" else self.model.embed_images
        emb = embed(prepared, batch_size=max(len(prepared), 1))
        return emb.low, emb.high

    def stats(self) -> dict[str, Any]:
        """Batch statistics of this replica (for tests, dashboards and tuning max_batch_size)."""
        sizes = list(self._batch_sizes)
        return {
            "modality": self.modality,
            "max_batch_size": self.encode_batch._get_max_batch_size(),
            "batch_wait_timeout_s": self.encode_batch._get_batch_wait_timeout_s(),
            "batches": self._batches,
            "items": self._items,
            "failed_batches": self._failed_batches,
            "mean_batch_size": (sum(sizes) / len(sizes)) if sizes else 0.0,
            "max_seen_batch_size": max(sizes, default=0),
            "recent_batch_sizes": sizes[-256:],
            "busy_s": round(self._busy_s, 4),
            "device": str(self.model.device),
            "torch_threads": self._torch_threads(),
        }

    def reset_stats(self) -> None:
        """Forget the batch statistics (benchmarks call this between runs)."""
        self._batch_sizes.clear()
        self._batches = self._items = self._failed_batches = 0
        self._busy_s = 0.0

    @staticmethod
    def _torch_threads() -> int:
        import torch

        return int(torch.get_num_threads())

    def check_health(self) -> None:
        """Serve calls this periodically; raising makes Serve replace the replica."""
        if self._failed_in_a_row >= UNHEALTHY_AFTER_FAILED_BATCHES:
            raise RuntimeError(
                f"{type(self).__name__}: the last {self._failed_in_a_row} batches failed; restarting the replica"
            )


# Both encoders deploy alike. max_ongoing_requests >= max_batch_size, or a replica never sees a
# full batch (the builder raises it to 2x).
_ENCODER_DEPLOYMENT: dict[str, Any] = {
    "max_ongoing_requests": 64,
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16},
    "ray_actor_options": {"num_cpus": 0.5},
    "health_check_period_s": 10,
}


@serve.deployment(name="TextEncoder", **_ENCODER_DEPLOYMENT)
class TextEncoder(_EncoderBase):
    """Texts -> (low, high). ``encode(text)`` is batched; ``stats()`` reports the batch sizes seen."""

    modality = "text"

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def encode_batch(self, items: list[str]) -> list[Any]:
        return await self._run_batch(items)

    def _prepare(self, item: Any) -> str:
        if not isinstance(item, str) or not item.strip():
            raise BadRecordError("a text query must be a non-blank string")
        return item


@serve.deployment(name="ImageEncoder", **_ENCODER_DEPLOYMENT)
class ImageEncoder(_EncoderBase):
    """Encoded images (bytes) -> (low, high). Undecodable images fail for their caller only."""

    modality = "image"

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def encode_batch(self, items: list[bytes]) -> list[Any]:
        return await self._run_batch(items)

    def _prepare(self, item: Any) -> Any:
        from PIL import Image

        from hivlp_milvus.model.preprocess import load_image

        if not isinstance(item, bytes | bytearray | memoryview):
            raise BadRecordError(f"an image must be encoded bytes, got {type(item).__name__}")
        check_image_header(bytes(item), MAX_IMAGE_PIXELS)
        image = load_image(bytes(item))
        if not isinstance(image, Image.Image):  # pragma: no cover - load_image's contract
            raise BadRecordError("image could not be decoded")
        return image


class ImageTooLargeError(BadRecordError):
    """The image has more pixels than the server accepts (answered with 413)."""


def check_image_header(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Read an image's format and size from its header, without decoding the pixels.

    Args:
        data: encoded image bytes.
        max_pixels: the largest ``width * height`` accepted.

    Returns:
        ``(format, width, height)``.

    Raises:
        BadRecordError: the bytes are not an image PIL can open.
        ImageTooLargeError: ``width * height > max_pixels``.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadRecordError("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = str(img.format or "?"), img.size
    except Image.DecompressionBombError as exc:  # PIL's own guard, far above max_pixels
        raise ImageTooLargeError(f"the image is too large: {exc}") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadRecordError(f"the image cannot be decoded ({len(data)} bytes): {exc}") from exc
    if width * height > max_pixels:
        raise ImageTooLargeError(f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return fmt, width, height
