"""The Serve app reaches Milvus with ONE ConnectionOptions built from its args: token, database and
TLS files, with the same precedence as every other arg (builder arg, then ``HIVLP_*``, then none);
and no URI credentials reach a client or a log. No Ray cluster: the builder and the Searcher class
are used directly.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from hivlp_milvus.connection import ConnectionOptions
from hivlp_milvus.errors import MilvusUnavailableError
from serving.app import AppArgs, build_app, env_var, resolve_args
from serving.ingress import to_api_error

TLS_ARGS = {
    "milvus_secure": "true",
    "milvus_server_pem_path": "certs/server.pem",
    "milvus_server_name": "milvus.internal",
    "milvus_ca_pem_path": "/etc/ca.pem",
    "milvus_client_pem_path": "certs/client.pem",
    "milvus_client_key_path": "certs/client.key",
    "milvus_db_name": "prod",
}


def test_args_become_one_connection_options(tmp_path: Path) -> None:
    uri = "https://milvus.internal:19530"
    given = AppArgs.model_validate({"milvus_uri": uri, "milvus_token": "app:pw", **TLS_ARGS})
    r = resolve_args(given, environ={}, cwd=str(tmp_path))
    assert r.connection == ConnectionOptions(
        uri=uri,
        token="app:pw",
        db_name="prod",
        secure=True,
        server_pem_path=str(tmp_path / "certs/server.pem"),  # relative files: absolute, like the checkpoint
        server_name="milvus.internal",
        ca_pem_path="/etc/ca.pem",
        client_pem_path=str(tmp_path / "certs/client.pem"),
        client_key_path=str(tmp_path / "certs/client.key"),
    )
    assert r.connection.tls() == {
        "secure": True,
        "server_pem_path": str(tmp_path / "certs/server.pem"),
        "server_name": "milvus.internal",
        "client_pem_path": str(tmp_path / "certs/client.pem"),
        "client_key_path": str(tmp_path / "certs/client.key"),
        "ca_pem_path": "/etc/ca.pem",
    }

    # The same from the environment; an arg still wins over its variable.
    env = {env_var(name): value for name, value in TLS_ARGS.items()}
    env |= {"HIVLP_MILVUS_URI": uri, "HIVLP_MILVUS_TOKEN": "env:pw"}
    from_env = resolve_args(AppArgs(milvus_server_name="from-arg"), environ=env, cwd=str(tmp_path))
    assert from_env.connection == r.connection.model_copy(update={"token": "env:pw", "server_name": "from-arg"})

    # Nothing given: Lite, no TLS options at all (pymilvus' own defaults).
    lite = resolve_args(AppArgs(), environ={}, cwd=str(tmp_path)).connection
    assert (lite.uri, lite.token, lite.db_name, lite.tls()) == (str(tmp_path / "hivlp_work/hivlp.db"), None, "", {})


def test_builder_gives_the_searcher_the_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = {"checkpoint": "/nowhere", "milvus_uri": "https://milvus:19530", **TLS_ARGS}
    # Ray's Application has no public accessor for the bound graph; the Searcher is the third argument.
    searcher = build_app(args)._bound_deployment.init_args[2]._bound_deployment
    assert searcher.name == "Searcher"
    # Every field as resolve_args makes it (checked field by field above: relative files made absolute).
    assert searcher.init_kwargs["connection"] == resolve_args(AppArgs.model_validate(args)).connection


def test_credentials_in_the_uri_never_reach_a_client_or_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import serving.encoders
    import serving.searcher as searcher_module
    from hivlp_milvus.model import create_model

    # The replica's thread count comes from its Ray context; asking for it here would start Ray.
    monkeypatch.setattr(serving.encoders, "torch_threads_for_replica", lambda: 1)
    create_model("micro", texts=["a red circle"], seed=0).save_pretrained(tmp_path / "model")
    # A closed port on the loopback: the connection fails at once, as a real outage does.
    options = ConnectionOptions(uri="http://user:pw@127.0.0.1:9", timeout=0.5, retries=1)
    caplog.set_level(logging.DEBUG)
    searcher = searcher_module.Searcher.func_or_class(str(tmp_path / "model"), "ignored", "c", connection=options)
    with pytest.raises(MilvusUnavailableError) as info:
        asyncio.run(searcher.search(np.zeros(16, np.float32), np.zeros(64, np.float32), limit=1))
    err = to_api_error(info.value)
    assert err.status == 503
    assert "127.0.0.1:9" in err.message  # where it failed is still said
    assert "pw" not in err.message
    assert "user:" not in err.message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "127.0.0.1:9" in logged
    assert "user:pw" not in logged
