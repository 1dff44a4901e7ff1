"""A bounded, seeded OpenAPI fuzzer over every route of the ingress (issue 17, "Fuzzing the HTTP API").

Schemathesis generates requests from the app's own OpenAPI document (``api.openapi()``) and sends
them in process to the ingress app over the real encoders and Searcher (``serving.inprocess``: the
micro model, Milvus Lite; no Ray), with the API key on. Each route gets a fixed number of examples
per generation mode (schema-valid and schema-invalid), derandomized, so a run is repeatable and
bounded. The model has a fusion block, so ``fusion_limit`` runs the third stage (FusionScorer). It
holds when:

* no generated request gets a 5xx;
* every 4xx carries the JSON error body (``error`` code and a ``message`` reason);
* responses conform to the schema (status documented, content type, body schema), and requests
  the schema calls invalid are refused (negative data rejection).

The multipart upload (``POST /search/image``) is one of the routes; without the key every route but
``/healthz`` answers 401 with the same JSON body.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the dev extra (pip install -e .[dev]) has schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from hivlp_milvus.connection import ConnectionOptions  # noqa: E402
from serving.ingress import IngressSettings, api  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo_layout import DemoLayout, build_demo_layout  # noqa: E402
from serving_helpers import ingest_with_a_fusion_model  # noqa: E402

# Per route and generation mode; HIVLP_FUZZ_EXAMPLES=500 for a deeper (slower) run by hand.
EXAMPLES_PER_ROUTE = int(os.environ.get("HIVLP_FUZZ_EXAMPLES", "30"))
API_KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
FUZZ = settings(
    max_examples=EXAMPLES_PER_ROUTE,
    derandomize=True,  # seeded: the same examples every run
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: report what was found, fast
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> DemoLayout:
    """The demo layout with a fusion block in the model, so ``fusion_limit`` runs the third stage."""
    demo = build_demo_layout(tmp_path_factory.mktemp("fuzz"), n_records=8)
    # The same data under a fusion model: its own checkpoint and collection (the fingerprint differs).
    model = ingest_with_a_fusion_model(demo.records, demo.root / "fusion_model", demo.uri, "fuzz_fusion")
    return DemoLayout(demo.root, demo.root / "fusion_model", demo.uri, "fuzz_fusion", model, demo.records)


@pytest.fixture(scope="module")
def schema(layout: DemoLayout) -> Iterator[Any]:
    from serving.inprocess import local_app

    settings_ = IngressSettings(collection=layout.collection, api_key=API_KEY, media_root=str(layout.root))
    with local_app(str(layout.model_dir), ConnectionOptions(uri=layout.uri), layout.collection, settings_) as app:
        loaded = schemathesis.openapi.from_dict(api.openapi())
        loaded.app = app
        yield loaded


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def _error_body_problem(response: Any) -> str | None:
    """Why a 4xx body is not the JSON error with a reason, or ``None`` when it is."""
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body.get("error")):
        return f"no 'error' code: {body!r:.200}"
    if not (isinstance(body.get("message"), str) and body["message"].strip()):
        return f"no 'message' reason: {body!r:.200}"
    return None


def test_every_route_is_fuzzed(schema: Any) -> None:
    routes = {(op.method.upper(), op.path) for op in _operations(schema)}
    assert routes >= {
        ("GET", "/healthz"),
        ("POST", "/search"),
        ("POST", "/search/image"),
        ("POST", "/encode"),
        ("POST", "/ingest"),
        ("GET", "/media/{row_id}"),
        ("GET", "/stats"),
    }, routes
    upload = next(op for op in _operations(schema) if op.path == "/search/image")
    assert "multipart/form-data" in str(upload.definition.raw["requestBody"]["content"])


def _fuzzer(op: Any, mode: GenerationMode, tried: Counter[str], statuses: Counter[tuple[str, int]]) -> Any:
    label = f"{op.method.upper()} {op.path}"

    @FUZZ
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        tried[label] += 1
        response = case.call_and_validate(headers=AUTH, checks=CHECKS)
        statuses[label, response.status_code] += 1
        body = case.body if isinstance(case.body, dict) else {}
        if response.status_code == 200 and body.get("fusion_limit") is not None:
            statuses[f"{label} with fusion_limit", 200] += 1  # the third stage ran
        if 400 <= response.status_code < 500:
            problem = _error_body_problem(response)
            assert problem is None, f"{response.status_code}: {problem}"

    return run


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_fuzz_every_route(schema: Any, mode: GenerationMode) -> None:
    tried: Counter[str] = Counter()
    statuses: Counter[tuple[str, int]] = Counter()
    found: list[str] = []
    for op in _operations(schema):
        try:
            _fuzzer(op, mode, tried, statuses)()
        except Unsatisfiable:
            # A route without parameters or body (GET /healthz) has no invalid input to generate.
            assert mode == GenerationMode.NEGATIVE, op.path
            assert not op.definition.raw.get("parameters"), op.path
            assert not op.definition.raw.get("requestBody"), op.path
            tried[f"{op.method.upper()} {op.path}"] += 0
        except Exception as exc:  # collect every route's finding, then fail once with all of them
            found.append(f"{op.method.upper()} {op.path}: {type(exc).__name__}: {str(exc)[:1500]}")
    print(f"\nfuzz {mode}: {sum(tried.values())} requests; by route and status: {dict(sorted(statuses.items()))}")
    assert not found, "\n\n".join(found)  # a 5xx is a finding of not_a_server_error
    assert set(tried) == {f"{op.method.upper()} {op.path}" for op in _operations(schema)}
    if mode == GenerationMode.POSITIVE:  # valid requests reach the fusion stage too
        assert ("POST /search with fusion_limit", 200) in statuses, statuses


def _unauthenticated(op: Any) -> Any:
    @settings(FUZZ, max_examples=3)
    @given(case=op.as_strategy())
    def run(case: Any) -> None:
        response = case.call(headers={"Authorization": ""})
        if op.path == "/healthz":
            assert response.status_code == 200
            return
        assert response.status_code == 401, (op.path, response.text)
        assert _error_body_problem(response) is None

    return run


def test_without_the_key_every_route_but_healthz_is_401_json(schema: Any) -> None:
    for op in _operations(schema):
        _unauthenticated(op)()
