"""``TrainConfig``: one frozen, validated description of a training run, loaded from YAML.

A run is read from a YAML file and then patched with ``key.sub=value`` overrides from the command
line (values are parsed as YAML, so ``optim.lr=3e-4``, ``scaling.use_gpu=true`` and
``validation.coarse_ks=[10,50]`` all do what they look like). Every mistake is a
:class:`~hivlp_milvus.errors.ConfigError` naming the key and what to write instead.

This module imports neither torch nor Ray: the CLI validates a config before paying for either.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from hivlp_milvus.errors import ConfigError

__all__ = [
    "DataConfig",
    "ModelSection",
    "OptimConfig",
    "RunConfig",
    "ScalingConfig",
    "SyntheticConfig",
    "TrainConfig",
    "ValidationConfig",
    "apply_overrides",
    "load_config",
    "shipped_config",
]

PRECISIONS = ("fp32", "bf16")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
EXPORTS = ("last", "best")
_CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


# -- sections ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSection:
    """Which model to train.

    Attributes:
        config: a named model config (``"micro"``, ``"tiny"``, ``"base"``) or an inline
            ``HiVLPConfig`` mapping (see ``hivlp_milvus/model/config.py``).
        overrides: a partial ``HiVLPConfig`` mapping deep-merged over ``config`` (e.g.
            ``{low_dim: 16}``), so a CLI flag can change one field of a named config.
        init_checkpoint: a ``save_pretrained`` directory to start from instead of a fresh model
            (fine-tuning); its config wins over ``config``/``overrides``.
    """

    config: str | Mapping[str, Any] = "tiny"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    init_checkpoint: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.config, Mapping):
            object.__setattr__(self, "config", _frozen(self.config))
        elif not isinstance(self.config, str) or not self.config:
            raise ConfigError(
                f"model.config must be a named config (e.g. tiny) or a HiVLPConfig mapping, got {self.config!r}"
            )
        _require_mapping(self.overrides, "model.overrides")
        object.__setattr__(self, "overrides", _frozen(self.overrides))
        _optional_str(self.init_checkpoint, "model.init_checkpoint")

    def resolve(self) -> Any:
        """The ``HiVLPConfig`` this section describes (``init_checkpoint`` aside).

        Returns:
            A validated :class:`hivlp_milvus.model.config.HiVLPConfig`.

        Raises:
            ConfigError: unknown named config, unknown keys or invalid values.
        """
        from hivlp_milvus.model.config import HiVLPConfig, get_config

        base = get_config(self.config).to_dict() if isinstance(self.config, str) else _thaw(self.config)
        merged = _deep_merge(base, _thaw(self.overrides))
        try:
            return HiVLPConfig.from_dict(merged)
        except ConfigError as exc:
            raise ConfigError(f"model: {exc}") from exc


@dataclass(frozen=True)
class SyntheticConfig:
    """Procedural image–caption data generated into ``<run.work_dir>/data`` before training.

    Attributes:
        train: number of training images.
        val: number of validation images (0 = no validation).
        seed: generator seed (the same seed always writes the same data set).
        image_size: side of the generated images in pixels.
    """

    train: int = 2000
    val: int = 500
    seed: int = 0
    image_size: int = 64

    def __post_init__(self) -> None:
        _positive_int(self.train, "data.synthetic.train")
        _non_negative_int(self.val, "data.synthetic.val")
        _int(self.seed, "data.synthetic.seed")
        _positive_int(self.image_size, "data.synthetic.image_size")
        if self.image_size < 8:
            raise ConfigError(f"data.synthetic.image_size must be >= 8, got {self.image_size}")


@dataclass(frozen=True)
class DataConfig:
    """Where the image–caption pairs come from and how they are fed to the workers.

    Attributes:
        train: a training source ``hivlp_milvus.data.load_source`` accepts (a Karpathy ``.json``, a
            manifest directory, ``.csv`` / ``.jsonl`` / ``.parquet``, an HF ``save_to_disk`` dir).
            Image paths inside must be readable on every node (shared file system).
        train_split: the split of ``train`` to read when it holds several (a Karpathy ``.json``:
            ``train`` also reads ``restval``; a split sub-directory; a manifest's split column).
        val: the validation source (same forms); ``null`` = no validation.
        val_split: the split of ``val`` to read (e.g. ``val`` or ``test`` of a Karpathy file).
        image_root: where the images of a Karpathy file live (default: next to the file).
        synthetic: generate a synthetic train/val split instead of ``train``/``val``.
        max_captions: captions kept per image; one of them is drawn per image per epoch.
        shuffle_buffer: rows in each worker's local shuffle buffer, re-seeded every epoch
            (0 = the fixed order the driver shuffled once).
        preprocess_batch_size: images decoded per Ray Data ``map_batches`` call.
        num_blocks: Ray Data blocks of the training set (``null`` = about 4 per worker, at least
            one per 256 images); more blocks spread decoding over more CPUs.
    """

    train: str | None = None
    train_split: str | None = None
    val: str | None = None
    val_split: str | None = None
    image_root: str | None = None
    synthetic: SyntheticConfig | None = None
    max_captions: int = 5
    shuffle_buffer: int = 512
    preprocess_batch_size: int = 64
    num_blocks: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.synthetic, Mapping):
            object.__setattr__(self, "synthetic", _build(SyntheticConfig, self.synthetic, "data.synthetic"))
        if self.synthetic is not None and not isinstance(self.synthetic, SyntheticConfig):
            raise ConfigError("data.synthetic must be a mapping like {train: 2000, val: 500, seed: 0} or null")
        _optional_str(self.train, "data.train")
        _optional_str(self.val, "data.val")
        _optional_str(self.train_split, "data.train_split")
        _optional_str(self.val_split, "data.val_split")
        _optional_str(self.image_root, "data.image_root")
        if self.synthetic is None and self.train is None:
            raise ConfigError(
                "data has no training set: set data.train to a path (Karpathy .json, manifest dir, "
                ".csv/.jsonl/.parquet) or data.synthetic to {train: N, val: M}"
            )
        if self.synthetic is not None and (self.train is not None or self.val is not None):
            raise ConfigError(
                "data.synthetic and data.train/data.val are both set; keep one (e.g. data.synthetic=null)"
            )
        _positive_int(self.max_captions, "data.max_captions")
        _non_negative_int(self.shuffle_buffer, "data.shuffle_buffer")
        _positive_int(self.preprocess_batch_size, "data.preprocess_batch_size")
        if self.num_blocks is not None:
            _positive_int(self.num_blocks, "data.num_blocks")

    @property
    def has_validation(self) -> bool:
        """Whether a validation set is configured."""
        return self.val is not None or (self.synthetic is not None and self.synthetic.val > 0)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear warm-up and a cosine decay, per-worker batches, clipping and precision.

    Attributes:
        lr: peak learning rate (reached after ``warmup_steps``). 3e-4 with a warm-up learns the
            tiny model on CPU; 1e-3 without warm-up was measured to collapse it.
        weight_decay: AdamW decoupled weight decay (not applied to biases, norms and temperatures).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_steps: optimizer steps of linear warm-up from 0 to ``lr``.
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio`` at the last step.
        epochs: passes over the training set (ignored when ``max_steps`` is set).
        max_steps: total optimizer steps; ``null`` = ``epochs`` full epochs.
        batch_size: pairs per worker per micro-batch; the contrastive batch is
            ``batch_size * num_workers`` (features are gathered across workers).
        grad_accum_steps: micro-batches per optimizer step (averages gradients of several
            contrastive batches; it does not enlarge the set of negatives).
        clip_norm: global gradient-norm clip (``0`` = off).
        precision: ``fp32`` or ``bf16`` (bf16 autocast, GPU only).
        seed: seeds weights, data order, caption choice and dropout.
    """

    lr: float = 3e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 64
    grad_accum_steps: int = 1
    clip_norm: float = 1.0
    precision: str = "fp32"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _positive_float(self.lr, "optim.lr", example="3e-4"))
        object.__setattr__(self, "weight_decay", _non_negative_float(self.weight_decay, "optim.weight_decay"))
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise ConfigError(f"optim.betas must be two numbers like [0.9, 0.98], got {betas!r}")
        betas = tuple(_float(b, "optim.betas") for b in betas)
        if not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"optim.betas must lie in [0, 1), got {list(betas)}")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "eps", _positive_float(self.eps, "optim.eps"))
        _non_negative_int(self.warmup_steps, "optim.warmup_steps")
        ratio = _float(self.min_lr_ratio, "optim.min_lr_ratio")
        if not 0 <= ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio must lie in [0, 1], got {ratio}")
        object.__setattr__(self, "min_lr_ratio", ratio)
        _positive_int(self.epochs, "optim.epochs")
        if self.max_steps is not None:
            _positive_int(self.max_steps, "optim.max_steps")
        _positive_int(self.batch_size, "optim.batch_size")
        _positive_int(self.grad_accum_steps, "optim.grad_accum_steps")
        object.__setattr__(self, "clip_norm", _non_negative_float(self.clip_norm, "optim.clip_norm"))
        _choice(self.precision, PRECISIONS, "optim.precision")
        _int(self.seed, "optim.seed")


@dataclass(frozen=True)
class ScalingConfig:
    """How many Ray Train workers, on what.

    Attributes:
        num_workers: data-parallel workers (one process each; one GPU each when ``use_gpu``).
        use_gpu: one GPU per worker and NCCL; otherwise CPU and gloo. Nothing else changes.
        resources_per_worker: Ray resources per worker, e.g. ``{CPU: 8, GPU: 1}``; ``null`` =
            ``{CPU: 1}`` (plus ``GPU: 1`` with ``use_gpu``). On CPU the worker uses as many torch
            threads as it has CPUs.
        placement_strategy: Ray placement group strategy (``PACK`` fills nodes, ``SPREAD`` spreads).
        find_unused_parameters: DDP's flag; needed only when a loss weight of 0 leaves a
            parameter (e.g. a temperature) without a gradient.
    """

    num_workers: int = 2
    use_gpu: bool = False
    resources_per_worker: Mapping[str, float] | None = None
    placement_strategy: str = "PACK"
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        _positive_int(self.num_workers, "scaling.num_workers")
        _bool(self.use_gpu, "scaling.use_gpu")
        _bool(self.find_unused_parameters, "scaling.find_unused_parameters")
        if self.resources_per_worker is not None:
            _require_mapping(self.resources_per_worker, "scaling.resources_per_worker")
            resources = {}
            for key, value in self.resources_per_worker.items():
                amount = _float(value, f"scaling.resources_per_worker.{key}")
                if amount < 0:
                    raise ConfigError(f"scaling.resources_per_worker.{key} must be >= 0, got {amount}")
                resources[str(key)] = amount
            if self.use_gpu and resources.get("GPU", 1) <= 0:
                raise ConfigError("scaling.use_gpu is true but resources_per_worker.GPU is 0; give each worker a GPU")
            object.__setattr__(self, "resources_per_worker", MappingProxyType(resources))
        _choice(self.placement_strategy, PLACEMENT_STRATEGIES, "scaling.placement_strategy")

    @property
    def worker_resources(self) -> dict[str, float]:
        """The resources of one worker, defaults filled in."""
        resources = dict(self.resources_per_worker or {})
        resources.setdefault("CPU", 1.0)
        if self.use_gpu:
            resources.setdefault("GPU", 1.0)
        return resources

    @property
    def cpus_per_worker(self) -> int:
        """Torch threads a CPU worker should use (at least one)."""
        return max(1, int(self.worker_resources.get("CPU", 1)))


@dataclass(frozen=True)
class RunConfig:
    """Where the run lives, how often it checkpoints and how it survives failures.

    Attributes:
        name: the Ray Train run name; re-running with the same ``name`` and ``storage_path``
            resumes from its latest checkpoint.
        work_dir: local directory for generated data, the initial model and the exported final
            model (``<work_dir>/model``); ``null`` = ``runs/<name>``.
        storage_path: where Ray Train writes checkpoints: a local path for one machine, a shared
            path (``/mnt/shared/...``) or ``s3://`` / ``gs://`` URI for several nodes;
            ``null`` = ``<work_dir>/ray_results``.
        ray_address: the Ray cluster to join (``auto`` = the one started by ``ray start``);
            ``null`` = the running one if any, else a local one-machine cluster.
        checkpoint_every_steps: also checkpoint every this many optimizer steps (0 = only at the
            end of each epoch and of the run).
        num_to_keep: checkpoints kept on storage: the best ones by ``val_AR`` (the newest is
            always kept too, so resuming never loses steps).
        max_failures: worker-group restarts from the latest checkpoint after a crash.
        log_every_steps: rank 0 prints a progress line every this many steps.
        step_log: a JSON-lines file rank 0 appends one line to per optimizer step (step, epoch,
            loss, batch fingerprint); for audits and the resume test. Must be on rank 0's node.
        export: which checkpoint is copied to ``<work_dir>/model`` at the end: ``last`` or
            ``best`` (by ``val_AR``).
    """

    name: str = "hivlp"
    work_dir: str | None = None
    storage_path: str | None = None
    ray_address: str | None = None
    checkpoint_every_steps: int = 200
    num_to_keep: int = 2
    max_failures: int = 1
    log_every_steps: int = 10
    step_log: str | None = None
    export: str = "last"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ConfigError(
                f"run.name must be letters, digits, '.', '_' or '-' (it names a directory), got {self.name!r}"
            )
        _optional_str(self.work_dir, "run.work_dir")
        _optional_str(self.storage_path, "run.storage_path")
        _optional_str(self.ray_address, "run.ray_address")
        _non_negative_int(self.checkpoint_every_steps, "run.checkpoint_every_steps")
        _positive_int(self.num_to_keep, "run.num_to_keep")
        _int(self.max_failures, "run.max_failures")
        if self.max_failures < -1:
            raise ConfigError(f"run.max_failures must be >= 0 (or -1 = retry forever), got {self.max_failures}")
        _positive_int(self.log_every_steps, "run.log_every_steps")
        _optional_str(self.step_log, "run.step_log")
        _choice(self.export, EXPORTS, "run.export")

    @property
    def resolved_work_dir(self) -> Path:
        """``work_dir`` as an absolute path (``runs/<name>`` by default)."""
        work_dir = self.work_dir if self.work_dir is not None else f"runs/{self.name}"
        return Path(work_dir).expanduser().resolve()

    @property
    def resolved_storage_path(self) -> str:
        """``storage_path`` as Ray expects it: a URI unchanged, a local path made absolute."""
        if self.storage_path is None:
            return str(self.resolved_work_dir / "ray_results")
        if is_uri(self.storage_path):
            return self.storage_path
        return str(Path(self.storage_path).expanduser().resolve())


@dataclass(frozen=True)
class ValidationConfig:
    """Retrieval evaluation on the validation set, run by rank 0 whenever a checkpoint is written.

    Attributes:
        enabled: switch validation off even when a validation set exists.
        coarse_ks: shortlist sizes of the hierarchical (coarse → fine) evaluation.
        max_items: evaluate on at most this many validation images (and their captions).
        batch_size: encoding batch size.
    """

    enabled: bool = True
    coarse_ks: tuple[int, ...] = (10, 50)
    max_items: int = 1000
    batch_size: int = 128

    def __post_init__(self) -> None:
        _bool(self.enabled, "validation.enabled")
        ks = self.coarse_ks
        if isinstance(ks, int) and not isinstance(ks, bool):
            ks = (ks,)
        if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or not ks:
            raise ConfigError(f"validation.coarse_ks must be a list of positive integers like [10, 50], got {ks!r}")
        for k in ks:
            _positive_int(k, "validation.coarse_ks[]")
        object.__setattr__(self, "coarse_ks", tuple(sorted(set(ks))))
        _positive_int(self.max_items, "validation.max_items")
        _positive_int(self.batch_size, "validation.batch_size")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run. Build it with :func:`load_config` or :meth:`from_dict`.

    Attributes:
        model: which model (named or inline ``HiVLPConfig``, optional initial checkpoint).
        loss: ``LossConfig`` fields of the HiVLP objective (``hivlp_milvus/model/loss.py``).
        data: training/validation sources or a synthetic split.
        optim: optimizer, schedule, batch, precision, seed.
        scaling: workers and their resources.
        run: name, storage, checkpoints, fault tolerance, logging.
        validation: retrieval evaluation on the validation set.
    """

    model: ModelSection = field(default_factory=ModelSection)
    loss: Mapping[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=lambda: DataConfig(synthetic=SyntheticConfig()))
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    def __post_init__(self) -> None:
        _require_mapping(self.loss, "loss")
        object.__setattr__(self, "loss", _frozen(self.loss))
        if self.optim.precision == "bf16" and not self.scaling.use_gpu:
            raise ConfigError(
                "optim.precision=bf16 uses CUDA autocast and needs scaling.use_gpu=true; "
                "on CPU set optim.precision=fp32"
            )

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build and validate a config from a nested mapping (e.g. parsed YAML).

        Args:
            data: sections ``model``, ``loss``, ``data``, ``optim``, ``scaling``, ``run``,
                ``validation``; missing sections and keys take their defaults.

        Returns:
            The validated config.

        Raises:
            ConfigError: unknown keys (with the closest known key), wrong types or values.
        """
        _require_mapping(data, "the training config")
        sections = {
            "model": ModelSection,
            "data": DataConfig,
            "optim": OptimConfig,
            "scaling": ScalingConfig,
            "run": RunConfig,
            "validation": ValidationConfig,
        }
        _reject_unknown(data, [*sections, "loss"], "")
        kwargs: dict[str, Any] = {}
        for name, section_cls in sections.items():
            if name in data and data[name] is not None:
                kwargs[name] = _build(section_cls, data[name], name)
        if "loss" in data and data["loss"] is not None:
            kwargs["loss"] = data["loss"]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML/JSON-ready) that :meth:`from_dict` turns back into an equal config."""
        return _plain(self)

    def validate(self) -> TrainConfig:
        """Also check the parts that need the model package: model config and loss config.

        Returns:
            ``self``, so ``load_config(...).validate()`` chains.

        Raises:
            ConfigError: the model or loss section is invalid.
        """
        self.model.resolve()
        self.loss_config()
        return self

    def loss_config(self) -> Any:
        """The ``LossConfig`` of the ``loss`` section.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        from hivlp_milvus.model.loss import LossConfig

        try:
            return LossConfig.from_dict(_thaw(self.loss))
        except ConfigError as exc:
            raise ConfigError(f"loss: {exc}") from exc

    def with_overrides(self, overrides: Sequence[str]) -> TrainConfig:
        """A copy with ``key.sub=value`` overrides applied (see :func:`apply_overrides`)."""
        return TrainConfig.from_dict(apply_overrides(self.to_dict(), overrides))


# -- loading and overrides -----------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config and apply command-line overrides.

    Args:
        path: a YAML file, or the name of a shipped config (``quickstart``, ``flickr30k``,
            ``coco``); ``None`` = all defaults.
        overrides: ``key.sub=value`` strings, applied in order; values are parsed as YAML.

    Returns:
        The validated :class:`TrainConfig` (model and loss sections included).

    Raises:
        ConfigError: the file is missing or not YAML, or a key or value is invalid.
    """
    data: dict[str, Any] = {}
    if path is not None:
        file = _find_config_file(path)
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read training config {file}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{file}: a training config must be a YAML mapping of sections")
        data = dict(loaded or {})
    try:
        return TrainConfig.from_dict(apply_overrides(data, overrides)).validate()
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from exc


def shipped_config(name: str) -> Path:
    """The path of a config shipped in ``training/configs`` (``quickstart``, ``flickr30k``, ``coco``).

    Raises:
        ConfigError: no such shipped config.
    """
    path = _CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in _CONFIGS_DIR.glob("*.yaml"))
        raise ConfigError(f"no shipped training config {name!r}; shipped: {', '.join(known)}")
    return path


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested mapping (the input is not modified).

    Values are parsed as YAML (``3e-4`` and other YAML-1.1 oddities such as ``1e5`` are read as
    numbers); ``key=null`` sets ``None``. Intermediate mappings are created as needed, so
    ``model.overrides.low_dim=16`` works on an empty ``overrides``. Unknown keys are not rejected
    here but by :meth:`TrainConfig.from_dict`, which knows the schema.

    Args:
        data: the parsed YAML.
        overrides: ``dotted.key=value`` strings.

    Returns:
        A new nested dict.

    Raises:
        ConfigError: an override is not ``key=value`` or walks into a non-mapping value.
    """
    result = copy.deepcopy(_thaw(data))
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part (e.g. optim.lr=3e-4)")
        try:
            value = _parse_value(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from exc
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                prefix = ".".join(parts[: depth + 1])
                raise ConfigError(f"override {item!r}: {prefix} is {child!r}, not a section with keys")
            node = child
        node[parts[-1]] = value
    return result


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI such as ``s3://bucket/x`` (rather than a local path)."""
    return bool(_URI.match(path))


# -- helpers ---------------------------------------------------------------------------------------


def _find_config_file(path: str | Path) -> Path:
    file = Path(path).expanduser()
    if file.is_file():
        return file
    if "/" not in str(path) and not str(path).endswith((".yaml", ".yml")):
        return shipped_config(str(path))
    raise ConfigError(f"training config {path} not found; give a YAML file or one of quickstart, flickr30k, coco")


def _parse_value(raw: str) -> Any:
    value = yaml.safe_load(raw) if raw.strip() else ""
    # YAML 1.1 reads "3e-4" as a string; a user writing it means the number.
    if isinstance(value, str):
        try:
            return float(value) if re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", value.strip()) else value
        except ValueError:  # pragma: no cover - the regex only admits floats
            return value
    return value


def _build(cls: type, data: Any, where: str) -> Any:
    if isinstance(data, cls):
        return data
    _require_mapping(data, where)
    allowed = [f.name for f in dataclasses.fields(cls)]
    _reject_unknown(data, allowed, where)
    return cls(**dict(data))


def _reject_unknown(data: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in data:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"did you mean {where + '.' if where else ''}{close[0]}? " if close else ""
            of = f" of {where}" if where else ""
            raise ConfigError(f"unknown key {name}; {hint}known keys{of}: {list(allowed)}")


def _require_mapping(value: Any, where: str) -> None:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {type(value).__name__}: {value!r}")


def _frozen(value: Any) -> Any:
    # Nested read-only views: a frozen dataclass must not hand out a mutable dict.
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_thaw(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    # dataclasses.asdict would deep-copy the read-only mappings, which cannot be copied.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, where: str) -> None:
    if not _is_int(value):
        raise ConfigError(f"{where} must be an integer, got {value!r}")


def _positive_int(value: Any, where: str) -> None:
    if not _is_int(value) or value <= 0:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")


def _non_negative_int(value: Any, where: str) -> None:
    if not _is_int(value) or value < 0:
        raise ConfigError(f"{where} must be an integer >= 0, got {value!r}")


def _float(value: Any, where: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _positive_float(value: Any, where: str, example: str | None = None) -> float:
    number = _float(value, where)
    if number <= 0:
        hint = f" (e.g. {where}={example})" if example else ""
        raise ConfigError(f"{where} must be > 0, got {number}{hint}")
    return number


def _non_negative_float(value: Any, where: str) -> float:
    number = _float(value, where)
    if number < 0:
        raise ConfigError(f"{where} must be >= 0, got {number}")
    return number


def _bool(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")


def _optional_str(value: Any, where: str) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where} must be a non-empty string or null, got {value!r}")


def _choice(value: Any, choices: Sequence[str], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where} must be one of {list(choices)}, got {value!r}")
