"""Three-stage search (coarse → fine → fusion) through the library against a real Milvus server.

The behaviour tests are those of tests/unit/test_fusion_search.py (a ``micro`` model with a random
fusion block; the stage-3 order must equal ``score_pairs``' order on the fine top-M, for both
re-rank paths; an unreadable image keeps its fine rank), loaded from that file and run here with a
``client`` connected to the integration suite's server over gRPC instead of an embedded Lite file.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from hivlp_milvus.connection import connect

pytestmark = pytest.mark.integration

_SHARED = Path(__file__).resolve().parents[1] / "unit" / "test_fusion_search.py"
_spec = importlib.util.spec_from_file_location("hivlp_fusion_behaviours", _SHARED)
assert _spec is not None
assert _spec.loader is not None
behaviours = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = behaviours
_spec.loader.exec_module(behaviours)

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
