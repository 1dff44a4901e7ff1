"""Request and response bodies of the HTTP API (pydantic; they are also the OpenAPI schema at /docs).

Every request model forbids unknown fields, so a typo (``"limt": 5``) is a 422 naming the field
instead of a silently ignored option. Sizes that depend on the deployment (image bytes, body
bytes) are checked by the ingress against its settings and answered with 413, not here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import UploadFile
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Json,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    model_validator,
)
from typing_extensions import TypeAliasType

# API-level caps. The index profile may be stricter (e.g. GPU_IVF_FLAT's top-k cap of 256); the
# collection checks that and the ingress answers 422 with its message.
MAX_LIMIT = 100
MAX_COARSE_LIMIT = 16384  # Milvus' own cap on topk
# The fusion stage reads every candidate's content and runs a cross-attention pass per pair (~4 ms
# per candidate on one CPU core with the tiny model): 200 bounds one search at about a second there.
MAX_FUSION_LIMIT = 200
MAX_TEXT_CHARS = 1000
MAX_FILTER_CONDITIONS = 16
MAX_INGEST_RECORDS = 64
MAX_CAPTIONS_PER_RECORD = 16
MAX_KEY_CHARS = 512

# "Not blank": at least one character that no regex dialect involved calls white space. pydantic
# (Rust), the OpenAPI schema (ECMA) and Python's str.strip() disagree on a few code points; listing
# those keeps the schema and the app in agreement and every accepted text non-blank for the encoder.
NOT_BLANK = r"[^\s\x1c-\x1f\x85\ufeff]"
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS, pattern=NOT_BLANK)]
# Milvus stores attributes in a JSON field that refuses integers beyond INT64 (a 500 before) and
# non-finite floats. A larger integer is still a JSON number, so it is stored as a float (a strict
# float takes ints): what the schema's "integer within INT64, or number" promises.
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]
AttributeValue = TypeAliasType(
    "AttributeValue",
    "StrictStr | StrictBool | Int64 | FiniteFloat | None | list[AttributeValue] | dict[str, AttributeValue]",
)

# What the ingress decodes as a base64 image, as a pattern for the OpenAPI document: an optional
# data: URL prefix, then canonical base64 (padding only at the end, only as much as needed), ASCII
# white space anywhere (the line-wrapped output of `base64`). The ingress checks the same rule and
# answers 400 invalid_base64; the pattern sits in the schema only, so that status stays 400 (not
# the validation 422) and an ingest record with a bad image is still reported per record.
_WS = "[ \\t\\r\\n]*"
_B64 = f"(?:[A-Za-z0-9+/]{_WS})"
BASE64_PATTERN = (
    f"^{_WS}(?:[dD][aA][tT][aA]:[A-Za-z0-9_.+/-]*;[bB][aA][sS][eE]64,{_WS})?"
    f"(?:{_B64}{{4}})*(?:{_B64}{{2}}={_WS}={_WS}|{_B64}{{3}}={_WS})?$"
)


def _base64_image() -> Any:
    """The ``image`` field of a JSON request (a fresh FieldInfo per model)."""
    return Field(
        None,
        min_length=1,
        description="a base64 image (JPEG, PNG, ...; a data: URL is accepted)",
        json_schema_extra={"pattern": BASE64_PATTERN, "contentEncoding": "base64"},
    )


Modality = Literal["image", "text", "all"]
FilterOp = Literal["==", "!=", "<", "<=", ">", ">=", "in", "not in", "like"]
# Strict scalars: a JSON ``true`` must not become the integer 1 in a filter.
Scalar = StrictStr | StrictBool | StrictInt | StrictFloat


def _lone_surrogate(value: Any) -> str | None:
    """The first string (or key) in a parsed JSON value that is not valid Unicode, else ``None``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value
        return None
    if isinstance(value, dict):
        return next((bad for item in value.items() for bad in map(_lone_surrogate, item) if bad is not None), None)
    if isinstance(value, list):
        return next((bad for bad in map(_lone_surrogate, value) if bad is not None), None)
    return None


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        # JSON may escape a lone UTF-16 surrogate ("\ud800"); Python's parser keeps it, and Milvus (and
        # the row ids, hashed from UTF-8) cannot store it: refuse it here, not with a 500 there.
        bad = _lone_surrogate(data)
        if bad is not None:
            raise ValueError(f"strings must be valid Unicode; {bad[:40]!r} holds a lone surrogate")
        return data


class FilterCondition(_Request):
    """One condition of a structured filter; conditions are AND-ed.

    ``field`` is ``key``, ``modality``, ``reference`` or an attribute: ``attributes.color`` or
    ``attributes["color"]``. Values travel as filter parameters, never pasted into an expression.
    """

    field: str = Field(min_length=1, max_length=200, examples=["attributes.n_objects"])
    op: FilterOp = Field(examples=["=="])
    value: Scalar | list[Scalar] = Field(examples=[2])


def _one_of_text_image(model: Any) -> Any:
    given = [name for name in ("text", "image") if getattr(model, name) is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of 'text' or 'image' (base64)")
    return model


def _given(name: str) -> dict[str, Any]:
    # "present and not null": a null counts as absent in the app, so it must in the schema too.
    return {"required": [name], "properties": {name: {"type": "string"}}}


#: The model validator's rule in the OpenAPI schema, so a client generated from it cannot send both.
ONE_OF_TEXT_IMAGE = {"oneOf": [_given("text"), _given("image")]}


FUSION_LIMIT_DOC = (
    "third stage: re-score the fine stage's top fusion_limit (>= limit) with the model's fusion block and "
    "return the first limit in fusion order; needs a model with a fusion block (else 422 no_fusion_block). "
    "Unset: two stages only. coarse_limit, when given, must be >= fusion_limit"
)


def _check_limits(model: Any) -> Any:
    """limit <= fusion_limit (when given) <= coarse_limit (when given): each stage narrows the previous one."""
    stages = [("limit", model.limit), ("fusion_limit", model.fusion_limit), ("coarse_limit", model.coarse_limit)]
    given = [(name, value) for name, value in stages if value is not None]
    for (small, low), (large, high) in zip(given, given[1:], strict=False):
        if high < low:
            raise ValueError(f"{large} ({high}) must be >= {small} ({low})")
    return model


class SearchRequest(_Request):
    """``POST /search``: a text or a base64 image, searched coarse -> fine (-> fusion with ``fusion_limit``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=ONE_OF_TEXT_IMAGE)

    text: Text | None = Field(None, description="a text query", examples=["a red circle"])
    image: str | None = _base64_image()
    limit: int = Field(10, ge=1, le=MAX_LIMIT, description="hits to return")
    coarse_limit: int | None = Field(
        None,
        ge=1,
        le=MAX_COARSE_LIMIT,
        description=(
            "coarse shortlist size; default sized from the collection by the index profile's recall curve "
            "(docs/search.md)"
        ),
    )
    filter: list[FilterCondition] = Field(
        default_factory=list, max_length=MAX_FILTER_CONDITIONS, description="conditions, AND-ed"
    )
    modality: Modality | None = Field(
        None, description="what to search: a text query searches images, an image query captions by default"
    )

    fusion_limit: int | None = Field(None, ge=1, le=MAX_FUSION_LIMIT, description=FUSION_LIMIT_DOC, examples=[20])

    @model_validator(mode="after")
    def _check(self) -> SearchRequest:
        _one_of_text_image(self)
        return _check_limits(self)


class ImageSearchForm(_Request):
    """The multipart form of ``POST /search/image``: the image ``file`` and the options of ``POST /search``.

    ``filter`` is the JSON text of a condition list, as in ``POST /search``.
    """

    file: UploadFile = Field(description="the query image (JPEG, PNG, ...)")
    limit: int = Field(10, ge=1, le=MAX_LIMIT, description="hits to return")
    # A form field is absent or a string: "null" cannot be sent, so the schema does not offer it.
    coarse_limit: Annotated[
        int | None, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_COARSE_LIMIT})
    ] = Field(None, ge=1, le=MAX_COARSE_LIMIT, description="coarse shortlist size")
    modality: Annotated[Modality | None, WithJsonSchema({"type": "string", "enum": ["image", "text", "all"]})] = Field(
        None, description="what to search; captions by default"
    )
    filter: Json[Annotated[list[FilterCondition], Field(max_length=MAX_FILTER_CONDITIONS)]] = Field(
        default_factory=list, description="JSON list of {field, op, value}, AND-ed"
    )

    fusion_limit: Annotated[
        int | None, WithJsonSchema({"type": "integer", "minimum": 1, "maximum": MAX_FUSION_LIMIT})
    ] = Field(None, ge=1, le=MAX_FUSION_LIMIT, description=FUSION_LIMIT_DOC)

    @model_validator(mode="after")
    def _check(self) -> ImageSearchForm:
        return _check_limits(self)


class EncodeRequest(_Request):
    """``POST /encode``: a text or a base64 image to embed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=ONE_OF_TEXT_IMAGE)

    text: Text | None = Field(None, examples=["a red circle"])
    image: str | None = _base64_image()

    @model_validator(mode="after")
    def _check(self) -> EncodeRequest:
        return _one_of_text_image(self)


class IngestRecord(_Request):
    """One image and/or its captions; like :class:`hivlp_milvus.data.Record`.

    Rows get the same keys as library ingest: the image row ``key``, caption *i* ``key#i``, so
    re-sending a record overwrites its rows.
    """

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [_given("image"), {"required": ["captions"], "properties": {"captions": {"minItems": 1}}}]
        },
    )

    key: str = Field(min_length=1, max_length=MAX_KEY_CHARS, examples=["photo-0001"])
    image: str | None = Field(None, min_length=1, description="a base64 image")
    captions: list[Text] = Field(default_factory=list, max_length=MAX_CAPTIONS_PER_RECORD)
    attributes: dict[str, AttributeValue] = Field(
        default_factory=dict, description="JSON attributes (integers within INT64, finite numbers)"
    )

    @model_validator(mode="after")
    def _check(self) -> IngestRecord:
        if self.image is None and not self.captions:
            raise ValueError("a record needs an 'image' or at least one caption")
        return self


class IngestRequest(_Request):
    """``POST /ingest``: a small batch of records (use the CLI or the library for bulk loads)."""

    records: list[IngestRecord] = Field(min_length=1, max_length=MAX_INGEST_RECORDS)


# -- responses -----------------------------------------------------------------------------------


class Hit(BaseModel):
    """One search result."""

    id: str = Field(description="the Milvus primary key, as a string (it does not fit a JS number)")
    key: str
    modality: str
    reference: str = Field(description="the image uri or the caption text")
    score: float = Field(description="fine score: inner product of the high-dim vectors")
    coarse_score: float | None = Field(description="coarse score: inner product of the low-dim vectors")
    attributes: dict[str, Any]
    media_url: str | None = Field(description="thumbnail URL (relative) for image rows with a file reference")
    fusion_score: float | None = Field(
        None,
        description="fusion stage score (the ranking when fusion_limit was given); null without a fusion stage, "
        "or when this candidate could not be scored (it keeps its fine position; see fusion_error)",
    )
    fusion_error: str | None = Field(
        None, description="why the fusion stage could not score this candidate (e.g. its image cannot be read)"
    )


class Timings(BaseModel):
    """Milliseconds per stage, as measured by the ingress (encode, fusion) and the searcher (coarse, fine)."""

    encode_ms: float = Field(description="query encoding, including the wait for a batch")
    coarse_ms: float = Field(description="ANN search on vec_low")
    fine_ms: float = Field(description="exact re-rank on vec_high")
    search_ms: float = Field(description="the searcher call, round trip")
    total_ms: float = Field(description="the whole request inside the ingress")
    batch_size: int = Field(description="size of the encoder batch this query was part of")
    fusion_ms: float | None = Field(
        None, description="the fusion stage (FusionScorer round trip); null without fusion_limit"
    )
    fusion_batch_size: int | None = Field(
        None, description="searches in the fusion batch this one was part of; null without fusion_limit"
    )


class SearchResponse(BaseModel):
    query: Literal["text", "image"]
    modality: Modality
    filter: str = Field(description="the Milvus expression built from the conditions ('' = none)")
    plan: Literal["exact", "hierarchical", "exact+fusion", "hierarchical+fusion"] = Field(
        description="what answered: one exact search on vec_high, or the coarse -> fine funnel (docs/search.md); "
        "'+fusion' when the fusion stage re-ranked"
    )
    coarse_limit: int | None = Field(None, description="the shortlist the funnel used or would have used")
    hits: list[Hit]
    timings: Timings


class EncodeResponse(BaseModel):
    modality: Literal["text", "image"]
    low: list[float]
    high: list[float]
    low_dim: int
    high_dim: int
    batch_size: int = Field(description="size of the encoder batch this item was part of")
    encode_ms: float


class FailedRecord(BaseModel):
    key: str
    reason: str


class IngestResponse(BaseModel):
    collection: str
    inserted: int
    updated: int
    rows_written: int
    failed: list[FailedRecord]
    seconds: float


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"]
    milvus: str = Field(description="'ok' or why Milvus is not reachable")
    collection: str
    count: int | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body."""

    error: str = Field(description="a stable code, e.g. invalid_json, image_too_large, milvus_unavailable")
    message: str
    details: list[dict[str, Any]] | None = None
