"""``IngestOptions``: every knob of one ingest run in one frozen value, shared by both drivers.

The in-process driver and the Ray Data driver take the same value, so an option added here
reaches both paths (before, the Ray path silently dropped ``expected_rows`` and ``pipeline``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hivlp_milvus.connection import ConnectionOptions
from hivlp_milvus.errors import ConfigError


class IngestOptions(BaseModel):
    """How to run :func:`hivlp_milvus.ingest`; the fields are its keyword arguments (documented there).

    Everything but the data, the model and an open collection; ``uri`` / ``token`` are in ``connection``.
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
