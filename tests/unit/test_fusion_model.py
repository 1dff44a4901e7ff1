"""The fusion block of a real ``micro`` HiVLP: scoring, checkpoints, fingerprint, and its absence."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest
import torch
from model_helpers import SMALL_FUSION, micro_fusion_model

from hivlp_milvus.data import synthetic
from hivlp_milvus.errors import CheckpointError, ConfigError, DimensionMismatchError
from hivlp_milvus.model import HiVLP, create_model, get_config
from hivlp_milvus.model.config import FusionConfig, HiVLPConfig


def _records() -> list[Any]:
    return synthetic.generate(6, seed=5, image_size=32, captions_per_image=2)


RECORDS = _records()
CAPTIONS = [c for r in RECORDS for c in r.captions]
IMAGES = [r.image for r in RECORDS]


@pytest.fixture(scope="module")
def model() -> HiVLP:
    return micro_fusion_model(CAPTIONS)


def test_config_fusion_block_is_optional_validated_and_round_trips() -> None:
    assert get_config("micro").fusion is None
    cfg = HiVLPConfig.from_dict({**get_config("micro").to_dict(), "fusion": {"layers": 1, "heads": 2, "width": 32}})
    assert cfg.fusion == SMALL_FUSION
    assert HiVLPConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match="fusion: width=30 is not divisible by heads=4"):
        FusionConfig(layers=1, heads=4, width=30)
    with pytest.raises(ConfigError, match="did you mean fusion.layers"):
        HiVLPConfig.from_dict({"fusion": {"layer": 2}})


def test_score_pairs_batched_equals_one_by_one_and_broadcasts(model: HiVLP) -> None:
    texts = CAPTIONS[::2]
    batched = model.score_pairs(IMAGES, texts, batch_size=4)
    assert batched.dtype == np.float32
    assert batched.shape == (len(IMAGES),)
    single = np.array([model.score_pairs(img, txt)[0] for img, txt in zip(IMAGES, texts, strict=True)])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # One text against every image (a text query and its candidates), and one image against every text.
    np.testing.assert_allclose(
        model.score_pairs(IMAGES, texts[0], batch_size=2),
        [model.score_pairs(img, texts[0])[0] for img in IMAGES],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        model.score_pairs(IMAGES[1], texts), [model.score_pairs(IMAGES[1], t)[0] for t in texts], atol=1e-5
    )
    # The scorer looks at the pair: other images give other scores for the same text.
    assert np.ptp(model.score_pairs(IMAGES, texts[0])) > 1e-4
    assert model.score_pairs([], []).shape == (0,)
    with pytest.raises(DimensionMismatchError, match="3 images and 2 texts"):
        model.score_pairs(IMAGES[:3], texts[:2])


def test_score_pairs_builds_no_graph_and_leaves_the_mode_alone(model: HiVLP) -> None:
    seen: list[bool] = []
    hook = model.fusion.register_forward_hook(lambda _m, _i, out: seen.append(out.requires_grad))
    model.train()
    try:
        with torch.enable_grad():
            scores = model.score_pairs(IMAGES[:2], CAPTIONS[:2])
    finally:
        hook.remove()
    assert seen == [False]  # no autograd graph, even where the caller enabled gradients
    assert model.training  # restored
    assert isinstance(scores, np.ndarray)
    model.eval()
    # match_logits is the differentiable path (for an ITM loss): gradients reach the fusion block.
    pixels = model.preprocess_images(IMAGES[:2])
    tokens = model.tokenize(CAPTIONS[:2])
    logits = model.match_logits(pixels, tokens["input_ids"], tokens["attention_mask"])
    assert logits.shape == (2,)
    assert logits.requires_grad
    logits.sum().backward()
    assert model.fusion.head.weight.grad is not None
    model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(logits.detach().numpy(), model.score_pairs(IMAGES[:2], CAPTIONS[:2]), atol=1e-5)


def test_checkpoint_round_trip_keeps_scores_and_fingerprint(model: HiVLP, tmp_path: Any) -> None:
    before = model.score_pairs(IMAGES, CAPTIONS[1::2])
    directory = model.save_pretrained(tmp_path / "ckpt")
    assert json.loads((directory / "config.json").read_text())["fusion"] == {"heads": 2, "layers": 1, "width": 32}
    loaded = HiVLP.from_pretrained(directory)
    assert loaded.has_fusion
    assert loaded.config == model.config
    assert loaded.fingerprint == model.fingerprint
    np.testing.assert_allclose(loaded.score_pairs(IMAGES, CAPTIONS[1::2]), before, atol=1e-6)


def test_a_model_without_fusion_keeps_its_pre_fusion_fingerprint() -> None:
    """The documented recipe, over the config *without* a fusion key: old collections still open."""
    plain = create_model("micro", texts=CAPTIONS, seed=0)
    config = plain.config.to_dict()
    assert "fusion" not in config
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    digest.update(json.dumps(sorted(plain.tokenizer.get_vocab().items()), separators=(",", ":")).encode())
    state = plain.state_dict()
    for name in sorted(state):
        tensor = state[name].contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    assert plain.fingerprint == digest.hexdigest()[:16]


def test_fingerprint_covers_the_fusion_weights_and_config(model: HiVLP) -> None:
    twin = HiVLP(model.config, model.tokenizer)
    twin.load_state_dict(model.state_dict())
    assert twin.fingerprint == model.fingerprint
    with torch.no_grad():
        twin.fusion.head.weight[0, 0] += 1e-3
    assert twin.fingerprint != model.fingerprint
    wider = micro_fusion_model(CAPTIONS, fusion=FusionConfig(layers=1, heads=2, width=64))
    assert wider.fingerprint != model.fingerprint


def test_the_fusion_block_leaves_the_dual_encoder_alone(model: HiVLP) -> None:
    plain = create_model("micro", texts=CAPTIONS, seed=0)
    fused_state, plain_state = model.state_dict(), plain.state_dict()
    assert set(fused_state) - set(plain_state) == {k for k in fused_state if k.startswith("fusion.")}
    for name, tensor in plain_state.items():  # the same seed gives the same towers and heads
        assert torch.equal(tensor, fused_state[name]), name
    np.testing.assert_allclose(model.embed_texts(CAPTIONS).high, plain.embed_texts(CAPTIONS).high, atol=1e-6)


def test_a_checkpoint_without_fusion_still_loads_works_and_refuses_to_score(tmp_path: Any) -> None:
    plain = create_model("micro", texts=CAPTIONS, seed=0)
    directory = plain.save_pretrained(tmp_path / "plain")
    # Written as before the fusion block existed: no "fusion" key at all.
    assert "fusion" not in json.loads((directory / "config.json").read_text())
    loaded = HiVLP.from_pretrained(directory)
    assert not loaded.has_fusion
    assert loaded.fusion is None
    assert loaded.fingerprint == plain.fingerprint
    np.testing.assert_allclose(loaded.embed_images(IMAGES).low, plain.embed_images(IMAGES).low, atol=1e-6)
    with pytest.raises(ConfigError, match="no fusion block"):
        loaded.score_pairs(IMAGES[0], CAPTIONS[0])


def test_fusion_weights_must_match_the_config(model: HiVLP, tmp_path: Any) -> None:
    directory = model.save_pretrained(tmp_path / "ckpt")
    config = json.loads((directory / "config.json").read_text())
    config["fusion"] = None  # weights with a fusion block, config without one
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        HiVLP.from_pretrained(directory)


def test_the_score_weight_round_trips_and_is_in_the_fingerprint(tmp_path: Any) -> None:
    model = micro_fusion_model(CAPTIONS)
    before = model.fingerprint
    assert model.fusion_score_weight is None
    assert "score_weight" not in model.config.to_dict()["fusion"]  # pre-mix checkpoints keep their fingerprint
    model.set_fusion_score_weight(0.05)
    assert model.fusion_score_weight == 0.05
    assert model.fingerprint != before
    directory = model.save_pretrained(tmp_path / "mixed")
    assert json.loads((directory / "config.json").read_text())["fusion"]["score_weight"] == 0.05
    loaded = HiVLP.from_pretrained(directory)
    assert loaded.fusion_score_weight == 0.05
    assert loaded.fingerprint == model.fingerprint
    model.set_fusion_score_weight(None)
    assert model.fingerprint == before
    with pytest.raises(ConfigError, match="score_weight must be >= 0"):
        model.set_fusion_score_weight(-1.0)
    with pytest.raises(ConfigError, match="no fusion block"):
        create_model("micro", texts=CAPTIONS, seed=0).set_fusion_score_weight(0.1)
