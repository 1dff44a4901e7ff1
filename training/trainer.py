"""The driver side: prepare data and the initial model once, build the ``TorchTrainer``, run it.

``build_trainer(cfg)`` does everything that must happen exactly once per run, before any worker
starts: generate/load the records, create the model and its WordPiece vocabulary from the
training captions (so every rank starts from the same weights and vocabulary), publish it where
every node can read it, tokenize the captions and define the Ray Dataset. ``run_training(cfg)``
also fits the trainer, exports the final model to ``<work_dir>/model`` and returns a
:class:`TrainResult`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivlp_milvus.errors import ConfigError
from training.checkpoint import directory_exists, export_model, publish_directory
from training.config import TrainConfig, is_uri, load_config
from training.data import (
    build_train_dataset,
    build_train_table,
    decoded_bytes,
    plan_epoch,
    prepare_sources,
    should_cache_decoded,
)
from training.loop import LoopSpec, train_loop_per_worker

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    from ray.train.torch import TorchTrainer

__all__ = ["RunPlan", "TrainResult", "build_trainer", "run_training"]

INIT_MODEL_DIR = "init_model"
SCORE_ATTRIBUTE = "val_AR"
# The model settings a run cannot resume across (see model_differences).
_MODEL_IDENTITY = (
    "low_dim",
    "high_dim",
    "head",
    "image.name",
    "image.image_size",
    "image.timm_kwargs",
    "text.name",
    "text.hidden_size",
    "text.num_layers",
)


@dataclass(frozen=True)
class RunPlan:
    """What the driver decided before training (printed, and kept in :class:`TrainResult`).

    Attributes:
        train_images: training images after the source skipped bad rows.
        skipped: rows the training source skipped.
        workers: Ray Train workers.
        batch_size: per-worker micro-batch.
        global_batch: contrastive batch (``batch_size * workers``).
        grad_accum_steps: micro-batches per optimizer step.
        steps_per_epoch: optimizer steps per epoch.
        total_steps: optimizer steps of the run.
        epochs: epochs the run spans (the last may be partial with ``max_steps``).
        init_model: where the workers read the initial model.
        storage_path: Ray Train storage.
        validation: whether rank 0 validates at every checkpoint.
        decoded_cache_bytes: size of the decoded images cached in the object store (0: decoded
            every epoch; ``data.cache_decoded``).
    """

    train_images: int
    skipped: int
    workers: int
    batch_size: int
    global_batch: int
    grad_accum_steps: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    init_model: str
    storage_path: str
    validation: bool
    decoded_cache_bytes: int = 0

    def describe(self) -> str:
        """One paragraph for the console."""
        images = (
            f"images decoded once, {self.decoded_cache_bytes / 1e9:.2f} GB cached in the object store"
            if self.decoded_cache_bytes
            else "images decoded every epoch"
        )
        return (
            f"{self.train_images} training images ({self.skipped} skipped by the source) | "
            f"{self.workers} workers x batch {self.batch_size} = contrastive batch {self.global_batch}"
            f"{f' x {self.grad_accum_steps} accumulation' if self.grad_accum_steps > 1 else ''} | "
            f"{self.steps_per_epoch} steps/epoch, {self.total_steps} steps over {self.epochs} epoch(s) | "
            f"validation {'on' if self.validation else 'off'} | {images} | storage {self.storage_path}"
        )


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced.

    Attributes:
        model_dir: the exported final model (``HiVLP.from_pretrained(model_dir)`` loads it).
        last_checkpoint: path/URI of the newest checkpoint (what a resume continues from).
        best_checkpoint: path/URI of the best checkpoint by ``val_AR`` (the last one without
            validation).
        metrics: metrics reported with the last checkpoint.
        best_metrics: metrics of the best checkpoint.
        wall_time_s: seconds from :func:`run_training` start to the exported model.
        run_path: the Ray Train run directory on storage.
        plan: the :class:`RunPlan`.
    """

    model_dir: Path
    last_checkpoint: str
    best_checkpoint: str
    metrics: dict[str, Any]
    best_metrics: dict[str, Any]
    wall_time_s: float
    run_path: str
    plan: RunPlan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**dataclasses.asdict(self), "model_dir": str(self.model_dir)}

    def summary(self) -> str:
        """A short human-readable report."""
        m = self.metrics
        lines = [
            f"trained {m.get('step', '?')} steps in {self.wall_time_s:.1f} s "
            f"({m.get('samples_per_s', float('nan')):.1f} samples/s while training)",
            f"final loss {m.get('loss', float('nan')):.4f}",
        ]
        if "val_AR" in self.best_metrics:
            lines.append(
                f"best val_AR {self.best_metrics['val_AR']:.4f} at step {self.best_metrics.get('step')} "
                f"(low {self.best_metrics.get('val_low_AR', float('nan')):.4f}, "
                f"high {self.best_metrics.get('val_high_AR', float('nan')):.4f})"
            )
        lines += [
            f"model: {self.model_dir}",
            f"last checkpoint: {self.last_checkpoint}",
            f"best checkpoint: {self.best_checkpoint}",
        ]
        return "\n".join(lines)


def build_trainer(cfg: TrainConfig, *, fault_injection: dict[str, Any] | None = None) -> TorchTrainer:
    """Prepare data and the initial model, and return a ready-to-``fit()`` ``TorchTrainer``.

    Joins (or starts) Ray first: see :func:`ensure_ray`.

    Args:
        cfg: the validated training config.
        fault_injection: test hook, see :class:`training.loop.LoopSpec` (``None`` in real runs).

    Returns:
        The trainer; ``trainer.fit()`` runs (or resumes) the training.

    Raises:
        ConfigError: the config does not fit the data (e.g. too few images for one step).
        DataError: the training source cannot be read.
    """
    trainer, _ = _build(cfg, fault_injection=fault_injection)
    return trainer


def run_training(cfg: TrainConfig, *, fault_injection: dict[str, Any] | None = None) -> TrainResult:
    """Train (or resume) the run ``cfg`` describes and export the final model.

    Re-running with the same ``run.name`` and ``run.storage_path`` resumes from the newest
    checkpoint; a finished run is not trained again.

    Args:
        cfg: the validated training config.
        fault_injection: test hook, see :class:`training.loop.LoopSpec`.

    Returns:
        The :class:`TrainResult`; also written to ``<work_dir>/train_result.json``.

    Raises:
        ray.train.TrainingFailedError: the run failed more often than ``run.max_failures``.
    """
    started = time.perf_counter()
    trainer, plan = _build(cfg, fault_injection=fault_injection)
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"the run finished without a checkpoint; see the worker logs under {result.path}")
    last = result.checkpoint
    best, best_metrics = last, dict(result.metrics or {})
    if plan.validation and result.best_checkpoints:
        best, best_metrics = max(result.best_checkpoints, key=lambda cm: cm[1].get(SCORE_ATTRIBUTE, float("-inf")))
    work_dir = cfg.run.resolved_work_dir
    exported = best if cfg.run.export == "best" else last
    with exported.as_directory() as directory:
        model_dir = export_model(directory, work_dir / "model")
    train_result = TrainResult(
        model_dir=model_dir,
        last_checkpoint=_checkpoint_location(last),
        best_checkpoint=_checkpoint_location(best),
        metrics=_plain_metrics(result.metrics or {}),
        best_metrics=_plain_metrics(best_metrics),
        wall_time_s=time.perf_counter() - started,
        run_path=str(result.path),
        plan=plan,
    )
    (work_dir / "train_result.json").write_text(json.dumps(train_result.to_dict(), indent=2, default=str) + "\n")
    return train_result


def ensure_ray(cfg: TrainConfig) -> None:
    """Join the configured Ray cluster, or the one ``ray start`` runs here, or start a local one.

    ``run.ray_address`` (or ``RAY_ADDRESS``) names a cluster to join; ``auto`` joins the cluster
    ``ray start`` formed on this node. Without either, a cluster that ``ray start`` launched on
    this machine is joined, as plain ``ray.init()`` does; otherwise a new local cluster starts
    with at least ``workers x CPUs per worker + 2`` logical CPUs even on a smaller machine: Ray
    Train reserves the workers' CPUs, and the Ray Data tasks that decode images need CPUs of
    their own or they would never be scheduled (they time-share the cores).
    """
    import ray

    if ray.is_initialized():
        return
    if cfg.run.ray_address is not None or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.run.ray_address)
        return
    needed = int(cfg.scaling.num_workers * cfg.scaling.worker_resources.get("CPU", 1)) + 2
    try:
        # The dashboard serves Ray's State API; Train V2's PlacementGroupCleaner polls it and, without
        # it, logs "Failed to query Ray Train Controller actor state" every few seconds.
        ray.init(num_cpus=max(os.cpu_count() or 1, needed), include_dashboard=True)
    except ValueError:
        # Ray found a `ray start` cluster on this machine; it refuses resource arguments when
        # connecting, so join it as it is. (Not address="auto": that also grabs any other Ray
        # instance running here, e.g. somebody's test cluster.)
        ray.init()


# -- internals -----------------------------------------------------------------------------------


def _build(cfg: TrainConfig, *, fault_injection: dict[str, Any] | None) -> tuple[TorchTrainer, RunPlan]:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    ensure_ray(cfg)
    work_dir = cfg.run.resolved_work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    storage_path = cfg.run.resolved_storage_path
    run_dir = run_directory(cfg)

    sources = prepare_sources(cfg, work_dir)
    model, init_location = _initial_model(cfg, sources, work_dir, run_dir)
    table = build_train_table(sources.train, model.tokenize, max_captions=cfg.data.max_captions, seed=cfg.optim.seed)
    workers = cfg.scaling.num_workers
    micro_per_epoch, steps_per_epoch = plan_epoch(
        len(table),
        world_size=workers,
        batch_size=cfg.optim.batch_size,
        grad_accum_steps=cfg.optim.grad_accum_steps,
    )
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    num_blocks = cfg.data.num_blocks or max(4 * workers, len(table) // 256)
    image_size = model.image_processor.image_size
    cache = should_cache_decoded(
        cfg.data.cache_decoded,
        num_images=len(table),
        image_size=image_size,
        object_store_bytes=ray.cluster_resources().get("object_store_memory", 0.0),
    )
    dataset = build_train_dataset(
        table,
        model.image_processor,
        num_blocks=num_blocks,
        preprocess_batch_size=cfg.data.preprocess_batch_size,
        cache_decoded=cache,
    )
    validation = sources.val is not None
    optim = cfg.optim
    spec = LoopSpec(
        init_model=init_location,
        loss=cfg.loss_config().to_dict(),
        total_steps=total_steps,
        micro_per_epoch=micro_per_epoch,
        batch_size=optim.batch_size,
        grad_accum_steps=optim.grad_accum_steps,
        lr=optim.lr,
        weight_decay=optim.weight_decay,
        betas=optim.betas,
        eps=optim.eps,
        warmup_steps=optim.warmup_steps,
        min_lr_ratio=optim.min_lr_ratio,
        clip_norm=optim.clip_norm,
        precision=optim.precision,
        seed=optim.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        use_gpu=cfg.scaling.use_gpu,
        cpus_per_worker=cfg.scaling.cpus_per_worker,
        find_unused_parameters=cfg.scaling.find_unused_parameters,
        log_every_steps=cfg.run.log_every_steps,
        checkpoint_every_steps=cfg.run.checkpoint_every_steps,
        step_log=cfg.run.step_log,
        validation=sources.val,
        coarse_ks=cfg.validation.coarse_ks,
        val_max_items=cfg.validation.max_items,
        val_batch_size=cfg.validation.batch_size,
        fault_injection=fault_injection,
    )
    plan = RunPlan(
        train_images=len(table),
        skipped=sources.skipped,
        workers=workers,
        batch_size=optim.batch_size,
        global_batch=optim.batch_size * workers,
        grad_accum_steps=optim.grad_accum_steps,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=-(-total_steps // steps_per_epoch),
        init_model=init_location,
        storage_path=storage_path,
        validation=validation,
        decoded_cache_bytes=decoded_bytes(len(table), image_size) if cache else 0,
    )
    print(f"[hivlp train] {plan.describe()}", flush=True)

    # preserve_order + no locality hints: Ray's streaming_split then gives every rank the same
    # rows in the same order each epoch, which is what makes "skip the consumed batches" exact.
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True
    # The driver log shows the [hivlp train] lines; per-epoch data progress bars would bury them.
    dataset.context.enable_progress_bars = False
    scaling = cfg.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dataclasses.asdict(spec),
        torch_config=TorchConfig(backend="nccl" if scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=scaling.worker_resources,
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.run.num_to_keep,
                checkpoint_score_attribute=SCORE_ATTRIBUTE if validation else None,
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
        ),
        datasets={"train": dataset},
        dataset_config=ray.train.DataConfig(execution_options=ingest, enable_shard_locality=False),
    )
    return trainer, plan


def _initial_model(cfg: TrainConfig, sources: Any, work_dir: Path, run_dir: str) -> tuple[Any, str]:
    """Create the initial model once (or reuse the published one when resuming) and publish it."""
    from hivlp_milvus.model.hivlp import HiVLP, create_model

    location = _join(run_dir, INIT_MODEL_DIR)
    if directory_exists(location):
        # Resuming: the workers restore their weights from the newest checkpoint, but the driver
        # still needs this run's vocabulary and image settings to build the same data set.
        import ray.train

        with ray.train.Checkpoint(location).as_directory() as directory:
            model = HiVLP.from_pretrained(directory)
        if cfg.model.init_checkpoint is None:
            _check_same_model(model.config, cfg.model.resolve(), cfg, location)
        return model, location
    if cfg.model.init_checkpoint is not None:
        model = HiVLP.from_pretrained(cfg.model.init_checkpoint)
    else:
        captions = [caption for record in sources.train for caption in record.captions]
        model = create_model(cfg.model.resolve(), texts=captions, seed=cfg.optim.seed)
    with tempfile.TemporaryDirectory(prefix="hivlp-init-") as tmp:
        model.save_pretrained(tmp)
        local_copy = work_dir / INIT_MODEL_DIR
        export_model(tmp, local_copy)
        publish_directory(local_copy, location)
    return model, location


def model_differences(existing: Any, wanted: Any) -> list[str]:
    """The model settings in which two ``HiVLPConfig`` differ so much that a run cannot resume.

    Args:
        existing: the config of the run's published initial model.
        wanted: the config the run would now be built from.

    Returns:
        Dotted names of the differing settings; empty when the run can resume.
    """
    return [key for key in _MODEL_IDENTITY if attrgetter(key)(existing) != attrgetter(key)(wanted)]


def run_directory(cfg: TrainConfig) -> str:
    """Where Ray Train keeps run ``cfg``'s checkpoints: ``<storage_path>/<run.name>``."""
    return _join(cfg.run.resolved_storage_path, cfg.run.name)


def existing_run_model(cfg: TrainConfig) -> Any | None:
    """The ``HiVLPConfig`` of run ``cfg``'s published initial model, or ``None`` for a new run."""
    import ray.train

    from hivlp_milvus.model.config import HiVLPConfig

    location = _join(run_directory(cfg), INIT_MODEL_DIR)
    if not directory_exists(location):
        return None
    with ray.train.Checkpoint(location).as_directory() as directory:
        return HiVLPConfig.load(Path(directory) / "config.json")


def _check_same_model(existing: Any, wanted: Any, cfg: TrainConfig, location: str) -> None:
    """Refuse to resume a run whose model differs from the config (same name, new experiment)."""
    differs = model_differences(existing, wanted)
    if differs:
        raise ConfigError(
            f"run {cfg.run.name!r} already exists in {cfg.run.resolved_storage_path} with another model "
            f"({', '.join(differs)} differ; its initial model is {location}); re-running a name resumes it. "
            "Start a new experiment with another run.name (or delete that run directory)"
        )


def _join(base: str, *parts: str) -> str:
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def _checkpoint_location(checkpoint: Any) -> str:
    path = str(checkpoint.path)
    filesystem = getattr(checkpoint, "filesystem", None)
    scheme = getattr(filesystem, "type_name", "local")
    return path if scheme == "local" else f"{scheme}://{path}"


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool)) or v is None}


def cli(config: str | None, overrides: list[str], *, dry_run: bool = False) -> int:
    """The shared body of ``python -m training`` and ``hivlp-milvus train``.

    Args:
        config: a YAML path or a shipped config name (``quickstart``, ``flickr30k``, ``coco``).
        overrides: ``key.sub=value`` strings.
        dry_run: print the resolved config and stop (no Ray, no data).

    Returns:
        The process exit code.

    Raises:
        ConfigError: invalid config or overrides.
    """
    import yaml

    cfg = load_config(config, overrides)
    if dry_run:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    if cfg.scaling.use_gpu:
        _check_gpus(cfg)
    result = run_training(cfg)
    print(result.summary())
    return 0


def _check_gpus(cfg: TrainConfig) -> None:
    """Fail fast when the cluster's GPUs are held by others; warn when they are missing altogether.

    Missing GPUs may still join (an autoscaling cluster adds GPU nodes on demand), so that is a
    warning. GPUs that exist but are taken (a Ray Serve app holding them, as on the one-GPU compose
    box) would make Ray Train wait forever without a word: that is an error that says so.
    """
    import ray

    ensure_ray(cfg)
    needed = cfg.scaling.num_workers * cfg.scaling.worker_resources.get("GPU", 1)
    message = gpu_shortfall(ray.cluster_resources().get("GPU", 0), ray.available_resources().get("GPU", 0), needed)
    if message is None:
        return
    if message.startswith("busy"):
        raise ConfigError(f"scaling.use_gpu=true: {message}")
    print(f"[hivlp train] warning: scaling.use_gpu=true: {message}", flush=True)


def gpu_shortfall(total: float, free: float, needed: float) -> str | None:
    """Why ``needed`` GPUs cannot start now (``"busy: ..."`` or ``"missing: ..."``), or ``None``.

    Args:
        total: the cluster's GPUs (``ray.cluster_resources()``).
        free: the GPUs no task or actor holds (``ray.available_resources()``).
        needed: what the training workers ask for.
    """
    cpu = "To train on CPU instead: scaling.use_gpu=false optim.precision=fp32"
    if free + 1e-9 >= needed:
        return None
    if total + 1e-9 >= needed:
        return (
            f"busy: the workers need {needed:g} GPU(s) and the cluster has {total:g}, but only {free:g} are "
            "free (another Ray job holds the rest, e.g. a Ray Serve app: `serve shutdown`, or give its "
            "encoders less with num_gpus=...; or ask less per worker with scaling.resources_per_worker.GPU=0.5). " + cpu
        )
    return (
        f"missing: the workers need {needed:g} GPU(s) but the Ray cluster has {total:g} now; training waits "
        "until they join (ray start --address=...). " + cpu
    )
