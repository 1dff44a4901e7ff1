"""Helpers shared by the serving test modules (tests/ray/test_serving.py, tests/ray/test_faults.py and
tests/unit/test_{serving_schemas,serving_http,serving_inprocess,media_security,content_limits,fuzz_http,readers}.py)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def wait_until(what: str, check: Callable[[], Any], deadline_s: float) -> Any:
    """Poll ``check`` until it returns something truthy and return that; fail after ``deadline_s``.

    The tests wait for an event (a batch formed, a replica replaced) rather than sleep a fixed time:
    the deadline only bounds a hang, so it can be generous on a loaded machine.
    """
    deadline = time.monotonic() + deadline_s
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.05)
    return value


def png(size: tuple[int, int] = (8, 8), color: tuple[int, int, int] = (10, 200, 30), noise: bool = False) -> bytes:
    """A PNG file's bytes: one colour compresses to almost nothing (few bytes, many pixels);
    ``noise`` is incompressible (big in bytes)."""
    if noise:
        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    else:
        img = Image.new("RGB", size, color)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """Assert the app's JSON error body (an ``error`` code, a non-empty ``message``) with this status."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    body = response.json()
    assert set(body) >= {"error", "message"}, body
    assert body["message"], body
    if code is not None:
        assert body["error"] == code, body
    return body


def ingest_with_a_fusion_model(records: list[Any], model_dir: Path, uri: str, collection: str) -> Any:
    """Save a random-init ``micro`` model with a fusion block (so ``fusion_limit`` runs the third stage;
    vocabulary from the captions, seed 0) to ``model_dir``, ingest ``records`` with it into
    ``collection`` at ``uri``, and return the model."""
    from model_helpers import micro_fusion_model

    import hivlp_milvus

    model = micro_fusion_model([c for r in records for c in r.captions])
    model.save_pretrained(model_dir)
    hivlp_milvus.ingest(records, uri=uri, collection_name=collection, model=model, progress=False)
    return model
