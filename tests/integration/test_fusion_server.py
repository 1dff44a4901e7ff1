"""Three-stage search (coarse → fine → fusion) through the library against a real Milvus server.

The behaviour tests are those of tests/unit/test_fusion_search.py (a ``micro`` model with a random
fusion block; the stage-3 order must equal ``score_pairs``' order on the fine top-M, for both
re-rank paths; an unreadable image keeps its fine rank), loaded from that file and run here with a
``client`` connected to the integration suite's server over gRPC instead of an embedded Lite file.
"""

from __future__ import annotations

from typing import Any

import pytest
from shared_tests import load_unit_tests

from hivlp_milvus.connection import connect

pytestmark = pytest.mark.integration

behaviours = load_unit_tests("test_fusion_search.py", "hivlp_fusion_behaviours")

# Re-export the shared tests and every fixture (any public name but ``client``, so a fixture added
# there is never missing here): pytest collects them with the client fixture below.
for _name in dir(behaviours):
    if not _name.startswith("_") and _name != "client":
        globals().setdefault(_name, getattr(behaviours, _name))


@pytest.fixture(scope="module")
def client(milvus_server: Any) -> Any:
    return connect(milvus_server.uri, token=milvus_server.token)


def test_the_shared_tests_run_against_the_server(client: Any, milvus_server: Any) -> None:
    """Guards the re-export: the stage-3 order test is collected here and its client is the server's."""
    assert callable(globals().get("test_stage_three_order_is_the_scorers_order_on_the_fine_top_m"))
    assert client.get_server_version()  # a gRPC round trip: not an embedded Lite file
    assert milvus_server.uri.startswith("http")
