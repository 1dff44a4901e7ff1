"""Named fakes for faults and engines that cannot be produced here. Nothing else in the suite is faked.

:class:`ServerLikeClient` wraps a real ``MilvusClient`` connected to Milvus Lite (in-process or
``milvus-lite server``) and makes it look like a Milvus server to the library, so the library's
server code paths run against a real engine on a machine without Docker:

* **Engine kind** (FAKE): ``get_server_version()`` answers a standalone server's version, so
  ``is_lite()`` is false and the library picks server behaviour (``rerank="auto"`` -> server,
  the ``gpu``/``cpu`` profiles, flat index build params, mmap on ``vec_high``, filter templating).
* **Filter templating** (EMULATED): Milvus Lite 3.2 rejects ``{name}`` placeholders ("unexpected
  character '{'"), which a server binds from ``filter_params``. The fake renders them to literals
  before forwarding, and is strict the way a server is: every placeholder needs a parameter and
  every parameter a placeholder. What it received is kept in ``calls`` so tests can assert that
  values travelled as parameters, never inside the expression.
* **A refused GPU index** (FAULT): ``refuse_gpu="always"`` makes ``create_index`` fail for any
  ``GPU_*`` index, as a CPU-only Milvus does; ``refuse_gpu="build"`` accepts it on a throw-away
  collection (the library's probe) and refuses it on a real HiVLP collection (the one with a
  ``vec_low`` field), as a GPU server does when the real build fails (e.g. out of GPU memory).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from pymilvus.exceptions import MilvusException

SERVER_VERSION = "v2.6.22"  # what a standalone Milvus answers (pinned image of tests/milvus_server.py)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def render_literal(value: Any) -> str:
    """A Milvus expression literal for a template parameter (independent of hivlp_milvus.filters)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # double-quoted, backslash-escaped: Milvus' string literal syntax
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render_literal(v) for v in value) + "]"
    raise TypeError(f"the templating fake renders bool/int/float/str/list parameters, got {type(value).__name__}")


def render_template(expr: str, params: dict[str, Any]) -> str:
    """``expr`` with each ``{name}`` replaced by its parameter; strict like a Milvus server."""
    names = set(_PLACEHOLDER.findall(expr))
    if names - set(params):
        raise MilvusException(code=1100, message=f"filter_params lacks {sorted(names - set(params))} for {expr!r}")
    if set(params) - names:
        raise MilvusException(code=1100, message=f"filter_params {sorted(set(params) - names)} unused in {expr!r}")
    return _PLACEHOLDER.sub(lambda m: render_literal(params[m.group(1)]), expr)


class ServerLikeClient:
    """FAKE: a real Milvus Lite client presented to the library as a Milvus server (module docstring).

    Args:
        client: a connected ``MilvusClient`` to Milvus Lite.
        refuse_gpu: ``None``, ``"always"`` or ``"build"`` (see the module docstring).
    """

    FILTERED = ("search", "query", "delete")  # the calls whose filter is rendered and recorded

    def __init__(self, client: Any, *, refuse_gpu: str | None = None) -> None:
        if refuse_gpu not in (None, "always", "build"):
            raise ValueError(f"refuse_gpu must be None, 'always' or 'build', got {refuse_gpu!r}")
        self.real = client
        self.refuse_gpu = refuse_gpu
        self.calls: list[tuple[str, dict[str, Any]]] = []  # (method, {"filter": ..., "filter_params": ...})
        self.refused: list[str] = []  # index types refused, in order

    def get_server_version(self, **kwargs: Any) -> str:
        return SERVER_VERSION

    def create_index(self, collection_name: str, index_params: Any, **kwargs: Any) -> Any:
        fields = {p.field_name for p in index_params}
        for param in index_params:
            gpu = str(param.index_type).upper().startswith("GPU_")
            if gpu and (self.refuse_gpu == "always" or (self.refuse_gpu == "build" and "vec_low" in fields)):
                self.refused.append(param.index_type)
                raise MilvusException(
                    code=1100, message=f"invalid index type: {param.index_type} (this Milvus has no GPU support)"
                )
        return self.real.create_index(collection_name, index_params, **kwargs)

    def _filtered(self, method: str, *args: Any, **kwargs: Any) -> Any:
        expr = kwargs.get("filter") or ""
        params = kwargs.pop("filter_params", None) or {}
        self.calls.append((method, {"filter": expr, "filter_params": dict(params)}))
        if params or _PLACEHOLDER.search(expr):
            kwargs["filter"] = render_template(expr, params)
        return getattr(self.real, method)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name in self.FILTERED:
            return functools.partial(self._filtered, name)
        # Everything else is the real client's (create/drop/get/upsert/flush/describe/...).
        return getattr(self.real, name)
