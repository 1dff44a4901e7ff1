"""hivlp-milvus: HiVLP coarse-to-fine image-text retrieval on Milvus.

Heavy submodules (torch models, pymilvus) are imported lazily so ``import hivlp_milvus`` stays cheap
for the CLI and for Ray workers that need only part of it.
"""

from __future__ import annotations

from hivlp_milvus.errors import *  # noqa: F403  (the error classes are part of the public API)

# Bound eagerly, not lazily: ``ingest`` is also the name of a subpackage, and importing
# ``hivlp_milvus.ingest`` anywhere would otherwise replace the function on the package with the
# module (``hivlp_milvus.ingest(...)`` -> "module is not callable"). Python sets that attribute
# only when the subpackage is first imported, which this line does, so the function stays bound
# (``hivlp_milvus.ingest.local`` etc. load later without touching it). The subpackage's
# ``__init__`` is light (no torch, pymilvus or Ray at import). For the same reason write
# ``from hivlp_milvus.ingest.rows import ...``, never ``import hivlp_milvus.ingest.rows``.
from hivlp_milvus.ingest import IngestOptions as IngestOptions  # noqa: E402
from hivlp_milvus.ingest import IngestReport as IngestReport  # noqa: E402
from hivlp_milvus.ingest import ingest as ingest  # noqa: E402
from hivlp_milvus.lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "HierarchicalEmbedding": "hivlp_milvus.model.embedding",
    "HiVLP": "hivlp_milvus.model",
    "HiVLPConfig": "hivlp_milvus.model",
    "FusionConfig": "hivlp_milvus.model",
    "ContentOptions": "hivlp_milvus.content",
    "create_model": "hivlp_milvus.model",
    "Record": "hivlp_milvus.data",
    "EmbeddingRecord": "hivlp_milvus.data",
    "load_source": "hivlp_milvus.data",
    "connect": "hivlp_milvus.connection",
    "HierarchicalCollection": "hivlp_milvus.collection",
    "evaluate": "hivlp_milvus.eval",
    "retrieval_metrics": "hivlp_milvus.eval",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
