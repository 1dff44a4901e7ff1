"""HiVLP with real tiny towers (the ``micro`` config): shapes, norms, heads, save/load, fingerprint."""

from __future__ import annotations

import dataclasses
import io
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BertConfig, BertModel, BertTokenizer

from hivlp_milvus.errors import CheckpointError, ConfigError
from hivlp_milvus.model import (
    HierarchicalEmbedding,
    HiVLP,
    HiVLPConfig,
    HiVLPOutput,
    create_model,
    get_config,
)

CAPTIONS = [
    "a red circle left of a blue square",
    "two green triangles above a small yellow star",
    "a large purple square below an orange circle",
    "three blue stars to the right of a red triangle",
    "an empty grey scene",
] * 4


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(24 + i, 40 - i, 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def model() -> HiVLP:
    return create_model("micro", texts=CAPTIONS, seed=0)


def _config(**changes: object) -> HiVLPConfig:
    return dataclasses.replace(get_config("micro"), **changes)


def _assert_unit_rows(x: torch.Tensor | np.ndarray) -> None:
    norms = np.linalg.norm(np.asarray(x.detach() if isinstance(x, torch.Tensor) else x), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


# -- encoders ----------------------------------------------------------------------------------


def test_encoders_return_unit_vectors_at_both_levels(model) -> None:
    pixels = model.preprocess_images(_images(3))
    assert pixels.shape == (3, 3, 32, 32)
    image = model.encode_image(pixels)
    tokens = model.tokenize(CAPTIONS[:5])
    text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    for emb, n in ((image, 3), (text, 5)):
        assert isinstance(emb, HierarchicalEmbedding)
        assert isinstance(emb.low, torch.Tensor)
        assert emb.low.shape == (n, 16)
        assert emb.high.shape == (n, 64)
        _assert_unit_rows(emb.low)
        _assert_unit_rows(emb.high)


def test_separate_head_is_not_a_prefix_but_nested_head_is() -> None:
    separate = create_model("micro", texts=CAPTIONS, seed=1)
    nested = create_model(_config(head="nested"), texts=CAPTIONS, seed=1)
    pixels = separate.preprocess_images(_images(4))
    tokens = separate.tokenize(CAPTIONS[:4])
    with torch.no_grad():
        for m in (separate, nested):
            for emb in (m.encode_image(pixels), m.encode_text(tokens["input_ids"], tokens["attention_mask"])):
                prefix = F.normalize(emb.high[:, : m.config.low_dim], dim=-1)
                same = torch.allclose(emb.low, prefix, atol=1e-6)
                assert same == (m is nested)
                _assert_unit_rows(emb.low)
    # The nested model has no separate low projection at all.
    assert not any("low" in name for name, _ in nested.named_parameters() if "head" in name)


def test_forward_returns_output_with_clamped_scales(model) -> None:
    pixels = model.preprocess_images(_images(2))
    tokens = model.tokenize(CAPTIONS[:2])
    out = model(pixels, tokens["input_ids"], tokens["attention_mask"])
    assert isinstance(out, HiVLPOutput)
    assert out.image.high.shape == (2, 64)
    assert out.text.low.shape == (2, 16)
    assert out.logit_scale_low.ndim == 0
    assert out.logit_scale_low.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert out.logit_scale_high.item() == pytest.approx(1 / 0.07, rel=1e-5)
    (out.logit_scale_low + out.logit_scale_high + out.image.high.sum()).backward()
    assert model.logit_scale_low.grad is not None
    assert model.logit_scale_low.grad.item() == pytest.approx(1 / 0.07, rel=1e-4)
    model.zero_grad()

    clamped = create_model("micro", texts=CAPTIONS, seed=0)
    with torch.no_grad():
        clamped.logit_scale_low.fill_(10.0)  # exp(10) ≈ 22026, far above the cap
        clamped.logit_scale_high.fill_(-1.0)  # below the cap: left alone
    out = clamped(pixels, tokens["input_ids"], tokens["attention_mask"])
    assert out.logit_scale_low.item() == pytest.approx(100.0, rel=1e-5)
    assert out.logit_scale_high.item() == pytest.approx(math.exp(-1.0), rel=1e-5)


def test_mean_pooling_ignores_padding() -> None:
    m = create_model(_config(text=dataclasses.replace(get_config("micro").text, pooling="mean")), texts=CAPTIONS)
    m.eval()
    tokens = m.tokenize(["a red circle", "two green triangles above a small yellow star"])
    used = int(tokens["attention_mask"].sum(dim=1).max())
    assert used < tokens["input_ids"].shape[1]
    with torch.no_grad():
        full = m.encode_text(tokens["input_ids"], tokens["attention_mask"])
        cut = m.encode_text(tokens["input_ids"][:, :used], tokens["attention_mask"][:, :used])
    torch.testing.assert_close(full.high, cut.high, atol=1e-5, rtol=0)


# -- tokenizer ---------------------------------------------------------------------------------


def test_tokenize_pads_and_truncates_to_max_length(model) -> None:
    long = " ".join(["red circle"] * 40)
    tokens = model.tokenize(["a red circle", long])
    assert set(tokens) == {"input_ids", "attention_mask"}
    assert tokens["input_ids"].shape == (2, 16)
    assert tokens["input_ids"].dtype == torch.long
    tok = model.tokenizer
    short_ids, long_ids = tokens["input_ids"].tolist()
    assert short_ids[0] == tok.cls_token_id
    assert tokens["attention_mask"][0].tolist() == [1] * 5 + [0] * 11  # [CLS] a red circle [SEP]
    assert short_ids[4] == tok.sep_token_id
    assert short_ids[5:] == [tok.pad_token_id] * 11
    assert tokens["attention_mask"][1].tolist() == [1] * 16
    assert long_ids[-1] == tok.sep_token_id
    assert model.tokenize("one caption")["input_ids"].shape == (1, 16)
    assert model.tokenize([])["input_ids"].shape == (0, 16)
    with pytest.raises(TypeError, match="strings"):
        model.tokenize(["ok", 3])


def test_trained_vocabulary_is_lowercase_wordpiece(model) -> None:
    tok = model.tokenizer
    assert tok.pad_token_id == 0
    assert tok.tokenize("A RED Circle!") == ["a", "red", "circle", "!"]
    assert len(tok) <= get_config("micro").text.vocab_size
    assert model.text_tower.model.get_input_embeddings().num_embeddings == len(tok)
    assert tok.tokenize("7 reds") == ["7", "red", "##s"]  # unseen digit: ASCII alphabet, not [UNK]
    # The "##x" tokens registered to make training deterministic must not become special tokens.
    assert set(tok.all_special_tokens) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}


def test_trained_vocabulary_is_deterministic() -> None:
    # tokenizers' trainer alone gives different ids run to run (huggingface/tokenizers#1794).
    from hivlp_milvus.model.tokenizer import train_wordpiece

    captions = [
        f"{c} {s}s number {i}" for i, (c, s) in enumerate(zip(["red", "teal"] * 30, ["box", "orb"] * 30, strict=True))
    ]
    vocabs = {
        tuple(sorted(train_wordpiece(captions, vocab_size=90, max_length=8).get_vocab().items())) for _ in range(4)
    }
    assert len(vocabs) == 1


# -- batch helpers -----------------------------------------------------------------------------


def test_embed_batches_equal_one_at_a_time(model) -> None:
    model.train()  # dropout on: embed_* must switch it off and then restore train mode
    for embed, items, batch_size in ((model.embed_images, _images(5), 3), (model.embed_texts, CAPTIONS[:7], 4)):
        batched = embed(items, batch_size=batch_size, progress=True)
        assert model.training
        single = HierarchicalEmbedding.concat([embed(item) for item in items])  # one image / one string each
        assert isinstance(batched.low, np.ndarray)
        assert batched.low.dtype == np.float32
        assert (batched.low.shape, batched.high.shape) == ((len(items), 16), (len(items), 64))
        np.testing.assert_allclose(batched.low, single.low, atol=1e-5)
        np.testing.assert_allclose(batched.high, single.high, atol=1e-5)
        _assert_unit_rows(batched.high)

    model.eval()
    model.embed_texts(CAPTIONS[:1])
    assert not model.training
    model.train()


def test_embed_accepts_generators_paths_and_empty_input(model, tmp_path) -> None:
    images = _images(3)
    paths = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    from_arrays = model.embed_images(images)
    from_paths = model.embed_images(iter(paths), batch_size=2)
    np.testing.assert_allclose(from_arrays.high, from_paths.high, atol=1e-5)
    buffer = io.BytesIO()
    Image.fromarray(images[0]).save(buffer, format="PNG")
    np.testing.assert_allclose(model.embed_images(buffer.getvalue()).low, from_arrays.low[:1], atol=1e-5)
    empty = model.embed_texts([])
    assert empty.low.shape == (0, 16)
    assert empty.high.shape == (0, 64)
    with pytest.raises(ValueError, match="batch_size"):
        model.embed_texts(["x"], batch_size=0)


# -- save / load / fingerprint -----------------------------------------------------------------


def test_save_load_round_trip(model, tmp_path) -> None:
    images, texts = _images(4), CAPTIONS[:6]
    before_i, before_t = model.embed_images(images), model.embed_texts(texts)
    directory = model.save_pretrained(tmp_path / "ckpt")
    names = {p.name for p in directory.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "text_tower",
    } <= names
    assert not [p for p in directory.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]

    loaded = HiVLP.from_pretrained(directory)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.fingerprint == model.fingerprint
    for before, after in ((before_i, loaded.embed_images(images)), (before_t, loaded.embed_texts(texts))):
        np.testing.assert_allclose(after.low, before.low, atol=1e-6)
        np.testing.assert_allclose(after.high, before.high, atol=1e-6)
    assert loaded.tokenize(texts)["input_ids"].tolist() == model.tokenize(texts)["input_ids"].tolist()


def test_fingerprint_tracks_weights_and_config(model) -> None:
    fingerprint = model.fingerprint
    assert isinstance(fingerprint, str)
    assert len(fingerprint) == 16
    int(fingerprint, 16)
    assert model.fingerprint == fingerprint  # deterministic

    twin = HiVLP(model.config, model.tokenizer)
    twin.load_state_dict(model.state_dict())
    assert twin.fingerprint == fingerprint
    with torch.no_grad():
        twin.text_head.high.weight[0, 0] += 1e-3
    assert twin.fingerprint != fingerprint

    other_config = dataclasses.replace(model.config, max_logit_scale=50.0)
    reconfigured = HiVLP(other_config, model.tokenizer)
    reconfigured.load_state_dict(model.state_dict())
    assert reconfigured.fingerprint != fingerprint


def test_seed_makes_models_reproducible_without_touching_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a = create_model("micro", texts=CAPTIONS, seed=7)
    assert torch.equal(torch.rand(1), expected)
    b = create_model("micro", texts=CAPTIONS, seed=7)
    c = create_model("micro", texts=CAPTIONS, seed=8)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    ("spoil", "match"),
    [
        *[
            (lambda d, _m, name=name: (d / name).unlink(), f"missing {name}")
            for name in ("config.json", "model.safetensors", "tokenizer_config.json", "text_tower/config.json")
        ],
        (lambda d, _m: shutil.rmtree(d), "checkpoint directory not found"),
        (lambda d, _m: _truncate(d / "model.safetensors"), "model.safetensors"),
        # Weights of another shape than the config's.
        (
            lambda d, m: dataclasses.replace(m.config, high_dim=32).save(d / "config.json"),
            "cannot load model.safetensors",
        ),
        (lambda d, _m: (d / "config.json").write_text('{"low_dim": -1}'), "invalid config.json"),
    ],
)
def test_bad_checkpoints_raise_checkpoint_error(model, tmp_path, spoil, match) -> None:
    directory = model.save_pretrained(tmp_path / "ckpt")
    spoil(directory, model)
    with pytest.raises(CheckpointError, match=match):
        HiVLP.from_pretrained(directory)


# -- factory -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "texts", "match"),
    [
        ("micro", None, "pass texts="),  # a trained vocabulary needs captions
        ("micro", ["", "  "], "no non-empty caption"),
        ("gigantic", CAPTIONS, "unknown model config"),
        ({"low_dim": 3}, CAPTIONS, "config name or a HiVLPConfig"),
        (
            _config(image=dataclasses.replace(get_config("micro").image, name="no_such_vit", timm_kwargs={})),
            CAPTIONS,
            "timm has no model 'no_such_vit'",
        ),
    ],
)
def test_create_model_errors(config, texts, match) -> None:
    with pytest.raises(ConfigError, match=match):
        create_model(config, texts=texts)


def test_create_model_reuses_a_given_tokenizer(model) -> None:
    again = create_model("micro", tokenizer=model.tokenizer, seed=0)
    assert again.tokenizer is model.tokenizer
    assert again.fingerprint == create_model("micro", texts=CAPTIONS, seed=0).fingerprint


def _save_local_bert(directory) -> BertModel:
    words = sorted({w for caption in CAPTIONS for w in caption.split()})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tokenizer = BertTokenizer(vocab=vocab)
    torch.manual_seed(42)
    bert = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
        )
    )
    bert.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return bert


def test_local_directory_pretrained_text_tower(tmp_path) -> None:
    bert_dir = tmp_path / "local-bert"
    bert = _save_local_bert(bert_dir)
    text = dataclasses.replace(get_config("micro").text, name=str(bert_dir), pretrained=True, pooling="mean")
    m = create_model(_config(text=text), seed=0)  # no texts needed: the tokenizer comes from the dir
    loaded = m.text_tower.model.get_input_embeddings().weight
    assert torch.equal(loaded, bert.get_input_embeddings().weight)  # pretrained weights, not random init
    assert m.text_tower.out_dim == 32
    assert m.tokenize(["a red circle"])["input_ids"][0, :5].tolist() == [
        m.tokenizer.cls_token_id,
        *m.tokenizer.convert_tokens_to_ids(["a", "red", "circle"]),
        m.tokenizer.sep_token_id,
    ]
    emb = m.embed_texts(CAPTIONS[:3])
    assert emb.high.shape == (3, 64)
    _assert_unit_rows(emb.low)

    random_init = create_model(_config(text=dataclasses.replace(text, pretrained=False)), seed=0)
    assert not torch.equal(random_init.text_tower.model.get_input_embeddings().weight, loaded)

    # The checkpoint is self-contained: it reloads after the source directory is gone.
    ckpt = m.save_pretrained(tmp_path / "ckpt")
    shutil.rmtree(bert_dir)
    reloaded = HiVLP.from_pretrained(ckpt)
    assert reloaded.fingerprint == m.fingerprint
    np.testing.assert_allclose(reloaded.embed_texts(CAPTIONS[:3]).high, emb.high, atol=1e-6)
