"""Ray Serve app for HiVLP search: batched encoders, a Milvus searcher, a FastAPI ingress, a web page.

Run it::

    serve run serving:app                                     # after `make demo` (quickstart layout)
    serve run serving:build_app checkpoint=DIR milvus_uri=URI collection=NAME api_key=SECRET

``app`` is built at import from the environment and the quickstart defaults (see
:mod:`serving.app`). Building only binds deployments: nothing is opened, so importing works before
the quickstart has run; a missing checkpoint or collection is reported when the replicas start.

``serving.app`` is therefore the Application, not the submodule of the same name: import the
builder with ``from serving import build_app`` (or ``from serving.app import build_app``).
See docs/serving.md.
"""

from __future__ import annotations

from serving.app import AppArgs, build_app, resolve_args

__all__ = ["AppArgs", "app", "build_app", "resolve_args"]

# Replaces the package attribute `app` (the submodule) with the Application `serve run` looks up.
app = build_app(AppArgs())
