"""Ray Train, for real: 2 CPU workers (gloo), the micro model, tiny synthetic data, no mocks.

1. Global-batch equivalence: two DDP workers, each with half of a fixed batch, produce the loss
   and the parameter gradients one process computes on the whole batch.
2. A short training run: the loss goes down and the checkpoint loads with ``from_pretrained``.
3. Crash and resume: a worker process dies (``os._exit(1)``) mid-epoch; Ray restarts the group
   from the last checkpoint, which continues at exactly the next step with the same batches and
   the same losses (the loss's negative queue is restored from the checkpoint too).

4. Resume the documented way: after the run failed for good (a second crash with
   ``max_failures`` spent), re-running the same ``run.name`` on ONE worker continues the step
   count and the schedule from the newest checkpoint; with another model it is refused.

2-4 share one run (module-scoped fixture): Ray start-up, not training, is what costs here.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from hivlp_milvus.data import synthetic
from hivlp_milvus.errors import ConfigError
from hivlp_milvus.model.hivlp import HiVLP, create_model
from hivlp_milvus.model.loss import HiVLPLoss, LossConfig
from training.checkpoint import load_loss_state, load_training_state
from training.config import load_config
from training.loop import lr_factor
from training.trainer import run_directory, run_training

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# Shortlist smaller than the global batch so the shortlist term really selects columns.
LOSS = {"low": 1.0, "high": 1.0, "consistency": 1.0, "shortlist": 0.5, "shortlist_k": 4}


@pytest.fixture(scope="module", autouse=True)
def _pickle_this_module_by_value() -> None:
    # Ray workers cannot import a pytest module by name; ship the worker function by value.
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _read_steps(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- 1. global-batch equivalence -----------------------------------------------------------------


def _equivalence_worker(config: dict) -> None:
    """Each rank: its half of the batch through DDP, then save its loss and its (averaged) grads."""
    import ray.train
    from ray.train.torch import prepare_model

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(1)
    model = HiVLP.from_pretrained(config["model_dir"])  # eval mode: no dropout, gradients still flow
    batch = torch.load(config["batch"], weights_only=True)
    rows = len(batch["group"]) // world
    part = slice(rank * rows, (rank + 1) * rows)
    ddp = prepare_model(model)
    out = ddp(batch["pixel_values"][part], batch["input_ids"][part], batch["attention_mask"][part])
    loss = HiVLPLoss(LossConfig.from_dict(config["loss"]))(out, groups=batch["group"][part])
    loss.total.backward()  # DDP averages the gradients over the ranks here
    grads = {n: p.grad.detach().clone() for n, p in ddp.module.named_parameters() if p.grad is not None}
    losses = {"total": loss.total.detach(), **loss.parts}  # the parts are detached already
    torch.save({"losses": losses, "grads": grads}, f"{config['out']}/rank{rank}.pt")
    ray.train.report({"loss": float(loss.total)})


def test_two_workers_match_one_process_on_the_concatenated_batch(ray_cluster: None, tmp_path: Path) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer

    records = synthetic.generate(16, seed=3, image_size=32)
    captions = [r.captions[0] for r in records]
    model = create_model("micro", texts=[c for r in records for c in r.captions], seed=0)
    model.save_pretrained(tmp_path / "model")
    tokens = model.tokenize(captions)
    groups = list(range(16))
    groups[9] = groups[2]  # a positive pair across the two ranks' halves (rows 2 and 9)
    batch = {
        "pixel_values": model.preprocess_images([r.image for r in records]),
        "input_ids": tokens["input_ids"],
        "attention_mask": tokens["attention_mask"],
        "group": torch.tensor(groups),
    }
    torch.save(batch, tmp_path / "batch.pt")

    trainer = TorchTrainer(
        _equivalence_worker,
        train_loop_config={
            "model_dir": str(tmp_path / "model"),
            "batch": str(tmp_path / "batch.pt"),
            "loss": LOSS,
            "out": str(tmp_path),
        },
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False),
        run_config=ray.train.RunConfig(name="equivalence", storage_path=str(tmp_path / "ray")),
    )
    result = trainer.fit()
    assert result.error is None

    # The same weights, one process, the whole batch.
    reference = HiVLP.from_pretrained(tmp_path / "model")
    out = reference(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    full = HiVLPLoss(LossConfig.from_dict(LOSS))(out, groups=batch["group"])
    full.total.backward()
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Each rank's loss (the total and every term) is the mean over its rows, so the global one is the
    # mean of the two. assert_close on mappings also checks that both have the same keys.
    mean = {k: (ranks[0]["losses"][k] + ranks[1]["losses"][k]) / 2 for k in ranks[0]["losses"]}
    torch.testing.assert_close(mean, {"total": full.total.detach(), **full.parts}, rtol=1e-5, atol=1e-6)
    # After DDP's all-reduce both ranks hold the same gradient: the single-process one.
    torch.testing.assert_close(ranks[0]["grads"], ranks[1]["grads"])
    torch.testing.assert_close(ranks[0]["grads"], expected, rtol=1e-4, atol=1e-6)
    assert float(torch.stack([g.abs().sum() for g in expected.values()]).sum()) > 0


# -- 2 + 3 + 4. one short training run: a worker crash, the driver stopped, a resume elsewhere --------
#
# Ray start-up dominates on this machine (a run is ~40 s, of which training is ~5), so one run
# serves every check: it learns and checkpoints (test 2), Ray restarts a crashed worker group
# from the last checkpoint (test 3), and after the run failed for good, re-running the same
# ``run.name`` on another worker count resumes it, as docs/training.md says (test 4).
#
# 256 images / (2 workers x 16) = 8 steps per epoch, 24 steps. Checkpoints at 5, 8 (epoch end),
# 10, 15, 16, 20, 24. Rank 1 dies after step 13, once Ray's controller has registered the step-10
# checkpoint (its checkpoint manager snapshot names it; the controller polls the workers every
# ~2 s, which a loaded machine stretches), so the restart must resume after step 10: mid-epoch 1,
# with two micro-batches of that epoch to skip. It dies again after step 21, once step 20 is
# registered: with ``max_failures=1`` spent, the run fails and the driver returns. The same
# config on ONE worker then resumes after step 20 (mid-epoch 2) and ends at step 24.
STEPS, CRASH_STEP, RESUME_AFTER = 24, 13, 10
QUEUE_SIZE = 8
SECOND_CRASH_STEP, DRIVER_RESUME_AFTER = 21, 20
#: Ray Train V2 keeps its checkpoint manager's state here, in the run directory on storage.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


@dataclass(frozen=True)
class CrashedRun:
    """The run of tests 2-5: ``result`` is the resumed (one-worker) run's, ``failure`` the first's."""

    result: Any
    failure: BaseException
    run_dir: Path
    cfg: Any
    markers: list[Path]


def _crash_after_registered(cfg: Any, step: int, registered_step: int, marker: Path) -> dict[str, Any]:
    """Rank 1 dies after ``step`` once Ray has registered the checkpoint of ``registered_step``."""
    snapshot = str(Path(run_directory(cfg)) / RAY_SNAPSHOT)
    wait_for = {"path": snapshot, "text": f"checkpoint_{registered_step:07d}", "timeout_s": 300}
    return {"step": step, "rank": 1, "marker": str(marker), "wait_for": wait_for}


def _crash_config(tmp_path: Path, *extra: str) -> Any:
    """The quickstart config scaled down to seconds (micro model, 32-px synthetic scenes) for run 'crash'."""
    return load_config(
        "quickstart",
        [
            "model.config=micro",
            "loss.itm=0",
            "data.shuffle_buffer=64",
            "data.preprocess_batch_size=64",
            "optim.batch_size=16",
            "optim.warmup_steps=5",
            "optim.lr=1e-3",
            "validation.max_items=64",
            "validation.coarse_ks=[5, 20]",
            "run.name=crash",
            f"run.work_dir={tmp_path / 'crash'}",
            f"run.step_log={tmp_path / 'crash' / 'steps.jsonl'}",
            "run.log_every_steps=4",
            "data.synthetic={train: 256, val: 32, seed: 2, image_size: 32}",
            f"optim.max_steps={STEPS}",  # the same schedule on any worker count
            "run.checkpoint_every_steps=5",
            "run.max_failures=1",
            "run.num_to_keep=2",
            # A negative queue, so the exact-resume checks below also prove that it is saved and restored
            # (the replayed steps' losses depend on it). Small: its extra columns barely raise the loss.
            f"loss.queue_size={QUEUE_SIZE}",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def crashed_run(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> CrashedRun:
    import ray.train

    tmp_path = tmp_path_factory.mktemp("train")
    cfg = _crash_config(tmp_path)
    markers = [tmp_path / "crash" / "crashed.marker", tmp_path / "crash" / "crashed-again.marker"]
    faults = [
        _crash_after_registered(cfg, CRASH_STEP, RESUME_AFTER, markers[0]),
        _crash_after_registered(cfg, SECOND_CRASH_STEP, DRIVER_RESUME_AFTER, markers[1]),
    ]
    with pytest.raises(ray.train.TrainingFailedError) as failed:
        run_training(cfg, fault_injection=faults)
    for marker, registered in zip(markers, (RESUME_AFTER, DRIVER_RESUME_AFTER), strict=True):
        assert marker.exists(), f"the injected crash {marker.name} did not happen"
        assert f"contains checkpoint_{registered:07d}" in marker.read_text(), marker.read_text()
    # The documented resume: the same command (run.name, storage) again, here on one worker.
    result = run_training(_crash_config(tmp_path, "scaling.num_workers=1"))
    return CrashedRun(result, failed.value, tmp_path / "crash", cfg, markers)


def test_short_run_learns_and_checkpoints_load(crashed_run: CrashedRun) -> None:
    result, run_dir = crashed_run.result, crashed_run.run_dir
    steps = _read_steps(run_dir / "steps.jsonl")
    losses = {s["step"]: s["loss"] for s in steps}  # the replayed steps overwrite (near) identical values
    first = sum(losses[i] for i in range(1, 5)) / 4
    last = sum(losses[i] for i in range(STEPS - 3, STEPS + 1)) / 4
    assert last < first - 0.5, (first, last)

    assert result.metrics["step"] == STEPS
    assert 0.0 <= result.metrics["val_AR"] <= 1.0
    assert {"val_low_AR", "val_high_AR", "val_hier@20_AR"} <= set(result.metrics)
    assert result.plan.total_steps == STEPS
    assert result.best_metrics["val_AR"] >= result.metrics["val_AR"]

    checkpoint = Path(result.last_checkpoint)
    state = load_training_state(checkpoint)
    assert (state.step, state.total_steps) == (STEPS, STEPS)
    names = {p.name for p in checkpoint.iterdir()}
    assert {
        "optimizer.pt",
        "scheduler.json",
        "training_state.json",
        "model.safetensors",
        "config.json",
        "loss_state.safetensors",
    } <= names
    queue = load_loss_state(checkpoint)
    assert len(queue["queue.text_high"]) == QUEUE_SIZE
    assert queue["queue.grouped"].all()  # the loop passes every batch's relevance groups
    from_checkpoint = HiVLP.from_pretrained(checkpoint)
    exported = HiVLP.from_pretrained(result.model_dir)
    assert exported.fingerprint == from_checkpoint.fingerprint
    assert not (result.model_dir / "optimizer.pt").exists()
    assert not (result.model_dir / "loss_state.safetensors").exists()
    assert exported.embed_texts(["a red circle"]).low.shape == (1, exported.config.low_dim)
    # num_to_keep=2 best by val_AR, plus the newest one, which Ray always keeps.
    kept = sorted(p.name for p in Path(result.run_path).glob("checkpoint_0*"))
    assert kept[-1] == f"checkpoint_{STEPS:07d}"
    assert len(kept) <= 3
    assert Path(result.best_checkpoint).name in kept


def _groups(run_dir: Path) -> list[list[dict]]:
    """Rank 0's per-step log lines, one list per worker group (process) in the order they ran."""
    steps = _read_steps(run_dir / "steps.jsonl")
    pids = list(dict.fromkeys(s["pid"] for s in steps))
    return [[s for s in steps if s["pid"] == pid] for pid in pids]


def test_worker_crash_resumes_at_the_next_step(crashed_run: CrashedRun) -> None:
    groups = _groups(crashed_run.run_dir)
    assert len(groups) == 3, "expected one Ray restart of the worker group, then one resumed run"
    before, after = groups[0], groups[1]
    assert [s["step"] for s in before] == list(range(1, len(before) + 1))
    assert len(before) in (CRASH_STEP - 1, CRASH_STEP)  # rank 0 may not log the crash step itself
    # Right after the last registered checkpoint: no step lost, none repeated except those after it.
    resumed = list(range(RESUME_AFTER + 1, SECOND_CRASH_STEP))
    assert [s["step"] for s in after] in (resumed, [*resumed, SECOND_CRASH_STEP])  # until the second crash
    # The replayed steps trained on exactly the same batches (deterministic skip), same loss. Both
    # lists count on from step RESUME_AFTER + 1 (asserted above), so they pair up step by step.
    replayed = before[RESUME_AFTER:]
    assert replayed
    again = after[: len(replayed)]
    assert [s["batch"] for s in again] == [s["batch"] for s in replayed], "the replayed steps saw other images"
    assert [s["loss"] for s in again] == pytest.approx([s["loss"] for s in replayed], rel=1e-4, abs=1e-5)


def test_rerunning_the_run_name_resumes_on_another_worker_count(crashed_run: CrashedRun) -> None:
    """docs/training.md: resume = run the same command again; another worker count continues the steps."""
    result = crashed_run.result
    two_workers, one_worker = _groups(crashed_run.run_dir)[1:]
    assert two_workers[-1]["step"] in (SECOND_CRASH_STEP - 1, SECOND_CRASH_STEP)
    # The new driver started from the newest registered checkpoint, not from scratch.
    assert [s["step"] for s in one_worker] == list(range(DRIVER_RESUME_AFTER + 1, STEPS + 1))
    # Same schedule (optim.max_steps) and the restored scheduler state: the warm-up + cosine
    # learning rate of each step number, as the two-worker groups had it.
    optim = crashed_run.cfg.optim
    for line in [*two_workers, *one_worker]:
        factor = lr_factor(line["step"], warmup_steps=optim.warmup_steps, total_steps=STEPS,
                           min_lr_ratio=optim.min_lr_ratio)  # fmt: skip
        assert line["lr"] == pytest.approx(optim.lr * factor, rel=1e-6), line
    assert result.plan.workers == 1
    assert result.plan.global_batch == 16
    state = load_training_state(result.last_checkpoint)
    assert (state.step, state.world_size, state.global_batch) == (STEPS, 1, 16)
    # Samples count on: 20 steps of 2 x 16 before, 4 steps of 1 x 16 after.
    expected_samples = DRIVER_RESUME_AFTER * 32 + (STEPS - DRIVER_RESUME_AFTER) * 16
    assert state.samples_seen == result.metrics["samples_seen"] == expected_samples


def test_rerunning_the_run_name_with_another_model_is_refused(crashed_run: CrashedRun) -> None:
    tmp_path = crashed_run.run_dir.parent
    before = (crashed_run.run_dir / "steps.jsonl").read_text()
    other = _crash_config(tmp_path, "model.overrides={low_dim: 24}")
    refused = r"run 'crash' already exists .* another model \(low_dim differ.*another run\.name"
    with pytest.raises(ConfigError, match=refused):
        run_training(other)
    assert (crashed_run.run_dir / "steps.jsonl").read_text() == before  # nothing was trained
