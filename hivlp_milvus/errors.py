"""One exception base class for the whole library, with one subclass per kind of mistake.

Every message says what was wrong and what to do about it. Subclasses also inherit the matching
builtin (``ValueError``, ``LookupError``, ``ConnectionError``) so generic handlers keep working.
"""

from __future__ import annotations


class HiVLPError(Exception):
    """Base class of every error raised on purpose by hivlp_milvus."""


class ConfigError(HiVLPError, ValueError):
    """A model, training, profile or CLI configuration is invalid."""


class CheckpointError(HiVLPError):
    """A checkpoint directory is missing, incomplete or not a HiVLP checkpoint."""


class DataError(HiVLPError, ValueError):
    """A data source cannot be read at all (unknown format, missing manifest, wrong columns)."""


class DimensionMismatchError(HiVLPError, ValueError):
    """Vectors do not have the dimensions the model or collection expects."""


class CollectionNotFoundError(HiVLPError, LookupError):
    """The named collection does not exist in this Milvus."""


class CollectionExistsError(HiVLPError):
    """The collection already exists and ``exist_ok`` was not given."""


class SchemaMismatchError(HiVLPError):
    """The collection exists but was not created by hivlp_milvus, or with another schema version."""


class ModelMismatchError(HiVLPError):
    """The model's dims or fingerprint differ from the ones recorded in the collection."""


class FilterError(HiVLPError, ValueError):
    """A search/delete filter is malformed or uses unknown fields."""


class SearchLimitError(HiVLPError, ValueError):
    """``limit`` / ``coarse_limit`` are out of range for the index profile."""


class QueryError(HiVLPError, ValueError):
    """A query is of a type that cannot be searched (or needs a model that was not given)."""


class ProfileError(HiVLPError, ValueError):
    """An index profile is unknown or not supported by this Milvus."""


class MilvusUnavailableError(HiVLPError, ConnectionError):
    """Milvus could not be reached after bounded retries."""


class BadRecordError(HiVLPError, ValueError):
    """One record cannot be used (undecodable image, empty caption); ingest skips it and reports why."""
