"""User filters + parameters -> a safe Milvus expression.

Users write Milvus boolean expressions with ``{name}`` placeholders and pass the values in
``filter_params`` (pymilvus' filter templating). A Milvus server receives ``filter_params``
unchanged and substitutes them itself. Milvus Lite 3.2 has no templating, so there — and only
there — :func:`bind` renders each value as a typed literal:

* ``str`` -> a double-quoted literal with ``\\`` ``"`` and newline/CR/tab escaped. Milvus Lite's
  lexer knows exactly the escapes ``\\" \\' \\\\ \\n \\r \\t`` (no ``\\uXXXX``), so every other
  character, non-ASCII and control characters included, is written as itself; this was checked
  against Lite 3.2.2 by round-trip queries (see tests/unit/test_filters.py).
* ``bool`` -> ``true`` / ``false``; ``int`` -> decimal (INT64 range); ``float`` -> ``repr`` (finite
  only); a list/tuple of these -> ``[a, b, ...]``. numpy scalars/arrays are accepted as such.
* anything else -> :class:`FilterError`.

User values are never pasted into an expression any other way.

The shortlist filter (``id in [...]``) is built by :func:`restrict_to_ids`, and Milvus' rejection of a
user's filter becomes a :class:`FilterError` in :func:`filter_errors`: both only here.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from hivlp_milvus.errors import FilterError, InvalidRequestError, milvus_message

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IDENT_RE = re.compile(rf"^{_IDENT}$")
# Left to right: a string literal (backslash escapes; braces inside are text), a quote that starts
# no terminated literal, a placeholder, a stray brace. Anything else is skipped.
_TOKEN_RE = re.compile(
    rf'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|(?P<quote>["\'])|\{{(?P<name>{_IDENT})\}}|[{{}}]', re.S
)
# JSON keys usable in attributes["key"] through the HTTP API.
_JSON_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
# attributes["key"], or the shorthand attributes.key (everything after the first dot is the key).
_JSON_PATH_RE = re.compile(rf'^({_IDENT})(?:\[\s*"([^"\\]*)"\s*\]|\.([^"\\]*))$')
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Placeholder names the library itself adds (modality, shortlist ids); user params may not use them.
RESERVED_PREFIX = "hivlp_"
ID_PARAM = f"{RESERVED_PREFIX}ids"  # the shortlist / delete ids of restrict_to_ids
OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in", "like")

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def quote_string(value: str) -> str:
    """``value`` as a double-quoted Milvus string literal (escapes ``\\ " \\n \\r \\t`` only)."""
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def _normalise(value: Any, name: str, *, top: bool = True) -> Any:
    """Plain-python form of a filter value, type-checked (numpy scalars/arrays accepted)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise FilterError(f"filter_params[{name!r}] = {value} is outside the INT64 range")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"filter_params[{name!r}] = {value} is not a finite number")
        return value
    if top and isinstance(value, list | tuple):
        return [_normalise(v, name, top=False) for v in value]
    kind = "a nested list" if isinstance(value, list | tuple) else type(value).__name__
    raise FilterError(
        f"filter_params[{name!r}] is {kind}; values must be str, bool, int, finite float or a list of these"
    )


def literal(value: Any, name: str = "value") -> str:
    """The Milvus literal for one (already type-checked or raw) filter value.

    Raises:
        FilterError: the value is not a str, bool, int, finite float or a flat list of these.
    """
    value = _normalise(value, name)
    if isinstance(value, list):
        return "[" + ", ".join(literal(v, name) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote_string(value)
    return repr(value)  # int or finite float


def _placeholders(expr: str) -> set[str]:
    """The names of the ``{name}`` placeholders outside string literals (the expression checked on the way)."""
    found: set[str] = set()
    for m in _TOKEN_RE.finditer(expr):
        if m["quote"]:  # a quote that opens no terminated literal
            raise FilterError(f"unterminated string literal at column {m.start() + 1} in filter {expr!r}")
        if m["name"]:
            found.add(m["name"])
        elif m.group() == "{":
            raise FilterError(
                f"malformed placeholder at column {m.start() + 1} in filter {expr!r}: "
                "use {name} with an identifier name"
            )
        elif m.group() == "}":
            raise FilterError(f"unmatched '}}' at column {m.start() + 1} in filter {expr!r}")
    return found


def bind(
    expr: str | None,
    params: Mapping[str, Any] | None = None,
    *,
    templating: bool,
    reserved_ok: bool = False,
) -> tuple[str, dict[str, Any]]:
    """Prepare a filter and its parameters for Milvus.

    Args:
        expr: a Milvus boolean expression with ``{name}`` placeholders (``None``/``""`` = no filter).
        params: the placeholder values (``filter_params``).
        templating: ``True`` for a Milvus server (values are passed as ``filter_params``, server-side
            templating); ``False`` for Milvus Lite (values rendered as escaped literals).
        reserved_ok: allow ``hivlp_``-prefixed names (used by the library for its own parameters).

    Returns:
        ``(expression, filter_params)``: with templating, the expression unchanged and the
        (type-checked) parameters; without, the rendered expression and ``{}``.

    Raises:
        FilterError: a placeholder has no value, a value is unused or of an unsupported type, a
            placeholder is malformed, or a parameter name uses the reserved ``hivlp_`` prefix.
    """
    expr = (expr or "").strip()
    params = dict(params or {})
    for name in params:
        if not isinstance(name, str) or not _IDENT_RE.match(name):
            raise FilterError(f"filter_params key {name!r} is not an identifier ([A-Za-z_][A-Za-z0-9_]*)")
        if not reserved_ok and name.startswith(RESERVED_PREFIX):
            raise FilterError(f"filter_params key {name!r}: the prefix {RESERVED_PREFIX!r} is reserved by hivlp_milvus")
    used = _placeholders(expr)
    missing = sorted(used - params.keys())
    if missing:
        raise FilterError(f"filter {expr!r} uses placeholder(s) {missing} with no value in filter_params")
    unused = sorted(params.keys() - used)
    if unused:
        raise FilterError(f"filter_params {unused} are not used by filter {expr!r} (a typo in a placeholder?)")
    values = {name: _normalise(value, name) for name, value in params.items()}
    if templating or not used:
        return expr, values
    # The same tokens _placeholders checked: each placeholder becomes its literal, the rest stays.
    return _TOKEN_RE.sub(lambda m: literal(values[m["name"]], m["name"]) if m["name"] else m.group(), expr), {}


def _field_expr(field: Any, allowed: set[str]) -> tuple[str, bool]:
    """Validated field reference and whether it is a JSON path."""
    if not isinstance(field, str):
        raise FilterError(f"filter field must be a string, got {type(field).__name__}")
    field = field.strip()
    m = _JSON_PATH_RE.match(field)
    if m is not None:
        base, key = m[1], m[2] if m[2] is not None else m[3]
        if base not in allowed:
            raise FilterError(f"filter field {base!r} is not filterable; allowed: {sorted(allowed)}")
        if not _JSON_KEY_RE.match(key):
            raise FilterError(f"JSON key {key!r} is not allowed; keys match {_JSON_KEY_RE.pattern}")
        return f'{base}["{key}"]', True
    if not _IDENT_RE.match(field) or field not in allowed:
        raise FilterError(f'filter field {field!r} is not filterable; allowed: {sorted(allowed)} or attributes["key"]')
    return field, False


def structured_filter(
    conditions: Sequence[Mapping[str, Any]], allowed_fields: Iterable[str]
) -> tuple[str, dict[str, Any]]:
    """Build ``(expr, filter_params)`` from structured conditions (for the HTTP API).

    Each condition is ``{"field": ..., "op": ..., "value": ...}``; conditions are AND-ed. Field
    names are validated (an allowed identifier, or ``attributes["key"]`` / ``attributes.key`` with a
    validated key), operators come from a whitelist and values travel as parameters only.
    ``in`` / ``not in`` on a JSON path are expanded to ``==`` alternatives, since Milvus Lite only
    accepts ``in`` on a plain field.

    Args:
        conditions: the conditions; an empty list means no filter.
        allowed_fields: names of filterable fields (e.g. ``key``, ``modality``, ``attributes``).

    Returns:
        ``(expression with {p0}, {p1}... placeholders, their values)``; pass both through :func:`bind`.

    Raises:
        FilterError: unknown field, key or operator, or a value of the wrong type for the operator.
    """
    allowed = set(allowed_fields)
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for i, cond in enumerate(conditions):
        if not isinstance(cond, Mapping) or not {"field", "op"} <= cond.keys():
            raise FilterError(f"condition {i} must be an object with 'field', 'op' and 'value', got {cond!r}")
        extra = set(cond) - {"field", "op", "value"}
        if extra:
            raise FilterError(f"condition {i} has unknown keys {sorted(extra)}")
        field, is_json = _field_expr(cond["field"], allowed)
        op = " ".join(str(cond["op"]).lower().split())
        if op not in OPS:
            raise FilterError(f"condition {i}: operator {cond['op']!r} is not allowed; use one of {list(OPS)}")
        value = cond.get("value")
        name = f"p{i}"
        if op in ("in", "not in"):
            if not isinstance(value, list | tuple):
                raise FilterError(f"condition {i}: {op!r} needs a list value, got {type(value).__name__}")
            values = _normalise(list(value), name)
            if is_json:
                names = [f"p{i}_{j}" for j in range(len(values))]
                params.update(zip(names, values, strict=True))
                if not names:  # nothing is in an empty list
                    clauses.append("id in []" if op == "in" else "id not in []")
                    continue
                alts = " or ".join(f"{field} == {{{n}}}" for n in names)
                clauses.append(f"({alts})" if op == "in" else f"not ({alts})")
                continue
            params[name] = values
        elif op == "like":
            if not isinstance(value, str):
                raise FilterError(f"condition {i}: 'like' needs a string pattern, got {type(value).__name__}")
            params[name] = value
        else:
            if isinstance(value, list | tuple):
                raise FilterError(f"condition {i}: {op!r} needs a single value, not a list")
            params[name] = _normalise(value, name)
        clauses.append(f"{field} {op} {{{name}}}")
    return " and ".join(clauses), params


def restrict_to_ids(
    expr: str | None, params: Mapping[str, Any] | None, ids: Iterable[int]
) -> tuple[str, dict[str, Any]]:
    """``(expr) and id in {ids}``: a filter narrowed to a list of primary keys (a shortlist, a delete).

    The ids travel as the reserved parameter ``hivlp_ids``; bind the result with
    ``reserved_ok=True``. ``params`` are the user's, already checked by :func:`bind` (no reserved
    name), so the ids' parameter cannot collide with one of them.

    Returns:
        ``(expression, filter_params)``, not yet bound.
    """
    by_id, expr = f"id in {{{ID_PARAM}}}", (expr or "").strip()
    return (f"({by_id}) and ({expr})" if expr else by_id), {**(params or {}), ID_PARAM: [int(i) for i in ids]}


def filter_kwargs(expr: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``filter`` / ``filter_params`` keyword arguments of a Milvus call for a bound filter."""
    kw: dict[str, Any] = {"filter": expr}
    if params:
        kw["filter_params"] = dict(params)
    return kw


@contextlib.contextmanager
def filter_errors(user_filter: str | None, *, probe: Callable[[], object] | None = None) -> Iterator[None]:
    """Inside: Milvus rejecting a call that carries the user's filter raises :class:`FilterError`.

    A call whose only user input is the filter (query, count, delete) blames the filter. A call with
    other inputs too (a search's params) passes ``probe``, a filter-only call (e.g. a ``query`` with
    ``limit=1``) run once after the failure: when it succeeds the filter was fine and the original
    :class:`InvalidRequestError` is raised.

    Args:
        user_filter: the user's filter expression (``None``/``""``: no filter, nothing is mapped).
        probe: a filter-only Milvus call, run only after a failure.

    Raises:
        FilterError: Milvus rejected the filter (its message and code kept, its exception the cause).
    """
    try:
        yield
    except InvalidRequestError as exc:
        if not (user_filter and user_filter.strip()):
            raise
        if probe is not None and _succeeds(probe):
            raise
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise FilterError(
            f"invalid filter {user_filter!r}: {milvus_message(cause)}. Check the operators, quoting and field "
            'names (key, modality, reference, attributes["name"]); pass values through filter_params',
            code=exc.code,
        ) from cause


def _succeeds(probe: Callable[[], object]) -> bool:
    try:
        probe()
    except InvalidRequestError:
        return False
    return True
