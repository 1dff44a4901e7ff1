"""Items → rows: images and captions encoded with the model (a batch at a time, one by one when a batch
fails), precomputed vectors checked against the collection's dims.

Shared by the in-process driver and the Ray Data stage-2 actors. A record whose image cannot be
decoded, or whose input breaks the forward pass, is that record's failure only: the batch is
retried item by item so the rest of it still lands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from hivlp_milvus.data.record import Skipped
from hivlp_milvus.errors import BadRecordError
from hivlp_milvus.ingest.rows import Item, vector_rows

logger = logging.getLogger(__name__)

# Per item: its (low, high) vectors, or the reason it failed.
Result = tuple[np.ndarray, np.ndarray] | str


class Encoder:
    """Builds the rows of items for a collection of dims ``(low_dim, high_dim)``.

    Image / text items are encoded with ``model``, a :class:`HiVLP` already on its device (``None``:
    they fail, as needing one). The model's ``embed_images`` / ``embed_texts`` choose the mixed
    precision of their forward passes themselves (:func:`hivlp_milvus.device.inference_dtype`).
    """

    def __init__(self, model: Any, low_dim: int, high_dim: int) -> None:
        self.model, self.low_dim, self.high_dim = model, low_dim, high_dim

    def encode(self, items: list[Item]) -> list[Result]:
        """One result per item, in order: ``(low, high)`` float32 vectors, or why it failed."""
        if self.model is None:
            return ["needs a model to encode (none was given)" for _ in items]
        results: list[Result] = [f"cannot encode an item of kind {it.kind!r}" for it in items]
        self._images([i for i, it in enumerate(items) if it.kind == "image"], items, results)
        text_idx = [i for i, it in enumerate(items) if it.kind == "text"]
        self._embed(text_idx, [items[i].payload for i in text_idx], self.model.embed_texts, results)
        return results

    def rows(self, items: list[Item], failed: list[Skipped]) -> list[dict[str, Any]]:
        """The rows of ``items``, precomputed vectors first; an item that fails goes to ``failed`` with the reason."""
        out = vector_rows([it for it in items if it.kind == "vectors"], self.low_dim, self.high_dim, failed)
        encode = [it for it in items if it.kind != "vectors"]
        results = list(zip(encode, self.encode(encode), strict=True))
        failed.extend(Skipped(it.key, result) for it, result in results if isinstance(result, str))
        return out + [it.row(*result) for it, result in results if not isinstance(result, str)]

    def _images(self, idx: list[int], items: list[Item], results: list[Result]) -> None:
        from hivlp_milvus.model.preprocess import load_image

        ok_idx, images = [], []
        for i in idx:
            try:
                images.append(load_image(items[i].payload))
                ok_idx.append(i)
            except BadRecordError as exc:
                results[i] = str(exc)
            except Exception as exc:  # any decoder failure is this record's problem, not the run's
                results[i] = f"cannot load image: {type(exc).__name__}: {exc}"
        self._embed(ok_idx, images, self.model.embed_images, results)

    def _embed(self, idx: list[int], inputs: list[Any], embed: Callable[..., Any], results: list[Result]) -> None:
        if not idx:
            return
        try:
            emb = embed(inputs, batch_size=len(inputs)).numpy()
        except Exception as exc:
            if len(idx) == 1:
                results[idx[0]] = f"encoding failed: {type(exc).__name__}: {exc}"
                return
            # One input broke the batch: encode one by one so only that record is lost.
            logger.warning("batch encoding failed (%s); retrying the %d items one by one", exc, len(idx))
            for i, x in zip(idx, inputs, strict=True):
                self._embed([i], [x], embed, results)
            return
        for j, i in enumerate(idx):
            results[i] = (emb.low[j], emb.high[j])
