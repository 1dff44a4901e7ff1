"""``load_source(anything)``: one entry point from a path or a list to an iterable of records."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from hivlp_milvus.data import readers
from hivlp_milvus.data.record import EmbeddingRecord, Record, SourceReport
from hivlp_milvus.errors import DataError

AnyRecord = Record | EmbeddingRecord
_MODALITIES = ("image", "text")
# The reader of each file suffix (lower case).
_OPENERS: dict[str, Callable[..., readers.ReaderSpec]] = {
    ".json": readers.open_karpathy,
    ".csv": readers.open_csv,
    ".tsv": readers.open_csv,
    ".jsonl": readers.open_jsonl,
    ".parquet": readers.open_parquet,
}


class RecordSource:
    """An iterable of records with a report of what was skipped.

    Sources read from paths or lists can be iterated again (each pass re-reads and the report
    describes the latest pass); a source wrapping a one-shot iterator can be iterated once.

    Attributes:
        report: what the current / latest pass read and skipped (updated while iterating).
        description: where the records come from, for messages.
        length: records expected before bad rows are skipped, when known without reading (Karpathy
            JSON, lists, Hugging Face datasets without a split filter); ``None`` otherwise.
    """

    def __init__(
        self,
        iterate: Callable[[SourceReport], Iterator[AnyRecord]],
        *,
        description: str,
        length: int | None = None,
        limit: int | None = None,
        reiterable: bool = True,
    ) -> None:
        if limit is not None and limit < 0:
            raise DataError(f"limit must be >= 0, got {limit}")
        self._iterate = iterate
        self._limit = limit
        self._reiterable = reiterable
        self._started = False
        self.description = description
        self.length = length if limit is None or length is None else min(length, limit)
        self.report = SourceReport()

    def __iter__(self) -> Iterator[AnyRecord]:
        if self._started and not self._reiterable:
            raise DataError(
                f"{self.description} wraps a one-shot iterator and was already read; "
                "pass a list to iterate more than once"
            )
        self._started = True
        self.report.reset()
        return self._generate()

    def _generate(self) -> Iterator[AnyRecord]:
        # islice stops after the limit without reading a record more (a limit of 0 reads none).
        for record in itertools.islice(self._iterate(self.report), self._limit):
            self.report.read += 1
            yield record

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"the length of {self.description} is not known before reading it")
        return self.length

    def __repr__(self) -> str:
        size = "" if self.length is None else f", length={self.length}"
        return f"RecordSource({self.description!r}{size})"


def load_source(
    source: str | Path | Iterable[AnyRecord] | Any,
    *,
    split: str | None = None,
    image_root: str | Path | None = None,
    limit: int | None = None,
) -> RecordSource:
    """Open image–caption data of any supported kind as an iterable of records.

    Args:
        source: one of
            * a directory holding ``manifest.jsonl`` (e.g. one split written by
              :func:`hivlp_milvus.data.synthetic.write_splits`), or the root of such splits with
              ``split`` naming one;
            * a ``.json`` Karpathy split file (Flickr30K / COCO);
            * a ``.csv`` / ``.tsv`` / ``.jsonl`` / ``.parquet`` manifest;
            * a Hugging Face ``save_to_disk`` directory, or a ``Dataset`` / ``DatasetDict`` object;
            * a list or any iterable of :class:`Record` / :class:`EmbeddingRecord`;
            * a :class:`RecordSource` (returned as is unless ``limit`` is given).
        split: the split to read: a split sub-directory, a Karpathy split (``"train"`` includes
            ``restval``), a ``DatasetDict`` key, or the value of a manifest's ``split`` column.
        image_root: the directory relative image paths are resolved against: where a Karpathy
            file's images live, or a manifest's (default: the JSON / manifest file's directory).
            Paths and Hugging Face datasets only: in-memory records carry their own image paths.
        limit: stop after this many records.

    Returns:
        A :class:`RecordSource`. Bad rows are skipped and listed in its ``report``, never raised.

    Raises:
        DataError: the source cannot be read at all: no such path, an unknown file type, missing
            required columns, a ``split`` the source does not have.
    """
    if image_root is not None and not isinstance(source, (str, Path)) and not hasattr(source, "column_names"):
        raise DataError(
            f"image_root= applies to a data path (Karpathy JSON, manifest, dataset directory), not to a "
            f"{type(source).__name__}; give the records absolute image paths, or pass the path with image_root"
        )
    if isinstance(source, RecordSource):
        if limit is None:
            return source
        return RecordSource(
            source._iterate,
            description=source.description,
            length=source.length,
            limit=limit,
            reiterable=source._reiterable,
        )
    if isinstance(source, (str, Path)) or hasattr(source, "column_names"):  # a path, an HF Dataset / DatasetDict
        spec = _open(source, split=split, image_root=None if image_root is None else Path(image_root).expanduser())
        return RecordSource(spec.iterate, description=spec.description, length=spec.length, limit=limit)
    if isinstance(source, (Record, EmbeddingRecord)):
        source = [source]
    if isinstance(source, dict) or not isinstance(source, Iterable):
        raise DataError(
            f"cannot read records from a {type(source).__name__}; pass a path, a Hugging Face "
            "dataset or a list of Record / EmbeddingRecord"
        )
    if split is not None:
        raise DataError("split= applies to paths and Hugging Face datasets, not to in-memory records")
    # A list or tuple can be read again; any other iterable is read once, through one iterator.
    listed = isinstance(source, (list, tuple))
    items = source if listed else iter(source)
    return RecordSource(
        lambda report: _validated(items, report),
        description=f"{len(items)} in-memory records" if listed else "an iterator of records",
        length=len(items) if listed else None,
        limit=limit,
        reiterable=listed,
    )


def _open(source: Any, *, split: str | None, image_root: Path | None) -> readers.ReaderSpec:
    """The reader of a data path (by file type, or a directory's layout) or of a Hugging Face dataset object."""
    if not isinstance(source, (str, Path)):
        return readers.open_hf(source, split=split, image_root=image_root)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(
            f"{path} does not exist; expected a data directory, a manifest "
            "(.csv/.jsonl/.parquet) or a Karpathy .json file"
        )
    if path.is_dir():
        if (path / "manifest.jsonl").is_file():
            return readers.open_jsonl(path / "manifest.jsonl", split=split, image_root=image_root)
        if readers.is_hf_dataset_dir(path):
            return readers.open_hf(path, split=split, image_root=image_root)
        splits = sorted(p.name for p in path.iterdir() if (p / "manifest.jsonl").is_file())
        if split is not None and split in splits:
            return readers.open_jsonl(path / split / "manifest.jsonl", image_root=image_root)
        if splits:
            raise DataError(f"{path} holds the splits {splits}; choose one with split=... (--split)")
        raise DataError(
            f"{path} is a directory without manifest.jsonl, split sub-directories or a Hugging "
            "Face save_to_disk dataset (dataset_dict.json / state.json)"
        )
    suffix = path.suffix.lower()
    if suffix not in _OPENERS:
        raise DataError(
            f"{path}: unknown file type {suffix or '(none)'!r}; expected .json (Karpathy), "
            ".csv, .tsv, .jsonl, .parquet or a directory"
        )
    return _OPENERS[suffix](path, split=split, image_root=image_root)


def _validated(items: Iterable[Any], report: SourceReport) -> Iterator[AnyRecord]:
    """In-memory records under the same rules as files: blank captions dropped, empty records skipped."""
    for n, item in enumerate(items):
        if isinstance(item, EmbeddingRecord):
            if item.modality not in _MODALITIES:
                report.skip(item.id, f"modality must be one of {_MODALITIES}, got {item.modality!r}")
                continue
            yield item
        elif isinstance(item, Record):
            captions = [c.strip() for c in item.captions if isinstance(c, str) and c.strip()]
            report.dropped_captions += len(item.captions) - len(captions)
            if item.image is None and not captions:
                report.skip(item.id, "no image and no caption")
                continue
            # Copy only when cleaning changed something, so callers' objects are never mutated.
            yield item if captions == item.captions else dataclasses.replace(item, captions=captions)
        else:
            report.skip(f"item {n}", f"not a Record or EmbeddingRecord: {type(item).__name__}")
