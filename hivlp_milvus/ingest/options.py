"""``IngestOptions``: every knob of one ingest run in one frozen value, shared by both drivers.

The in-process driver and the Ray Data driver take the same value, so an option added here
reaches both paths (before, the Ray path silently dropped ``expected_rows`` and ``pipeline``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivlp_milvus.connection import DEFAULT_URI, ConnectionOptions
from hivlp_milvus.errors import ConfigError


class IngestOptions(BaseModel):
    """How to run :func:`hivlp_milvus.ingest` (everything but the data, the model and an open collection).

    Attributes:
        collection_name: the collection to open or create when no open collection is given.
        connection: where Milvus is and how to reach it (uri, token, TLS).
        batch_size: items (images or captions) encoded per forward pass.
        write_batch_rows: rows per upsert request; ``None`` = the collection's
            ``max_rows_per_request`` (sized under Milvus' 64 MB request limit).
        skip_existing: skip rows already in the collection before encoding them (fast resume).
        distributed: run the Ray Data driver even for a non-Ray source.
        progress: show a tqdm progress bar (rows).
        create: create the collection when it does not exist.
        pipeline: write on a background thread while the next batch is encoded.
        expected_rows: rows the collection will hold, to size the ANN index of a collection this
            run creates; ``None`` = estimated from the source's length.
        num_workers: Ray Data encoder actors at most; ``None`` = sized from the free resources.
        profile: index profile of a collection this run creates (``auto``, ``lite``, ``cpu``,
            ``gpu``, ``name:VARIANT``); an existing collection keeps its own.
        device: where the model encodes: ``auto`` (CUDA when usable), ``cpu``, ``cuda`` or ``cuda:N``.
        image_root: directory that relative image paths of a Karpathy file or a manifest are
            resolved against (default: the file's own directory).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    collection_name: str = Field("hivlp", min_length=1)
    connection: ConnectionOptions = ConnectionOptions()
    batch_size: int = Field(64, ge=1)
    write_batch_rows: int | None = Field(None, ge=1)
    skip_existing: bool = False
    distributed: bool = False
    progress: bool = True
    create: bool = True
    pipeline: bool = True
    expected_rows: int | None = Field(None, ge=0)
    num_workers: int | None = Field(None, ge=1)
    profile: str = "auto"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    image_root: str | None = None

    @classmethod
    def build(cls, **values: Any) -> IngestOptions:
        """Validate ``values`` into options; a bad value is a :class:`ConfigError` naming the option.

        Raises:
            ConfigError: an unknown option, or a value out of range (e.g. ``batch_size=0``).
        """
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'options'}: {err['msg']} (got {err.get('input')!r})"
                for err in exc.errors()
            )
            raise ConfigError(f"invalid ingest options: {problems}") from None


def connection_options(
    connection: ConnectionOptions | None, *, uri: str = DEFAULT_URI, token: str | None = None
) -> ConnectionOptions:
    """One :class:`ConnectionOptions` from ``connection`` or the older ``uri=`` / ``token=`` arguments.

    Raises:
        ConfigError: both ``connection`` and a different ``uri`` or a ``token`` were given (which
            one was meant is not knowable).
    """
    if connection is None:
        return ConnectionOptions(uri=str(uri), token=token)
    if token is not None or (str(uri) != DEFAULT_URI and str(uri) != connection.uri):
        raise ConfigError("give either connection=ConnectionOptions(...) or uri=/token=, not both")
    return connection
