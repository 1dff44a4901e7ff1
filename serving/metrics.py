"""Figures an operator can watch: per-stage latency, hits returned and errors, as Prometheus metrics.

The metrics are ``ray.serve.metrics`` objects, so Ray exports them (with the ``deployment``,
``replica`` and ``application`` labels Serve adds) in Prometheus text format at each node's metrics
export port (``ray start --metrics-export-port=8080``, or ``ray.init(_metrics_export_port=...)``);
Ray prefixes every name with ``ray_`` and gives counters a ``_total`` suffix:

===============================  =========  ==================  =====================================
exported name                    type       labels              what
===============================  =========  ==================  =====================================
``ray_hivlp_stage_seconds``      histogram  ``stage``           time of one stage of one request:
                                                                ``encode`` (a batch's forward pass),
                                                                ``coarse``, ``fine``, ``fusion``
``ray_hivlp_hits_returned``      counter    ``route``           hits answered (``search``, ...)
``ray_hivlp_errors``             counter    ``kind``,           error answers by code
                                            ``status``          (``invalid_filter``, 422, ...)
===============================  =========  ==================  =====================================

Every function is a no-op outside a Serve replica (unit tests, :mod:`serving.inprocess`), so callers
record unconditionally. A metric can never fail a request: a recording error is logged once.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger("ray.serve")

STAGES = ("encode", "coarse", "fine", "fusion")
STAGE_METRIC = "hivlp_stage_seconds"
HITS_METRIC = "hivlp_hits_returned"
ERRORS_METRIC = "hivlp_errors"
# Seconds: from a sub-millisecond Lite shortlist to a multi-second CPU fusion pass.
STAGE_BOUNDARIES = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None
_disabled = False  # set once when recording failed: never retried, never raised
_warned = False


def observe_stage(stage: str, seconds: float) -> None:
    """Record the latency of one stage of one request (or one encoder batch).

    Args:
        stage: one of :data:`STAGES`.
        seconds: its duration.

    Raises:
        ValueError: ``stage`` is not one of :data:`STAGES` (a programming error, raised everywhere so
            unit tests catch it even though nothing is recorded there).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; use one of {STAGES}")
    metrics = _replica_metrics()
    if metrics is not None:
        _record(metrics["stage"].observe, max(0.0, float(seconds)), {"stage": stage})


def count_hits(route: str, n: int) -> None:
    """Add ``n`` hits answered on ``route`` (``search``, ``search_image``, ...)."""
    metrics = _replica_metrics()
    if metrics is not None and n > 0:
        _record(metrics["hits"].inc, float(n), {"route": str(route)})


def count_error(kind: str, status: int) -> None:
    """Count one error answer: its code (``invalid_filter``, ``milvus_unavailable``, ...) and HTTP status."""
    metrics = _replica_metrics()
    if metrics is not None:
        _record(metrics["errors"].inc, 1.0, {"kind": str(kind), "status": str(int(status))})


def recording() -> bool:
    """True when the calls above record (inside a Serve replica, metrics created); False elsewhere."""
    return _replica_metrics() is not None


def _in_replica() -> bool:
    """True inside a Serve replica (where Ray exports the metrics)."""
    try:
        from ray import serve

        serve.get_replica_context()
    except Exception:  # RayServeException outside a replica; Ray absent or not initialised
        return False
    return True


def _replica_metrics() -> dict[str, Any] | None:
    """The process's metric objects, created on first use inside a replica; ``None`` elsewhere."""
    global _metrics, _disabled
    if _metrics is not None or _disabled:
        return _metrics
    if not _in_replica():
        return None
    with _lock:
        if _metrics is None and not _disabled:
            try:
                from ray.serve.metrics import Counter, Histogram

                _metrics = {
                    "stage": Histogram(
                        STAGE_METRIC,
                        description="Latency of one stage (encode, coarse, fine, fusion) in seconds.",
                        boundaries=list(STAGE_BOUNDARIES),
                        tag_keys=("stage",),
                    ),
                    "hits": Counter(HITS_METRIC, description="Hits returned, by route.", tag_keys=("route",)),
                    "errors": Counter(
                        ERRORS_METRIC, description="Error answers by code and status.", tag_keys=("kind", "status")
                    ),
                }
            except Exception as exc:  # metrics are an aid: the service runs without them
                _disabled = True
                logger.warning("serving.metrics: cannot create the metrics (%s); not recording", exc)
    return _metrics


def _record(fn: Any, value: float, tags: dict[str, str]) -> None:
    global _warned
    try:
        fn(value, tags=tags)
    except Exception as exc:  # never fail a request because a figure could not be recorded
        if not _warned:
            _warned = True
            logger.warning("serving.metrics: recording failed (%s); further failures are not logged", exc)
