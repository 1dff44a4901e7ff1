"""Helpers the ingest and command-line tests share: BYO vector records, ``search --json``, a clean shell."""

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
    assert main(["search", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def enter_without_hivlp_env(monkeypatch: pytest.MonkeyPatch, directory: str | os.PathLike[str]) -> None:
    """Make ``directory`` the current one with no HIVLP_* variable set: only the defaults apply."""
    for name in HIVLP_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(directory)
