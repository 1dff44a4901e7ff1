"""Device choice where a model is loaded (``from_pretrained``, ``evaluate``) and mixed precision in ``embed_*``.

Runs on the CPU: CUDA itself is not here, so the CUDA branch is checked through its pieces (the
refusal with a reason, and autocast + re-normalisation driven by ``inference_dtype``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hivlp_milvus.data import synthetic
from hivlp_milvus.errors import ConfigError
from hivlp_milvus.eval import evaluate
from hivlp_milvus.model import HiVLP, create_model

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPU")


@pytest.fixture(scope="module")
def records() -> list:
    return synthetic.generate(12, seed=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, records: list) -> Path:
    model = create_model("micro", texts=[c for r in records for c in r.captions], seed=0)
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


def test_from_pretrained_auto_is_the_cpu_without_a_gpu(checkpoint: Path) -> None:
    model = HiVLP.from_pretrained(checkpoint, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.device.type == expected


@pytest.mark.parametrize(
    ("device", "match"),
    [
        pytest.param("cuda", "device 'cuda' cannot be used: .*use device='cpu'", marks=needs_no_gpu),
        ("gpu", "unknown device 'gpu'"),
    ],
)
def test_from_pretrained_refuses_a_device_it_cannot_use_saying_why(checkpoint: Path, device: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        HiVLP.from_pretrained(checkpoint, device=device)


def test_cpu_embeddings_stay_float32_without_autocast(checkpoint: Path, records: list) -> None:
    model = HiVLP.from_pretrained(checkpoint)
    texts = [r.captions[0] for r in records]
    with torch.inference_mode():
        tokens = model.tokenize(texts)
        direct = model.encode_text(tokens["input_ids"], tokens["attention_mask"]).numpy()
    emb = model.embed_texts(texts)
    assert emb.high.dtype == np.float32
    np.testing.assert_array_equal(emb.high, direct.high)  # bit for bit: no autocast on the CPU


def test_mixed_precision_follows_inference_dtype(
    checkpoint: Path, records: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What CUDA gets, run on the CPU: autocast to bf16, then unit-length float32 vectors.
    model = HiVLP.from_pretrained(checkpoint)
    texts = [r.captions[0] for r in records]
    images = [r.image for r in records]
    full_t, full_i = model.embed_texts(texts), model.embed_images(images)
    monkeypatch.setattr("hivlp_milvus.model.hivlp.inference_dtype", lambda device: torch.bfloat16)
    mixed_t, mixed_i = model.embed_texts(texts), model.embed_images(images)
    for full, mixed in ((full_t, mixed_t), (full_i, mixed_i)):
        for level in ("low", "high"):
            a, b = getattr(full, level), getattr(mixed, level)
            assert b.dtype == np.float32
            assert not np.array_equal(a, b)  # autocast really ran
            np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
            assert float(np.min(np.sum(a * b, axis=1))) > 0.98  # the same directions, to bf16 accuracy


def test_evaluate_loads_a_checkpoint_on_the_device(checkpoint: Path, records: list) -> None:
    by_dir = evaluate(checkpoint, records, coarse_ks=(5,), progress=False, device="cpu")
    by_model = evaluate(HiVLP.from_pretrained(checkpoint), records, coarse_ks=(5,), progress=False)
    assert by_dir.to_dict()["rows"] == by_model.to_dict()["rows"]


def test_evaluate_refuses_a_device_for_a_loaded_model(checkpoint: Path, records: list) -> None:
    with pytest.raises(ConfigError, match="device= applies to a checkpoint directory"):
        evaluate(HiVLP.from_pretrained(checkpoint), records, progress=False, device="cpu")
