"""The coarse -> fine funnel over one HiVLP collection, and its two re-rank paths.

1. **Coarse**: one multi-query ANN search on ``vec_low`` under (user filter AND modality), returning
   a shortlist of ``coarse_limit`` ids per query.
2. **Fine**: exact inner product on ``vec_high`` for each shortlist, under the same filter:

   * ``rerank="server"``: a FLAT search on ``vec_high`` restricted to ``id in {shortlist}`` AND the
     user filter (one request per query: each query has its own shortlist);
   * ``rerank="client"``: one ``get`` of ``vec_high`` for the union of the shortlists, then a numpy
     dot product per query.

   ``"auto"`` is the path the benchmarks measured faster on each engine:

   * **Milvus Lite 3** (a ``.db`` path or ``milvus-lite server``): **client**. At 1M rows
     (BENCHMARKS.md, interleaved runs) the client path served 1.94x the exact search's single-query
     throughput against 1.17x for the server path, and 0.18x vs 0.07x for batches of 32: the server
     path is a second full request per query, and Lite's per-request cost grows with the
     collection. With a user filter the gap widens (the server path re-evaluates the filter once
     per query; a JSON-attribute filter costs Lite ~1-3 s per evaluation at 20k rows).
   * **Any other Milvus** (a server, whose C++ engine answers both requests): **server**. On
     Milvus' C++ engine (Milvus Lite 2.5.1's server, ``benchmarks/engine.py``, 1M rows) the
     server path's fine stage took 5-11 ms per query against 90-170 ms for the client path's
     ``get`` of the shortlist's vectors, single queries and batches of 32 alike. That engine is
     not a standalone deployment; ``hivlp-milvus bench engine --uri`` re-measures on one.

   An earlier measurement at 20k rows (Milvus Lite 3.2.2 in-process, 64/256 dims, limit 10, load
   6-18 so +-50 %, before rows were split into per-modality partitions), fine-stage ms
   (client | server), where the server path won small unfiltered shortlists:

   ==================  ===========  ===========  ============  ===========
   filter              coarse 100   coarse 200   coarse 500    coarse 200
                       batch 1      batch 1      batch 1       batch 8
   ==================  ===========  ===========  ============  ===========
   none                11 | 14      63 | 53      176 | 45      435 | 130
   modality (VARCHAR)  24 | 15      149 | 20     148 | 102     1217 | 561
   attributes (JSON)   34 | 2634    28 | 1077    108 | 3385    262 | 13568
   ==================  ===========  ===========  ============  ===========

   The client path's cost is Lite's ``get`` of the shortlist's vectors (~0.3 ms per 256-d row);
   the server path's cost is one request per query plus one filter evaluation per request.
   On a Milvus server both costs are lower; re-measure there (benchmarks/) before trusting the
   same rule.

Results are shaped like ``MilvusClient.search``: a list (one per query) of hits
``{"id", "distance" (fine score), "coarse_distance", "entity": {...}}``, with ``.timings``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hivlp_milvus.errors import DimensionMismatchError, FilterError, QueryError
from hivlp_milvus.filters import and_filters, bind, merge_params
from hivlp_milvus.ids import MODALITIES

if TYPE_CHECKING:
    from hivlp_milvus.collection import HierarchicalCollection

RERANK_MODES = ("auto", "client", "server")
LEVELS = ("low", "high")
DEFAULT_OUTPUT_FIELDS = ("key", "modality", "reference", "attributes")


def auto_rerank(user_filter: str | None, *, lite: bool = True) -> str:
    """The re-rank path ``"auto"`` uses: the one measured faster on the engine (module docstring).

    Args:
        user_filter: the search's filter (kept so the rule can depend on it per deployment).
        lite: whether the collection lives in Milvus Lite: client there, server elsewhere.
    """
    return "client" if lite else "server"


class SearchResults(list):
    """One list of hits per query (like ``MilvusClient.search``), plus ``timings``.

    Attributes:
        timings: seconds spent in ``encode_s``, ``coarse_s``, ``fine_s`` and ``total_s``.
        rerank: the re-rank path that ran (``"client"`` / ``"server"``; ``None`` for one-level search).
    """

    def __init__(
        self,
        hits: Sequence[list[dict[str, Any]]] = (),
        timings: Mapping[str, float] | None = None,
        rerank: str | None = None,
    ) -> None:
        super().__init__(hits)
        self.timings: dict[str, float] = dict(timings or {})
        self.rerank = rerank


# ---------------------------------------------------------------------- queries


def _is_image(x: Any) -> bool:
    if isinstance(x, Path | bytes | bytearray | memoryview | np.ndarray):
        return True
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return False
    return isinstance(x, Image.Image)


def _is_embedding(x: Any) -> bool:
    # Duck-typed so searching never imports the model package (torch, timm, transformers).
    return hasattr(x, "low") and hasattr(x, "high") and not isinstance(x, str | bytes)


def _as_2d(x: Any) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float32)
    return arr.reshape(1, -1) if arr.ndim == 1 else arr


def encode_queries(query: Any, model: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Turn a query (or a list of queries) into ``(low, high, kinds)``.

    ``kinds[i]`` is ``"text"``, ``"image"`` or ``"embedding"`` for query row ``i``.

    Raises:
        QueryError: unsupported query type, an empty list, or a str/image query without a model.
    """
    items = list(query) if isinstance(query, list | tuple) else [query]
    if not items:
        raise QueryError("the query list is empty")
    parts: list[tuple[str, Any]] = []
    for i, item in enumerate(items):
        if _is_embedding(item):
            parts.append(("embedding", item))
        elif isinstance(item, str):
            parts.append(("text", item))
        elif _is_image(item):
            parts.append(("image", item))
        else:
            raise QueryError(
                f"query {i} is a {type(item).__name__}; search with a str (text), an image (path, PIL image, "
                "HWC array, bytes), a HierarchicalEmbedding, or a list of these"
            )
    needs_model = [k for k, _ in parts if k != "embedding"]
    if needs_model and model is None:
        raise QueryError(
            f"a {needs_model[0]} query must be encoded, but the collection has no model; pass model= to "
            "HierarchicalCollection.open()/create() (or search with a HierarchicalEmbedding)"
        )
    lows: list[np.ndarray | None] = [None] * len(parts)
    highs: list[np.ndarray | None] = [None] * len(parts)
    kinds: list[list[str]] = [[] for _ in parts]
    for kind, method in (("text", "embed_texts"), ("image", "embed_images")):
        idx = [i for i, (k, _) in enumerate(parts) if k == kind]
        if idx:
            emb = getattr(model, method)([parts[i][1] for i in idx])
            low, high = _as_2d(emb.low), _as_2d(emb.high)
            for j, i in enumerate(idx):
                lows[i], highs[i], kinds[i] = low[j : j + 1], high[j : j + 1], [kind]
    for i, (kind, item) in enumerate(parts):
        if kind == "embedding":
            low, high = _as_2d(item.low), _as_2d(item.high)
            if len(low) != len(high):
                raise QueryError(f"query {i}: low has {len(low)} rows but high has {len(high)}")
            lows[i], highs[i], kinds[i] = low, high, ["embedding"] * len(low)
    low = np.concatenate([x for x in lows if x is not None])
    high = np.concatenate([x for x in highs if x is not None])
    return low, high, [k for ks in kinds for k in ks]


def _default_modality(kind: str) -> str | None:
    # Cross-modal retrieval: text finds images, an image finds captions; an embedding searches all.
    return {"text": "image", "image": "text"}.get(kind)


def _resolve_modality(modality: str | None, kinds: list[str]) -> list[str | None]:
    if modality is None:
        return [_default_modality(k) for k in kinds]
    if modality in ("all", "any", "*"):
        return [None] * len(kinds)
    if modality not in MODALITIES:
        raise QueryError(f"modality must be one of {MODALITIES}, 'all' or None, got {modality!r}")
    return [modality] * len(kinds)


# ---------------------------------------------------------------------- filters


def _bind_for(
    col: HierarchicalCollection,
    user_expr: str | None,
    user_params: Mapping[str, Any] | None,
    ids: list[int] | None = None,
) -> tuple[str, dict[str, Any]]:
    """(user filter) [AND id in shortlist], bound for this Milvus.

    The modality is not part of the expression: it selects a partition (see :func:`_search_kwargs`).
    """
    bind(user_expr, user_params, templating=True)  # validate the user's part (no reserved names)
    expr, params = (user_expr or "").strip(), dict(user_params or {})
    if ids is not None:
        expr = and_filters("id in {hivlp_ids}", expr)
        params = merge_params(params, {"hivlp_ids": ids})
    return bind(expr, params, templating=not col.is_lite, reserved_ok=True)


def _search_kwargs(
    expr: str, params: dict[str, Any], kwargs: Mapping[str, Any], modality: str | None
) -> dict[str, Any]:
    kw = dict(kwargs)
    kw["filter"] = expr
    if params:
        kw["filter_params"] = params
    if modality is not None:
        # Each modality is its own partition with its own ANN index (HierarchicalCollection.create):
        # restricting the partition, not filtering rows, keeps IVF cells of the right modality.
        kw["partition_names"] = [modality]
    return kw


def _merge_search_params(base: dict[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    if not override:
        return base
    if "params" not in override and set(override) - {"metric_type"}:
        # Accept the flat form {"nprobe": 64} as well as {"params": {"nprobe": 64}}.
        override = {"params": {k: v for k, v in override.items() if k != "metric_type"}} | (
            {"metric_type": override["metric_type"]} if "metric_type" in override else {}
        )
    out = dict(base)
    inner = dict(base.get("params") or {})
    inner.update(override.get("params") or {})
    out.update({k: v for k, v in override.items() if k != "params"})
    out["params"] = inner
    return out


def _groups(modalities: list[str | None]) -> dict[str | None, list[int]]:
    groups: dict[str | None, list[int]] = {}
    for i, m in enumerate(modalities):
        groups.setdefault(m, []).append(i)
    return groups


def _entity(hit: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    ent = hit.get("entity") or {}
    return {f: ent[f] for f in fields if f in ent}


def _check_query_dims(col: HierarchicalCollection, low: np.ndarray, high: np.ndarray) -> None:
    for label, arr, dim in (("low", low, col.low_dim), ("high", high, col.high_dim)):
        if arr.shape[1] != dim:
            raise DimensionMismatchError(
                f"query {label} vectors have dim {arr.shape[1]} but collection {col.name!r} has {label}_dim={dim}; "
                "encode queries with the model the collection was built with"
            )


# ---------------------------------------------------------------------- the funnel


def hierarchical_search(
    col: HierarchicalCollection,
    query: Any,
    *,
    limit: int = 10,
    coarse_limit: int | None = None,
    filter: str | None = None,  # noqa: A002  (mirrors MilvusClient)
    filter_params: Mapping[str, Any] | None = None,
    modality: str | None = None,
    output_fields: Sequence[str] | None = None,
    rerank: str = "auto",
    search_params: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> SearchResults:
    """Coarse ANN on ``vec_low`` -> exact re-rank on ``vec_high`` of the shortlist, one filter for both.

    Args:
        col: the collection.
        query: a str (text), an image (``pathlib.Path``, PIL image, HWC ``ndarray``, ``bytes``), a
            ``HierarchicalEmbedding`` (one or many rows), or a list of these (batched: the coarse
            stage is one multi-query search per target modality).
        limit: final hits per query.
        coarse_limit: shortlist size; default ``max(10 * limit, 100)`` capped by the profile.
        filter: Milvus boolean expression with ``{name}`` placeholders.
        filter_params: placeholder values (templated on servers, bound as literals on Lite).
        modality: targets: ``"image"``, ``"text"``, ``"all"``; default: a text query searches
            images, an image query searches texts, an embedding searches all.
        output_fields: fields in each hit's ``entity`` (default key, modality, reference,
            attributes; ``[]`` for none).
        rerank: ``"client"``, ``"server"`` or ``"auto"`` (the one measured faster on the engine:
            client on Milvus Lite, server on a Milvus server; see the module docstring).
        search_params: overrides for the coarse search params (e.g. ``{"params": {"nprobe": 64}}``).
        **kwargs: passed to ``MilvusClient.search`` (``timeout``, ``consistency_level``, ...).

    Returns:
        ``SearchResults``: per query, hits ``{"id", "distance", "coarse_distance", "entity"}`` sorted
        by the fine score (``distance``, inner product, higher is closer); ``.timings``.

    Raises:
        QueryError: bad query type, a str/image query without a model, bad ``rerank``/``modality``.
        SearchLimitError: ``limit``/``coarse_limit`` out of range for the profile.
        FilterError: malformed filter or parameters (Milvus' parse message is kept).
        DimensionMismatchError: query vectors of the wrong dims.
    """
    if rerank not in RERANK_MODES:
        raise QueryError(f"rerank must be one of {RERANK_MODES}, got {rerank!r}")
    mode = auto_rerank(filter, lite=col.is_lite) if rerank == "auto" else rerank
    coarse_limit = col.profile.validate_limits(limit, coarse_limit)
    fields = list(DEFAULT_OUTPUT_FIELDS if output_fields is None else output_fields)
    t0 = time.perf_counter()
    low, high, kinds = encode_queries(query, col.model)
    _check_query_dims(col, low, high)
    t1 = time.perf_counter()

    modalities = _resolve_modality(modality, kinds)
    low_params = _merge_search_params(
        col.profile.low_search_params(coarse_limit, num_rows=col.approx_num_rows()), search_params
    )
    per_query = _search_partitions(
        col,
        low,
        modalities,
        filter,
        filter_params,
        kwargs,
        anns_field="vec_low",
        limit=coarse_limit,
        output_fields=[],
        search_params=low_params,
    )
    coarse = [[(int(h["id"]), float(h["distance"])) for h in hits] for hits in per_query]
    t2 = time.perf_counter()

    if mode == "client":
        hits = _rerank_client(col, high, coarse, limit, fields, kwargs)
    else:
        hits = _rerank_server(col, high, coarse, modalities, limit, fields, filter, filter_params, kwargs)
    t3 = time.perf_counter()
    timings = {"encode_s": t1 - t0, "coarse_s": t2 - t1, "fine_s": t3 - t2, "total_s": t3 - t0}
    return SearchResults(hits, timings, rerank=mode)


def _search_partitions(
    col: HierarchicalCollection,
    vectors: np.ndarray,
    modalities: list[str | None],
    user_filter: str | None,
    user_params: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
    **search: Any,
) -> list[list[dict[str, Any]]]:
    """One multi-query search per target modality (its partition), hits returned in query order."""
    per_query: list[list[dict[str, Any]]] = [[] for _ in modalities]
    for target, idx in _groups(modalities).items():
        expr, params = _bind_for(col, user_filter, user_params)
        res = col._call_filtered(
            col.client.search,
            expr,
            col.name,
            data=vectors[idx],
            **search,
            **_search_kwargs(expr, params, kwargs, target),
        )
        for q, hits in zip(idx, res, strict=True):
            per_query[q] = hits
    return per_query


def _rerank_client(
    col: HierarchicalCollection,
    high: np.ndarray,
    coarse: list[list[tuple[int, float]]],
    limit: int,
    fields: list[str],
    kwargs: Mapping[str, Any],
) -> list[list[dict[str, Any]]]:
    union = sorted({i for hits in coarse for i, _ in hits})
    if not union:
        return [[] for _ in coarse]
    get_kw = {"timeout": kwargs["timeout"]} if "timeout" in kwargs else {}
    # Two gets: vec_high for the whole shortlist, then output fields for the final hits only
    # (decoding JSON attributes of every shortlisted row would cost more than the dot products).
    vecs = {
        int(r["id"]): r["vec_high"] for r in col.client.get(col.name, ids=union, output_fields=["vec_high"], **get_kw)
    }
    ranked: list[list[tuple[int, float, float]]] = []
    for q, shortlist in enumerate(coarse):
        # A row deleted between the two stages has no vec_high any more: it drops out.
        cand = [(i, d) for i, d in shortlist if i in vecs]
        if not cand:
            ranked.append([])
            continue
        scores = np.asarray([vecs[i] for i, _ in cand], dtype=np.float32) @ high[q]
        order = np.argsort(-scores, kind="stable")[:limit]
        ranked.append([(cand[j][0], float(scores[j]), cand[j][1]) for j in order])
    entities: dict[int, dict[str, Any]] = {}
    final = sorted({i for hits in ranked for i, _, _ in hits})
    if fields and final:
        for r in col.client.get(col.name, ids=final, output_fields=list(fields), **get_kw):
            entities[int(r["id"])] = {f: r[f] for f in fields if f in r}
    return [
        [{"id": i, "distance": s, "coarse_distance": c, "entity": entities.get(i, {})} for i, s, c in hits]
        for hits in ranked
    ]


def _rerank_server(
    col: HierarchicalCollection,
    high: np.ndarray,
    coarse: list[list[tuple[int, float]]],
    modalities: list[str | None],
    limit: int,
    fields: list[str],
    user_filter: str | None,
    user_params: Mapping[str, Any] | None,
    kwargs: Mapping[str, Any],
) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    high_params = col.profile.high_search_params()
    for q, shortlist in enumerate(coarse):
        if not shortlist:
            out.append([])
            continue
        coarse_d = dict(shortlist)
        expr, params = _bind_for(col, user_filter, user_params, ids=list(coarse_d))
        res = col._call_filtered(
            col.client.search,
            expr,
            col.name,
            data=high[q : q + 1],
            anns_field="vec_high",
            limit=min(limit, len(coarse_d)),
            output_fields=fields,
            search_params=high_params,
            **_search_kwargs(expr, params, kwargs, modalities[q]),
        )
        out.append(
            [
                {
                    "id": int(h["id"]),
                    "distance": float(h["distance"]),
                    "coarse_distance": coarse_d.get(int(h["id"])),
                    "entity": _entity(h, fields),
                }
                for h in res[0]
            ]
        )
    return out


def search(
    col: HierarchicalCollection,
    query: Any,
    *,
    level: str = "low",
    limit: int = 10,
    filter: str | None = None,  # noqa: A002
    filter_params: Mapping[str, Any] | None = None,
    modality: str | None = None,
    output_fields: Sequence[str] | None = None,
    search_params: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> SearchResults:
    """Single-stage search on one level: ``low`` = ANN on ``vec_low``, ``high`` = exact on ``vec_high``.

    The baselines the funnel is measured against (low-only, high-only). Arguments are those of
    :func:`hierarchical_search`, plus ``level``.

    Returns:
        ``SearchResults``: per query, hits ``{"id", "distance", "entity"}``; ``.timings``
        (``encode_s``, ``search_s``, ``total_s``).

    Raises:
        QueryError, SearchLimitError, FilterError, DimensionMismatchError: as for
        :func:`hierarchical_search`.
    """
    from hivlp_milvus.errors import SearchLimitError

    if level not in LEVELS:
        raise QueryError(f"level must be one of {LEVELS}, got {level!r}")
    profile = col.profile
    if level == "low":
        profile.validate_limits(limit, limit)
    elif isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= profile.fine_cap:
        raise SearchLimitError(
            f"limit must be an int in [1, {profile.fine_cap}] for the FLAT vec_high index, got {limit!r}"
        )
    fields = list(DEFAULT_OUTPUT_FIELDS if output_fields is None else output_fields)
    t0 = time.perf_counter()
    low, high, kinds = encode_queries(query, col.model)
    _check_query_dims(col, low, high)
    t1 = time.perf_counter()
    vectors = low if level == "low" else high
    if level == "low":
        base = profile.low_search_params(limit, num_rows=col.approx_num_rows())
    else:
        base = profile.high_search_params()
    sp = _merge_search_params(base, search_params)
    modalities = _resolve_modality(modality, kinds)
    per_query = _search_partitions(
        col,
        vectors,
        modalities,
        filter,
        filter_params,
        kwargs,
        anns_field=f"vec_{level}",
        limit=limit,
        output_fields=fields,
        search_params=sp,
    )
    out = [
        [{"id": int(h["id"]), "distance": float(h["distance"]), "entity": _entity(h, fields)} for h in hits]
        for hits in per_query
    ]
    t2 = time.perf_counter()
    return SearchResults(out, {"encode_s": t1 - t0, "search_s": t2 - t1, "total_s": t2 - t0})


__all__ = ["SearchResults", "hierarchical_search", "search", "encode_queries", "FilterError"]
