"""Helpers the ingest and command-line tests share: BYO vector records, ``search --json``, a clean shell.

tests/conftest.py has pytest rewrite the asserts here as in test modules; they also carry their own messages.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pytest

from hivlp_milvus.data import EmbeddingRecord

HIVLP_ENV = ("HIVLP_CHECKPOINT", "HIVLP_MILVUS_URI", "HIVLP_MILVUS_TOKEN", "HIVLP_COLLECTION")


def byo(n: int, seed: int = 0, low: int = 8, high: int = 32, prefix: str = "e") -> list[EmbeddingRecord]:
    """``n`` records with their own random vectors: keys ``{prefix}{i}``, every third one a text row."""
    rng = np.random.default_rng(seed)
    return [
        EmbeddingRecord(
            id=f"{prefix}{i}",
            modality="image" if i % 3 else "text",
            vec_low=rng.standard_normal(low).astype(np.float32),
            vec_high=rng.standard_normal(high).astype(np.float32),
            reference=f"ref-{i}",
            attributes={"i": i, "tag": ["a", "b"][i % 2]},
        )
        for i in range(n)
    ]


def search_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """What ``hivlp-milvus search ARGV --json`` prints, parsed (it must exit 0)."""
    from hivlp_milvus.cli import main

    capsys.readouterr()
    assert main(["search", *argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def enter_without_hivlp_env(monkeypatch: pytest.MonkeyPatch, directory: str | os.PathLike[str]) -> None:
    """Make ``directory`` the current one with no HIVLP_* variable set: only the defaults apply."""
    for name in HIVLP_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(directory)


def encoded_rows(model: Any, records: list) -> dict[int, tuple[str, str, str, np.ndarray, np.ndarray]]:
    """Row id -> (key, modality, reference, low, high) of every image and caption, encoded in this process."""
    from hivlp_milvus.ids import row_id, text_key

    images = model.embed_images([r.image for r in records])
    captions = [(text_key(r.id, i), c) for r in records for i, c in enumerate(r.captions)]
    texts = model.embed_texts([c for _, c in captions])
    out = {
        row_id(r.id, "image"): (r.id, "image", r.image_uri, images.low[i], images.high[i])
        for i, r in enumerate(records)
    }
    out.update({row_id(k, "text"): (k, "text", c, texts.low[i], texts.high[i]) for i, (k, c) in enumerate(captions)})
    return out


def byo_rows(records: list[EmbeddingRecord]) -> dict[int, tuple[str, str, str, np.ndarray, np.ndarray]]:
    """Row id -> (key, modality, reference, low, high) of records that bring their own vectors."""
    from hivlp_milvus.ids import row_id

    return {row_id(r.id, r.modality): (r.id, r.modality, r.reference, r.vec_low, r.vec_high) for r in records}


def assert_collection_holds(
    coll: Any, expected: dict[int, tuple[str, str, str, np.ndarray, np.ndarray]], atol: float = 1e-5
) -> dict:
    """``coll`` holds exactly the rows of :func:`encoded_rows` or :func:`byo_rows`; returns them by id (all fields).

    The vectors must match to ``atol`` (0: bit for bit, what a row written with its own vectors gives back).
    """
    assert coll.count() == len(expected), (coll.count(), len(expected))
    fields = ["id", "key", "modality", "reference", "attributes", "vec_low", "vec_high"]
    got = {int(r["id"]): r for r in coll.get(list(expected), fields)}
    assert set(got) == set(expected), f"missing ids: {set(expected) - set(got)}"
    for rid, (key, modality, reference, low, high) in expected.items():
        stored = (got[rid]["key"], got[rid]["modality"], got[rid]["reference"])
        assert stored == (key, modality, reference), f"row {rid}: {stored} != {(key, modality, reference)}"
        np.testing.assert_allclose(np.asarray(got[rid]["vec_low"], np.float32), low, rtol=0, atol=atol)
        np.testing.assert_allclose(np.asarray(got[rid]["vec_high"], np.float32), high, rtol=0, atol=atol)
    return got
