"""The Searcher deployment: owns the Milvus connection and the HierarchicalCollection.

Queries arrive already encoded (the encoders batch them), so a search here is the coarse -> fine
funnel only. The collection is opened *with* the model, so a checkpoint that does not match the
collection's dims or fingerprint stops the app at start-up with a clear message instead of
returning garbage.

**Milvus Lite is single-process.** A ``.db`` path is opened by exactly one process; a second
replica cannot open it. The builder therefore runs ONE Searcher replica for ``.db`` URIs, and this
class serialises calls to Lite (one at a time; Lite is not meant for concurrent clients). For a
Milvus server (``http(s)://``) run as many replicas as you like.

Milvus being unreachable is not fatal: the replica starts anyway, every call answers
:class:`MilvusUnavailableError` (HTTP 503) quickly, reconnects are retried at most every
:data:`RECONNECT_EVERY_S` seconds, and ``check_health`` only fails once an outage has lasted
:data:`UNHEALTHY_AFTER_S` (a fresh replica has a fresh connection; restarting on every blip would
only churn).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from ray import serve

from hivlp_milvus.connection import ConnectionOptions, guarded, is_server_uri, redact_uri
from hivlp_milvus.errors import CollectionNotFoundError, ConfigError, MilvusUnavailableError
from serving import metrics
from serving.encoders import load_model
from serving.search_batcher import QueryBatcher

logger = logging.getLogger("ray.serve")

RECONNECT_EVERY_S = 5.0
UNHEALTHY_AFTER_S = 60.0
_CONNECT_TIMEOUT_S = 3.0
_SERVER_CONCURRENCY = 8
HIT_FIELDS = ("key", "modality", "reference", "attributes")
MAX_QUERY_BATCH = 32


def search_key(params: Mapping[str, Any], query: tuple[np.ndarray, np.ndarray]) -> tuple[Any, ...]:
    """What two searches must share to run in one multi-query request (hashable).

    The parameters (filter values included, by their JSON form: ``1``, ``1.0`` and ``"1"`` differ)
    and the vectors' shapes, so a query of the wrong dims is never batched with good ones.
    """
    values = json.dumps(params.get("filter_params") or {}, sort_keys=True, default=repr)
    scalars = tuple((k, params.get(k)) for k in ("limit", "coarse_limit", "filter", "modality"))
    return (*scalars, values, query[0].shape, query[1].shape)


@serve.deployment(
    name="Searcher",
    num_replicas=1,  # the builder keeps 1 for Milvus Lite; servers may use more
    max_ongoing_requests=32,
    ray_actor_options={"num_cpus": 0.5},
    health_check_period_s=10,
    health_check_timeout_s=30,
    # Constructor failures are configuration errors (no checkpoint, no collection, wrong model);
    # retrying them 20 times (Serve's default) only delays the message.
    max_constructor_retry_count=3,
)
class Searcher:
    """Hierarchical search, small ingests and reference look-ups on one collection.

    Args:
        checkpoint: the model checkpoint (checked against the collection's dims and fingerprint).
        milvus_uri: a Milvus Lite ``.db`` path or a ``http(s)://`` server URI.
        collection: the collection name.
        milvus_token: server token (``user:password`` or an API key).
        connection: where and how to reach Milvus (URI, token, TLS files, server name) in one value;
            when given, ``milvus_uri`` and ``milvus_token`` are ignored. Its ``timeout`` bounds
            each connect attempt (default 3 s here: a replica answers 503 quickly when Milvus is down).
        batch_queries: run concurrent compatible searches as one multi-query search (the default);
            ``False``: one ``hierarchical_search`` per request.
        max_query_batch: the most queries in one such search.
    """

    def __init__(
        self,
        checkpoint: str,
        milvus_uri: str,
        collection: str,
        milvus_token: str | None = None,
        connection: ConnectionOptions | None = None,
        batch_queries: bool = True,
        max_query_batch: int = MAX_QUERY_BATCH,
    ) -> None:
        self._model = load_model(checkpoint)
        if connection is None:
            connection = ConnectionOptions(uri=str(milvus_uri), token=milvus_token or None)
        if connection.timeout is None:
            connection = connection.model_copy(update={"timeout": _CONNECT_TIMEOUT_S})
        self._connection = connection
        self._uri = connection.uri
        self._name = str(collection)
        self._lite = not is_server_uri(self._uri)
        self._col: Any = None
        self._error: Exception | None = None
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._connect_lock = threading.Lock()
        # Lite: one call at a time. Server: bounded so a slow Milvus does not pile up threads.
        self._slots = threading.BoundedSemaphore(1 if self._lite else _SERVER_CONCURRENCY)
        # At most as many batches in flight as Milvus slots: queries arriving meanwhile form the next batch.
        self._batching = bool(batch_queries)
        self._batcher = QueryBatcher(
            self._run_search_batch,
            max_batch_size=max_query_batch,
            max_inflight=1 if self._lite else _SERVER_CONCURRENCY,
        )
        self._connect(retries=3 if not self._lite else 1)

    # -- connection -------------------------------------------------------------------------------

    def _connect(self, retries: int = 1) -> None:
        """Open the collection; Milvus being down is remembered, anything else is raised."""
        from hivlp_milvus.collection import HierarchicalCollection

        try:
            client = self._connection.model_copy(update={"retries": retries}).connect()
        except MilvusUnavailableError as exc:
            self._mark_down(exc)
            logger.warning("Searcher: Milvus at %s is unreachable (%s); will retry", self._redacted_uri(), exc)
            return
        except ConfigError as exc:
            if self._lite:
                raise ConfigError(
                    f"cannot open Milvus Lite at {self._uri!r}: {exc}. A .db file can be opened by ONE "
                    "process: stop other users of it (a running `hivlp-milvus` command, another Serve app "
                    "or a second Searcher replica: keep num_replicas: 1 for .db URIs), or use a Milvus server"
                ) from exc
            raise
        # Not found / schema / model mismatches are configuration errors: fail the replica with
        # the library's message, which says what to do.
        self._col = HierarchicalCollection.open(self._name, client=client, model=self._model)
        self._error = None
        self._down_since = None
        logger.info("Searcher: opened %r", self._col)

    def _mark_down(self, exc: Exception) -> None:
        self._col = None
        self._error = exc
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._retry_at = time.monotonic() + RECONNECT_EVERY_S

    def _collection(self) -> Any:
        """The open collection, reconnecting (rate-limited) after an outage."""
        if self._col is not None:
            return self._col
        with self._connect_lock:
            if self._col is None and time.monotonic() >= self._retry_at:
                self._connect(retries=1)
            if self._col is None:
                raise MilvusUnavailableError(
                    f"Milvus at {self._redacted_uri()} is unreachable ({self._error}); retrying every "
                    f"{RECONNECT_EVERY_S:.0f} s"
                )
            return self._col

    def _redacted_uri(self) -> str:
        # URIs may carry credentials (https://user:pass@host); never echo them to clients.
        return redact_uri(self._uri)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(collection, ...)`` in a Milvus slot; an outage is remembered (and is a 503).

        The library raises only HiVLPError subclasses, so the outage is told by its type
        (``MilvusUnavailableError``), never by the words of a message.
        """
        col = self._collection()
        with self._slots:
            try:
                return fn(col, *args, **kwargs)
            except MilvusUnavailableError as exc:
                self._mark_down(exc)
                raise MilvusUnavailableError(
                    f"Milvus at {self._redacted_uri()} stopped answering: {exc}", code=exc.code
                ) from exc

    # -- API (called by the ingress through a DeploymentHandle) ----------------------------------

    async def search(
        self,
        low: np.ndarray,
        high: np.ndarray,
        *,
        limit: int = 10,
        coarse_limit: int | None = None,
        filter: str = "",  # noqa: A002  (mirrors MilvusClient)
        filter_params: Mapping[str, Any] | None = None,
        modality: str = "all",
    ) -> dict[str, Any]:
        """Coarse -> fine search for one encoded query, batched with concurrent compatible queries.

        Concurrent calls with the same ``limit``, ``coarse_limit``, filter, parameters, modality
        and vector dims run as ONE multi-query ``hierarchical_search`` (see
        :mod:`serving.search_batcher`); each caller gets exactly the hits a lone query would get.

        Args:
            low: the query's low-dim vector.
            high: the query's high-dim vector.
            limit: hits to return.
            coarse_limit: shortlist size (``None``: the library default).
            filter: a Milvus expression with ``{name}`` placeholders (from ``structured_filter``).
            filter_params: the placeholder values.
            modality: ``image``, ``text`` or ``all``.

        Returns:
            ``{"hits": [{id, score, coarse_score, key, modality, reference, attributes}], "timings": {...},
            "batch_size": n, "plan": "exact" | "hierarchical", "coarse_limit": k}``
            (timings in seconds, from the library, for the whole batch of ``n`` queries).

        Raises:
            SearchLimitError, FilterError, QueryError, DimensionMismatchError: bad input (4xx).
            MilvusUnavailableError: Milvus is unreachable (503).
        """
        query = (np.asarray(low, np.float32).reshape(-1), np.asarray(high, np.float32).reshape(-1))
        params = {
            "limit": limit,
            "coarse_limit": coarse_limit,
            "filter": filter or None,
            "filter_params": dict(filter_params or {}),
            "modality": modality,
        }
        if not self._batching:
            return (await asyncio.to_thread(self._search_now, params, [query]))[0]
        return await self._batcher.submit(search_key(params, query), (params, query))

    async def _run_search_batch(self, key: Any, items: list[Any]) -> list[Any]:
        # Every item of a batch has the same key, so the first one's parameters are everyone's. An
        # error (a bad filter, an outage) is every caller's of this batch: they share the key, so
        # they share the parameters and vector dims that could be at fault.
        return await asyncio.to_thread(self._search_now, items[0][0], [query for _, query in items])

    def _search_now(self, params: dict[str, Any], queries: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
        """One ``hierarchical_search`` over ``queries`` (all with ``params``): one answer per query."""
        from hivlp_milvus.model.embedding import HierarchicalEmbedding

        embedding = HierarchicalEmbedding(np.stack([q[0] for q in queries]), np.stack([q[1] for q in queries]))
        results = self._call(lambda col: col.hierarchical_search(embedding, output_fields=list(HIT_FIELDS), **params))
        timings = dict(results.timings)
        answers = []
        for per_query in results:
            hits = [
                {
                    "id": int(h["id"]),
                    "score": float(h["distance"]),
                    "coarse_score": None if h.get("coarse_distance") is None else float(h["coarse_distance"]),
                    **{f: h["entity"].get(f) for f in HIT_FIELDS},
                }
                for h in per_query
            ]
            # Each caller waited for the whole batch's stages: that is its latency per stage.
            for stage in ("coarse", "fine"):
                if f"{stage}_s" in timings:
                    metrics.observe_stage(stage, timings[f"{stage}_s"])
            metrics.count_hits("search", len(hits))
            answers.append(
                {
                    "hits": hits,
                    "timings": timings,
                    "batch_size": len(queries),
                    "plan": results.plan,
                    "coarse_limit": results.coarse_limit,
                }
            )
        return answers

    def batch_stats(self) -> dict[str, Any]:
        """Cross-request batching so far: ``{"enabled", "batches", "queries", "max_batch_size"}``."""
        b = self._batcher
        return {"enabled": self._batching, "batches": b.batches, "queries": b.items, "max_batch_size": b.max_batch_size}

    def set_batching(self, enabled: bool) -> None:
        """Turn cross-request batching on or off while serving (the load benchmark interleaves both)."""
        self._batching = bool(enabled)

    def ingest(self, records: list[Any]) -> dict[str, Any]:
        """Upsert already-encoded rows (:class:`hivlp_milvus.data.EmbeddingRecord`) with ``ingest()``.

        Returns:
            ``IngestReport.to_dict()``: inserted / updated / failed (per key, with the reason).
        """
        from hivlp_milvus.ingest import ingest

        return self._call(lambda col: ingest(records, collection=col, progress=False, pipeline=False)).to_dict()

    def reference(self, row_id: int) -> dict[str, Any] | None:
        """``{"key", "modality", "reference"}`` of one row, or ``None`` when there is no such row."""
        rows = self._call(lambda col: col.get([int(row_id)], output_fields=["key", "modality", "reference"]))
        return {k: rows[0].get(k) for k in ("key", "modality", "reference")} if rows else None

    def ping(self) -> dict[str, Any]:
        """A round trip to Milvus: ``{"collection", "count"}``; raises MilvusUnavailableError when down."""

        def run(col: Any) -> dict[str, Any]:
            client = guarded(col.client)
            # has_collection is the round trip: Milvus answering is not enough when the collection
            # this app serves was dropped (that is a misconfiguration, not an outage).
            if not client.has_collection(self._name, timeout=_CONNECT_TIMEOUT_S):
                raise CollectionNotFoundError(
                    f"collection {self._name!r} no longer exists in Milvus at {self._redacted_uri()}; "
                    "re-ingest it, or restart the app with another collection"
                )
            return {"collection": self._name, "count": col.approx_num_rows() or 0}

        return self._call(run)

    def check_health(self) -> None:
        """Fail only after a long outage, so Serve replaces the replica (and its connection)."""
        try:
            self.ping()
        except CollectionNotFoundError as exc:
            # A misconfiguration (the collection was dropped), not a sick replica: a new replica would
            # find the same; /healthz and every search say so instead.
            logger.warning("Searcher health: %s", exc)
        except MilvusUnavailableError as exc:
            down_for = time.monotonic() - (self._down_since or time.monotonic())
            if down_for >= UNHEALTHY_AFTER_S:
                raise RuntimeError(f"Milvus unreachable for {down_for:.0f} s: {exc}") from exc
            logger.warning("Searcher health: Milvus unreachable for %.0f s: %s", down_for, exc)
