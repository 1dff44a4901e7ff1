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

   The measurements behind this rule, and an older one at 20k rows, are in ``docs/search.md``.

3. **Fusion** (only with ``fusion_limit=M``): the fine top-M re-scored by the model's cross-attention
   scorer, which reads each candidate's content (:mod:`hivlp_milvus.fusion_stage`).

**Plan.** Where one exact search on ``vec_high`` is predicted cheaper than coarse -> fine (small
collections, large batches on Milvus Lite), ``plan="auto"`` answers exactly instead, with the same
filter, modality and fusion stage, and says so (``results.plan``). The default ``coarse_limit``
grows with the collection, from the profile's measured recall curve. Both rules are data in
``schemas/profiles.yaml`` (:class:`~hivlp_milvus.profiles.PlanModel`), measured by
``benchmarks/plan.py``.

Results are shaped like ``MilvusClient.search``: a list (one per query) of hits
``{"id", "distance" (fine score), "coarse_distance", "entity": {...}}`` (plus ``fusion_score``
with a fusion stage), with ``.timings``.

The funnel reads a collection only through :class:`SearchableCollection` (``HierarchicalCollection``
is one) and calls Milvus through the error boundary (:func:`hivlp_milvus.connection.guarded`):
every failure leaves as a :class:`~hivlp_milvus.errors.HiVLPError` subclass.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from hivlp_milvus.connection import call_options, guarded
from hivlp_milvus.content import ContentOptions
from hivlp_milvus.errors import DimensionMismatchError, QueryError, SearchLimitError
from hivlp_milvus.filters import bind, filter_errors, filter_kwargs, restrict_to_ids
from hivlp_milvus.fusion_stage import CONTENT_FIELDS, check_fusion, fusion_rerank
from hivlp_milvus.queries import encode_queries, query_items, resolve_modality

if TYPE_CHECKING:
    from hivlp_milvus.profiles import IndexProfile


class SearchableCollection(Protocol):
    """What the funnel needs from a collection: where it lives, its dims, index profile and model."""

    @property
    def name(self) -> str:
        """The Milvus collection name."""
        ...

    @property
    def client(self) -> Any:
        """A connected ``pymilvus.MilvusClient``."""
        ...

    @property
    def low_dim(self) -> int:
        """Dim of ``vec_low``."""
        ...

    @property
    def high_dim(self) -> int:
        """Dim of ``vec_high``."""
        ...

    @property
    def profile(self) -> IndexProfile:
        """The index profile (limits, search params)."""
        ...

    @property
    def model(self) -> Any:
        """The model that encodes str/image queries, or ``None``."""
        ...

    @property
    def is_lite(self) -> bool:
        """Whether the collection lives in Milvus Lite (no filter templating; client re-rank)."""
        ...

    def approx_num_rows(self) -> int | None:
        """A cheap row count (sizes IVF ``nprobe``), ``None`` if unknown."""
        ...


RERANK_MODES = ("auto", "client", "server")
PLANS = ("auto", "exact", "hierarchical")
LEVELS = ("low", "high")
DEFAULT_OUTPUT_FIELDS = ("key", "modality", "reference", "attributes")


class SearchResults(list):
    """One list of hits per query (like ``MilvusClient.search``), plus ``timings``.

    Attributes:
        timings: seconds spent in ``encode_s``, ``coarse_s``, ``fine_s`` (``fusion_s`` with a fusion
            stage) and ``total_s``.
        rerank: the funnel's re-rank path (``"client"`` / ``"server"``, ``"auto"`` resolved;
            ``None`` for one-level search). On the exact plan nothing was re-ranked: see ``plan``.
        plan: how :func:`hierarchical_search` answered: ``"exact"`` (one exact search on
            ``vec_high``), ``"hierarchical"`` (coarse -> fine), with ``"+fusion"`` when the fusion
            stage ran; ``None`` for one-level search.
        coarse_limit: the shortlist the funnel used or would have used (the default is sized from
            the collection, see :meth:`~hivlp_milvus.profiles.IndexProfile.default_coarse_limit`).
        fusion_skipped: the fusion stage's candidates that could not be scored (their image could
            not be read, or they have the query's modality), as ``{"query", "id", "reason"}``;
            they kept their fine-stage position.
    """

    def __init__(
        self,
        hits: Sequence[list[dict[str, Any]]] = (),
        timings: Mapping[str, float] | None = None,
        rerank: str | None = None,
        fusion_skipped: Sequence[Mapping[str, Any]] = (),
        *,
        plan: str | None = None,
        coarse_limit: int | None = None,
    ) -> None:
        super().__init__(hits)
        self.timings: dict[str, float] = dict(timings or {})
        self.rerank = rerank
        self.plan = plan
        self.coarse_limit = coarse_limit
        self.fusion_skipped: list[dict[str, Any]] = [dict(s) for s in fusion_skipped]


# ---------------------------------------------------------------------- Milvus access


class _Milvus:
    """One search's access to Milvus: the guarded client, the user's filter and the pass-through options.

    The modality is not part of the filter: it selects a partition. Each modality is its own
    partition with its own ANN index (``HierarchicalCollection.create``): restricting the
    partition, not filtering rows, keeps IVF cells of the right modality.
    """

    def __init__(
        self,
        col: SearchableCollection,
        user_filter: str | None,
        user_params: Mapping[str, Any] | None,
        *,
        timeout: float | None,
        consistency_level: str | None,
    ) -> None:
        bind(user_filter, user_params, templating=True)  # the user's part alone: no reserved names
        self.col = col
        self.client = guarded(col.client, f" on collection {col.name!r}")
        self.user_filter = (user_filter or "").strip()
        self.user_params = dict(user_params or {})
        self.options = call_options(timeout=timeout, consistency_level=consistency_level)

    def _bound(self, ids: list[int] | None = None) -> dict[str, Any]:
        expr, params = self.user_filter, self.user_params
        if ids is not None:
            expr, params = restrict_to_ids(expr, params, ids)
        return filter_kwargs(*bind(expr, params, templating=not self.col.is_lite, reserved_ok=True))

    def search(
        self, vectors: np.ndarray, partition: str | None, ids: list[int] | None = None, **search: Any
    ) -> list[list[dict[str, Any]]]:
        """``MilvusClient.search`` under (user filter) [AND id in ``ids``], in ``partition`` (``None``: all)."""
        where = {"partition_names": [partition]} if partition is not None else {}
        # No output field must mean the primary key only: Milvus Lite 3.2 answers an empty list with
        # every field, both vectors and the JSON attributes included. That made a coarse search at
        # limit 50 ~3x slower, spent sending and decoding vectors nobody reads.
        search["output_fields"] = list(search.get("output_fields") or ["id"])

        def filter_only() -> Any:  # run only after a failure: was it the user's filter?
            return self.client.query(self.col.name, output_fields=["id"], limit=1, **self._bound(), **where)

        with filter_errors(self.user_filter, probe=filter_only):
            return self.client.search(
                self.col.name, data=vectors, **search, **self._bound(ids), **where, **self.options
            )

    def get(self, ids: list[int], fields: list[str]) -> list[dict[str, Any]]:
        """Rows by primary key (missing ones skipped)."""
        return self.client.get(self.col.name, ids=ids, output_fields=fields, **self.options)


def _merge_search_params(base: dict[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    """``base`` with ``override`` laid over it, ``params`` merged key by key."""
    top = dict(override or {})
    # Accept the flat form {"nprobe": 64} as well as {"params": {"nprobe": 64}}.
    params = top.pop("params") if "params" in top else {k: top.pop(k) for k in list(top) if k != "metric_type"}
    return {**base, **top, "params": {**(base.get("params") or {}), **(params or {})}}


def _hit(hit: Mapping[str, Any], fields: Sequence[str], **coarse: Any) -> dict[str, Any]:
    """A result hit: the Milvus hit's id, fine ``distance``, ``coarse`` (``coarse_distance=``), entity ``fields``."""
    ent = hit.get("entity") or {}
    return {
        "id": int(hit["id"]),
        "distance": float(hit["distance"]),
        **coarse,
        "entity": {f: ent[f] for f in fields if f in ent},
    }


def _check_query_dims(col: SearchableCollection, low: np.ndarray, high: np.ndarray) -> None:
    for label, arr, dim in (("low", low, col.low_dim), ("high", high, col.high_dim)):
        if arr.shape[1] != dim:
            raise DimensionMismatchError(
                f"query {label} vectors have dim {arr.shape[1]} but collection {col.name!r} has {label}_dim={dim}; "
                "encode queries with the model the collection was built with"
            )


# ---------------------------------------------------------------------- the funnel


def hierarchical_search(
    col: SearchableCollection,
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
    timeout: float | None = None,
    consistency_level: str | None = None,
    fusion_limit: int | None = None,
    content: ContentOptions | None = None,
    plan: str = "auto",
) -> SearchResults:
    """Coarse ANN on ``vec_low`` -> exact re-rank on ``vec_high`` of the shortlist, one filter for both.

    With ``fusion_limit=M`` a third stage re-scores the fine top-M with the model's fusion block.
    Where one exact search is cheaper (``plan="auto"``), the fine stage runs on the whole
    collection instead: the same hits as a funnel whose shortlist holds every row.

    Args:
        col: the collection (any :class:`SearchableCollection`; ``HierarchicalCollection`` is one).
        query: a str (text), an image (``pathlib.Path``, PIL image, HWC ``ndarray``, ``bytes``), a
            ``HierarchicalEmbedding`` (one or many rows), or a list of these (batched: the coarse
            stage is one multi-query search per target modality).
        limit: final hits per query.
        coarse_limit: shortlist size; default: sized from the collection's row count by the profile's
            measured recall curve so the funnel keeps >= 0.99 of the exact top-``n``
            (``max(10 * n, 100)`` for a profile without one), capped by the profile, where ``n`` is
            ``fusion_limit`` when given, else ``limit``. Given explicitly, it asks for the funnel:
            ``plan="auto"`` then stays hierarchical.
        filter: Milvus boolean expression with ``{name}`` placeholders.
        filter_params: placeholder values (templated on servers, bound as literals on Lite).
        modality: targets: ``"image"``, ``"text"``, ``"all"``; default: a text query searches
            images, an image query searches texts, an embedding searches all.
        output_fields: fields in each hit's ``entity`` (default key, modality, reference,
            attributes; ``[]`` for none).
        rerank: ``"client"``, ``"server"`` or ``"auto"`` (the one measured faster on the engine:
            client on Milvus Lite, server on a Milvus server; see the module docstring).
        search_params: overrides for the coarse search params, nested or flat (e.g.
            ``{"params": {"nprobe": 64}}`` or ``{"nprobe": 64}``); the exact stage takes none.
        timeout: seconds each Milvus request may take (``MilvusUnavailableError`` after that).
        consistency_level: override of the collection's consistency level for every request
            (``"Strong"``, ``"Bounded"``, ``"Session"``, ``"Eventually"``).
        fusion_limit: run the fusion stage on the fine stage's top ``fusion_limit`` (>= ``limit``)
            and return its first ``limit``; ``None`` (default): two stages only.
        content: how the fusion stage reads candidate images (root directory, http(s) opt-in,
            size and time limits); defaults of :class:`~hivlp_milvus.content.ContentOptions`.
        plan: ``"auto"`` (default): the funnel where the profile's cost model predicts it clearly
            cheaper than one exact search on ``vec_high`` for this collection size and batch (or
            ``coarse_limit`` is given), else the exact search; ``"exact"`` or ``"hierarchical"``
            force one.

    Returns:
        ``SearchResults``: per query, hits ``{"id", "distance", "coarse_distance", "entity"}`` sorted
        by the fine score (``distance``, inner product, higher is closer; ``coarse_distance`` is
        the low-dim inner product on both plans); ``.timings`` (on the exact plan ``coarse_s`` is
        0 and ``fine_s`` is the exact search); ``.plan`` and ``.coarse_limit`` say what ran. With a
        fusion stage, hits are ordered by ``distance + w * fusion_score`` (``w`` is the model's
        ``fusion_score_weight``, chosen on validation by the fusion fine-tune; the fusion score alone
        when the model has none) and gain ``fusion_score`` (``None``, with a
        ``fusion_error``, for a candidate that could not be scored: it keeps its fine position and
        is listed in ``.fusion_skipped``); ``.timings`` gains ``fusion_s``.

    Raises:
        QueryError: bad query type, a str/image query without a model, bad ``rerank``/``modality``/``plan``.
        SearchLimitError: ``limit``/``coarse_limit`` out of range for the profile.
        FilterError: malformed filter or parameters (Milvus' parse message is kept).
        DimensionMismatchError: query vectors of the wrong dims.
        MilvusError: (a subclass) Milvus is unreachable, refuses the token, or rejects the request.
        ConfigError: ``fusion_limit`` with no model, or a model without a fusion block.
    """
    if rerank not in RERANK_MODES:
        raise QueryError(f"rerank must be one of {RERANK_MODES}, got {rerank!r}")
    if plan not in PLANS:
        raise QueryError(f"plan must be one of {PLANS}, got {plan!r}")
    if rerank == "auto":  # the path measured faster on the engine (module docstring)
        rerank = "client" if col.is_lite else "server"
    fields = list(DEFAULT_OUTPUT_FIELDS if output_fields is None else output_fields)
    fine_limit, fine_fields = limit, fields
    if fusion_limit is not None:
        check_fusion(col.model, fusion_limit, limit, query)
        # The fine stage hands the fusion stage its top-M with what it needs to read each one.
        fine_limit, fine_fields = fusion_limit, list(dict.fromkeys([*fields, *CONTENT_FIELDS]))
    col.profile.validate_limits(limit, coarse_limit)
    num_rows = col.approx_num_rows()
    default_coarse = col.profile.default_coarse_limit(fine_limit, num_rows=num_rows, lite=col.is_lite)
    chosen_coarse = col.profile.validate_limits(fine_limit, default_coarse if coarse_limit is None else coarse_limit)
    milvus = _Milvus(col, filter, filter_params, timeout=timeout, consistency_level=consistency_level)
    t0 = time.perf_counter()
    low, high, kinds = encode_queries(query, col.model)
    _check_query_dims(col, low, high)
    t1 = time.perf_counter()

    modalities = resolve_modality(modality, kinds)
    chosen_plan = _choose_plan(
        col, plan, explicit_coarse=coarse_limit is not None, rows=num_rows, nq=len(low), coarse_limit=chosen_coarse
    )
    if chosen_plan == "exact":
        hits = _exact(milvus, low, high, modalities, fine_limit, fine_fields)
        t2 = t1
    else:
        low_params = _merge_search_params(
            col.profile.low_search_params(chosen_coarse, num_rows=num_rows), search_params
        )
        per_query = _search_partitions(
            milvus,
            low,
            modalities,
            anns_field="vec_low",
            limit=chosen_coarse,
            output_fields=[],
            search_params=low_params,
        )
        coarse = [[(int(h["id"]), float(h["distance"])) for h in hits] for hits in per_query]
        t2 = time.perf_counter()
        if rerank == "client":
            hits = _rerank_client(milvus, high, coarse, fine_limit, fine_fields)
        else:
            hits = _rerank_server(milvus, high, coarse, modalities, fine_limit, fine_fields)
    t3 = time.perf_counter()
    timings = {"encode_s": t1 - t0, "coarse_s": t2 - t1, "fine_s": t3 - t2}
    info = {"plan": chosen_plan, "coarse_limit": chosen_coarse}
    if fusion_limit is None:
        return SearchResults(hits, timings | {"total_s": t3 - t0}, rerank=rerank, **info)
    hits, skipped = fusion_rerank(col.model, query_items(query), kinds, hits, limit, content)
    for hit in (h for per_query in hits for h in per_query):
        hit["entity"] = {f: v for f, v in hit["entity"].items() if f in fields}
    t4 = time.perf_counter()
    timings |= {"fusion_s": t4 - t3, "total_s": t4 - t0}
    info["plan"] += "+fusion"
    return SearchResults(hits, timings, rerank=rerank, fusion_skipped=skipped, **info)


def _choose_plan(
    col: SearchableCollection, plan: str, *, explicit_coarse: bool, rows: int | None, nq: int, coarse_limit: int
) -> str:
    """The plan to run: forced, or the profile's cost model's cheaper one (an explicit shortlist keeps the funnel)."""
    if plan != "auto":
        return plan
    model = col.profile.plan_model(lite=col.is_lite)
    if explicit_coarse or model is None:
        return "hierarchical"
    return model.choose(rows, nq, coarse_limit)


def _exact(
    milvus: _Milvus,
    low: np.ndarray,
    high: np.ndarray,
    modalities: list[str | None],
    limit: int,
    fields: list[str],
) -> list[list[dict[str, Any]]]:
    """One exact search on ``vec_high`` per target modality: the funnel with every row shortlisted.

    ``vec_low`` of the hits comes back with them so ``coarse_distance`` means the same on both plans.
    """
    per_query = _search_partitions(
        milvus,
        high,
        modalities,
        anns_field="vec_high",
        limit=limit,
        output_fields=list(dict.fromkeys([*fields, "vec_low"])),
        search_params=milvus.col.profile.high_search_params(),
    )
    return [
        [
            _hit(h, fields, coarse_distance=float(np.dot(np.asarray(h["entity"]["vec_low"], np.float32), low[q])))
            for h in hits
        ]
        for q, hits in enumerate(per_query)
    ]


def _search_partitions(
    milvus: _Milvus, vectors: np.ndarray, modalities: list[str | None], **search: Any
) -> list[list[dict[str, Any]]]:
    """One multi-query search per target modality (its partition), hits returned in query order."""
    per_query: list[list[dict[str, Any]]] = [[] for _ in modalities]
    for target in dict.fromkeys(modalities):  # each target partition once, in order of first use
        idx = [i for i, m in enumerate(modalities) if m == target]  # its queries
        res = milvus.search(vectors[idx], target, **search)
        for q, hits in zip(idx, res, strict=True):
            per_query[q] = hits
    return per_query


def _rerank_client(
    milvus: _Milvus,
    high: np.ndarray,
    coarse: list[list[tuple[int, float]]],
    limit: int,
    fields: list[str],
) -> list[list[dict[str, Any]]]:
    union = sorted({i for hits in coarse for i, _ in hits})
    if not union:
        return [[] for _ in coarse]
    # Two gets: vec_high for the whole shortlist, then output fields for the final hits only
    # (decoding JSON attributes of every shortlisted row would cost more than the dot products).
    vecs = {int(r["id"]): r["vec_high"] for r in milvus.get(union, ["vec_high"])}
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
    final = sorted({i for hits in ranked for i, _, _ in hits})
    rows = milvus.get(final, list(fields)) if fields and final else []
    entities = {int(r["id"]): {f: r[f] for f in fields if f in r} for r in rows}
    return [
        [{"id": i, "distance": s, "coarse_distance": c, "entity": entities.get(i, {})} for i, s, c in hits]
        for hits in ranked
    ]


def _rerank_server(
    milvus: _Milvus,
    high: np.ndarray,
    coarse: list[list[tuple[int, float]]],
    modalities: list[str | None],
    limit: int,
    fields: list[str],
) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    high_params = milvus.col.profile.high_search_params()
    for q, shortlist in enumerate(coarse):
        if not shortlist:
            out.append([])
            continue
        coarse_d = dict(shortlist)
        res = milvus.search(
            high[q : q + 1],
            modalities[q],
            ids=list(coarse_d),
            anns_field="vec_high",
            limit=min(limit, len(coarse_d)),
            output_fields=fields,
            search_params=high_params,
        )
        out.append([_hit(h, fields, coarse_distance=coarse_d.get(int(h["id"]))) for h in res[0]])
    return out


def search(
    col: SearchableCollection,
    query: Any,
    *,
    level: str = "low",
    limit: int = 10,
    filter: str | None = None,  # noqa: A002
    filter_params: Mapping[str, Any] | None = None,
    modality: str | None = None,
    output_fields: Sequence[str] | None = None,
    search_params: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    consistency_level: str | None = None,
) -> SearchResults:
    """Single-stage search on one level: ``low`` = ANN on ``vec_low``, ``high`` = exact on ``vec_high``.

    The baselines the funnel is measured against (low-only, high-only). Arguments are those of
    :func:`hierarchical_search`, plus ``level``; ``search_params`` override the searched level's.

    Returns:
        ``SearchResults``: per query, hits ``{"id", "distance", "entity"}``; ``.timings``
        (``encode_s``, ``search_s``, ``total_s``).

    Raises:
        QueryError, SearchLimitError, FilterError, DimensionMismatchError, MilvusError: as for
        :func:`hierarchical_search`.
    """
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
    milvus = _Milvus(col, filter, filter_params, timeout=timeout, consistency_level=consistency_level)
    t0 = time.perf_counter()
    low, high, kinds = encode_queries(query, col.model)
    _check_query_dims(col, low, high)
    t1 = time.perf_counter()
    if level == "low":
        vectors, base = low, profile.low_search_params(limit, num_rows=col.approx_num_rows())
    else:
        vectors, base = high, profile.high_search_params()
    per_query = _search_partitions(
        milvus,
        vectors,
        resolve_modality(modality, kinds),
        anns_field=f"vec_{level}",
        limit=limit,
        output_fields=fields,
        search_params=_merge_search_params(base, search_params),
    )
    out = [[_hit(h, fields) for h in hits] for hits in per_query]
    t2 = time.perf_counter()
    return SearchResults(out, {"encode_s": t1 - t0, "search_s": t2 - t1, "total_s": t2 - t0})


__all__ = ["SearchResults", "SearchableCollection", "hierarchical_search", "search"]
