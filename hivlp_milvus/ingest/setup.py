"""Before the first row: load the model on its device, and open (or create) the collection to write to."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivlp_milvus.data.record import EmbeddingRecord
from hivlp_milvus.errors import CollectionNotFoundError
from hivlp_milvus.ingest.options import IngestOptions

if TYPE_CHECKING:
    from hivlp_milvus.collection import HierarchicalCollection

NEEDS_MODEL = (
    "these records have images/captions and need a model to encode them: pass a HiVLP or a checkpoint "
    "directory as model=, or ingest precomputed vectors (EmbeddingRecord rows, or vec_low / vec_high columns)"
)


def load_model(model: Any, device: str = "auto") -> tuple[Any, Any]:
    """``(live model, autocast dtype)``: a checkpoint directory is loaded onto ``device``.

    A live model stays where its owner put it under ``device="auto"``; an explicit device moves
    it there (``nn.Module.to`` works in place). The dtype is the mixed precision that is safe for
    inference on that device (``None`` = float32; always ``None`` on the CPU).

    Raises:
        ConfigError: ``device`` names a GPU that cannot be used (the message says why).
        CheckpointError: the checkpoint directory is incomplete.
    """
    if model is None:
        return None, None
    from hivlp_milvus.device import inference_dtype, resolve_device

    if isinstance(model, (str, Path)):
        from hivlp_milvus.model import HiVLP

        target = resolve_device(device)
        model = HiVLP.from_pretrained(str(model), device=target)
    elif device == "auto":
        target = model.device
    else:
        target = resolve_device(device)
        model = model.to(target)
    return model, inference_dtype(target)


def resolve_collection(
    collection: HierarchicalCollection | None,
    options: IngestOptions,
    *,
    model: Any,
    first: Any,
    client: Any = None,
) -> HierarchicalCollection | None:
    """The collection to write to: the given one, or ``options.collection_name`` opened or created.

    Returns ``None`` only when the collection does not exist and nothing tells its dims (no model
    and an empty source), i.e. there is nothing to ingest.

    Raises:
        CollectionNotFoundError: it does not exist and ``options.create`` is false (the message
            says how to create it).
        ModelMismatchError, SchemaMismatchError, ProfileError, MilvusUnavailableError: as
            :meth:`HierarchicalCollection.open` / :meth:`~HierarchicalCollection.create` raise them.
    """
    if collection is not None:
        return collection
    from hivlp_milvus.collection import HierarchicalCollection

    client = client if client is not None else options.connection.connect()
    name = options.collection_name
    try:
        # Open first even when create=True: an existing collection must then be checked against
        # the data (dims) by ingest itself, which gives the precise error.
        return HierarchicalCollection.open(name, client=client)
    except CollectionNotFoundError as exc:
        if not options.create:
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist at {options.connection.redacted_uri()} and create=False "
                "(--no-create); create it by ingesting without create=False, or name an existing collection"
            ) from exc
    dims = dims_for_create(model, first)
    if dims is None:
        return None
    return HierarchicalCollection.create(
        name,
        client=client,
        low_dim=dims[0],
        high_dim=dims[1],
        model=model,
        profile=options.profile,
        exist_ok=True,
        expected_rows=options.expected_rows,
    )


def estimate_rows(source: Any, first: Any) -> int | None:
    """Rows a source will write: records x (image + captions of the first record), when it has a length."""
    try:
        n = len(source)
    except TypeError:
        return None
    if isinstance(first, EmbeddingRecord) or first is None:
        return n
    return n * ((first.image is not None) + max(1, len(first.captions)))


def dims_for_create(model: Any, first: Any) -> tuple[int, int] | None:
    """``(low_dim, high_dim)`` of a collection to create: the model's, else the first record's vectors."""
    if model is not None:
        return int(model.config.low_dim), int(model.config.high_dim)
    if isinstance(first, EmbeddingRecord):
        return int(np.asarray(first.vec_low).shape[-1]), int(np.asarray(first.vec_high).shape[-1])
    return None
