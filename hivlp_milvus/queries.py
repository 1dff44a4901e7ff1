"""Queries of a search: what the user passed (text, images, embeddings) turned into vectors.

Duck-typed so searching never imports the model package (torch, timm, transformers): a str is a
text, an image is a path / PIL image / array / bytes, and anything with ``.low`` and ``.high`` is an
embedding. Used by :mod:`hivlp_milvus.search` for both the funnel and one-level search.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hivlp_milvus.errors import QueryError
from hivlp_milvus.ids import MODALITIES


def _is_image(x: Any) -> bool:
    return isinstance(x, Path | bytes | bytearray | memoryview | np.ndarray | Image.Image)


def is_embedding(x: Any) -> bool:
    """Whether a query is an embedding: it has both levels and is no str/bytes (duck-typed, see above)."""
    return hasattr(x, "low") and hasattr(x, "high") and not isinstance(x, str | bytes)


def query_items(query: Any) -> list[Any]:
    """The queries of a search: a list or tuple of queries, or one query."""
    return list(query) if isinstance(query, list | tuple) else [query]


def _as_2d(x: Any) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    return arr.reshape(1, -1) if arr.ndim == 1 else arr


def encode_queries(query: Any, model: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Turn a query (or a list of queries) into ``(low, high, kinds)``.

    ``kinds[i]`` is ``"text"``, ``"image"`` or ``"embedding"`` for query row ``i``.

    Raises:
        QueryError: unsupported query type, an empty list, or a str/image query without a model.
    """
    items = query_items(query)
    if not items:
        raise QueryError("the query list is empty")
    parts: list[tuple[str, Any]] = []
    for i, item in enumerate(items):
        if is_embedding(item):
            parts.append(("embedding", item))
        elif isinstance(item, str):
            parts.append(("text", item))
        elif _is_image(item):
            parts.append(("image", item))
        else:
            raise QueryError(
                f"query {i} is a {type(item).__name__}; search with a str (text), an image (path, PIL image, "
                "HWC array, bytes), a HierarchicalEmbedding, or a list of these"
            )
    needs_model = [k for k, _ in parts if k != "embedding"]
    if needs_model and model is None:
        raise QueryError(
            f"a {needs_model[0]} query must be encoded, but the collection has no model; pass model= to "
            "HierarchicalCollection.open()/create() (or search with a HierarchicalEmbedding)"
        )
    # Per query: its (low rows, high rows, kinds); all texts, then all images, in one model call each.
    blocks: dict[int, tuple[np.ndarray, np.ndarray, list[str]]] = {}
    for kind, method in (("text", "embed_texts"), ("image", "embed_images")):
        idx = [i for i, (k, _) in enumerate(parts) if k == kind]
        if idx:
            emb = getattr(model, method)([parts[i][1] for i in idx])
            low, high = _as_2d(emb.low), _as_2d(emb.high)
            blocks.update((i, (low[j : j + 1], high[j : j + 1], [kind])) for j, i in enumerate(idx))
    for i, (kind, item) in enumerate(parts):
        if kind == "embedding":
            low, high = _as_2d(item.low), _as_2d(item.high)
            if len(low) != len(high):
                raise QueryError(f"query {i}: low has {len(low)} rows but high has {len(high)}")
            blocks[i] = (low, high, ["embedding"] * len(low))
    lows, highs, kinds = zip(*(blocks[i] for i in range(len(parts))), strict=True)
    return np.concatenate(lows), np.concatenate(highs), [k for ks in kinds for k in ks]


def resolve_modality(modality: str | None, kinds: list[str]) -> list[str | None]:
    """The partition each query row searches: ``modality`` as given, or the cross-modal default per kind.

    Raises:
        QueryError: ``modality`` is not ``"image"``, ``"text"``, ``"all"`` or ``None``.
    """
    if modality is None:
        # Cross-modal retrieval: text finds images, an image finds captions; an embedding searches all.
        return [{"text": "image", "image": "text"}.get(k) for k in kinds]
    if modality in ("all", "any", "*"):
        return [None] * len(kinds)
    if modality not in MODALITIES:
        raise QueryError(f"modality must be one of {MODALITIES}, 'all' or None, got {modality!r}")
    return [modality] * len(kinds)


__all__ = ["encode_queries", "is_embedding", "query_items", "resolve_modality"]
