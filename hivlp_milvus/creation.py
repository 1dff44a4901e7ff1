"""The factories of :class:`~hivlp_milvus.collection.HierarchicalCollection`: ``create`` and ``open``.

``create`` makes the collection in Milvus (schema, indexes, one partition per modality, the
properties that record the model, dims and profile) and loads it; ``open`` checks an existing one
against the schema (:func:`~hivlp_milvus.schema.check_description`) and reads back what ``create``
recorded. Two ways a create fails are not errors of the caller: another process created the same
collection a moment earlier (two ingests starting on a new collection at once; it is then opened),
and a server that accepted the ``auto`` profile's GPU probe refuses the real index (the profile's
fallback is then used).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from hivlp_milvus.connection import DEFAULT_URI, ConnectionOptions, connection_options, guarded, is_lite
from hivlp_milvus.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    ConfigError,
    DimensionMismatchError,
    MilvusError,
    MilvusUnavailableError,
    ModelMismatchError,
    ProfileError,
)
from hivlp_milvus.ids import MODALITIES
from hivlp_milvus.profiles import IndexProfile, fallback_profile, load_profile, resolve_profile
from hivlp_milvus.schema import (
    PROP_FINGERPRINT,
    PROP_HIGH_DIM,
    PROP_LOW_DIM,
    PROP_LOW_INDEX,
    PROP_PROFILE,
    PROP_SCHEMA_VERSION,
    build_schema,
    check_description,
    check_dim,
    profile_properties,
    schema_version,
)

logger = logging.getLogger(__name__)

# How long open() waits for the partitions of a collection another process is creating right now.
PARTIAL_CREATE_WAIT_S = 10.0


T = TypeVar("T")


def model_dims(model: Any) -> tuple[int, int]:
    """``(low_dim, high_dim)`` of a model's config.

    Raises:
        ConfigError: the model has no ``config.low_dim`` / ``config.high_dim``.
    """
    cfg = getattr(model, "config", None)
    try:
        return int(cfg.low_dim), int(cfg.high_dim)
    except AttributeError as exc:
        raise ConfigError(f"model {type(model).__name__} has no config.low_dim / config.high_dim") from exc


def model_fingerprint(model: Any) -> str:
    """A model's fingerprint, ``""`` when it has none."""
    return str(getattr(model, "fingerprint", "") or "")


def _client_for(client: Any, uri: str, token: str | None, connection: ConnectionOptions | None) -> Any:
    """The client to use: the given one, or one connected from ``connection`` or ``uri``/``token``."""
    if client is None:
        return connection_options(connection, uri=uri, token=token).connect()
    if connection is not None:
        raise ConfigError("give client= or connection=, not both")
    return client


def create_collection(
    cls: type[T],
    name: str,
    *,
    client: Any = None,
    uri: str = DEFAULT_URI,
    token: str | None = None,
    connection: ConnectionOptions | None = None,
    low_dim: int | None = None,
    high_dim: int | None = None,
    model: Any = None,
    profile: str | IndexProfile = "auto",
    exist_ok: bool = False,
    description: str = "",
    expected_rows: int | None = None,
    consistency_level: str = "Strong",
    num_shards: int | None = None,
    properties: Mapping[str, str] | None = None,
) -> T:
    """Create a collection (schema, both indexes, properties) and load it.

    Safe to call from several processes at once with ``exist_ok=True`` (e.g. parallel ingest
    jobs into a new collection): one creates it, the others open it.

    Args:
        name: collection name.
        client: a connected ``MilvusClient`` (else one is made from ``connection`` or ``uri``/``token``).
        uri: ``./hivlp.db`` (Milvus Lite) or ``http(s)://host:port`` (a server).
        token: server token (``"user:password"`` or an API key).
        connection: where and how to connect (URI, token, TLS files, server name) in one value;
            give it instead of ``uri``/``token``.
        low_dim: dim of ``vec_low`` (taken from ``model`` when given).
        high_dim: dim of ``vec_high`` (taken from ``model`` when given).
        model: the HiVLP model whose vectors will be stored; its dims and fingerprint are recorded.
        profile: ``"auto"``, ``"gpu"``, ``"cpu"``, ``"lite"``, ``"name:VARIANT"`` or an IndexProfile.
        exist_ok: open the collection if it already exists (it must match the dims/model).
        description: collection description.
        expected_rows: expected size, used to size IVF ``nlist`` (~4*sqrt(N)); default 100k.
        consistency_level: collection default; ``Strong`` gives read-your-writes.
        num_shards: shards of the collection (servers; ``None`` = Milvus' default).
        properties: extra collection properties to record (``hivlp.*`` ones are set here).

    Returns:
        The loaded collection.

    Raises:
        CollectionExistsError: it exists and ``exist_ok`` is false.
        DimensionMismatchError: dims missing/invalid, or different from the model's.
        ModelMismatchError: ``exist_ok`` and the existing collection has other dims/fingerprint.
        ProfileError: unknown profile, or the server refuses an explicitly requested one.
        ConfigError: ``connection`` given together with ``client`` or ``uri``/``token``.
        MilvusError: (a subclass) Milvus is unreachable, refuses the token, or rejects the request.
    """
    if model is not None:
        m_low, m_high = model_dims(model)
        for label, given, from_model in (("low_dim", low_dim, m_low), ("high_dim", high_dim, m_high)):
            if given is not None and int(given) != from_model:
                raise DimensionMismatchError(f"{label}={given} but the model has {label}={from_model}")
        low_dim, high_dim = m_low, m_high
    if low_dim is None or high_dim is None:
        raise DimensionMismatchError("give low_dim and high_dim, or a model to take them from")
    low_dim, high_dim = check_dim("low_dim", low_dim), check_dim("high_dim", high_dim)
    client = guarded(_client_for(client, uri, token, connection), f" on collection {name!r}")

    if client.has_collection(name):
        return _open_existing(cls, name, client, model, low_dim, high_dim, exist_ok=exist_ok)

    resolved = resolve_profile(profile, client.raw).with_expected_rows(expected_rows)
    create = functools.partial(
        _create,
        client,
        name,
        low_dim=low_dim,
        high_dim=high_dim,
        fingerprint=model_fingerprint(model) if model is not None else "",
        description=description,
        consistency_level=consistency_level,
        properties=dict(properties or {}),
        num_shards=num_shards,
    )
    try:
        _create_with_fallback(client, name, create, resolved, auto=profile == "auto", expected_rows=expected_rows)
    except _CreatedConcurrently as exc:
        # Another process created it between our check and our create (two ingests starting
        # on a new collection at once): the race is lost, not an error.
        logger.info("collection %r was created concurrently (%s); opening it", name, exc.__cause__)
        return _open_existing(cls, name, client, model, low_dim, high_dim, exist_ok=exist_ok)
    return open_collection(cls, name, client=client.raw, model=model)


def _open_existing(
    cls: type[T], name: str, client: Any, model: Any, low_dim: int, high_dim: int, *, exist_ok: bool
) -> T:
    """``create`` on a collection that exists: open it, or refuse without ``exist_ok``."""
    if not exist_ok:
        raise CollectionExistsError(
            f"collection {name!r} already exists; open it with HierarchicalCollection.open({name!r}), "
            "pass exist_ok=True, or drop it first"
        )
    # A concurrent creator may not have added the partitions yet: open() waits for them.
    col = open_collection(cls, name, client=client.raw, model=model)
    diffs = [
        f"{label}: collection {mine}, given {theirs}"
        for label, mine, theirs in (("low_dim", col.low_dim, low_dim), ("high_dim", col.high_dim, high_dim))
        if mine != theirs
    ]
    if diffs:
        raise ModelMismatchError(
            f"collection {name!r} does not match: {'; '.join(diffs)}. Re-ingest into a new collection "
            "or use the checkpoint the collection was built with"
        )
    return col


def open_collection(
    cls: type[T],
    name: str,
    *,
    client: Any = None,
    uri: str = DEFAULT_URI,
    token: str | None = None,
    model: Any = None,
    connection: ConnectionOptions | None = None,
) -> T:
    """Open an existing hivlp collection and load it.

    Args:
        name: collection name.
        client: a connected ``MilvusClient`` (else one is made from ``uri``/``token``).
        uri: ``./hivlp.db`` (Milvus Lite) or ``http(s)://host:port`` (a server).
        token: server token.
        model: the model used to encode str/image queries; checked against the recorded dims
            and fingerprint.
        connection: where and how to connect (URI, token, TLS files, server name) in one value;
            give it instead of ``uri``/``token``.

    Returns:
        The loaded collection.

    Raises:
        CollectionNotFoundError: no such collection (the message lists the existing ones).
        SchemaMismatchError: the collection was not created by hivlp_milvus (or by another
            schema version).
        ModelMismatchError: ``model`` does not match the recorded dims/fingerprint.
        ConfigError: ``connection`` given together with ``client`` or ``uri``/``token``.
        MilvusError: (a subclass) Milvus is unreachable, or refuses the token.
    """
    client = guarded(_client_for(client, uri, token, connection), f" on collection {name!r}")
    if not client.has_collection(name):
        existing = sorted(client.list_collections())
        raise CollectionNotFoundError(
            f"collection {name!r} does not exist in this Milvus; existing collections: {existing or 'none'}. "
            "Create it with HierarchicalCollection.create(...) or hivlp_milvus.ingest(...)"
        )
    low_dim, high_dim, props = check_description(
        name, client.describe_collection(name), lambda: _partitions_when_complete(client, name)
    )
    col = cls(
        name,
        client.raw,
        low_dim=low_dim,
        high_dim=high_dim,
        profile=_recorded_profile(props),
        fingerprint=props.get(PROP_FINGERPRINT, ""),
        model=model,
        properties=props,
    )
    from pymilvus.client.types import LoadState

    if client.get_load_state(name).get("state") != LoadState.Loaded:
        client.load_collection(name)
    return col


class _CreatedConcurrently(Exception):
    """Creating the collection failed because another process had just created it."""


def _create_with_fallback(
    client: Any,
    name: str,
    create: Callable[[IndexProfile], None],
    profile: IndexProfile,
    *,
    auto: bool,
    expected_rows: int | None,
) -> None:
    """``create(profile)``, or ``create(fallback)`` when ``auto`` and the server refuses ``profile``'s index.

    Args:
        client: a guarded client.
        create: makes collection ``name`` with the given profile (:func:`_create` with its other arguments).

    Raises:
        _CreatedConcurrently: another process created it between the caller's check and this create.
        ProfileError: the server refused an explicitly requested ``gpu`` profile.
        MilvusError: (a subclass) Milvus is unreachable or refuses the request.
    """
    try:
        create(profile)
    except MilvusUnavailableError:
        raise  # an outage is not a refusal of the profile
    except MilvusError as exc:
        # Leave nothing half-made behind: a retry with another profile must find no collection.
        if client.has_collection(name):
            client.drop_collection(name)
        if not (auto and profile.fallback):
            if profile.name == "gpu":
                raise ProfileError(
                    f"Milvus refused the {profile.low.index_type} index of profile {profile.tag}: {exc}. "
                    "Use a GPU Milvus image, or profile='cpu' / 'auto'"
                ) from exc
            raise
        # The server accepted the probe but refused the real index: fall back like resolve_profile.
        fallback = fallback_profile(profile, expected_rows)
        logger.warning("Milvus refused profile %s (%s); falling back to %s", profile.tag, exc, fallback.tag)
        create(fallback)


def _create(
    client: Any,
    name: str,
    profile: IndexProfile,
    *,
    low_dim: int,
    high_dim: int,
    fingerprint: str,
    description: str,
    consistency_level: str,
    properties: dict[str, str],
    num_shards: int | None,
) -> None:
    lite = is_lite(client)
    schema = build_schema(low_dim, high_dim, description=description, mmap_high=profile.high.mmap and not lite)
    recorded = {
        PROP_SCHEMA_VERSION: str(schema_version()),
        PROP_FINGERPRINT: fingerprint,
        PROP_LOW_DIM: str(low_dim),
        PROP_HIGH_DIM: str(high_dim),
        **profile_properties(profile),
        **properties,
    }
    shards = {} if num_shards is None else {"num_shards": int(num_shards)}
    # Create, index, partition, load: what create_collection(index_params=...) does in one
    # call, in steps so that a failed create (a lost race) is told apart from a refused index
    # (the GPU profile on a CPU server, which falls back).
    try:
        client.create_collection(
            name, schema=schema, consistency_level=consistency_level, properties=recorded, **shards
        )
    except MilvusError as exc:
        if client.has_collection(name):
            raise _CreatedConcurrently(name) from exc
        raise
    client.create_index(name, profile.index_params(lite=lite))
    # One partition per modality: Milvus builds ANN indexes per segment and segments belong
    # to a partition, so each modality gets its own IVF cells. With one shared index the
    # modality gap (image and text vectors occupy different regions) puts a text query's
    # nearest cells among *texts*, and a "modality == image" filter then empties the result.
    for modality in MODALITIES:
        client.create_partition(name, modality)
    client.load_collection(name)


def _partitions_when_complete(client: Any, name: str, wait_s: float = PARTIAL_CREATE_WAIT_S) -> set[str]:
    """The collection's partitions, waiting briefly while a concurrent create is adding ours.

    A create makes the collection first and its partitions a moment later, so another process
    opening it in between (two ingests starting at once) must wait, not call it foreign.
    """
    deadline = time.monotonic() + wait_s
    while True:
        partitions = set(client.list_partitions(name))
        if set(MODALITIES) <= partitions or time.monotonic() >= deadline:
            return partitions
        time.sleep(0.2)


def _recorded_profile(properties: Mapping[str, str]) -> IndexProfile:
    """The index profile a collection records, with the ``vec_low`` build params it was really built with."""
    try:
        built = json.loads(properties.get(PROP_LOW_INDEX) or "{}") or {}
    except json.JSONDecodeError:
        built = {}
    profile = load_profile(properties.get(PROP_PROFILE) or "lite")
    return profile.with_low_build_params(built).with_expected_rows(None)
