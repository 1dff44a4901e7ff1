"""The peers' negatives in the HiVLP loss: hard-negative weighting, the negative queue, ITM's hardest negatives.

The reference (``model_helpers.ref_infonce``) is explicit float64 loops written from the definitions in
docs/objective.md ("Negatives"), not from the vectorised implementation: Robinson et al.'s weights
``w_j = N · exp(β l_j) / Σ_k exp(β l_k)`` over a row's N negatives, and the queue's rows appended
as extra columns with same-group rows left out of the row's softmax.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from model_helpers import B, micro_fusion_model, random_output, ref_infonce, side

from hivlp_milvus.data import synthetic
from hivlp_milvus.errors import CheckpointError, DimensionMismatchError
from hivlp_milvus.model.embedding import HierarchicalEmbedding, HiVLPOutput
from hivlp_milvus.model.loss import HiVLPLoss, LossConfig, NegativeQueue

GROUPS = [3, 3, 1, 7, 7, 7]
INFONCE_ONLY = {"low": 1.0, "high": 1.0, "consistency": 0.0, "shortlist": 0.0}
LEVELS = ("low", "high")


def _queue_arrays(outs: list[HiVLPOutput]) -> dict[str, np.ndarray]:
    """The queue a FIFO should hold after pushing ``outs`` in order: newest batch first."""
    return {
        f"{m}_{lv}": np.concatenate([side(o, m, lv) for o in reversed(outs)])
        for m in ("image", "text")
        for lv in LEVELS
    }


# --------------------------------------------------------------------------- hard-negative weighting


@pytest.mark.parametrize("groups", [None, GROUPS])
@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_hard_negative_weighting_matches_reference(beta: float, groups: list[int] | None) -> None:
    out = random_output(0)
    res = HiVLPLoss(LossConfig(**INFONCE_ONLY, hard_negative_beta=beta))(
        out, groups=None if groups is None else torch.tensor(groups)
    )
    for level in LEVELS:
        assert float(res.parts[level]) == pytest.approx(ref_infonce(out, level, groups=groups, beta=beta), rel=1e-5)


def test_hard_negative_weighting_raises_the_loss_with_beta() -> None:
    # Weights that grow with the logit put more mass on the larger e^{l_j}: the denominator, and the
    # loss, can only grow (Chebyshev's sum inequality), strictly unless a row's negatives tie.
    out = random_output(1)
    values = [
        float(HiVLPLoss(LossConfig(**INFONCE_ONLY, hard_negative_beta=b))(out).parts["high"]) for b in (0, 0.5, 1, 3)
    ]
    assert values == sorted(values)
    assert values[-1] > values[0] + 0.05


def test_hard_negative_weighting_sends_more_gradient_to_the_hardest_negative() -> None:
    out = random_output(2, requires_grad=True)
    cfg = {"low": 0.0, "high": 1.0, "consistency": 0.0, "shortlist": 0.0}
    sims = (out.image.high @ out.text.high.T).detach().fill_diagonal_(-2)
    hardest, easiest = int(sims[0].argmax()), int(sims[0].argmin())
    share = []
    for beta in (0.0, 2.0):
        text = out.text.high.detach().clone().requires_grad_(True)
        o = dataclasses.replace(out, text=HierarchicalEmbedding(out.text.low.detach(), text))
        HiVLPLoss(LossConfig(**cfg, hard_negative_beta=beta))(o).total.backward()
        g = text.grad.norm(dim=1)
        share.append(float(g[hardest] / g[easiest]))
    assert share[1] > share[0]


# --------------------------------------------------------------------------- the queue


def test_off_is_identical_to_the_default_loss() -> None:
    out = random_output(3)
    groups = torch.tensor(GROUPS)
    default = HiVLPLoss(LossConfig())
    explicit = HiVLPLoss(LossConfig(hard_negative_beta=0.0, queue_size=0, itm_negatives="sampled"))
    for _ in range(2):  # a second call: nothing is carried over when the queue is off
        a, b = default(out, groups=groups), explicit(out, groups=groups)
        assert torch.equal(a.total, b.total)
    assert len(explicit.queue) == 0
    assert explicit.queue_state() == {}


@pytest.mark.parametrize("size", [4, 9, 18, 40])
def test_queue_holds_the_last_rows_newest_first(size: int) -> None:
    loss = HiVLPLoss(LossConfig(**INFONCE_ONLY, queue_size=size))
    outs = [random_output(10 + s) for s in range(4)]
    for o in outs:
        loss(o, groups=torch.tensor(GROUPS))
    expected = _queue_arrays(outs)
    state = loss.queue_state()
    assert len(loss.queue) == min(size, 4 * B)
    for name, value in expected.items():
        np.testing.assert_allclose(state[f"queue.{name}"].double().numpy(), value[:size], atol=1e-6)
    assert state["queue.groups"].tolist() == (GROUPS * 4)[:size]
    assert state["queue.grouped"].all()


@pytest.mark.parametrize("beta", [0.0, 0.7])
@pytest.mark.parametrize("groups", [None, GROUPS])
def test_queue_columns_match_reference(groups: list[int] | None, beta: float) -> None:
    size = 9
    loss = HiVLPLoss(LossConfig(**INFONCE_ONLY, queue_size=size, hard_negative_beta=beta))
    g = None if groups is None else torch.tensor(groups)
    # Earlier batches with group ids that overlap the current batch's: those rows must be excluded.
    history = [random_output(20), random_output(21)]
    history_groups = [[3, 9, 9, 1, 8, 8], [7, 0, 0, 2, 2, 5]]
    for o, hg in zip(history, history_groups, strict=True):
        loss(o, groups=None if groups is None else torch.tensor(hg))
    queue = {k: v[:size] for k, v in _queue_arrays(history).items()}
    queue_groups = (history_groups[1] + history_groups[0])[:size] if groups is not None else None
    out = random_output(22)
    res = loss(out, groups=g)
    for level in LEVELS:
        ref = ref_infonce(out, level, groups=groups, beta=beta, queue=queue, queue_groups=queue_groups)
        assert float(res.parts[level]) == pytest.approx(ref, rel=1e-5)


def test_queue_adds_negatives_so_the_loss_grows() -> None:
    plain, queued = HiVLPLoss(LossConfig(**INFONCE_ONLY)), HiVLPLoss(LossConfig(**INFONCE_ONLY, queue_size=12))
    queued(random_output(30))
    queued(random_output(31))
    out = random_output(32)
    a, b = plain(out), queued(out)
    for level in LEVELS:
        assert float(b.parts[level]) > float(a.parts[level])


def test_same_group_rows_in_the_queue_are_not_negatives() -> None:
    out = random_output(40)
    loss = HiVLPLoss(LossConfig(**INFONCE_ONLY, queue_size=B))
    loss(out, groups=torch.tensor(GROUPS))  # the queue now holds this very batch
    again = loss(out, groups=torch.tensor(GROUPS))
    queue = _queue_arrays([out])
    for level in LEVELS:
        masked = ref_infonce(out, level, groups=GROUPS, queue=queue, queue_groups=GROUPS)
        # The same queue with every row counted as a negative, the copies of each row's positives included.
        unmasked = ref_infonce(out, level, groups=GROUPS, queue=queue, queue_groups=[-1] * B)
        assert float(again.parts[level]) == pytest.approx(masked, rel=1e-5)
        assert unmasked > masked + 0.1


def test_queue_gets_no_gradient_and_the_batch_does() -> None:
    loss = HiVLPLoss(LossConfig(**INFONCE_ONLY, queue_size=12))
    loss(random_output(50, requires_grad=True)).total.backward()
    assert all(not t.requires_grad for t in loss.queue_state().values())
    out = random_output(51, requires_grad=True)
    loss(out).total.backward()
    assert out.image.high.grad is not None
    assert out.image.high.grad.abs().sum() > 0


def test_queue_state_round_trip_continues_identically() -> None:
    cfg = LossConfig(**INFONCE_ONLY, queue_size=10, hard_negative_beta=0.3)
    groups = torch.tensor(GROUPS)
    first = HiVLPLoss(cfg)
    for s in range(3):
        first(random_output(60 + s), groups=groups)
    second = HiVLPLoss(cfg)
    second.load_queue_state({k: v.clone() for k, v in first.queue_state().items()})
    out = random_output(70)
    restored, fresh = second(out, groups=groups), HiVLPLoss(cfg)(out, groups=groups)
    assert torch.equal(first(out, groups=groups).total, restored.total)
    assert not torch.allclose(restored.total, fresh.total)  # the restored queue is what made them equal


def test_smaller_queue_on_resume_keeps_the_newest_rows() -> None:
    big = HiVLPLoss(LossConfig(**INFONCE_ONLY, queue_size=18))
    for s in range(3):
        big(random_output(80 + s))
    small = HiVLPLoss(LossConfig(**INFONCE_ONLY, queue_size=5))
    small.load_queue_state(big.queue_state())
    assert len(small.queue) == 5
    torch.testing.assert_close(small.queue_state()["queue.text_high"], big.queue_state()["queue.text_high"][:5])


def test_queue_errors() -> None:
    queue = NegativeQueue(8)
    rows = {n: torch.zeros(2, 3) for n in NegativeQueue.FIELDS}
    queue.push(rows, None)
    with pytest.raises(DimensionMismatchError, match="resume with the model"):
        queue.push({n: torch.zeros(2, 4) for n in NegativeQueue.FIELDS}, None)
    state = queue.state_dict()
    del state["queue.groups"]
    with pytest.raises(CheckpointError, match="incomplete"):
        NegativeQueue(8).load_state_dict(state)


# --------------------------------------------------------------------------- ITM: hardest negatives


def _fusion_model_and_output() -> tuple[object, HiVLPOutput]:
    records = synthetic.generate(6, seed=7, image_size=32, captions_per_image=1)
    captions = [r.captions[0] for r in records]
    model = micro_fusion_model(captions)
    model.eval()
    tokens = model.tokenize(captions)
    return model, model(
        model.preprocess_images([r.image for r in records]), tokens["input_ids"], tokens["attention_mask"]
    )


def test_itm_hardest_takes_the_most_similar_non_positive() -> None:
    _, out = _fusion_model_and_output()
    groups = torch.tensor([0, 0, 1, 2, 3, 4])
    cfg = LossConfig(low=0, high=0, consistency=0, shortlist=0, itm=1.0, itm_negatives="hardest")
    res = HiVLPLoss(cfg)(out, groups=groups)
    sim = (out.text.high @ out.image.high.T).detach()
    same = groups[:, None] == groups[None, :]
    neg_images = sim.masked_fill(same, -math.inf).argmax(dim=1)
    neg_texts = sim.T.masked_fill(same, -math.inf).argmax(dim=1)
    rows = torch.arange(6)
    logits = out.fusion.match(torch.cat([rows, neg_images, rows]), torch.cat([rows, rows, neg_texts]))
    expected = F.binary_cross_entropy_with_logits(logits, torch.cat([torch.ones(6), torch.zeros(12)]))
    torch.testing.assert_close(res.parts["itm"], expected.detach())
    # Deterministic, unlike the sampled negatives.
    torch.testing.assert_close(HiVLPLoss(cfg)(out, groups=groups).parts["itm"], res.parts["itm"])
