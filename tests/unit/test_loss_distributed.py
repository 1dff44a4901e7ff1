"""Two gloo ranks with half a batch each optimise exactly the single-process objective.

Scaling convention checked here (and the one Ray Train / DDP relies on):

* loss: each rank returns the mean over *its* rows, so ``mean_r L_r == L_full``;
* features: the all-gather backward *sums* every rank's gradient into the owner's slice, so rank
  r's features get ``d(sum_k L_k)/dx_r = WORLD * dL_full/dx_r``; DDP then *averages* parameter
  gradients over ranks (÷ WORLD), which gives exactly ``dL_full/dθ``. So we compare
  ``feature_grad_r / WORLD`` with the single-process feature gradient;
* replicated parameters used directly in the loss (the logit scales) get only ``dL_r/ds`` on
  rank r; DDP's average gives ``mean_r dL_r/ds == dL_full/ds``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hivlp_milvus.errors import ConfigError
from hivlp_milvus.model.embedding import HierarchicalEmbedding, HiVLPOutput
from hivlp_milvus.model.loss import TERMS, HiVLPLoss, LossConfig

WORLD = 2
PER_RANK = 6
LOW_DIM, HIGH_DIM = 4, 8
FEATURES = ("img_low", "img_high", "txt_low", "txt_high")
SCALES = ("scale_low", "scale_high")
# All four terms on, a shortlist smaller than the global batch (12) so selection crosses ranks,
# and a non-unit consistency temperature.
CFG = {
    "low": 1.0,
    "high": 0.7,
    "consistency": 0.5,
    "shortlist": 0.8,
    "shortlist_k": 4,
    "consistency_temperature": 0.5,
}
# Groups 1 and 4 span both ranks: the gathered group ids must be what makes them positives.
GROUPS = [0, 1, 1, 2, 4, 5, 4, 6, 7, 1, 8, 9]
SCENARIOS = ("plain", "groups")
# The queue holds more than one global batch (12) and less than two, so the second push truncates.
QUEUE_CFG = {**CFG, "queue_size": 18, "hard_negative_beta": 0.3}


def _output(feats: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> HiVLPOutput:
    return HiVLPOutput(
        image=HierarchicalEmbedding(feats["img_low"], feats["img_high"]),
        text=HierarchicalEmbedding(feats["txt_low"], feats["txt_high"]),
        logit_scale_low=scales["scale_low"],
        logit_scale_high=scales["scale_high"],
    )


def _run(data: dict[str, torch.Tensor], rows: slice, groups: torch.Tensor | None, cfg: LossConfig) -> dict[str, object]:
    """Loss + gradients w.r.t. leaf copies of ``data[rows]`` (the same code on ranks and in the parent)."""
    feats = {n: data[n][rows].clone().requires_grad_(True) for n in FEATURES}
    scales = {n: data[n].clone().requires_grad_(True) for n in SCALES}
    res = HiVLPLoss(cfg)(_output(feats, scales), groups=None if groups is None else groups[rows])
    res.total.backward()
    return {
        "total": res.total.detach(),
        "parts": {k: v for k, v in res.parts.items() if k in TERMS},
        "grads": {n: feats[n].grad for n in (*FEATURES,)},
        "scale_grads": {n: scales[n].grad for n in SCALES},
    }


def _queue_steps(data: dict[str, torch.Tensor], rows: slice, cfg: dict | None = None) -> dict[str, object]:
    """Three calls of one queued loss (the batch, then two rolled batches); totals and the final queue."""
    loss = HiVLPLoss(LossConfig(**(cfg or QUEUE_CFG)))
    totals = []
    for shift in (0, 5, 7):
        batch = {n: data[n].roll(shift, dims=0) if n in FEATURES else data[n] for n in (*FEATURES, *SCALES)}
        feats = {n: batch[n][rows] for n in FEATURES}
        groups = data["groups"].roll(shift, dims=0)[rows]
        totals.append(loss(_output(feats, {n: batch[n] for n in SCALES}), groups=groups).total.detach())
    return {"totals": totals, "queue": loss.queue_state()}


def _groups(data: dict[str, torch.Tensor], scenario: str) -> torch.Tensor | None:
    return data["groups"] if scenario == "groups" else None


def _worker(rank: int, init_file: str, data_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=120)
    )
    try:
        data = torch.load(data_file, weights_only=True)
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results: dict[str, object] = {s: _run(data, rows, _groups(data, s), LossConfig(**CFG)) for s in SCENARIOS}
        results["queue"] = _queue_steps(data, rows)

        # gather=False: no communication, this rank's half is a batch of its own.
        results["no_gather"] = _run(data, rows, None, LossConfig(**CFG, gather=False))["total"]

        # A ragged batch must raise the same clear error on every rank (none left hanging).
        ragged_rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK - rank)
        try:
            _run(data, ragged_rows, None, LossConfig(**CFG))
            results["ragged"] = "no error"
        except ConfigError as exc:
            results["ragged"] = str(exc)

        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tmp = tmp_path_factory.mktemp("loss_dist")
    g = torch.Generator().manual_seed(1234)
    n = WORLD * PER_RANK
    data = {}
    for name in FEATURES:
        x = torch.randn(n, LOW_DIM if name.endswith("low") else HIGH_DIM, generator=g)
        data[name] = x / x.norm(dim=1, keepdim=True)
    data["scale_low"], data["scale_high"] = torch.tensor(5.0), torch.tensor(8.0)
    data["groups"] = torch.tensor(GROUPS)
    torch.save(data, tmp / "data.pt")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp / "data.pt"), str(tmp)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return data, ranks


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ranks_optimise_exactly_the_single_process_objective(spawned: tuple, scenario: str) -> None:
    data, ranks = spawned
    ref = _run(data, slice(None), _groups(data, scenario), LossConfig(**CFG))
    per_rank = [r[scenario] for r in ranks]
    # The loss: the mean of the ranks' losses (and of each term) is the single-process loss.
    mean_total = torch.stack([r["total"] for r in per_rank]).mean()
    torch.testing.assert_close(mean_total, ref["total"], rtol=1e-6, atol=1e-6)
    assert set(per_rank[0]["parts"]) == set(TERMS)
    for term in TERMS:
        mean_part = torch.stack([r["parts"][term] for r in per_rank]).mean()
        torch.testing.assert_close(mean_part, ref["parts"][term], rtol=1e-6, atol=1e-6)
    # Not trivially equal: each rank's own half differs from the global mean.
    assert not torch.allclose(per_rank[0]["total"], per_rank[1]["total"])
    # The gradients.
    for name in FEATURES:
        # all-gather backward sums over ranks -> WORLD x; DDP's average over ranks divides it back.
        gathered = torch.cat([r["grads"][name] for r in per_rank]) / WORLD
        assert ref["grads"][name].abs().max() > 1e-3
        torch.testing.assert_close(gathered, ref["grads"][name], rtol=0, atol=1e-5)
    for name in SCALES:
        # Replicated scalars get only their own rank's loss gradient; DDP averages them.
        averaged = torch.stack([r["scale_grads"][name] for r in per_rank]).mean()
        torch.testing.assert_close(averaged, ref["scale_grads"][name], rtol=0, atol=1e-5)


def test_queues_are_identical_on_every_rank_and_equal_the_single_process_queue(spawned: tuple) -> None:
    data, ranks = spawned
    ref = _queue_steps(data, slice(None))
    queues = [r["queue"]["queue"] for r in ranks]
    assert set(queues[0]) == set(ref["queue"])
    assert len(queues[0]["queue.groups"]) == QUEUE_CFG["queue_size"]
    for name, value in ref["queue"].items():
        assert torch.equal(queues[0][name], queues[1][name]), name  # bit-identical across ranks
        torch.testing.assert_close(queues[0][name], value, rtol=0, atol=1e-6)
    # With a queue (and hard-negative weights) in play, the ranks still optimise the global loss.
    for step in range(3):
        mean_total = torch.stack([r["queue"]["totals"][step] for r in ranks]).mean()
        torch.testing.assert_close(mean_total, ref["totals"][step], rtol=1e-6, atol=1e-6)
    # The queue (and β) changed the loss: the same three batches without them give other totals.
    plain = _queue_steps(data, slice(None), CFG)["totals"]
    assert not torch.allclose(plain[2], ref["totals"][2])


def test_groups_spanning_ranks_matter(spawned: tuple) -> None:
    _, ranks = spawned
    assert not torch.allclose(ranks[0]["plain"]["total"], ranks[0]["groups"]["total"])


def test_gather_false_is_a_per_rank_batch(spawned: tuple) -> None:
    data, ranks = spawned
    for rank, res in enumerate(ranks):
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        local = _run(data, rows, None, LossConfig(**CFG))
        torch.testing.assert_close(res["no_gather"], local["total"], rtol=1e-6, atol=1e-6)


def test_ragged_batches_raise_on_every_rank(spawned: tuple) -> None:
    _, ranks = spawned
    for r in ranks:
        assert "same batch size on every rank" in r["ragged"], r["ragged"]
        assert "[6, 5]" in r["ragged"]


def test_parent_process_is_not_distributed() -> None:
    # Guard for the fixture: the parent process itself must not be distributed, else the
    # single-process references above would silently be distributed too.
    assert not (dist.is_available() and dist.is_initialized())
