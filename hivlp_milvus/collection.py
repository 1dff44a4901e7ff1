"""``HierarchicalCollection``: one Milvus collection holding both HiVLP vectors of every item.

The row schema comes from ``schemas/collection.json`` and the indexes from an index profile
(``schemas/profiles.yaml``). The collection records in its properties which model and dims it was
built for, so opening it with an incompatible model is an error instead of silent garbage.

Create or open with the classmethods::

    col = HierarchicalCollection.create("flickr", uri="./hivlp.db", model=model)
    col = HierarchicalCollection.open("flickr", uri="http://milvus:19530", token="root:Milvus", model=model)
    col = HierarchicalCollection.open("flickr", connection=ConnectionOptions(uri=..., secure=True), model=model)
    hits = col.hierarchical_search("a dog on a beach", limit=10)

Every Milvus call goes through a :class:`~hivlp_milvus.connection.GuardedClient`, so the public
methods raise only :class:`~hivlp_milvus.errors.HiVLPError` subclasses (Milvus' code kept).

Elsewhere, one job each: the schema and the checks of an existing collection
(:mod:`hivlp_milvus.schema`), the ``create`` / ``open`` factories (:mod:`hivlp_milvus.creation`),
the ``vec_low`` build check (:mod:`hivlp_milvus.index_state`) and the search funnel
(:mod:`hivlp_milvus.search`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hivlp_milvus import search as funnel
from hivlp_milvus.connection import call_options, guarded, is_lite
from hivlp_milvus.creation import create_collection, model_dims, model_fingerprint, open_collection
from hivlp_milvus.errors import FilterError, ModelMismatchError
from hivlp_milvus.filters import bind, filter_errors, filter_kwargs, restrict_to_ids
from hivlp_milvus.ids import MODALITIES
from hivlp_milvus.index_state import check_low_index
from hivlp_milvus.profiles import IndexProfile
from hivlp_milvus.schema import (
    PROP_SCHEMA_VERSION,
    SCALAR_OUTPUT_FIELDS,
    profile_properties,
    schema_version,
    validate_rows,
)

logger = logging.getLogger(__name__)

# Milvus rejects requests above 64 MiB (proxy.grpc.serverMaxRecvSize). Half of it is budgeted for
# vectors + scalars; the rest covers protobuf framing and unusually long references.
_REQUEST_BUDGET_BYTES = 32 * 1024 * 1024
_SCALAR_ALLOWANCE_BYTES = 2048  # id + key + modality + a typical reference and attributes
_ID_CHUNK = 10000  # ids per get/query request
_ROWS_CACHE_S = 30.0


class HierarchicalCollection:
    """A Milvus collection of HiVLP rows (``id, key, modality, reference, attributes, vec_low, vec_high``).

    Use :meth:`create` or :meth:`open`; the constructor is internal.
    """

    def __init__(
        self,
        name: str,
        client: Any,
        *,
        low_dim: int,
        high_dim: int,
        profile: IndexProfile,
        fingerprint: str = "",
        model: Any = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self._name = name
        # Every call below goes through the error boundary (GuardedClient); ``client`` is the raw one.
        self._client = guarded(client, f" on collection {name!r}")
        self._low_dim = int(low_dim)
        self._high_dim = int(high_dim)
        self._profile = profile
        self._fingerprint = fingerprint
        self._properties = dict(properties or {})
        self._is_lite = is_lite(self._client)
        self._rows_cache: tuple[float, int] | None = None
        self.model = model  # the setter checks it against the dims and fingerprint above

    # ------------------------------------------------------------------ factories (in hivlp_milvus.creation)

    create = classmethod(create_collection)
    open = classmethod(open_collection)

    # ------------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        """The collection name."""
        return self._name

    @property
    def client(self) -> Any:
        """The underlying ``pymilvus.MilvusClient`` (its calls raise pymilvus' own exceptions)."""
        return self._client.raw

    @property
    def low_dim(self) -> int:
        """Dim of ``vec_low``."""
        return self._low_dim

    @property
    def high_dim(self) -> int:
        """Dim of ``vec_high``."""
        return self._high_dim

    @property
    def profile(self) -> IndexProfile:
        """The index profile the collection was built with."""
        return self._profile

    @property
    def fingerprint(self) -> str:
        """The recorded model fingerprint (``""`` when created without a model)."""
        return self._fingerprint

    @property
    def properties(self) -> dict[str, str]:
        """The collection properties recorded at creation."""
        return dict(self._properties)

    @property
    def model(self) -> Any:
        """The attached model (encodes str/image queries), or ``None``."""
        return self._model

    @model.setter
    def model(self, model: Any) -> None:
        if model is not None:
            self.check_model(model)
        self._model = model

    @property
    def is_lite(self) -> bool:
        """Whether the collection lives in Milvus Lite (no server-side filter templating)."""
        return self._is_lite

    @property
    def max_rows_per_request(self) -> int:
        """Rows per upsert request that keep it well under Milvus' 64 MB request limit.

        ``32 MiB / (4 * (low_dim + high_dim) + 2 KiB)``: half the limit, fp32 vectors plus an
        allowance for the scalar fields (e.g. 64/256 dims -> ~10k rows, 128/768 -> ~5.9k).
        """
        per_row = 4 * (self._low_dim + self._high_dim) + _SCALAR_ALLOWANCE_BYTES
        return max(1, _REQUEST_BUDGET_BYTES // per_row)

    def approx_num_rows(self) -> int | None:
        """Row count from the collection statistics (cheap; cached 30 s, reset by writes).

        Used to size IVF ``nprobe`` for a coarse limit; ``None`` if Milvus does not report it.
        """
        now = time.monotonic()
        if self._rows_cache is None or now - self._rows_cache[0] > _ROWS_CACHE_S:
            try:
                rows = int(self._client.get_collection_stats(self._name).get("row_count", 0))
            except Exception as exc:  # statistics are an optimisation only
                logger.debug("get_collection_stats(%s) failed: %s", self._name, exc)
                return None
            self._rows_cache = (now, rows)
        return self._rows_cache[1] or None

    def __repr__(self) -> str:
        return (
            f"HierarchicalCollection(name={self._name!r}, low_dim={self._low_dim}, high_dim={self._high_dim}, "
            f"profile={self._profile.tag!r}, lite={self._is_lite})"
        )

    # ------------------------------------------------------------------ model checks

    def check_model(self, model: Any) -> None:
        """Check that ``model`` produces vectors this collection can hold and search.

        Dims must match; the fingerprint must match unless the collection recorded none.

        Raises:
            ModelMismatchError: which of low_dim / high_dim / fingerprint differs, and what to do.
        """
        low, high = model_dims(model)
        pairs = [("low_dim", self._low_dim, low), ("high_dim", self._high_dim, high)]
        if self._fingerprint:
            pairs.append(("fingerprint", repr(self._fingerprint), repr(model_fingerprint(model))))
        diffs = [f"{label}: collection {mine}, model {theirs}" for label, mine, theirs in pairs if mine != theirs]
        if diffs:
            raise ModelMismatchError(
                f"the model does not match collection {self._name!r} ({'; '.join(diffs)}). Either re-ingest the "
                "data with this model into a new collection, or pass the checkpoint the collection was built "
                "with (model=HiVLP.from_pretrained(...))"
            )
        if not self._fingerprint:
            logger.debug("collection %s has no recorded fingerprint; only dims were checked", self._name)

    # ------------------------------------------------------------------ filters

    def bind_filter(
        self, expr: str | None, params: Mapping[str, Any] | None = None, *, reserved_ok: bool = False
    ) -> tuple[str, dict[str, Any]]:
        """:func:`hivlp_milvus.filters.bind` with templating chosen for this Milvus."""
        return bind(expr, params, templating=not self._is_lite, reserved_ok=reserved_ok)

    # ------------------------------------------------------------------ writes (the ingest contract)

    def upsert(self, rows: Sequence[Mapping[str, Any]], *, validate: bool = True, **kwargs: Any) -> int:
        """Insert or overwrite rows (keyed by ``id``), validated first, in request-sized chunks.

        Args:
            rows: dicts with exactly ``id, key, modality, reference, attributes, vec_low, vec_high``
                (vectors as lists or float arrays of the collection's dims).
            validate: check every row first (nothing is written when one is bad). ``False`` only
                for rows already checked one by one, as :mod:`hivlp_milvus.ingest.rows` builds them:
                each write is then validated once, not twice.
            **kwargs: passed to ``MilvusClient.upsert``.

        Returns:
            The number of rows written.

        Raises:
            DimensionMismatchError: a vector does not have the collection's dim (nothing is written).
            BadRecordError: a row lacks a field, has an unknown one, or a value of the wrong type.
        """
        rows = (
            validate_rows(list(rows), low_dim=self._low_dim, high_dim=self._high_dim, collection=self._name)
            if validate
            else list(rows)
        )
        self._rows_cache = None
        written = 0
        step = self.max_rows_per_request
        for modality in MODALITIES:  # each row goes to its modality's partition (see create)
            part = [r for r in rows if r["modality"] == modality]
            for start in range(0, len(part), step):
                chunk = part[start : start + step]
                res = self._client.upsert(self._name, chunk, partition_name=modality, **kwargs)
                written += int(res.get("upsert_count", 0)) if isinstance(res, Mapping) else len(chunk)
        return written

    def existing_ids(self, ids: Iterable[int]) -> set[int]:
        """The subset of ``ids`` present in the collection."""
        return {int(r["id"]) for r in self.get(ids, output_fields=["id"])}

    def get(self, ids: Iterable[int], output_fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Rows by primary key (missing ids are skipped), in requests sized like :meth:`upsert`'s.

        Args:
            ids: primary keys.
            output_fields: fields to return (default: the scalar fields, no vectors).

        Returns:
            One dict per found row.
        """
        ids = [int(i) for i in ids]
        fields = list(output_fields) if output_fields is not None else list(SCALAR_OUTPUT_FIELDS)
        # Vectors make answers as large as writes: the same row budget keeps them under Milvus' limit.
        step = min(_ID_CHUNK, self.max_rows_per_request)
        return [
            dict(r)
            for start in range(0, len(ids), step)
            for r in self._client.get(self._name, ids=ids[start : start + step], output_fields=fields)
        ]

    def query(
        self,
        filter: str = "",  # noqa: A002  (mirrors MilvusClient)
        *,
        filter_params: Mapping[str, Any] | None = None,
        output_fields: Sequence[str] | None = None,
        limit: int | None = None,
        timeout: float | None = None,
        consistency_level: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows matching a filter (``MilvusClient.query`` with :func:`bind` applied).

        Args:
            filter: Milvus boolean expression with ``{name}`` placeholders (``""``: all rows; then
                give ``limit``).
            filter_params: placeholder values.
            output_fields: fields of each row (default: the scalar fields, no vectors).
            limit: at most this many rows.
            timeout: seconds before the call fails (``MilvusUnavailableError``).
            consistency_level: override of the collection's level (``Strong``, ``Bounded``, ...).

        Raises:
            FilterError: the filter is malformed or its parameters are invalid.
        """
        expr, params = self.bind_filter(filter, filter_params)
        options = call_options(limit=limit, timeout=timeout, consistency_level=consistency_level)
        fields = list(output_fields) if output_fields is not None else list(SCALAR_OUTPUT_FIELDS)
        with filter_errors(filter):
            res = self._client.query(self._name, output_fields=fields, **filter_kwargs(expr, params), **options)
        return [dict(r) for r in res]

    def count(self, filter: str = "", filter_params: Mapping[str, Any] | None = None) -> int:  # noqa: A002
        """Number of rows (matching ``filter`` when given).

        Raises:
            FilterError: the filter is malformed or its parameters are invalid.
        """
        expr, params = self.bind_filter(filter, filter_params)
        return self._count_bound(expr, params, user_filter=filter)

    def _count_bound(self, expr: str, params: dict[str, Any], *, user_filter: str | None) -> int:
        with filter_errors(user_filter):
            res = self._client.query(self._name, output_fields=["count(*)"], **filter_kwargs(expr, params))
        return int(res[0]["count(*)"]) if res else 0

    def delete(
        self,
        ids: Iterable[int] | None = None,
        filter: str | None = None,  # noqa: A002
        filter_params: Mapping[str, Any] | None = None,
    ) -> int:
        """Delete rows by primary key and/or filter (both given: rows matching both).

        Returns:
            The number of rows deleted (counted before deleting; Milvus itself does not report it
            reliably).

        Raises:
            FilterError: neither ids nor filter given, or the filter is invalid.
        """
        if ids is None and not (filter and filter.strip()):
            raise FilterError("delete needs ids or a filter (refusing to delete everything implicitly)")
        bind(filter, filter_params, templating=True)  # the user's part alone: no reserved names
        expr, params = filter or "", dict(filter_params or {})
        if ids is not None:
            id_list = [int(i) for i in ids]
            if not id_list:
                return 0
            expr, params = restrict_to_ids(expr, params, id_list)
        expr, params = self.bind_filter(expr, params, reserved_ok=True)
        n = self._count_bound(expr, params, user_filter=filter)
        if n:
            self._rows_cache = None
            with filter_errors(filter):
                self._client.delete(self._name, **filter_kwargs(expr, params))
        return n

    def flush(self) -> None:
        """Seal growing segments (not needed for read-your-writes with Strong consistency).

        Sealing starts the real index build, so a build that already failed is caught here
        (:meth:`check_index`, no waiting).

        Raises:
            ProfileError: the ``vec_low`` index failed to build and the profile has no fallback.
        """
        self._client.flush(self._name)
        self.check_index()

    def check_index(self, *, wait_s: float = 0.0, fallback: bool = True) -> str:
        """The build state of the ``vec_low`` index; a failed build falls back to the profile's fallback.

        Milvus builds an index when segments are sealed, not at :meth:`create`: a server can accept a
        GPU index on an empty collection (the profile probe, the create) and fail to build it once
        data arrives. Then the ``vec_low`` index is rebuilt with the fallback profile (``gpu`` ->
        ``cpu``, same ``nlist``), and the collection's recorded profile says so.

        Args:
            wait_s: while the build is in progress, poll up to this many seconds.
            fallback: rebuild with the fallback profile when the build failed (else raise).

        Returns:
            Milvus' state of the ``vec_low`` index after any fallback (``"Finished"``,
            ``"InProgress"``, ...).

        Raises:
            ProfileError: the build failed and there is no fallback (or ``fallback`` is false).
        """
        state, profile = check_low_index(
            self._client,
            self._name,
            self._profile,
            lite=self._is_lite,
            rows=self.approx_num_rows,
            wait_s=wait_s,
            fallback=fallback,
        )
        if profile is not self._profile:
            self._profile = profile
            self._properties.update(profile_properties(profile))
        return state

    def drop(self) -> None:
        """Drop the collection and all its rows."""
        self._client.drop_collection(self._name)

    def describe(self) -> dict[str, Any]:
        """Name, dims, profile, fingerprint, row count, indexes and raw Milvus description."""
        indexes = {i: dict(self._client.describe_index(self._name, i)) for i in self._client.list_indexes(self._name)}
        return {
            "name": self._name,
            "low_dim": self._low_dim,
            "high_dim": self._high_dim,
            "profile": self._profile.tag,
            "low_index": {"index_type": self._profile.low.index_type, **self._profile.low.build_params},
            "fingerprint": self._fingerprint,
            "schema_version": int(self._properties.get(PROP_SCHEMA_VERSION, schema_version())),
            "is_lite": self._is_lite,
            "count": self.count(),
            "properties": dict(self._properties),
            "indexes": indexes,
            "milvus": dict(self._client.describe_collection(self._name)),
        }

    # ------------------------------------------------------------------ search (in hivlp_milvus.search)

    # The funnel's functions take the collection first, so they are this class's methods as they
    # stand (one signature and docstring, never a copy to keep in step): ``col.hierarchical_search(q,
    # limit=10)`` is ``search.hierarchical_search(col, q, limit=10)``. An unknown keyword is a
    # ``TypeError``, never silently ignored.
    hierarchical_search = funnel.hierarchical_search
    search = funnel.search
