"""HierarchicalCollection against a real Milvus server over gRPC (the ``milvus_server`` fixture).

The behaviour tests are those of tests/unit/test_collection_lite.py, loaded from that file and run
here with an ``env`` that points at the server; plus server-only checks (URI forms, templating).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from collection_rows import created
from shared_tests import load_unit_tests

from hivlp_milvus.connection import connect
from hivlp_milvus.errors import FilterError
from hivlp_milvus.ids import row_id

pytestmark = pytest.mark.integration

behaviours = load_unit_tests("test_collection_lite.py", "hivlp_collection_behaviours")

# Re-export the shared tests and fixtures: pytest collects them here, with the env fixture below.
for _name in dir(behaviours):
    if _name.startswith("test_") or _name in ("client", "model", "other_models", "populated"):
        globals()[_name] = getattr(behaviours, _name)

Env = behaviours.Env
unique = behaviours.unique


@pytest.fixture(scope="module")
def env(milvus_server: Any) -> Any:
    return Env(milvus_server.uri, milvus_server.token, milvus_server.engine)


def test_server_uri_forms(milvus_server: Any) -> None:
    """http:// and tcp:// reach the same server: a collection made through one is listed by the other."""
    client = connect(milvus_server.uri, token=milvus_server.token)
    name = unique("uri")
    client.create_collection(name, dimension=4)
    try:
        assert name in client.list_collections()
        tcp = connect(milvus_server.uri.replace("http://", "tcp://"), token=milvus_server.token)
        assert name in tcp.list_collections()
        assert tcp.get_server_version() == client.get_server_version()
    finally:
        client.drop_collection(name)


def test_templating_is_chosen_by_server_kind(env: Any, model: Any) -> None:
    with created(env.client(), model=model) as col:
        rows = behaviours.make_rows(model, n_images=4)
        col.upsert(rows)
        expr, params = col.bind_filter("key == {k}", {"k": "1"})
        if env.engine == "lite":  # milvus-lite server: no templating, values bound as literals
            assert (expr, params) == ('key == "1"', {})
        else:  # a real Milvus: filter_params travel unchanged
            assert (expr, params) == ("key == {k}", {"k": "1"})
        hits = col.query("key == {k}", filter_params={"k": "1"}, output_fields=["key"])
        assert [h["key"] for h in hits] == ["1"]
        with pytest.raises(FilterError):
            col.query("key == {k}")
        caption = next(r for r in rows if r["key"] == "1#0")
        q = model.embed_texts([caption["reference"]])
        res = col.hierarchical_search(q, limit=2, filter="key == {k}", filter_params={"k": "1#0"}, rerank="server")
        assert [h["id"] for h in res[0]] == [row_id("1#0", "text")]
        np.testing.assert_allclose(res[0][0]["distance"], 1.0, atol=1e-4)
