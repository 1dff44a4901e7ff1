"""Image–caption data: records, the synthetic generator, the emoji corpus, file readers and ``load_source``.

Everything here is light (PIL, numpy, pyarrow); nothing imports torch or the model.
"""

from __future__ import annotations

from hivlp_milvus.data import emoji, synthetic
from hivlp_milvus.data.record import EmbeddingRecord, Record, Skipped, SourceReport
from hivlp_milvus.data.source import RecordSource, load_source

__all__ = [
    "EmbeddingRecord",
    "Record",
    "RecordSource",
    "Skipped",
    "SourceReport",
    "emoji",
    "load_source",
    "synthetic",
]
