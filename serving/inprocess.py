"""The HTTP API in this process, without Ray: the ingress's FastAPI app over the real encoder and
searcher classes. For tests (the OpenAPI fuzzer, ``tests/unit/test_serving_*.py``) and debugging.

Serve runs ``Ingress``, ``TextEncoder``, ``ImageEncoder``, ``Searcher`` (and ``FusionScorer``) as
replicas that call each other through ``DeploymentHandle``\\ s. Here each class is instantiated in
this process and each handle is a :class:`LocalHandle`: ``handle.method.remote(...)`` runs the real
method (a sync one in a worker thread, as Serve runs it). One difference, named: ``@serve.batch``
only runs inside a Serve replica (Ray 2.60 reads the replica context when the batch queue starts,
and Serve's local testing mode sets none), so the encoders' ``encode`` is served by ``encode_now``
and the FusionScorer's ``score`` by ``score_now``: the same checks, forward pass and errors, in
batches of one.

Example::

    with local_app(checkpoint, ConnectionOptions(uri="hivlp_work/hivlp.db"), "quickstart") as app:
        client = fastapi.testclient.TestClient(app)
        client.post("/search", json={"text": "a red circle", "modality": "all"})
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from hivlp_milvus.connection import ConnectionOptions
from hivlp_milvus.content import ContentOptions
from serving.app import checkpoint_has_fusion
from serving.encoders import ImageEncoder, TextEncoder
from serving.fusion import FusionScorer
from serving.ingress import Ingress, IngressSettings, api, configure
from serving.searcher import Searcher


class LocalHandle:
    """A stand-in for a ``DeploymentHandle`` that calls an object in this process.

    Args:
        target: the deployment's object (an instance of the class Serve would run).
        renames: handle method name -> the target's method that serves it.
    """

    def __init__(self, target: Any, **renames: str) -> None:
        self._target = target
        self._renames = renames

    def __getattr__(self, name: str) -> SimpleNamespace:
        """``handle.name``: an object whose ``remote(...)`` calls the target's method."""
        if name.startswith("_"):
            raise AttributeError(name)
        method = getattr(self._target, self._renames.get(name, name))

        def remote(*args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            # Started now (as a handle does); the caller awaits the future.
            if inspect.iscoroutinefunction(method):
                return asyncio.ensure_future(method(*args, **kwargs))
            return asyncio.ensure_future(asyncio.to_thread(method, *args, **kwargs))

        return SimpleNamespace(remote=remote)


def plain_class(deployment: Any) -> type:
    """The user's class under Serve's ingress wrapper (whose ``__init__`` is a coroutine Serve awaits)."""
    for cls in deployment.func_or_class.__mro__:
        init = vars(cls).get("__init__")
        if init is not None and not inspect.iscoroutinefunction(init):
            return cls
    raise TypeError(f"no synchronous constructor under {deployment.func_or_class!r}")


def api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every ``APIRoute`` in ``routes`` (e.g. ``serving.ingress.api.routes``), the class's own included.

    Serve re-mounts the ingress class's routes under an included router: the walk goes into it.
    """
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from api_routes(inner.routes)


def _self_dependencies(app: FastAPI) -> set[Any]:
    """The dependencies Serve gave the routes' ``self`` parameter (they read the replica context).

    Serve rewrites each method's signature to ``self=Depends(get_current_servable_instance)``.
    """
    found = set()
    for route in api_routes(app.routes):
        param = inspect.signature(route.endpoint).parameters.get("self")
        dependency = getattr(getattr(param, "default", None), "dependency", None)
        if dependency is not None:
            found.add(dependency)
    return found


@contextlib.contextmanager
def local_app(
    checkpoint: str,
    connection: ConnectionOptions,
    collection: str,
    settings: IngressSettings | None = None,
    allow_http: bool = False,
) -> Iterator[FastAPI]:
    """The ingress app with real encoders and a real Searcher in this process (no Ray).

    Args:
        checkpoint: the model directory.
        connection: how the Searcher reaches Milvus (a Lite ``.db`` path works).
        collection: the collection to search.
        settings: the ingress limits and API key (default: none, the builder's limits).
        allow_http: the fusion stage may fetch ``http(s)://`` image references.

    Yields:
        The FastAPI app (the module's ``api``), routed to these objects until the block ends. The
        app is one per process: a ``local_app`` opened inside another serves ``api`` until it ends.
    """
    settings = replace(settings or IngressSettings(collection=collection), collection=collection)
    text = LocalHandle(TextEncoder.func_or_class(checkpoint), encode="encode_now")
    image = LocalHandle(ImageEncoder.func_or_class(checkpoint), encode="encode_now")
    searcher = LocalHandle(Searcher.func_or_class(checkpoint, connection.uri, collection, connection=connection))
    fusion = None
    if checkpoint_has_fusion(checkpoint):  # as the builder: the scorer exists only for a fusion block
        content = ContentOptions(allow_http=allow_http)
        scorer = FusionScorer.func_or_class(checkpoint, content=content, media_root=settings.media_root)
        fusion = LocalHandle(scorer, score="score_now")
    ingress = plain_class(Ingress)(text, image, searcher, settings, fusion)
    overrides = _self_dependencies(api)
    if not overrides:
        raise RuntimeError("the ingress routes have no `self` dependency: has Serve's class-based view changed?")
    # One `api` per process: the innermost open app serves it; an outer one is restored on exit
    # (this module is the only one that overrides the app's dependencies).
    previous = dict(api.dependency_overrides)
    api.dependency_overrides.update(dict.fromkeys(overrides, lambda: ingress))
    try:
        yield api
    finally:
        api.dependency_overrides.clear()
        api.dependency_overrides.update(previous)
        configure(IngressSettings(collection=collection))  # no API key, default limits: as at import
