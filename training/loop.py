"""``train_loop_per_worker``: what every Ray Train worker runs.

One process per worker. The driver has already created the model (and its WordPiece vocabulary)
once and published it, so every rank starts from identical weights; ``prepare_model`` wraps it in
DDP (gloo on CPU, NCCL on GPU: only the config differs). Each rank reads its shard of the Ray
Dataset, scores its rows against the all-gathered global batch (``HiVLPLoss``), and DDP averages
the gradients: N workers with batch B optimise what one process with batch N·B would.

Rank 0 validates, writes checkpoints and prints progress; every rank calls ``ray.train.report``
the same number of times (it is a barrier). Resuming restores model, optimizer, scheduler, the
loss's negative queue and the position in the epoch from ``ray.train.get_checkpoint()`` and
continues at the exact next step.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.checkpoint import (
    TrainingState,
    load_loss_state,
    load_optimizer_state,
    load_scheduler_state,
    load_training_state,
    save_checkpoint,
)
from training.data import batch_fingerprint, mix_seed, select_captions, shuffle_seed
from training.step import forward_loss

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    import torch

    from hivlp_milvus.model.hivlp import HiVLP

__all__ = ["LoopSpec", "lr_factor", "train_loop_per_worker"]


@dataclass(frozen=True)
class LoopSpec:
    """The plain-data contract between the driver (``training/trainer.py``) and the workers.

    ``train_loop_per_worker`` receives it as a dict (``dataclasses.asdict``) because Ray ships the
    train-loop config to every worker; all fields are JSON values.

    Attributes:
        init_model: path or URI of the initial ``save_pretrained`` directory.
        loss: ``LossConfig`` fields.
        total_steps: optimizer steps of the whole run.
        micro_per_epoch: micro-batches each rank gets per epoch (planned).
        batch_size: per-worker micro-batch.
        grad_accum_steps: micro-batches per optimizer step.
        lr: peak learning rate.
        weight_decay: AdamW weight decay (matrices only).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: linear warm-up steps.
        min_lr_ratio: floor of the cosine as a fraction of ``lr``.
        clip_norm: gradient-norm clip (0 = off).
        precision: ``fp32``, ``bf16`` or ``auto`` (bf16 where the device runs it natively).
        seed: run seed.
        shuffle_buffer: local shuffle buffer rows (0 = off).
        use_gpu: GPU workers.
        cpus_per_worker: torch threads on CPU workers.
        find_unused_parameters: DDP flag.
        log_every_steps: progress line period.
        checkpoint_every_steps: checkpoint period (0 = epoch ends and the end only).
        step_log: JSON-lines file rank 0 appends one line per step to, or ``None``.
        validation: ``{"source", "split", "image_root"}`` for ``load_source``, or ``None``.
        coarse_ks: hierarchical evaluation shortlist sizes.
        val_max_items: validation images.
        val_batch_size: validation encoding batch.
        fault_injection: ``{"step", "rank", "marker", "wait_for"}`` or a list of them: that rank
            ends its process with ``os._exit(1)`` after optimizer step ``step``, unless ``marker``
            exists (which it creates first). ``wait_for`` (``{"path", "text", "timeout_s"}``)
            makes it wait first until the file ``path`` exists and contains ``text``. For
            fault-tolerance tests only.
    """

    init_model: str
    loss: dict[str, Any]
    total_steps: int
    micro_per_epoch: int
    batch_size: int
    grad_accum_steps: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    clip_norm: float = 1.0
    precision: str = "fp32"
    seed: int = 0
    shuffle_buffer: int = 0
    use_gpu: bool = False
    cpus_per_worker: int = 1
    find_unused_parameters: bool = False
    log_every_steps: int = 10
    checkpoint_every_steps: int = 0
    step_log: str | None = None
    validation: dict[str, Any] | None = None
    coarse_ks: tuple[int, ...] = (10, 50)
    val_max_items: int = 1000
    val_batch_size: int = 128
    fault_injection: dict[str, Any] | list[dict[str, Any]] | None = field(default=None)


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for optimizer step ``step + 1`` (``step`` = steps done).

    Linear warm-up over ``warmup_steps`` (never 0: the first step already moves), then a cosine
    decay to ``min_lr_ratio`` at ``total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train HiVLP on this worker's shard; the function Ray Train runs on every worker.

    Args:
        config: a :class:`LoopSpec` as a dict (built by ``training.trainer.build_trainer``).
    """
    import ray.train
    import torch
    from ray.train.torch import get_device, prepare_model

    from hivlp_milvus.device import check_training_precision, training_autocast_dtype
    from hivlp_milvus.model.hivlp import HiVLP
    from hivlp_milvus.model.loss import HiVLPLoss, LossConfig

    spec = LoopSpec(**config)  # unknown keys are an error, not ignored
    _quiet_report_log()
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if not spec.use_gpu:
        # Ray gives the worker N CPUs; more torch threads than that would fight the other workers.
        torch.set_num_threads(spec.cpus_per_worker)
    device = get_device()

    resumed = ray.train.get_checkpoint()
    state: TrainingState | None = None
    loss_state: dict[str, Any] = {}
    # A restarted worker group continues from the newest checkpoint, a new one from the initial model.
    start_from = resumed if resumed is not None else ray.train.Checkpoint(spec.init_model)
    with start_from.as_directory() as directory:
        model = HiVLP.from_pretrained(directory)
        if resumed is not None:
            state = load_training_state(directory)
            optimizer_state = load_optimizer_state(directory)
            scheduler_state = load_scheduler_state(directory)
            loss_state = load_loss_state(directory)
    model.train()  # from_pretrained returns eval mode
    ddp = prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": spec.find_unused_parameters})
    module: HiVLP = getattr(ddp, "module", ddp)  # one worker: prepare_model does not wrap

    optimizer = _build_optimizer(module, spec)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(
            s, warmup_steps=spec.warmup_steps, total_steps=spec.total_steps, min_lr_ratio=spec.min_lr_ratio
        ),
    )
    if state is not None:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        if state.world_size != world and rank == 0:
            _say(
                f"resuming a {state.world_size}-worker checkpoint on {world} workers: "
                "the step count continues, but the rest of this epoch is re-sharded"
            )
    loss_fn = HiVLPLoss(LossConfig.from_dict(spec.loss))
    # Every rank loads rank 0's saved queue; each pushes the same all-gathered rows from here on.
    loss_fn.load_queue_state(loss_state)
    validator = _Validator(spec) if rank == 0 and spec.validation is not None else None
    progress = _Progress(spec, rank=rank, world=world)

    step, epoch, skip, samples_seen = (
        (state.step, state.epoch, state.micro_in_epoch, state.samples_seen) if state is not None else (0, 0, 0, 0)
    )
    global_batch = spec.batch_size * world
    last_reported = step
    # bf16 where the device would only emulate it (several times slower) is refused; auto picks it
    # where it is native: an Ampere+ GPU, or a CPU with AVX512-BF16/AMX (1.65-2x a step on tiny there).
    check_training_precision(spec.precision, device)
    dtype = training_autocast_dtype(spec.precision, device)
    if rank == 0:
        start = "starting" if state is None else f"resuming after step {step} (epoch {epoch}, skip {skip})"
        _say(
            f"{start}: {spec.total_steps} steps, {world} workers x batch {spec.batch_size} "
            f"= contrastive batch {global_batch}, grad_accum {spec.grad_accum_steps}, device {device}, "
            f"precision {'bf16' if dtype is not None else 'fp32'} ({spec.precision})"
        )

    shard = ray.train.get_dataset_shard("train")
    usable_micro = spec.micro_per_epoch // spec.grad_accum_steps * spec.grad_accum_steps

    def report(epoch_next: int, micro_next: int) -> None:
        nonlocal last_reported
        metrics = {
            "step": step,
            "epoch": epoch,
            "samples_seen": samples_seen,
            **progress.summary(),
            "lr": scheduler.get_last_lr()[0],
        }
        checkpoint = None
        with progress.paused(), tempfile.TemporaryDirectory(prefix="hivlp-ckpt-") as tmp:
            if rank == 0:
                if validator is not None:
                    metrics.update(validator(module))
                train_state = TrainingState(
                    step=step,
                    epoch=epoch_next,
                    micro_in_epoch=micro_next,
                    total_steps=spec.total_steps,
                    samples_seen=samples_seen,
                    world_size=world,
                    global_batch=global_batch,
                    metrics=metrics,
                )
                save_checkpoint(
                    tmp,
                    model=module,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    state=train_state,
                    loss_state=loss_fn.queue_state(),
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
                progress.print_checkpoint(metrics)
            # A barrier: every rank reports once per checkpoint; only rank 0 passes the checkpoint.
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{step:07d}")
        last_reported = step

    while step < spec.total_steps:
        micro = 0
        steps_before, skip_at_start = step, skip
        optimizer.zero_grad(set_to_none=True)
        for batch in _batches(shard, spec, epoch, rank, device):
            # Skip what was trained on before the restart (same batches, same order), and the
            # epoch's last micro-batches when they cannot complete an accumulated step.
            if micro < skip or micro >= usable_micro:
                micro += 1
                continue
            last_micro_of_step = (micro + 1) % spec.grad_accum_steps == 0
            # Seeded per micro-batch, so dropout after a resume is what it would have been.
            torch.manual_seed(mix_seed(spec.seed, epoch, micro, rank))
            sync = contextlib.nullcontext() if last_micro_of_step or world == 1 else ddp.no_sync()
            with sync:
                input_ids, attention_mask = select_captions(batch, seed=spec.seed, epoch=epoch)
                loss = forward_loss(ddp, loss_fn, batch, input_ids, attention_mask, step=step, dtype=dtype)
                (loss.total / spec.grad_accum_steps).backward()
            progress.add(loss)
            micro += 1
            if not last_micro_of_step:
                continue
            grad_norm = _clip(module, spec.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            samples_seen += global_batch * spec.grad_accum_steps
            progress.step_done(step, epoch, grad_norm, scheduler.get_last_lr()[0], batch["uid"])
            _maybe_crash(spec, step, rank)
            epoch_done = micro >= usable_micro
            position = (epoch + 1, 0) if epoch_done else (epoch, micro)
            if step == spec.total_steps or (spec.checkpoint_every_steps and step % spec.checkpoint_every_steps == 0):
                report(*position)
            if step == spec.total_steps:
                break
        skip = 0
        # A run that reached total_steps broke out right after a step (so step > steps_before) and
        # reported it (so last_reported == step): the checks below pass and the while ends.
        if step == steps_before and skip_at_start == 0:
            raise RuntimeError(
                f"epoch {epoch} gave rank {rank} no complete optimizer step; the training set is too small "
                "for batch_size x workers x grad_accum_steps (or most images failed to decode)"
            )
        # The epoch ran out: checkpoint at every epoch end (validation included) unless the
        # periodic checkpoint just did.
        if last_reported != step:
            report(epoch + 1, 0)
        epoch += 1
    if rank == 0:
        _say(f"done: {step} steps, {samples_seen} samples")


# -- helpers ---------------------------------------------------------------------------------------


def _batches(shard: Any, spec: LoopSpec, epoch: int, rank: int, device: torch.device) -> Iterator[dict]:
    """One epoch of this rank's batches: equal sizes (``drop_last``), seeded local shuffle."""
    import torch

    shuffle = spec.shuffle_buffer > 0
    return shard.iter_torch_batches(
        batch_size=spec.batch_size,
        drop_last=True,  # the all-gather and the positive-label offsets need equal per-rank batches
        local_shuffle_buffer_size=spec.shuffle_buffer if shuffle else None,
        local_shuffle_seed=shuffle_seed(spec.seed, epoch, rank) if shuffle else None,
        dtypes={
            "pixel_values": torch.float32,
            "input_ids": torch.long,
            "attention_mask": torch.long,
            "num_captions": torch.long,
            "group": torch.long,
            "uid": torch.long,
        },
        device=device,
    )


def _build_optimizer(module: torch.nn.Module, spec: LoopSpec) -> torch.optim.Optimizer:
    """AdamW; weight decay only on matrices (not biases, norms or the temperatures)."""
    import torch

    params = [param for param in module.parameters() if param.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": spec.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps)


def _clip(module: torch.nn.Module, clip_norm: float) -> float:
    import torch

    params = [p for p in module.parameters() if p.grad is not None]
    if clip_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, clip_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])))


def _maybe_crash(spec: LoopSpec, step: int, rank: int) -> None:
    """Fault injection for the fault-tolerance tests: a hard process exit, once per marker file."""
    faults = spec.fault_injection or []
    for fault in [faults] if isinstance(faults, dict) else faults:
        if step == int(fault["step"]) and rank == int(fault.get("rank", 0)) and not Path(fault["marker"]).exists():
            marker = Path(fault["marker"])
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"crashing at step {step} on rank {rank}\n")
            # Ray Train's controller registers a report when it next polls the workers, seconds
            # later. A test that must know where the restart resumes waits for that event (Ray's
            # checkpoint manager snapshot naming the checkpoint), not for a fixed time, which a
            # loaded machine can outlast.
            waited = _wait_for_text(fault["wait_for"]) if fault.get("wait_for") else "no wait"
            marker.write_text(f"crashed at step {step} on rank {rank} ({waited})\n")
            os._exit(1)


def _wait_for_text(wait_for: dict[str, Any]) -> str:
    """Poll until the file ``wait_for["path"]`` contains ``wait_for["text"]``; says how it ended."""
    path, text = Path(wait_for["path"]), str(wait_for["text"])
    deadline = time.monotonic() + float(wait_for.get("timeout_s", 120.0))
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if text in path.read_text(encoding="utf-8"):
                return f"{path.name} contains {text}"
        time.sleep(0.1)
    return f"timed out waiting for {text} in {path}"


class _Progress:
    """Running averages of the loss parts; rank 0 prints them and writes the per-step log.

    Throughput counts training time only: time inside checkpoint reports (validation, saving,
    the barrier) is excluded, so ``samples_per_s`` compares across checkpoint settings.
    """

    def __init__(self, spec: LoopSpec, *, rank: int, world: int) -> None:
        self.spec, self.rank, self.world = spec, rank, world
        self.samples_per_step = spec.batch_size * world * spec.grad_accum_steps
        self.sums: collections.Counter[str] = collections.Counter()
        self.count = 0
        now = time.perf_counter()
        self.window_start, self.window_steps, self.window_paused = now, 0, 0.0
        self.run_start, self.run_steps, self.run_paused = now, 0, 0.0
        self.last: dict[str, float] = {}
        self.grad_norm = 0.0
        self.step_losses: list[float] = []  # this rank's micro-batch losses of the current step

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Exclude the time of the ``with`` body from the throughput."""
        started = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - started
            self.window_paused += spent
            self.run_paused += spent

    def add(self, loss: Any) -> None:
        values = {"loss": float(loss.total.detach()), **{k: float(v) for k, v in loss.parts.items()}}
        self.sums.update(values)
        self.count += 1
        self.step_losses.append(values["loss"])

    def step_done(self, step: int, epoch: int, grad_norm: float, lr: float, uids: torch.Tensor) -> None:
        self.window_steps += 1
        self.run_steps += 1
        self.grad_norm = grad_norm
        if self.rank == 0 and self.spec.step_log:
            line = {
                "step": step,
                "epoch": epoch,
                "loss": sum(self.step_losses) / max(1, len(self.step_losses)),  # rank 0's rows
                "lr": lr,
                "batch": batch_fingerprint(uids.tolist()),
                "pid": os.getpid(),
                "time": time.time(),
            }
            with open(self.spec.step_log, "a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")
        self.step_losses = []
        if step % self.spec.log_every_steps == 0 or step == self.spec.total_steps:
            self._flush(step, epoch, lr)

    def _flush(self, step: int, epoch: int, lr: float) -> None:
        import torch
        import torch.distributed as dist

        from hivlp_milvus.model.loss import FUSION_TERMS, TERMS

        keys = sorted(self.sums)
        values = torch.tensor([self.sums[k] / max(1, self.count) for k in keys], dtype=torch.float64)
        if self.world > 1 and dist.is_initialized():
            # Every rank reaches this step, so the collective is safe; the mean of the ranks'
            # local losses is the loss of the global batch.
            # NCCL only reduces CUDA tensors (on the current device); gloo only CPU ones.
            values = values.to("cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(values)
            values = values.cpu() / self.world
        now = time.perf_counter()
        busy = now - self.window_start - self.window_paused
        rate = self.window_steps * self.samples_per_step / max(1e-9, busy)
        self.last = {k: float(v) for k, v in zip(keys, values.tolist(), strict=True)}
        self.sums, self.count = collections.Counter(), 0
        self.window_start, self.window_steps, self.window_paused = now, 0, 0.0
        if self.rank != 0:
            return
        last = self.last
        parts = " ".join(f"{k} {last[k]:.4f}" for k in (*TERMS, *FUSION_TERMS) if k in last)
        temps = (
            f" | T_low {1 / last['logit_scale_low']:.4f} T_high {1 / last['logit_scale_high']:.4f}"
            if "logit_scale_low" in last
            else ""
        )
        _say(
            f"step {step}/{self.spec.total_steps} epoch {epoch} | loss {last.get('loss', 0):.4f} ({parts})"
            f"{temps} | lr {lr:.2e} | grad_norm {self.grad_norm:.3f} | {rate:.1f} samples/s"
        )

    def summary(self) -> dict[str, float]:
        """Metrics for ``ray.train.report``: the last window's global averages and throughput."""
        busy = time.perf_counter() - self.run_start - self.run_paused
        return {
            **self.last,
            "samples_per_s": self.run_steps * self.samples_per_step / max(1e-9, busy),
            "train_seconds": busy,
        }

    def print_checkpoint(self, metrics: dict[str, Any]) -> None:
        val = " ".join(f"{k[4:]} {v:.4f}" for k, v in metrics.items() if k.startswith("val_") and k.endswith("_AR"))
        _say(f"checkpoint at step {metrics['step']}" + (f" | {val}" if val else ""))


def _quiet_report_log() -> None:
    """Silence Ray Train V2's per-report INFO line on this worker.

    It prints every ``ray.train.report`` call with the whole metrics dict, from every rank, which
    buries our own progress lines (one per ``log_every_steps``) in the quickstart's output. The
    logger is named after its module's file, so it is looked up through that module; if Ray moves
    it, the line simply comes back.
    """
    with contextlib.suppress(ImportError):
        from ray.train.v2._internal.execution import context as ray_train_context

        logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)


def _say(message: str) -> None:
    """One progress line on the worker's stdout, which Ray streams to the driver.

    Not ``print``: Ray Train patches it into the root logger, which some setups echo twice.
    """
    sys.stdout.write(f"[hivlp train] {message}\n")
    sys.stdout.flush()


class _Validator:
    """Rank 0's retrieval evaluation on the (capped) validation set, as flat ``val_*`` metrics."""

    def __init__(self, spec: LoopSpec) -> None:
        self.spec = spec

    @functools.cached_property
    def records(self) -> list[Any]:
        """The first ``val_max_items`` usable records, read at the first validation."""
        from hivlp_milvus.data import load_source

        val = self.spec.validation or {}
        source = load_source(val["source"], split=val.get("split"), image_root=val.get("image_root"))
        usable = (record for record in source if record.image is not None and record.captions)
        return list(itertools.islice(usable, self.spec.val_max_items))

    def __call__(self, model: HiVLP) -> dict[str, float]:
        from hivlp_milvus.eval import evaluate

        started = time.perf_counter()
        table = evaluate(
            model,
            self.records,
            coarse_ks=tuple(self.spec.coarse_ks),
            batch_size=self.spec.val_batch_size,
            text_batch_size=max(self.spec.val_batch_size, 256),
            progress=False,
        )
        metrics = flatten_eval(table)
        metrics["val_seconds"] = time.perf_counter() - started
        return metrics


def flatten_eval(table: Any) -> dict[str, float]:
    """An ``EvalTable`` as flat metrics for ``ray.train.report``.

    Every row (``low``, ``high``, ``hier@K``) gives ``val_<row>_AR``, ``val_<row>_i2t_R@1`` and
    ``val_<row>_t2i_R@1``; funnel rows also ``val_<row>_shortlist_recall``. The headline
    ``val_AR`` -- the checkpoint score -- is the AR of the funnel with the largest shortlist, i.e.
    what ``hierarchical_search`` delivers; without funnel rows it is the high-level AR. (The full
    table is one ``hivlp-milvus eval`` away; the metrics stay few so the run log stays readable.)

    Args:
        table: what ``hivlp_milvus.eval.evaluate`` returns.

    Returns:
        ``{metric name: value}`` (recalls as fractions in [0, 1]).
    """
    keep = {
        "AR": "AR",
        "image_to_text_R@1": "i2t_R@1",
        "text_to_image_R@1": "t2i_R@1",
        "shortlist_recall": "shortlist_recall",
    }
    metrics = {
        f"val_{row_name}_{short}": float(row[key])
        for row_name, row in table.rows.items()
        for key, short in keep.items()
        if key in row
    }
    funnels = sorted((int(name.split("@", 1)[1]), name) for name in table.rows if name.startswith("hier@"))
    headline = funnels[-1][1] if funnels else "high"
    metrics["val_AR"] = float(table.rows[headline]["AR"])
    return metrics
