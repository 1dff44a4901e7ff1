"""The row schema of a HiVLP collection, as data (``schemas/collection.json``) and as checks.

What a row is — its fields, VARCHAR limits, vector dims — and the collection properties that
record the model, read by :mod:`hivlp_milvus.collection` (create/open) and by the ingest package
(row building), so each limit is read from the schema in one place.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from hivlp_milvus.errors import BadRecordError, DimensionMismatchError, SchemaMismatchError
from hivlp_milvus.ids import MODALITIES

PROP_SCHEMA_VERSION = "hivlp.schema_version"
PROP_FINGERPRINT = "hivlp.model_fingerprint"
PROP_LOW_DIM = "hivlp.low_dim"
PROP_HIGH_DIM = "hivlp.high_dim"
PROP_PROFILE = "hivlp.profile"
# Extra (not in the architecture's list): the vec_low build params actually used, e.g. nlist, so a
# reopened collection sizes nprobe against the real index.
PROP_LOW_INDEX = "hivlp.low_index"

MAX_DIM = 32768


@lru_cache(maxsize=1)
def schema_spec() -> dict[str, Any]:
    """The row schema (``schemas/collection.json``) as a dict."""
    return json.loads(resources.files("schemas").joinpath("collection.json").read_text(encoding="utf-8"))


def schema_version() -> int:
    return int(schema_spec()["schema_version"])


def field_names() -> tuple[str, ...]:
    return tuple(f["name"] for f in schema_spec()["fields"])


SCALAR_OUTPUT_FIELDS = ("id", "key", "modality", "reference", "attributes")


@lru_cache(maxsize=1)
def max_lengths() -> dict[str, int]:
    """The VARCHAR fields' limits in bytes (``{"key": 1024, ...}``), as Milvus enforces them."""
    return {f["name"]: int(f["max_length"]) for f in schema_spec()["fields"] if "max_length" in f}


def build_schema(low_dim: int, high_dim: int, *, description: str = "", mmap_high: bool = False) -> Any:
    """The pymilvus ``CollectionSchema`` for the given dims (from ``schemas/collection.json``)."""
    from pymilvus import DataType, MilvusClient

    spec = schema_spec()
    schema = MilvusClient.create_schema(
        auto_id=False,
        enable_dynamic_field=bool(spec.get("enable_dynamic_field", False)),
        description=description or spec.get("description", ""),
    )
    dims = {"low_dim": low_dim, "high_dim": high_dim}
    for f in spec["fields"]:
        kw: dict[str, Any] = {key: f[key] for key in ("is_primary", "max_length") if key in f}
        if "dim" in f:
            kw["dim"] = dims[f["dim"]] if isinstance(f["dim"], str) else int(f["dim"])
        if f["name"] == "vec_high" and mmap_high:
            kw["mmap_enabled"] = True
        schema.add_field(f["name"], getattr(DataType, f["type"]), **kw)
    return schema


def profile_properties(profile: Any) -> dict[str, str]:
    """The properties that record an :class:`~hivlp_milvus.profiles.IndexProfile` and its ``vec_low`` build params."""
    return {PROP_PROFILE: profile.tag, PROP_LOW_INDEX: json.dumps(profile.low.build_params, sort_keys=True)}


def check_description(
    name: str, desc: Mapping[str, Any], partitions: Callable[[], set[str]]
) -> tuple[int, int, dict[str, str]]:
    """``(low_dim, high_dim, properties)`` of an existing collection, checked against this schema.

    Args:
        name: the collection's name (for the messages).
        desc: ``MilvusClient.describe_collection(name)``.
        partitions: returns its partitions (called only once the properties say it is ours).

    Raises:
        SchemaMismatchError: it was not created by hivlp_milvus, or by another schema version, or
            lacks a partition or field, or its dims disagree with its properties.
    """
    props = {str(k): str(v) for k, v in (desc.get("properties") or {}).items()}
    if PROP_SCHEMA_VERSION not in props:
        raise SchemaMismatchError(
            f"collection {name!r} was not created by hivlp_milvus (no {PROP_SCHEMA_VERSION} property); "
            "use another collection name"
        )
    if props[PROP_SCHEMA_VERSION] != str(schema_version()):
        raise SchemaMismatchError(
            f"collection {name!r} has schema version {props[PROP_SCHEMA_VERSION]}, this hivlp_milvus writes "
            f"version {schema_version()}; re-ingest into a new collection"
        )
    found = partitions()
    if not set(MODALITIES) <= found:
        raise SchemaMismatchError(
            f"collection {name!r} lacks the per-modality partitions {list(MODALITIES)} (it has "
            f"{sorted(found)}); re-ingest into a new collection"
        )
    fields = {f["name"]: f for f in desc.get("fields", [])}
    missing = [f for f in field_names() if f not in fields]
    if missing:
        raise SchemaMismatchError(
            f"collection {name!r} lacks the field(s) {missing}; it is not a hivlp collection: "
            "use another collection name, or re-ingest into a new collection"
        )
    try:
        low_dim, high_dim = int(props[PROP_LOW_DIM]), int(props[PROP_HIGH_DIM])
    except (KeyError, ValueError) as exc:
        raise SchemaMismatchError(
            f"collection {name!r} has no valid {PROP_LOW_DIM}/{PROP_HIGH_DIM} properties; "
            "re-ingest into a new collection"
        ) from exc
    for field, dim in (("vec_low", low_dim), ("vec_high", high_dim)):
        actual = int((fields[field].get("params") or {}).get("dim", dim))
        if actual != dim:
            raise SchemaMismatchError(
                f"collection {name!r}: {field} has dim {actual} but the properties say {dim}; "
                "re-ingest into a new collection"
            )
    return low_dim, high_dim, props


def check_dim(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= int(value) <= MAX_DIM:
        raise DimensionMismatchError(f"{name} must be an int in [1, {MAX_DIM}], got {value!r}")
    return int(value)


def validate_rows(
    rows: Sequence[Mapping[str, Any]], *, low_dim: int, high_dim: int, collection: str
) -> list[Mapping[str, Any]]:
    """Check rows against the schema (fields, id, modality, VARCHAR limits, vector dims, finite values).

    Returns:
        The rows, with a missing ``attributes`` filled in as ``{}``.

    Raises:
        BadRecordError: a row is malformed (the message names the row and field).
        DimensionMismatchError: a vector does not have the collection's dims.
    """
    expected = set(field_names())
    limits = max_lengths()
    out: list[Mapping[str, Any]] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise BadRecordError(f"row {i} is a {type(row).__name__}, expected a dict with fields {sorted(expected)}")
        keys = set(row)
        if keys == expected - {"attributes"}:  # attributes are optional
            row, keys = {**row, "attributes": {}}, expected
        if keys != expected:
            raise BadRecordError(
                f"row {i} (id={row.get('id')!r}): missing fields {sorted(expected - keys)}, "
                f"unknown fields {sorted(keys - expected)}; rows have exactly {sorted(expected)}"
            )
        rid = row["id"]
        if isinstance(rid, bool) or not isinstance(rid, int | np.integer) or not 0 <= int(rid) < 2**63:
            raise BadRecordError(f"row {i}: id must be a non-negative INT64 (ids.row_id(key, modality)), got {rid!r}")
        if row["modality"] not in MODALITIES:
            raise BadRecordError(f"row {i} (id={rid}): modality must be one of {MODALITIES}, got {row['modality']!r}")
        for field, cap in limits.items():
            value = row[field]
            if not isinstance(value, str):
                raise BadRecordError(f"row {i} (id={rid}): {field} must be a str, got {type(value).__name__}")
            if len(value) * 4 > cap and len(value.encode("utf-8")) > cap:
                raise BadRecordError(f"row {i} (id={rid}): {field} is longer than {cap} bytes (UTF-8)")
        if not isinstance(row["attributes"], Mapping):
            raise BadRecordError(
                f"row {i} (id={rid}): attributes must be a dict, got {type(row['attributes']).__name__}"
            )
        out.append(row)
    if not out:
        return out
    for field, dim in (("vec_low", low_dim), ("vec_high", high_dim)):
        try:
            mat = np.asarray([r[field] for r in out], dtype=np.float32)
        except (ValueError, TypeError):
            mat = None
        if mat is None or mat.ndim != 2 or mat.shape[1] != dim:
            for i, r in enumerate(out):
                shape = np.shape(r[field])
                if shape != (dim,):
                    raise DimensionMismatchError(
                        f"row {i} (id={r['id']}): {field} has shape {shape}, collection {collection!r} expects "
                        f"({dim},); was it encoded with another model?"
                    )
            raise DimensionMismatchError(f"{field} vectors are not a (n, {dim}) float matrix")
        if not np.isfinite(mat).all():
            bad = int(np.flatnonzero(~np.isfinite(mat).all(axis=1))[0])
            raise BadRecordError(f"row {bad} (id={out[bad]['id']}): {field} contains NaN or inf")
    return out
