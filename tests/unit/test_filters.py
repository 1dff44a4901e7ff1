"""filters.bind / structured_filter: typed, escaped literals on Lite; params passed through on servers."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient

from hivlp_milvus.errors import FilterError
from hivlp_milvus.filters import bind, literal, quote_string, restrict_to_ids, structured_filter

NASTY = [
    "plain",
    'x" or id > 0 or "',
    "x' or id > 0 or '",
    "back\\slash",
    'a\\"b',
    "new\nline",
    "cr\rline",
    "tab\tx",
    "uni é 日本",
    "emoji 😀",
    "ctl\x01x",
    "brace {p} }",
    "pct%_like",
    "",
]


# ---------------------------------------------------------------------- pure functions


def test_templating_passes_params_through_unchanged() -> None:
    expr, params = bind('key == {k} and attributes["n"] > {n}', {"k": 'x" or "', "n": 3}, templating=True)
    assert expr == 'key == {k} and attributes["n"] > {n}'
    assert params == {"k": 'x" or "', "n": 3}


def test_literal_rendering() -> None:
    expr, params = bind(
        "a == {s} and b == {t} and c == {i} and d == {f} and e in {xs}",
        {"s": 'q"\\', "t": True, "i": -7, "f": 0.25, "xs": [1, "a", False]},
        templating=False,
    )
    assert params == {}
    assert expr == 'a == "q\\"\\\\" and b == true and c == -7 and d == 0.25 and e in [1, "a", false]'


def test_numpy_values_are_accepted() -> None:
    expr, _ = bind("id in {ids} and x > {f}", {"ids": np.arange(3), "f": np.float32(0.5)}, templating=False)
    assert expr == "id in [0, 1, 2] and x > 0.5"


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, None, {"a": 1}, [[1, 2]], b"bytes", object(), 2**63, [math.nan]]
)
def test_unsupported_values_raise(value: object) -> None:
    with pytest.raises(FilterError):
        bind("x == {v}", {"v": value}, templating=False)
    with pytest.raises(FilterError):
        bind("x == {v}", {"v": value}, templating=True)


@pytest.mark.parametrize(
    ("expr", "params", "templating", "match"),
    [
        ("x == {v}", {}, False, "no value"),
        ("x == 1", {"v": 1}, True, "not used"),
        ("x == {1v}", {}, False, "malformed placeholder"),
        ("x == v}", {}, False, "unmatched"),
        ('x == "abc', {}, False, "unterminated"),
        ("x == {hivlp_ids}", {"hivlp_ids": [1]}, False, "reserved"),
    ],
)
def test_missing_unused_and_malformed_placeholders(expr: str, params: dict, templating: bool, match: str) -> None:
    with pytest.raises(FilterError, match=match):
        bind(expr, params, templating=templating)


def test_braces_inside_string_literals_are_not_placeholders() -> None:
    # "{not_me}" needs no value: inside a literal it is text, not a placeholder.
    assert bind('key == "{not_me}" and id == {me}', {"me": 1}, templating=False)[0] == 'key == "{not_me}" and id == 1'
    expr, _ = bind('key == "{x}" and id == {x}', {"x": 1}, templating=False)
    assert expr == 'key == "{x}" and id == 1'
    # An escaped quote does not end the literal: the braces after it are still text.
    expr, _ = bind("key == 'a\\'{x}' and id == {x}", {"x": 1}, templating=False)
    assert expr == "key == 'a\\'{x}' and id == 1"


def test_substituted_values_are_not_reinterpreted() -> None:
    # A value that looks like a placeholder stays a string literal.
    expr, _ = bind("a == {x} and b == {y}", {"x": "{y}", "y": 2}, templating=False)
    assert expr == 'a == "{y}" and b == 2'


def test_restrict_to_ids_ands_the_ids_with_the_filter() -> None:
    assert restrict_to_ids(None, None, [3]) == ("id in {hivlp_ids}", {"hivlp_ids": [3]})
    assert restrict_to_ids(" ", {}, []) == ("id in {hivlp_ids}", {"hivlp_ids": []})
    expr, params = restrict_to_ids("a == {v} or b == 2", {"v": 1}, (i for i in (5, 6)))
    assert (expr, params) == ("(id in {hivlp_ids}) and (a == {v} or b == 2)", {"v": 1, "hivlp_ids": [5, 6]})


def test_quote_string_only_uses_escapes_lite_knows() -> None:
    for s in NASTY:
        # Between the quotes: the escapes \" \\ \n \r \t, or any character but a quote, newline or CR.
        assert re.fullmatch(r'"(?:\\["\\nrt]|[^"\n\r\\])*"', quote_string(s), re.S), s
    assert literal("x") == '"x"'


def test_structured_filter() -> None:
    allowed = {"id", "key", "modality", "attributes"}
    expr, params = structured_filter(
        [
            {"field": "modality", "op": "==", "value": "image"},
            {"field": 'attributes["color"]', "op": "in", "value": ["red", "blue"]},
            {"field": "attributes.size", "op": ">=", "value": 3},
            {"field": "key", "op": "not  IN", "value": ["a"]},
            {"field": "key", "op": "like", "value": "img%"},
        ],
        allowed,
    )
    assert expr == (
        'modality == {p0} and (attributes["color"] == {p1_0} or attributes["color"] == {p1_1}) and '
        'attributes["size"] >= {p2} and key not in {p3} and key like {p4}'
    )
    assert params == {"p0": "image", "p1_0": "red", "p1_1": "blue", "p2": 3, "p3": ["a"], "p4": "img%"}
    assert structured_filter([], allowed) == ("", {})


@pytest.mark.parametrize(
    "cond",
    [
        {"field": "vec_low", "op": "==", "value": 1},
        {"field": "key or 1", "op": "==", "value": 1},
        {"field": 'attributes["a\\"] or id > 0 or x["b"]', "op": "==", "value": 1},
        {"field": 'attributes["bad key!"]', "op": "==", "value": 1},
        {"field": "key", "op": "or", "value": 1},
        {"field": "key", "op": "== 1 or id ==", "value": 1},
        {"field": "key", "op": "in", "value": "notalist"},
        {"field": "key", "op": "==", "value": [1]},
        {"field": "key", "op": "like", "value": 3},
        {"field": "key", "op": "==", "value": None},
        {"field": "key", "op": "==", "value": 1, "extra": 2},
        {"op": "==", "value": 1},
    ],
)
def test_structured_filter_rejects(cond: dict) -> None:
    with pytest.raises(FilterError):
        structured_filter([cond], {"id", "key", "modality", "attributes"})


# ---------------------------------------------------------------------- against Milvus Lite's parser


@pytest.fixture(scope="module")
def lite_rows(tmp_path_factory: pytest.TempPathFactory) -> MilvusClient:
    client = MilvusClient(str(tmp_path_factory.mktemp("filters") / "f.db"))
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("key", DataType.VARCHAR, max_length=256)
    schema.add_field("attributes", DataType.JSON)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    index = MilvusClient.prepare_index_params()
    index.add_index("v", index_type="FLAT", metric_type="IP")
    client.create_collection("f", schema=schema, index_params=index)
    client.insert(
        "f",
        [{"id": i, "key": k, "attributes": {"k": k, "n": i}, "v": [1.0, 0.0]} for i, k in enumerate(NASTY)],
    )
    return client


@pytest.mark.parametrize("index", range(len(NASTY)))
def test_lite_matches_every_nasty_string_literally(lite_rows: MilvusClient, index: int) -> None:
    for field in ("key", 'attributes["k"]'):
        expr, params = bind(f"{field} == {{v}}", {"v": NASTY[index]}, templating=False)
        hits = lite_rows.query("f", filter=expr, output_fields=["id"])
        assert [h["id"] for h in hits] == [index], (expr, hits)


def test_injection_does_not_widen(lite_rows: MilvusClient) -> None:
    for attack in ['x" or id >= 0 or "', "x' or id >= 0 or '", '" or ""=="', "\\", '\\" or id >= 0 or \\"']:
        expr, _ = bind("key == {v}", {"v": attack}, templating=False)
        hits = lite_rows.query("f", filter=expr, output_fields=["id"])
        assert all(NASTY[h["id"]] == attack for h in hits)
        assert len(hits) <= 1


def test_lite_lists_bools_and_numbers(lite_rows: MilvusClient) -> None:
    expr, _ = bind('key in {ks} and attributes["n"] >= {lo}', {"ks": NASTY[:4], "lo": 1.5}, templating=False)
    assert sorted(h["id"] for h in lite_rows.query("f", filter=expr, output_fields=["id"])) == [2, 3]
    expr, _ = bind("id in {ids}", {"ids": []}, templating=False)
    assert lite_rows.query("f", filter=expr, output_fields=["id"]) == []


def test_lite_structured_filter(lite_rows: MilvusClient) -> None:
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    expr, params = structured_filter(
        [
            {"field": "attributes.k", "op": "in", "value": [NASTY[1], NASTY[5]]},
            {"field": "id", "op": "<", "value": 100},
        ],
        {"id", "key", "attributes"},
    )
    expr, _ = bind(expr, params, templating=False)
    assert sorted(h["id"] for h in lite_rows.query("f", filter=expr, output_fields=["id"])) == [1, 5]
