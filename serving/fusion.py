"""The FusionScorer deployment: the third search stage, re-scoring the fine stage's top-M, batched.

The ingress sends ONE request per search (``await handle.score.remote(request)``): the query (a
text, or the image bytes) and the fine stage's top-M candidate rows (``modality``, ``reference``).
``@serve.batch`` groups concurrent searches, and each batch is one
:func:`hivlp_milvus.fusion_stage.fusion_rerank` call, so the pairs of every search in the batch are
scored by one ``model.score_pairs`` call, and the order rules are the library's own (scored
candidates sorted by fusion score into the scored positions; an unscored one keeps its fine
position with ``fusion_score: None`` and the reason).

Candidate content is read by :mod:`hivlp_milvus.content`, the library's one resolver: a caption
is its reference; an image reference is a local path (relative ones resolve against
``media_root``, as ``GET /media/{id}`` does: the collection's reference paths) or, only when the
app is started with ``allow_http``, an ``http(s)://`` URL with a size and time limit. A candidate
whose image cannot be read is reported on that hit; it never fails the search.

The app builds this deployment only when the checkpoint has a fusion block.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import urllib.parse
from pathlib import Path
from typing import Any

from ray import serve

from hivlp_milvus.content import ContentOptions
from hivlp_milvus.errors import BadRecordError, ConfigError
from hivlp_milvus.fusion_stage import fusion_rerank, read_candidates
from serving.encoders import item_result, load_model

logger = logging.getLogger("ray.serve")

#: The candidate fields a fusion request carries per row (``score``: the fine stage's, which the
#: model's score mix adds to the fusion score).
CANDIDATE_FIELDS = ("id", "modality", "reference", "score")


@serve.deployment(
    name="FusionScorer",
    max_ongoing_requests=64,
    ray_actor_options={"num_cpus": 0.25},
    health_check_period_s=10,
    max_constructor_retry_count=3,
)
class FusionScorer:
    """Fusion re-ranking of one search's fine top-M, batched with concurrent searches.

    Args:
        checkpoint: a checkpoint with a fusion block.
        max_batch_size: searches per ``score_pairs`` call.
        batch_wait_timeout_s: how long a batch waits to fill.
        content: how candidate images are read (``root`` is ignored: see ``media_root``).
        media_root: directory relative image references resolve against.
        use_gpu: put the model on ``cuda``.

    Raises:
        ConfigError: the checkpoint has no fusion block.
    """

    def __init__(
        self,
        checkpoint: str,
        max_batch_size: int = 8,
        batch_wait_timeout_s: float = 0.01,
        content: ContentOptions | None = None,
        media_root: str = ".",
        use_gpu: bool = False,
    ) -> None:
        self.model = load_model(checkpoint, use_gpu=use_gpu)
        if not self.model.has_fusion:
            raise ConfigError(
                f"the checkpoint {checkpoint!r} has no fusion block, so the FusionScorer cannot run; serve it "
                "without the fusion deployment (the app builder leaves it out for such checkpoints)"
            )
        self.score_batch.set_max_batch_size(int(max_batch_size))
        self.score_batch.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        # References come from the collection, not the request: the same trust as /media, which
        # serves any file the collection references. Relative paths are resolved here instead.
        self._content = dataclasses.replace(content or ContentOptions(), root=None)
        self._media_root = Path(media_root)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def score_batch(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | BadRecordError]:
        return await self.score_many(requests)

    async def score(self, request: dict[str, Any]) -> dict[str, Any]:
        """Re-rank one search's candidates (batched with concurrent callers).

        Args:
            request: ``{"query": str | bytes, "kind": "text" | "image", "limit": int,
                "candidates": [{"id", "modality", "reference", "score"}, ...]}`` in fine order.

        Returns:
            ``{"ranked": [{"index", "fusion_score", "fusion_error"}], "batch_size", "pairs"}``:
            the first ``limit`` candidates in fusion order, ``index`` into ``candidates``.
        """
        # Candidates are read per request, before batching: a slow or unreadable image reference
        # then delays only its own search (at most one content timeout), never the whole batch.
        return item_result(await self.score_batch(await asyncio.to_thread(self._read, request)))

    async def score_now(self, request: dict[str, Any]) -> dict[str, Any]:
        """:meth:`score` without waiting for a batch (``@serve.batch`` runs only in a Serve replica)."""
        return item_result((await self.score_many([await asyncio.to_thread(self._read, request)]))[0])

    def _read(self, request: dict[str, Any]) -> dict[str, Any]:
        """The request with its candidates as hits and their content read (concurrently)."""
        hits = [
            {
                "id": c["id"],
                "index": i,
                "distance": c["score"],
                "entity": {"modality": c["modality"], "reference": self._resolve(c)},
            }
            for i, c in enumerate(request["candidates"])
        ]
        contents = read_candidates([request["kind"]], [hits], self._content)[0]
        return {**request, "hits": hits, "contents": contents}

    async def score_many(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | BadRecordError]:
        """Re-rank several searches in one ``score_pairs`` call (the body of a batch).

        Returns:
            One result per request, as :meth:`score` returns it; a request whose own query image
            cannot be decoded gets the ``BadRecordError`` itself instead (raised to its caller only).
        """
        # A worker thread keeps the event loop free to collect the next batch meanwhile.
        return await asyncio.to_thread(self._rerank, requests)

    def _rerank(self, requests: list[dict[str, Any]]) -> list[dict[str, Any] | BadRecordError]:
        started = time.perf_counter()
        requests = [r if "contents" in r else self._read(r) for r in requests]
        # Copies: a request split off a failed batch below is scored again from its fine order.
        hits = [[{**h} for h in r["hits"]] for r in requests]
        try:
            ranked, _ = fusion_rerank(
                self.model,
                [r["query"] for r in requests],
                [r["kind"] for r in requests],
                hits,
                max((int(r["limit"]) for r in requests), default=0),  # each request keeps its own below
                self._content,
                contents=[r["contents"] for r in requests],
            )
        except BadRecordError as exc:
            if len(requests) == 1:
                return [exc]
            # A query image that does not decode fails its own search only: score each alone.
            return [item for r in requests for item in self._rerank([r])]
        pairs = sum(h.get("fusion_score") is not None for cands in hits for h in cands)
        logger.debug(
            "FusionScorer: %d searches, %d pairs in %.3f s", len(requests), pairs, time.perf_counter() - started
        )
        return [
            {
                "ranked": [
                    {"index": h["index"], "fusion_score": h.get("fusion_score"), "fusion_error": h.get("fusion_error")}
                    for h in cands[: int(r["limit"])]
                ],
                "batch_size": len(requests),
                "pairs": pairs,
            }
            for r, cands in zip(requests, ranked, strict=True)
        ]

    def _resolve(self, candidate: dict[str, Any]) -> Any:
        """An image row's relative path joined to ``media_root``; anything else as it is."""
        reference = candidate.get("reference")
        if candidate.get("modality") != "image" or not isinstance(reference, str) or not reference:
            return reference
        if len(urllib.parse.urlsplit(reference).scheme) > 1 or Path(reference).is_absolute():
            return reference  # a URL (file://, http(s)://, refused schemes) or an absolute path
        return str(self._media_root / reference)

    def check_health(self) -> None:
        """Serve calls this periodically; the scorer holds no connection, so it is healthy while it runs."""
