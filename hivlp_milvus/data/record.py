"""The record every data source yields, and the report of what a source had to skip."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ImageLike = Any  # str | Path | PIL.Image.Image | np.ndarray (HWC uint8) | bytes


@dataclass
class Record:
    """One image with its captions.

    Attributes:
        id: the user's stable key for this image (a string). Milvus primary keys are derived from
            it (:func:`hivlp_milvus.ids.row_id`), so the same key is an upsert, never a duplicate.
        image: a path, a PIL image, an HWC uint8 array or encoded bytes; ``None`` for text-only.
        captions: the texts that describe the image (zero or more).
        attributes: user attributes (JSON-serialisable) stored with every row of this record.
        group: items with the same group count as relevant to each other in evaluation (e.g.
            synthetic scenes with identical content). Defaults to ``id``.
    """

    id: str
    image: ImageLike | None = None
    captions: list[str] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    group: str | None = None

    @property
    def relevance_group(self) -> str:
        return self.group if self.group is not None else self.id

    @property
    def image_uri(self) -> str:
        """A string reference for the image: its path when it has one, else ``""``."""
        return str(self.image) if isinstance(self.image, (str, Path)) else ""


@dataclass
class EmbeddingRecord:
    """A row whose vectors the user computed (bring-your-own-embeddings ingest; no model needed)."""

    id: str
    modality: str  # "image" | "text"
    vec_low: np.ndarray
    vec_high: np.ndarray
    reference: str = ""  # image uri or caption text
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    """A record that was not used, and why."""

    key: str
    reason: str


@dataclass
class SourceReport:
    """What a data source read and what it skipped, with reasons. Sources never raise on one bad row."""

    read: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    def skip(self, key: str, reason: str) -> None:
        self.skipped.append(Skipped(str(key), reason))

    def __str__(self) -> str:
        lines = [f"read {self.read} records, skipped {len(self.skipped)}"]
        lines += [f"  skipped {s.key}: {s.reason}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)
