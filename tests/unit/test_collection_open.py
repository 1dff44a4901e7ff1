"""``HierarchicalCollection.open()`` refuses collections it cannot use, each with a typed error that says why.

Each case is a collection made directly with pymilvus, as another program (or another version of
this one) would leave it: another schema version, no per-modality partitions, a missing field,
vector fields whose dims disagree with the recorded ones. The property names and the row schema
are written out here, not taken from the library, because they are the on-disk format a
collection keeps across versions.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fakes import ServerLikeClient
from pymilvus import DataType, MilvusClient

from hivlp_milvus.collection import HierarchicalCollection
from hivlp_milvus.connection import connect
from hivlp_milvus.errors import HiVLPError, SchemaMismatchError

LOW, HIGH = 16, 64
SCHEMA_VERSION = "2"  # schemas/collection.json
# What a message must contain to tell the user what to do next.
ACTION = re.compile(r"re-ingest|new collection|another collection name|drop it|create it", re.IGNORECASE)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return connect(str(tmp_path_factory.mktemp("open") / "hivlp.db"))


def _props(**override: str) -> dict[str, str]:
    props = {
        "hivlp.schema_version": SCHEMA_VERSION,
        "hivlp.model_fingerprint": "",
        "hivlp.low_dim": str(LOW),
        "hivlp.high_dim": str(HIGH),
        "hivlp.profile": "lite:FLAT",
        "hivlp.low_index": "{}",
    }
    props.update(override)
    return {k: v for k, v in props.items() if v is not None}


def handmade(
    client: Any,
    *,
    props: dict[str, str] | None = None,
    drop_field: str | None = None,
    dims: tuple[int, int] = (LOW, HIGH),
    partitions: tuple[str, ...] = ("image", "text"),
) -> str:
    """A collection with the hivlp row schema, made with pymilvus; the arguments spoil one part."""
    name = f"hand_{uuid.uuid4().hex[:10]}"
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    fields: list[tuple[str, Any, dict[str, Any]]] = [
        ("id", DataType.INT64, {"is_primary": True}),
        ("key", DataType.VARCHAR, {"max_length": 1024}),
        ("modality", DataType.VARCHAR, {"max_length": 16}),
        ("reference", DataType.VARCHAR, {"max_length": 65535}),
        ("attributes", DataType.JSON, {}),
        ("vec_low", DataType.FLOAT_VECTOR, {"dim": dims[0]}),
        ("vec_high", DataType.FLOAT_VECTOR, {"dim": dims[1]}),
    ]
    for field, dtype, kw in fields:
        if field != drop_field:
            schema.add_field(field, dtype, **kw)
    index = MilvusClient.prepare_index_params()
    for field in ("vec_low", "vec_high"):
        if field != drop_field:
            index.add_index(field, index_type="FLAT", metric_type="IP")
    client.create_collection(
        name, schema=schema, index_params=index, properties=props if props is not None else _props()
    )
    for partition in partitions:
        client.create_partition(name, partition)
    return name


@pytest.fixture
def made(client: Any) -> Iterator[Callable[..., str]]:
    names: list[str] = []

    def make(**kw: Any) -> str:
        names.append(handmade(client, **kw))
        return names[-1]

    yield make
    for name in names:
        client.drop_collection(name)


@pytest.fixture(scope="module")
def refusals(client: Any) -> Iterator[dict[str, tuple[str, BaseException | None]]]:
    """case -> (collection name, what open() raised): each spoiled collection is opened once
    (the missing-partition case waits ~10 s for a concurrent create() to finish)."""
    seen: dict[str, tuple[str, BaseException | None]] = {}
    yield seen
    for name, _ in seen.values():
        client.drop_collection(name)


def refusal(client: Any, refusals: dict[str, tuple[str, BaseException | None]], case: str) -> tuple[str, Any]:
    if case not in refusals:
        name = handmade(client, **CASES[case][0])
        try:
            HierarchicalCollection.open(name, client=client)
            refusals[case] = (name, None)
        except Exception as exc:  # asserted by the caller
            refusals[case] = (name, exc)
    return refusals[case]


# Each spoiled collection, the words its error must name, and whether the message says what to do today.
CASES = {
    "schema_version": ({"props": _props(**{"hivlp.schema_version": "1"})}, r"schema version 1.*version 2"),
    "missing_partition": ({"partitions": ("image",)}, r"partitions \['image', 'text'\].*has \['_default', 'image'\]"),
    "missing_field": ({"drop_field": "attributes"}, r"lacks the field\(s\) \['attributes'\]"),
    "low_dim_mismatch": ({"dims": (8, HIGH)}, r"vec_low has dim 8 but the properties say 16"),
    "high_dim_mismatch": ({"dims": (LOW, 32)}, r"vec_high has dim 32 but the properties say 64"),
    "dims_not_recorded": ({"props": _props(**{"hivlp.high_dim": None})}, r"hivlp\.low_dim/hivlp\.high_dim"),
}


def test_a_well_formed_handmade_collection_opens(client: Any, made: Callable[..., str]) -> None:
    """The control: the same construction, unspoiled, is accepted (so each refusal below is about its one defect)."""
    col = HierarchicalCollection.open(made(), client=client)
    assert (col.low_dim, col.high_dim, col.profile.tag, col.count()) == (LOW, HIGH, "lite:FLAT", 0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_open_refuses_with_a_schema_mismatch(client: Any, refusals: dict, case: str) -> None:
    name, error = refusal(client, refusals, case)
    assert isinstance(error, SchemaMismatchError), f"open() returned or raised {error!r}"
    assert isinstance(error, HiVLPError)
    assert re.search(CASES[case][1], str(error)), str(error)
    assert name in str(error)


@pytest.mark.parametrize("case", sorted(CASES))
def test_open_error_says_what_to_do(client: Any, refusals: dict, case: str) -> None:
    _, error = refusal(client, refusals, case)
    assert isinstance(error, SchemaMismatchError), f"open() returned or raised {error!r}"
    assert ACTION.search(str(error)), str(error)


def test_a_refused_auto_gpu_index_falls_back_and_keeps_the_users_properties(client: Any) -> None:
    # FAKE (tests/fakes.py): a GPU server whose profile probe passes and whose real GPU index is refused.
    fake = ServerLikeClient(client, refuse_gpu="build")
    name = f"fallback_{uuid.uuid4().hex[:8]}"
    col = HierarchicalCollection.create(name, client=fake, low_dim=LOW, high_dim=HIGH, properties={"team": "search"})
    assert fake.refused, "the collection's GPU index was never refused: the fallback create did not run"
    assert col.profile.tag.startswith("cpu:")
    reopened = HierarchicalCollection.open(name, client=client)
    # The fallback create records what the first attempt would have: the user's properties too.
    assert reopened.properties["team"] == "search"
    assert reopened.properties["hivlp.profile"] == col.profile.tag
