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


def load_model(model: Any, device: str = "auto") -> Any:
    """The live model (or ``None``): a checkpoint directory is loaded onto ``device``.

    A live model stays on its device under ``device="auto"``, else it is moved (in place).

    Raises:
        ConfigError: ``device`` names a GPU that cannot be used (the message says why).
        CheckpointError: the checkpoint directory is incomplete.
    """
    if isinstance(model, (str, Path)):
        from hivlp_milvus.model import HiVLP

        return HiVLP.from_pretrained(str(model), device=device)  # a bad device fails before the weights load
    if model is None or device == "auto":
        return model
    from hivlp_milvus.device import resolve_device

    return model.to(resolve_device(device))


def resolve_collection(
    collection: HierarchicalCollection | None,
    options: IngestOptions,
    *,
    model: Any,
    first: Any,
    estimate: int | None = None,
) -> HierarchicalCollection | None:
    """The collection to write to, checked against ``model``: the given one, or one opened or created.

    A collection created here sizes its index for ``options.expected_rows``, else for ``estimate``
    (the rows the source will write, when its driver knows).

    Returns ``None`` only when the collection does not exist and nothing tells its dims (no model
    and an empty source), i.e. there is nothing to ingest.

    Raises:
        CollectionNotFoundError: it does not exist and ``options.create`` is false.
        ModelMismatchError: the model does not match the collection.
        SchemaMismatchError, ProfileError, MilvusUnavailableError: as ``open`` / ``create`` raise them.
    """
    from hivlp_milvus.collection import HierarchicalCollection

    if collection is None:
        client = options.connection.connect()
        name = options.collection_name
        try:
            # Open first even when create=True: an existing collection must then be checked against
            # the data (dims) by ingest itself, which gives the precise error.
            collection = HierarchicalCollection.open(name, client=client)
        except CollectionNotFoundError as exc:
            if not options.create:
                raise CollectionNotFoundError(
                    f"collection {name!r} does not exist at {options.connection.redacted_uri()} and create=False "
                    "(--no-create); create it by ingesting without create=False, or name an existing collection"
                ) from exc
            if model is None and not isinstance(first, EmbeddingRecord):
                return None
            # The model's dims, else those of the first record's vectors.
            low, high = (
                (None, None) if model is not None else (np.shape(first.vec_low)[-1], np.shape(first.vec_high)[-1])
            )
            collection = HierarchicalCollection.create(
                name,
                client=client,
                model=model,
                exist_ok=True,
                low_dim=low,
                high_dim=high,
                profile=options.profile,
                expected_rows=estimate if options.expected_rows is None else options.expected_rows,
            )
    if model is not None:
        collection.check_model(model)  # before anything is written
    return collection


def estimate_rows(source: Any, first: Any) -> int | None:
    """Rows a source will write: records x (image + captions of the first record), when it has a length."""
    try:
        n = len(source)
    except TypeError:
        return None
    if isinstance(first, EmbeddingRecord) or first is None:
        return n
    return n * ((first.image is not None) + max(1, len(first.captions)))
