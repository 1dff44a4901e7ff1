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
    # Blank captions are dropped from a record that is otherwise kept, so they are not "skipped".
    dropped_captions: int = 0

    def skip(self, key: str, reason: str) -> None:
        self.skipped.append(Skipped(str(key), reason))

    def reset(self) -> None:
        """Forget everything, in place (a re-iterated source reports its latest pass only)."""
        self.read = 0
        self.skipped.clear()
        self.dropped_captions = 0

    def __str__(self) -> str:
        lines = [f"read {self.read} records, skipped {len(self.skipped)}"]
        if self.dropped_captions:
            lines[0] += f", dropped {self.dropped_captions} blank captions"
        lines += [f"  skipped {s.key}: {s.reason}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)
