"""``ConnectionOptions``: one value for where and how to reach Milvus, and URI redaction."""

from __future__ import annotations

import pydantic
import pytest

from hivlp_milvus.connection import ConnectionOptions, redact_uri


def test_tls_options_are_only_the_ones_set():
    options = ConnectionOptions(uri="https://m:19530", secure=True, server_name="milvus.internal")
    assert options.tls() == {"secure": True, "server_name": "milvus.internal"}
    assert ConnectionOptions().tls() == {}


def test_unknown_option_is_an_error_and_options_are_frozen():
    with pytest.raises(pydantic.ValidationError, match="server_pem"):
        ConnectionOptions(server_pem="x.pem")
    options = ConnectionOptions()
    with pytest.raises(pydantic.ValidationError):
        options.uri = "other.db"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://root:Milvus@host:19530", "http://***@host:19530"),
        ("https://key@host", "https://***@host"),
        ("http://u:p@ss@[::1]:19530", "http://***@[::1]:19530"),
        ("http://host:19530", "http://host:19530"),
        ("./hivlp.db", "./hivlp.db"),
    ],
)
def test_redact_uri(uri, expected):
    assert redact_uri(uri) == expected
    assert ConnectionOptions(uri=uri).redacted_uri() == expected


def test_connect_lite(tmp_path):
    client = ConnectionOptions(uri=str(tmp_path / "c.db")).connect()
    assert client.list_collections() == []


def test_token_is_not_in_the_repr():
    options = ConnectionOptions(uri="http://m:19530", token="root:Sup3rSecret")
    assert "Sup3rSecret" not in repr(options)
    assert "Sup3rSecret" not in str(options)
    assert options.token == "root:Sup3rSecret"
