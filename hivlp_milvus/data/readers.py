"""Readers for image–caption data on disk: Karpathy JSON, CSV / JSONL / Parquet manifests, HF datasets.

Each ``open_*`` function checks at once that the source can be read at all (raising
:class:`~hivlp_milvus.errors.DataError` if not) and returns a :class:`ReaderSpec`, whose
``iterate(report)`` yields :class:`Record` objects and reports every bad row in ``report`` instead
of raising. :func:`hivlp_milvus.data.load_source` picks the reader; call these directly only to
bypass its detection.

Manifest rows (CSV, JSONL, Parquet, HF datasets) share one layout: ``image`` (a path, relative
paths resolved against the manifest's directory or ``image_root``; or bytes / ``{"bytes", "path"}`` / a PIL image)
and ``caption`` (one text) or ``captions`` (a list, or a JSON list in CSV); optional ``id``,
``group`` and ``split`` (``split`` selects rows and is also kept as an attribute, so searches can
filter on it, as the Karpathy reader does); every other column becomes an attribute (a column named
``attributes`` holding an object, as in synthetic manifests, is merged in). Adjacent rows with the same id
(or, without an id column, the same image) are merged into one record, as in caption files that
list one caption per line (Flickr8k's ``captions.txt``).
"""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hivlp_milvus.data.record import Record, SourceReport
from hivlp_milvus.errors import DataError

IMAGE_COLUMN = "image"
CAPTION_COLUMNS = ("captions", "caption")
# Columns with a meaning of their own; every other column is copied into Record.attributes.
_RESERVED = {"id", "image", "caption", "captions", "group"}


@dataclass(frozen=True)
class ReaderSpec:
    """An opened source: how to iterate it, its expected size and a description for messages.

    Attributes:
        iterate: ``iterate(report)`` yields records and records skipped rows in ``report``.
        length: records expected before skipping bad rows, when known without reading (else None).
        description: e.g. ``"Karpathy JSON data/dataset_flickr30k.json (split test)"``.
    """

    iterate: Callable[[SourceReport], Iterator[Record]]
    length: int | None
    description: str


# --------------------------------------------------------------------------- shared row handling


class _BadRow(Exception):
    """One row cannot become a record; the message is the reason reported."""


def _clean_captions(value: Any, report: SourceReport) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        try:  # a JSON list inside a CSV cell, else one caption
            value = json.loads(text) if text.startswith("[") and text.endswith("]") else [value]
        except json.JSONDecodeError:
            value = [value]
    elif not isinstance(value, (list, tuple)):
        value = list(value) if hasattr(value, "__iter__") else [value]
    captions = []
    for item in value:
        if isinstance(item, dict) and "raw" in item:  # Karpathy-style sentence objects
            item = item["raw"]
        if isinstance(item, str) and item.strip():
            captions.append(item.strip())
        elif item is None or isinstance(item, str) or (isinstance(item, float) and math.isnan(item)):
            report.dropped_captions += 1  # blank or missing
        else:
            raise _BadRow(f"caption is not text: {item!r:.60}")
    return captions


def _resolve_image(value: Any, base_dir: Path) -> Any:
    """A usable image reference, ``None`` when the row has no image, or :class:`_BadRow`."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, dict):  # HF / Arrow image struct: its bytes, else its path
        value = bytes(value["bytes"]) if value.get("bytes") else value.get("path") or None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value) if len(value) else None
    if isinstance(value, (str, Path)):
        text = str(value).strip()
        if not text:
            return None
        if "://" in text:  # URLs are passed through; the model's loader decides what it can open
            return text
        path = base_dir / Path(text).expanduser()  # an absolute path replaces base_dir
        if not path.is_file():
            raise _BadRow(f"image file not found: {path}")
        return str(path)
    return value  # PIL image or array, already in memory


def _jsonable(value: Any) -> Any:
    # Attributes end up in a Milvus JSON field: keep JSON types, stringify the rest (dates...).
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalar
        return _jsonable(value.item())
    return str(value)


def _row_to_record(row: dict[str, Any], where: str, base_dir: Path, report: SourceReport) -> Record:
    present = {IMAGE_COLUMN: IMAGE_COLUMN in row, "caption (or captions)": any(c in row for c in CAPTION_COLUMNS)}
    if not all(present.values()):
        raise _BadRow(f"missing column {' and '.join(name for name, ok in present.items() if not ok)}")
    image = _resolve_image(row[IMAGE_COLUMN], base_dir)
    caption_value = row["captions"] if row.get("captions") is not None else row.get("caption")
    captions = _clean_captions(caption_value, report)
    if image is None and not captions:
        raise _BadRow("no image and no caption")
    raw_id, path = row.get("id"), row[IMAGE_COLUMN]
    # The id, else the image path as written (stable across machines), else the row's position.
    key = str("" if raw_id is None else raw_id).strip() or (path.strip() if isinstance(path, str) else "") or where
    group = row.get("group")
    attributes = {str(k): _jsonable(v) for k, v in row.items() if k not in _RESERVED and k is not None}
    if isinstance(attributes.get("attributes"), dict):  # an "attributes" object column is merged in
        attributes = {**attributes.pop("attributes"), **attributes}
    return Record(
        id=key,
        image=image,
        captions=captions,
        attributes=attributes,
        group=None if group is None or str(group) == "" else str(group),
    )


def _same_image(a: Any, b: Any) -> bool:
    return a is b or (isinstance(a, (str, bytes)) and a == b)


def _assemble(
    rows: Iterable[tuple[str, dict[str, Any] | str]],
    base_dir: Path,
    report: SourceReport,
    split: str | None,
) -> Iterator[Record]:
    """Rows (or error strings) → records: filter by split, merge adjacent rows of one key, report."""
    seen: set[str] = set()
    pending: Record | None = None
    for where, row in rows:
        if isinstance(row, str):
            report.skip(where, row)
            continue
        if split is not None and str(row.get("split", "")) not in _split_names(split):
            continue
        try:
            record = _row_to_record(row, where, base_dir, report)
        except _BadRow as exc:
            report.skip(where, str(exc))
            continue
        if pending is not None and record.id == pending.id:
            both = record.image is not None and pending.image is not None
            if both and not _same_image(record.image, pending.image):
                report.skip(where, f"id {record.id!r} repeats with a different image")
            else:
                pending.captions.extend(record.captions)
                pending.image = pending.image if pending.image is not None else record.image
            continue
        if record.id in seen:
            report.skip(where, f"duplicate id {record.id!r} (rows of one image must be adjacent to merge)")
            continue
        seen.add(record.id)
        if pending is not None:
            yield pending
        pending = record
    if pending is not None:
        yield pending


def _split_names(split: str | Sequence[str]) -> set[str]:
    """``"train"`` also means Karpathy's ``restval`` (COCO's 113k training images, by convention)."""
    names = {s.strip() for s in (split.split(",") if isinstance(split, str) else split) if s.strip()}
    if "train" in names:
        names.add("restval")
    return names


def _manifest(
    rows: Callable[[], Iterable[Any]], base_dir: Path, split: str | None, description: str, length: int | None = None
) -> ReaderSpec:
    """The reader of manifest rows (CSV, JSONL, Parquet, HF): every pass calls ``rows()`` afresh."""
    return ReaderSpec(lambda report: _assemble(rows(), base_dir, report, split), length, description)


def _check_columns(columns: Iterable[str], name: str | Path, split: str | None) -> None:
    columns = set(columns)
    if IMAGE_COLUMN not in columns or not columns & set(CAPTION_COLUMNS):
        raise DataError(
            f"{name} has columns {sorted(columns)}; expected an 'image' column and a 'caption' "
            "(one text) or 'captions' (list) column; optional: id, group, split, any attribute columns"
        )
    if split is not None and "split" not in columns:
        raise DataError(f"split={split!r} was given but {name} has no 'split' column; omit split")


# --------------------------------------------------------------------------- manifests


def open_csv(path: Path, *, split: str | None = None, image_root: Path | None = None) -> ReaderSpec:
    """A CSV (or ``.tsv``) manifest with a header row (relative image paths: see :func:`open_jsonl`)."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f, delimiter=delimiter), None)
    if not header:
        raise DataError(f"{path} is empty; expected a header row with 'image' and 'caption' columns")
    _check_columns(header, path, split)

    def rows() -> Iterator[tuple[str, dict[str, Any] | str]]:
        csv.field_size_limit(1 << 24)
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            for line_no, row in enumerate(reader, start=2):
                row.pop(None, None)  # surplus cells of an over-long row
                if any(v is None for v in row.values()):
                    cells = sum(v is not None for v in row.values())
                    row = f"row has {cells} cells, the header has {len(row)}"
                yield f"{path.name}:{line_no}", row

    return _manifest(rows, image_root or path.parent, split, f"CSV manifest {path}")


def open_jsonl(path: Path, *, split: str | None = None, image_root: Path | None = None) -> ReaderSpec:
    """A JSON Lines manifest: one object per line (blank lines ignored).

    Relative image paths are resolved against ``image_root``, by default the manifest's directory.
    """

    def rows() -> Iterator[tuple[str, dict[str, Any] | str]]:
        with path.open(encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path.name}:{line_no}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield where, f"malformed JSON ({exc.msg} at column {exc.colno})"
                    continue
                if not isinstance(row, dict):
                    row = f"expected a JSON object, got {type(row).__name__}"
                yield where, row

    if split is not None:
        first = next((row for _, row in rows() if isinstance(row, dict)), None)
        if first is not None and "split" not in first:
            raise DataError(f"split={split!r} was given but rows of {path} have no 'split' field; omit split")
    return _manifest(rows, image_root or path.parent, split, f"JSONL manifest {path}")


def open_parquet(path: Path, *, split: str | None = None, image_root: Path | None = None) -> ReaderSpec:
    """A Parquet manifest; an image column may hold paths, bytes or ``{"bytes", "path"}`` structs.

    Relative image paths are resolved against ``image_root``, by default the manifest's directory.
    """
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{path} is not a readable Parquet file: {exc}") from exc
    _check_columns(parquet.schema_arrow.names, path, split)

    def rows() -> Iterator[tuple[str, dict[str, Any] | str]]:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
        for line, row in enumerate(itertools.chain.from_iterable(batch.to_pylist() for batch in batches)):
            yield f"{path.name}:row {line}", row

    return _manifest(rows, image_root or path.parent, split, f"Parquet manifest {path}")


# --------------------------------------------------------------------------- Karpathy JSON


def open_karpathy(
    path: Path, *, split: str | Sequence[str] | None = None, image_root: Path | None = None
) -> ReaderSpec:
    """Karpathy's split file for Flickr30K / COCO (``dataset_flickr30k.json``, ``dataset_coco.json``).

    Args:
        path: the JSON file: ``{"images": [{"filename", "filepath"?, "split", "sentences":
            [{"raw"}], "imgid" / "cocoid"}]}``.
        split: ``"train"`` (includes ``restval``), ``"val"``, ``"test"``, a comma-separated list,
            or None for every image.
        image_root: directory holding the images (``image_root / filepath / filename``);
            defaults to the JSON file's directory.
    """
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); expected Karpathy's split file") from exc
    entries = data.get("images") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise DataError(
            f"{path} has no 'images' list; expected Karpathy's split file "
            '({"images": [{"filename", "split", "sentences": [{"raw"}]}]})'
        )
    wanted = None if split is None else _split_names(split)
    known = {e.get("split") for e in entries if isinstance(e, dict)}
    if wanted is not None and not wanted & known:
        raise DataError(f"{path} has no images in split {split!r}; its splits are {sorted(map(str, known))}")
    # Keep only what is needed: COCO's file is 150 MB of JSON.
    selected = [e for e in entries if not isinstance(e, dict) or wanted is None or e.get("split") in wanted]
    del data, entries
    root = Path(image_root) if image_root is not None else path.parent

    def iterate(report: SourceReport) -> Iterator[Record]:
        for n, entry in enumerate(selected):
            where = f"{path.name}:images[{n}]"
            if not isinstance(entry, dict) or not entry.get("filename"):
                report.skip(where, "entry has no filename")
                continue
            # COCO ids are the images' public ids; Flickr30K's imgid is only a running index.
            key = str(entry["cocoid"]) if "cocoid" in entry else str(entry["filename"])
            image = root / entry.get("filepath", "") / entry["filename"]
            if not image.is_file():
                report.skip(key, f"image file not found: {image} (pass image_root=...)")
                continue
            try:
                captions = _clean_captions(entry.get("sentences") or [], report)
            except _BadRow as exc:
                report.skip(key, str(exc))
                continue
            if not captions:
                report.skip(key, "no caption")
                continue
            attributes = {"split": entry.get("split"), "filename": entry["filename"]}
            if "imgid" in entry:
                attributes["imgid"] = _jsonable(entry["imgid"])
            yield Record(id=key, image=str(image), captions=captions, attributes=attributes)

    label = f"Karpathy JSON {path}" + ("" if split is None else f" (split {split})")
    return ReaderSpec(iterate, len(selected), label)


# --------------------------------------------------------------------------- Hugging Face datasets


def is_hf_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


def open_hf(dataset: Any, *, split: str | None = None, image_root: Path | None = None) -> ReaderSpec:
    """A Hugging Face dataset: a ``save_to_disk`` directory, or a ``Dataset`` / ``DatasetDict`` object.

    ``split`` picks a split of a ``DatasetDict`` (required when it has several), or filters a
    ``Dataset``'s ``split`` column. Relative image paths are resolved against ``image_root``
    (default: the dataset directory, or the working directory for an object).
    """
    base_dir = Path.cwd()
    label = "Hugging Face dataset"
    if isinstance(dataset, (str, Path)):
        base_dir = Path(dataset)
        label = f"Hugging Face dataset {base_dir}"
        try:
            import datasets
        except ImportError as exc:  # an optional extra
            raise DataError(f"{dataset} is a Hugging Face dataset: pip install 'hivlp-milvus[hf]'") from exc
        try:
            dataset = datasets.load_from_disk(str(base_dir))
        except Exception as exc:  # datasets raises FileNotFoundError / ValueError / its own types
            raise DataError(f"cannot load the Hugging Face dataset at {base_dir}: {exc}") from exc
    split_column = split
    if isinstance(dataset, dict):  # a DatasetDict
        names = list(dataset.keys())
        if split is None and len(names) != 1:
            raise DataError(f"{label} has splits {names}; choose one with split=...")
        chosen = names[0] if split is None else split
        if chosen not in names:
            raise DataError(f"{label} has no split {chosen!r}; its splits are {names}")
        dataset, split_column, label = dataset[chosen], None, f"{label} (split {chosen})"
    _check_columns(dataset.column_names, label, split_column)
    dataset = _undecoded_images(dataset)

    def rows() -> Iterator[tuple[str, dict[str, Any] | str]]:
        for start in range(0, len(dataset), 256):
            batch = dataset[start : start + 256]  # a dict of column lists
            for i, values in enumerate(zip(*batch.values(), strict=True)):
                yield f"row {start + i}", dict(zip(batch, values, strict=True))

    length = None if split_column is not None else len(dataset)
    return _manifest(rows, image_root or base_dir, split_column, label, length)


def _undecoded_images(dataset: Any) -> Any:
    # Decoding every image to PIL here would be wasted work: the model's loader takes bytes/paths.
    try:
        from datasets import Image as HFImage
    except ImportError:  # an in-memory object duck-typed as a dataset
        return dataset
    feature = getattr(dataset, "features", {}).get(IMAGE_COLUMN)
    if isinstance(feature, HFImage) and feature.decode:
        return dataset.cast_column(IMAGE_COLUMN, HFImage(decode=False))
    return dataset
