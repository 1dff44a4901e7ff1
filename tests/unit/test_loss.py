"""The HiVLP objective against hand-written loop references, plus switches, gradients and training.

The references (below and in ``model_helpers``) recompute every term with explicit Python loops
in float64 numpy, written from the definitions in docs/objective.md and *not* from the vectorised
implementation: the shortlist reference literally takes the low-level top-K and swaps missing
positives into the lowest-ranked slots, while the implementation uses a rank mask.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from model_helpers import (
    SCALE_HIGH,
    SCALE_LOW,
    B,
    logit_rows,
    positives,
    random_output,
    ref_infonce,
    ref_row,
    unit_rows,
)
from torch import nn

import hivlp_milvus.model.loss as loss_mod
from hivlp_milvus.errors import ConfigError, DimensionMismatchError
from hivlp_milvus.model.embedding import HierarchicalEmbedding, HiVLPOutput
from hivlp_milvus.model.loss import TERMS, HiVLPLoss, LossConfig, LossOutput

GROUPS = torch.tensor([3, 3, 1, 7, 7, 7])  # one singleton, a pair and a triple


# --------------------------------------------------------------------------- helpers


def _only(term: str, **kw: object) -> LossConfig:
    weights = {t: 0.0 for t in TERMS}
    weights[term] = 1.0
    return LossConfig(**weights, **kw)


# --------------------------------------------------------------------------- loop references


def ref_consistency(out: HiVLPOutput, tau: float) -> float:
    kls = []
    for low, high in zip(logit_rows(out, "low"), logit_rows(out, "high"), strict=True):
        for low_row, high_row in zip(low, high, strict=True):
            p = [math.exp(v / tau) for v in high_row]
            q = [math.exp(v / tau) for v in low_row]
            zp, zq = sum(p), sum(q)
            kls.append(sum((pj / zp) * (math.log(pj / zp) - math.log(qj / zq)) for pj, qj in zip(p, q, strict=True)))
    return sum(kls) / len(kls)


def ref_shortlist(out: HiVLPOutput, k: int, groups: list[int] | None) -> tuple[float, int]:
    """Returns (term value, number of rows where a positive had to be forced into the shortlist)."""
    values, forced_rows = [], 0
    for low, high in zip(logit_rows(out, "low"), logit_rows(out, "high"), strict=True):
        n = len(low)
        for i in range(n):
            pos = positives(i, n, groups)
            short = sorted(range(n), key=lambda j, row=low[i]: -row[j])[:k]
            missing = [p for p in pos if p not in short]
            forced_rows += bool(missing)
            for p in missing:
                for slot in reversed(range(len(short))):  # lowest-ranked non-positive slot first
                    if short[slot] not in pos:
                        short[slot] = p
                        break
                else:  # more positives than slots: the shortlist grows to hold them all
                    short.append(p)
            # The softmax over the shortlist only: every other column is excluded, none re-weighted.
            values.append(ref_row(high[i], pos, excluded=set(range(n)) - set(short)))
    return sum(values) / len(values), forced_rows


# --------------------------------------------------------------------------- each term vs reference


@pytest.mark.parametrize("groups", [None, GROUPS], ids=["diagonal", "groups"])
@pytest.mark.parametrize("level", ["low", "high"])
def test_infonce_matches_reference(level: str, groups: torch.Tensor | None) -> None:
    out = random_output(1)
    got = HiVLPLoss(_only(level))(out, groups=groups)
    ref = ref_infonce(out, level, groups=None if groups is None else groups.tolist())
    assert got.parts[level].item() == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert got.total.item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.5, 3.0])
def test_consistency_matches_reference(tau: float) -> None:
    out = random_output(2)
    got = HiVLPLoss(_only("consistency", consistency_temperature=tau))(out)
    ref = ref_consistency(out, tau)
    assert ref > 1e-3  # the two levels disagree on random features: the check is not 0 == 0
    assert got.parts["consistency"].item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_consistency_ignores_groups() -> None:
    out = random_output(2)
    loss = HiVLPLoss(_only("consistency"))
    assert loss(out, groups=GROUPS).parts["consistency"].item() == pytest.approx(
        loss(out).parts["consistency"].item(), rel=1e-6
    )


@pytest.mark.parametrize("groups", [None, GROUPS], ids=["diagonal", "groups"])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_shortlist_matches_reference_with_forced_positives(k: int, groups: torch.Tensor | None) -> None:
    out = random_output(3)
    got = HiVLPLoss(_only("shortlist", shortlist_k=k))(out, groups=groups)
    ref, forced = ref_shortlist(out, k, None if groups is None else groups.tolist())
    # The interesting path must be exercised: some positive was outside the low-level top-K.
    assert forced > 0
    assert got.parts["shortlist"].item() == pytest.approx(ref, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("groups", [None, GROUPS], ids=["diagonal", "groups"])
@pytest.mark.parametrize("k", [B, B + 1, 1000])
def test_shortlist_with_k_at_least_batch_is_high_infonce(k: int, groups: torch.Tensor | None) -> None:
    out = random_output(4)
    got = HiVLPLoss(LossConfig(shortlist_k=k))(out, groups=groups)
    assert got.parts["shortlist"].item() == pytest.approx(got.parts["high"].item(), rel=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_shortlist_is_never_above_the_full_high_infonce(k: int) -> None:
    # Dropping negative columns can only raise each positive's probability.
    for seed in range(5):
        parts = HiVLPLoss(LossConfig(shortlist_k=k))(random_output(seed)).parts
        assert parts["shortlist"].item() <= parts["high"].item() + 1e-6


def test_distinct_groups_equal_no_groups() -> None:
    out = random_output(5)
    loss = HiVLPLoss(LossConfig(shortlist_k=3))
    a, b = loss(out).parts, loss(out, groups=torch.arange(10, 10 + B)).parts
    for name in TERMS:
        assert a[name].item() == pytest.approx(b[name].item(), rel=1e-6)


def test_groups_change_the_loss() -> None:
    out = random_output(5)
    loss = HiVLPLoss(_only("high"))
    assert loss(out).total.item() != pytest.approx(loss(out, groups=GROUPS).total.item(), rel=1e-3)


# --------------------------------------------------------------------------- switches and totals


def test_total_is_weighted_sum_of_detached_parts() -> None:
    cfg = LossConfig(low=0.3, high=1.7, consistency=0.2, shortlist=0.9, shortlist_k=3)
    got = HiVLPLoss(cfg)(random_output(6, requires_grad=True), groups=GROUPS)
    assert isinstance(got, LossOutput)
    assert got.total.requires_grad
    assert all(not v.requires_grad for v in got.parts.values())
    assert set(got.parts) == {*TERMS, "logit_scale_low", "logit_scale_high"}
    expected = sum(getattr(cfg, t) * got.parts[t].item() for t in TERMS)
    assert got.total.item() == pytest.approx(expected, rel=1e-6)
    assert got.parts["logit_scale_low"].item() == pytest.approx(SCALE_LOW)
    assert got.parts["logit_scale_high"].item() == pytest.approx(SCALE_HIGH)


def test_switched_off_terms_are_absent_and_not_computed(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a switched-off term was computed")

    monkeypatch.setattr(loss_mod, "_shortlist_mask", boom)
    monkeypatch.setattr(loss_mod, "_consistency_kl", boom)
    out = random_output(7)
    got = HiVLPLoss(LossConfig(low=1.0, high=2.0, consistency=0.0, shortlist=0.0))(out)
    assert set(got.parts) == {"low", "high", "logit_scale_low", "logit_scale_high"}
    expected = ref_infonce(out, "low", groups=None) + 2.0 * ref_infonce(out, "high", groups=None)
    assert got.total.item() == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- gradients


# Low only: the high level is not even computed. Consistency: p_high is a stop-grad teacher. Shortlist:
# selected by the low level but scored by the high level; selection is not differentiable (as the
# ANN stage at inference is not).
@pytest.mark.parametrize(
    ("term", "live", "dead"), [("low", "low", "high"), ("consistency", "low", "high"), ("shortlist", "high", "low")]
)
def test_each_term_sends_gradient_only_into_its_level(term: str, live: str, dead: str) -> None:
    out = random_output(8, requires_grad=True)
    HiVLPLoss(_only(term, shortlist_k=3))(out).total.backward()
    for level, reached in ((live, True), (dead, False)):
        for t in (getattr(out.image, level), getattr(out.text, level), getattr(out, f"logit_scale_{level}")):
            assert (t.grad is not None and t.grad.abs().sum() > 1e-6) if reached else t.grad is None


def test_gradients_are_finite_with_masked_columns() -> None:
    out = random_output(9, requires_grad=True)
    HiVLPLoss(LossConfig(shortlist_k=2))(out, groups=GROUPS).total.backward()
    for t in (out.image.low, out.image.high, out.text.low, out.text.high):
        assert torch.isfinite(t.grad).all()


# --------------------------------------------------------------------------- config and input checks


def test_config_defaults_and_round_trip() -> None:
    cfg = LossConfig()
    assert (cfg.low, cfg.high, cfg.consistency, cfg.shortlist) == (1.0, 1.0, 1.0, 0.5)
    assert (cfg.shortlist_k, cfg.consistency_temperature, cfg.gather) == (16, 1.0, "auto")
    custom = LossConfig(
        low=2,
        shortlist=0,
        shortlist_k=8,
        consistency_temperature=0.5,
        gather=False,
        hard_negative_beta=0.5,
        queue_size=64,
        itm_negatives="hardest",
    )
    assert LossConfig.from_dict(json.loads(json.dumps(custom.to_dict()))) == custom
    assert isinstance(custom.low, float)
    assert custom.weights == {"low": 2.0, "high": 1.0, "consistency": 1.0}
    assert LossConfig.from_dict({"shortlist_k": 4}) == LossConfig(shortlist_k=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"low": -1.0}, "low must be >= 0"),
        ({"high": float("nan")}, "high must be a finite number"),
        ({"consistency": "1"}, "consistency must be a number"),
        ({"shortlist": True}, "shortlist: must be a number, not true"),
        ({"low": 0, "high": 0, "consistency": 0, "shortlist": 0}, "all weights .* are 0"),
        ({"shortlist_k": 1}, "shortlist_k must be >= 2"),
        ({"shortlist_k": 2.5}, "shortlist_k must be an integer"),
        ({"shortlist_k": True}, "shortlist_k must be an integer"),
        ({"consistency_temperature": 0.0}, "consistency_temperature must be > 0"),
        ({"consistency_temperature": -2.0}, "consistency_temperature must be > 0"),
        ({"gather": "yes"}, "gather: must be 'auto', true or false"),
        ({"gather": 1}, "gather: must be 'auto', true or false"),
        ({"shortlist_start_step": -1}, "shortlist_start_step must be >= 0"),
        ({"shortlist_start_step": 1.5}, "shortlist_start_step must be an integer"),
        ({"shortlist_start_step": True}, "shortlist_start_step must be an integer"),
        # Only the shortlist term on, and it starts late: no loss before that step.
        (
            {"low": 0, "high": 0, "consistency": 0, "shortlist": 1.0, "shortlist_start_step": 10},
            "no loss before that step",
        ),
        ({"hard_negative_beta": -0.1}, "hard_negative_beta must be >= 0"),
        ({"queue_size": -1}, "queue_size must be >= 0"),
        ({"queue_size": 2.5}, "queue_size must be an integer"),
        ({"itm_negatives": "random"}, "itm_negatives must be 'sampled' or 'hardest'"),
    ],
)
def test_invalid_config_raises(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LossConfig(**kwargs)


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown LossConfig keys"):
        LossConfig.from_dict({"lowww": 1.0})
    with pytest.raises(ConfigError):
        LossConfig.from_dict([("low", 1.0)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda out: HiVLPLoss(LossConfig(gather=True))(out), ConfigError, "not initialised"),
        (lambda out: HiVLPLoss()(out, groups=GROUPS[:3]), DimensionMismatchError, "groups must be a 1-d tensor"),
        (lambda out: HiVLPLoss()(out, groups=GROUPS.float()), DimensionMismatchError, "integer ids"),
        (
            lambda out: HiVLPLoss()(HiVLPOutput(out.image, out.text[0:3], out.logit_scale_low, out.logit_scale_high)),
            DimensionMismatchError,
            "rows must be pairs",
        ),
    ],
)
def test_bad_calls_are_errors(call, error, match) -> None:
    with pytest.raises(error, match=match):
        call(random_output())


# --------------------------------------------------------------------------- it actually trains


class _Tower(nn.Module):
    def __init__(self, din: int, low: int, high: int) -> None:
        super().__init__()
        self.low, self.high = nn.Linear(din, low), nn.Linear(din, high)

    def forward(self, x: torch.Tensor) -> HierarchicalEmbedding:
        return HierarchicalEmbedding(unit_rows(self.low(x)), unit_rows(self.high(x)))


def _recall_at_1(a: torch.Tensor, b: torch.Tensor) -> float:
    sims = a @ b.T
    hits = (sims.argmax(1) == torch.arange(len(a))).float().mean() + (
        sims.T.argmax(1) == torch.arange(len(a))
    ).float().mean()
    return float(hits / 2)


def test_training_two_linear_towers_reaches_near_perfect_recall() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    din, n = 16, 64
    mix = torch.linalg.qr(torch.randn(din, din, generator=g))[0]  # the text "view" of a scene

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, din, generator=g)
        return x, x @ mix + 0.05 * torch.randn(n, din, generator=g)

    image_tower, text_tower = _Tower(din, 8, 32), _Tower(din, 8, 32)
    log_scales = nn.Parameter(torch.full((2,), math.log(10.0)))
    params = [*image_tower.parameters(), *text_tower.parameters(), log_scales]
    opt = torch.optim.Adam(params, lr=1e-2)
    loss_fn = HiVLPLoss(LossConfig(shortlist_k=8))

    def forward(x: torch.Tensor, t: torch.Tensor) -> HiVLPOutput:
        scales = log_scales.exp().clamp(max=100.0)
        return HiVLPOutput(image_tower(x), text_tower(t), scales[0], scales[1])

    held_x, held_t = batch()  # never trained on

    def evaluate() -> tuple[float, float, float]:
        with torch.no_grad():
            out = forward(held_x, held_t)
            return (
                loss_fn(out).total.item(),
                _recall_at_1(out.image.low, out.text.low),
                _recall_at_1(out.image.high, out.text.high),
            )

    loss0, r_low0, r_high0 = evaluate()
    for _ in range(150):
        opt.zero_grad()
        loss_fn(forward(*batch())).total.backward()
        opt.step()
    loss1, r_low1, r_high1 = evaluate()

    assert max(r_low0, r_high0) < 0.3  # starts near chance (1/64)
    assert loss1 < 0.2 * loss0
    assert r_low1 >= 0.95
    assert r_high1 >= 0.95


def test_shortlist_term_starts_at_its_step() -> None:
    cfg = LossConfig(shortlist=0.9, shortlist_k=3, shortlist_start_step=5)
    loss = HiVLPLoss(cfg)
    out = random_output(8)
    before = loss(out, groups=GROUPS, step=4)
    assert "shortlist" not in before.parts
    expected = sum(getattr(cfg, t) * before.parts[t].item() for t in TERMS if t != "shortlist")
    assert before.total.item() == pytest.approx(expected, rel=1e-6)
    for step in (5, None):  # from the start step on, and when the caller does not count steps
        after = loss(out, groups=GROUPS, step=step)
        assert "shortlist" in after.parts
        with_shortlist = before.total.item() + 0.9 * after.parts["shortlist"].item()
        assert after.total.item() == pytest.approx(with_shortlist, rel=1e-6)
