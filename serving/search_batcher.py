"""Cross-request batching: concurrent calls with the same key become one call over a list of items.

The Searcher uses it so that concurrent searches with compatible parameters (same limit, shortlist,
filter, modality, vector dims) run as ONE multi-query ``hierarchical_search``: one coarse request
and one fine stage for the whole group instead of one each.

There is no timer. At most ``max_inflight`` batches run at once (1 for Milvus Lite, which serves
one call at a time anyway); a caller that finds every slot busy waits, and whoever gets the next
slot takes everything queued under its key (up to ``max_batch_size``). So a lone client pays no
added latency, and under load the queue that would have formed anyway becomes one batch.

Every caller's item is taken by some batch: each caller runs one drain after queueing its item,
each drain takes at least one item while any is queued, so there are never fewer drains to come
than batches needed to empty the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

RunBatch = Callable[[Hashable, list[Any]], Awaitable[list[Any]]]


class QueryBatcher:
    """Group concurrent :meth:`submit` calls by key and run each group with one ``run_batch`` call.

    Args:
        run_batch: ``await run_batch(key, items)`` returns one result per item, in order. Raising
            fails every caller of that batch (and nobody else).
        max_batch_size: the most items one batch takes.
        max_inflight: the most batches running at once.
    """

    def __init__(self, run_batch: RunBatch, *, max_batch_size: int = 32, max_inflight: int = 1) -> None:
        if max_batch_size < 1 or max_inflight < 1:
            raise ValueError("max_batch_size and max_inflight must be >= 1")
        self._run_batch = run_batch
        self.max_batch_size = int(max_batch_size)
        self._max_inflight = int(max_inflight)
        self._slots: asyncio.Semaphore | None = None  # created in the serving event loop
        self._queues: dict[Hashable, list[tuple[Any, asyncio.Future[Any]]]] = {}
        self.batches = 0
        self.items = 0

    async def submit(self, key: Hashable, item: Any) -> Any:
        """Queue ``item`` under ``key``; return its result once a batch has run it."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_inflight)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append((item, future))
        async with self._slots:
            group = self._take(key)
            if group:
                # Shielded: a caller cancelled mid-batch (a client gone) must not strand the others.
                await asyncio.shield(asyncio.ensure_future(self._run(key, group)))
        return await future

    def _take(self, key: Hashable) -> list[tuple[Any, asyncio.Future[Any]]]:
        queue = self._queues.get(key)
        if not queue:
            return []
        group, rest = queue[: self.max_batch_size], queue[self.max_batch_size :]
        if rest:
            self._queues[key] = rest
        else:
            del self._queues[key]
        return group

    async def _run(self, key: Hashable, group: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        self.batches += 1
        self.items += len(group)
        try:
            results = await self._run_batch(key, [item for item, _ in group])
            if len(results) != len(group):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(group)} items")
        except BaseException as exc:  # every caller of this batch gets the batch's error
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)
