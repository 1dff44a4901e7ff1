"""The funnel-negative fine-tune of the fusion block (training/fusion_finetune.py) on a real ``micro`` model."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from model_helpers import micro_fusion_model

from hivlp_milvus.data import synthetic
from hivlp_milvus.errors import ConfigError
from hivlp_milvus.model import create_model
from training.fusion_finetune import FusionFinetuneConfig, finetune_fusion, mix_order

TRAIN = synthetic.generate(24, seed=3, image_size=32, captions_per_image=2)
VAL = synthetic.generate(12, seed=4, image_size=32, captions_per_image=2)
CAPTIONS = [c for r in TRAIN for c in r.captions]
CFG = FusionFinetuneConfig(
    steps=4, batch_size=4, negatives=3, mine_limit=5, coarse_limit=10, gallery_size=12, max_images=24, val_images=12
)


def _two_stage_r1(model: Any) -> float:
    """Validation R@1 of the two-stage funnel (both directions averaged), computed here from the embeddings."""
    img = model.embed_images([r.image for r in VAL])
    caps = [(c, i) for i, r in enumerate(VAL) for c in r.captions]
    txt = model.embed_texts([c for c, _ in caps])
    owner = np.array([i for _, i in caps])
    groups = {g: n for n, g in enumerate(dict.fromkeys(r.relevance_group for r in VAL))}
    g_img = np.array([groups[r.relevance_group] for r in VAL])
    g_cap = g_img[owner]

    def r1(ql: Any, qh: Any, gl: Any, gh: Any, qg: Any, gg: Any) -> float:
        short = np.argsort(-(ql @ gl.T), axis=1, kind="stable")[:, : CFG.coarse_limit]
        fine = np.take_along_axis(qh @ gh.T, short, axis=1)
        top = short[np.arange(len(short)), np.argmax(fine, axis=1)]
        return float(np.mean(gg[top] == qg))

    return (
        r1(txt.low, txt.high, img.low, img.high, g_cap, g_img) + r1(img.low, img.high, txt.low, txt.high, g_img, g_cap)
    ) / 2


def test_only_the_fusion_block_learns_and_the_chosen_mix_is_stored() -> None:
    model = micro_fusion_model(CAPTIONS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = finetune_fusion(model, TRAIN, VAL, CFG, progress=False)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed
    assert all(k.startswith("fusion.") for k in changed)
    assert report.steps == CFG.steps
    assert np.isfinite(report.last_loss)
    assert set(report.val_r1) == {"fusion" if w is None else f"{w:g}" for w in CFG.weights}
    assert model.fusion_score_weight == report.score_weight
    assert report.val_r1["0"] == pytest.approx(_two_stage_r1(model), abs=1e-6)  # weight 0 is the two-stage R@1
    assert report.val_r1[_label(report.score_weight)] == max(report.val_r1.values())


def _label(weight: Any) -> str:
    return "fusion" if weight is None else f"{weight:g}"


def test_mix_order_weight_zero_is_the_fine_order_and_none_the_fusion_order() -> None:
    distance = torch.tensor([[0.9, 0.8, 0.8, 0.1]])
    fusion = torch.tensor([[-1.0, 3.0, 2.0, 5.0]])
    assert mix_order(distance, fusion, 0.0).tolist() == [[0, 1, 2, 3]]  # ties keep the fine order
    assert mix_order(distance, fusion, None).tolist() == [[3, 1, 2, 0]]
    assert mix_order(distance, fusion, 0.1).tolist() == [[1, 2, 0, 3]]


def test_a_model_without_fusion_block_is_refused() -> None:
    plain = create_model("micro", texts=CAPTIONS, seed=0)
    with pytest.raises(ConfigError, match="fusion block"):
        finetune_fusion(plain, TRAIN, VAL, CFG, progress=False)


def test_a_training_split_smaller_than_a_batch_still_trains() -> None:
    model = micro_fusion_model(CAPTIONS)
    small = dataclasses.replace(CFG, batch_size=64, max_images=10, steps=2)  # 10 images, 20 captions < 64
    report = finetune_fusion(model, TRAIN, VAL, small, progress=False)
    assert report.steps == 2
    assert np.isfinite(report.last_loss)
