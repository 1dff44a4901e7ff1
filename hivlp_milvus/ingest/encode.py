"""Encoding image and caption items with the model: a batch at a time, one by one when a batch fails.

Shared by the in-process driver and the Ray Data encoder actors. A record whose image cannot be
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
from hivlp_milvus.ingest.rows import Item

logger = logging.getLogger(__name__)

# Per item: its (low, high) vectors, or the reason it failed.
Result = tuple[np.ndarray, np.ndarray] | str


class Encoder:
    """Encodes image / text items with a :class:`HiVLP` already on its device.

    The model's ``embed_images`` / ``embed_texts`` choose the mixed precision of their forward
    passes themselves (:func:`hivlp_milvus.device.inference_dtype` of the model's device).
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def encode(self, items: list[Item]) -> list[Result]:
        """One result per item, in order: ``(low, high)`` float32 vectors, or why it failed."""
        results: list[Result] = [f"cannot encode an item of kind {it.kind!r}" for it in items]
        self._images([i for i, it in enumerate(items) if it.kind == "image"], items, results)
        text_idx = [i for i, it in enumerate(items) if it.kind == "text"]
        self._embed(text_idx, [items[i].payload for i in text_idx], self.model.embed_texts, results)
        return results

    def rows(self, items: list[Item], failed: list[Skipped]) -> list[dict[str, Any]]:
        """The rows of ``items``; an item that fails is appended to ``failed`` with the reason."""
        out = []
        for it, result in zip(items, self.encode(items), strict=True):
            if isinstance(result, str):
                failed.append(Skipped(it.key, result))
            else:
                out.append(it.row(*result))
        return out

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
