"""``TrainConfig``: one frozen, validated description of a training run, loaded from YAML.

A run is read from a YAML file and then patched with ``key.sub=value`` overrides from the command
line (values are parsed as YAML, so ``optim.lr=3e-4``, ``scaling.use_gpu=true`` and
``validation.coarse_ks=[10,50]`` all do what they look like). The sections are pydantic dataclasses
(:func:`hivlp_milvus.model.config.config_dataclass`): their field declarations are the checks, and
every mistake is one :class:`~hivlp_milvus.errors.ConfigError` naming the dotted key, what is
allowed and, for an unknown key, the closest known one.

This module imports neither torch nor Ray: the CLI validates a config before paying for either.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, StrictInt, model_validator

from hivlp_milvus.errors import ConfigError
from hivlp_milvus.model.config import (
    ConfigBase,
    Flag,
    FrozenMapping,
    HiVLPConfig,
    NonEmptyStr,
    NonNegativeInt,
    NonNegativeNumber,
    Number,
    PositiveInt,
    PositiveNumber,
    config_dataclass,
    frozen,
    get_config,
    plain,
)

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

Precision = Literal["fp32", "bf16", "auto"]
PlacementStrategy = Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]
Export = Literal["last", "best"]
_CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NO_MAPPING: Mapping[str, Any] = MappingProxyType({})


def _named_or_inline(value: Any) -> Any:
    if isinstance(value, Mapping) or (isinstance(value, str) and value):
        return value
    raise ValueError(f"must be a named config (e.g. tiny) or a HiVLPConfig mapping, got {value!r}")


def _run_name(value: str) -> str:
    if not _RUN_NAME.fullmatch(value):
        raise ValueError(f"must be letters, digits, '.', '_' or '-' (it names a directory), got {value!r}")
    return value


def _one_or_many(value: Any) -> Any:
    return (value,) if isinstance(value, int) and not isinstance(value, bool) else value


# -- sections ----------------------------------------------------------------------------------


@config_dataclass("model")
class ModelSection(ConfigBase):
    """Which model to train.

    Attributes:
        config: a named model config (``"micro"``, ``"tiny"``, ``"base"``) or an inline
            ``HiVLPConfig`` mapping (see ``hivlp_milvus/model/config.py``).
        overrides: a partial ``HiVLPConfig`` mapping deep-merged over ``config`` (e.g.
            ``{low_dim: 16}``), so a CLI flag can change one field of a named config.
        init_checkpoint: a ``save_pretrained`` directory to start from instead of a fresh model
            (fine-tuning); its config wins over ``config``/``overrides``.
    """

    config: Annotated[str | Mapping[str, Any], BeforeValidator(_named_or_inline), AfterValidator(frozen)] = "tiny"
    overrides: FrozenMapping = field(default_factory=lambda: _NO_MAPPING)
    init_checkpoint: NonEmptyStr | None = None

    def resolve(self) -> HiVLPConfig:
        """The ``HiVLPConfig`` this section describes (``init_checkpoint`` aside).

        Returns:
            A validated :class:`hivlp_milvus.model.config.HiVLPConfig`.

        Raises:
            ConfigError: unknown named config, unknown keys or invalid values.
        """
        base = get_config(self.config).to_dict() if isinstance(self.config, str) else plain(self.config)
        try:
            return HiVLPConfig.from_dict(_deep_merge(base, plain(self.overrides)))
        except ConfigError as exc:
            raise ConfigError(f"model: {exc}") from exc


@config_dataclass("data.synthetic")
class SyntheticConfig(ConfigBase):
    """Procedural image–caption data generated into ``<run.work_dir>/data`` before training.

    Attributes:
        train: number of training images.
        val: number of validation images (0 = no validation).
        seed: generator seed (the same seed always writes the same data set).
        image_size: side of the generated images in pixels.
    """

    train: PositiveInt = 2000
    val: NonNegativeInt = 500
    seed: StrictInt = 0
    image_size: Annotated[StrictInt, Field(ge=8)] = 64


@config_dataclass("data")
class DataConfig(ConfigBase):
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
        cache_decoded: decode the images once and keep the decoded pixels in Ray's object store
            for every epoch (``true``), decode them again every epoch (``false``), or ``auto``:
            cache when the decoded set (``images x 3 x S x S x 4`` bytes) takes at most half
            of the cluster's object store (10k images at 64 px: 0.49 GB); a larger set streams,
            decoded every epoch (docs/training.md, "Decode once or every epoch").
    """

    train: NonEmptyStr | None = None
    train_split: NonEmptyStr | None = None
    val: NonEmptyStr | None = None
    val_split: NonEmptyStr | None = None
    image_root: NonEmptyStr | None = None
    synthetic: SyntheticConfig | None = None
    max_captions: PositiveInt = 5
    shuffle_buffer: NonNegativeInt = 512
    preprocess_batch_size: PositiveInt = 64
    num_blocks: PositiveInt | None = None
    cache_decoded: Literal["auto"] | StrictBool = "auto"

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if self.synthetic is None and self.train is None:
            raise ValueError(
                "no training set: set data.train to a path (Karpathy .json, manifest dir, "
                ".csv/.jsonl/.parquet) or data.synthetic to {train: N, val: M}"
            )
        if self.synthetic is not None and (self.train is not None or self.val is not None):
            raise ValueError("data.synthetic and data.train/data.val are both set; keep one (e.g. data.synthetic=null)")
        return self

    @property
    def has_validation(self) -> bool:
        """Whether a validation set is configured."""
        return self.val is not None or (self.synthetic is not None and self.synthetic.val > 0)


Beta = Annotated[Number, Field(ge=0, lt=1)]


@config_dataclass("optim")
class OptimConfig(ConfigBase):
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
        precision: ``fp32``; ``bf16`` (bf16 autocast, on an Ampere or newer GPU or a CPU with
            AVX512-BF16 / AMX; refused where it would be emulated); ``auto``: bf16 where the
            device runs it natively, fp32 elsewhere.
        seed: seeds weights, data order, caption choice and dropout.
    """

    lr: PositiveNumber = 3e-4
    weight_decay: NonNegativeNumber = 0.05
    betas: tuple[Beta, Beta] = (0.9, 0.98)
    eps: PositiveNumber = 1e-6
    warmup_steps: NonNegativeInt = 50
    min_lr_ratio: Annotated[Number, Field(ge=0, le=1)] = 0.0
    epochs: PositiveInt = 1
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 64
    grad_accum_steps: PositiveInt = 1
    clip_norm: NonNegativeNumber = 1.0
    precision: Precision = "fp32"
    seed: StrictInt = 0


@config_dataclass("scaling")
class ScalingConfig(ConfigBase):
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

    num_workers: PositiveInt = 2
    use_gpu: Flag = False
    resources_per_worker: Annotated[Mapping[str, NonNegativeNumber], AfterValidator(frozen)] | None = None
    placement_strategy: PlacementStrategy = "PACK"
    find_unused_parameters: Flag = False

    @model_validator(mode="after")
    def _gpu_when_asked(self) -> ScalingConfig:
        if self.use_gpu and (self.resources_per_worker or {}).get("GPU", 1) <= 0:
            raise ValueError("scaling.use_gpu is true but resources_per_worker.GPU is 0; give each worker a GPU")
        return self

    @property
    def worker_resources(self) -> dict[str, float]:
        """The resources of one worker, defaults filled in."""
        defaults = {"CPU": 1.0, **({"GPU": 1.0} if self.use_gpu else {})}
        return {**defaults, **(self.resources_per_worker or {})}

    @property
    def cpus_per_worker(self) -> int:
        """Torch threads a CPU worker should use (at least one)."""
        return max(1, int(self.worker_resources.get("CPU", 1)))


@config_dataclass("run")
class RunConfig(ConfigBase):
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

    name: Annotated[NonEmptyStr, AfterValidator(_run_name)] = "hivlp"
    work_dir: NonEmptyStr | None = None
    storage_path: NonEmptyStr | None = None
    ray_address: NonEmptyStr | None = None
    checkpoint_every_steps: NonNegativeInt = 200
    num_to_keep: PositiveInt = 2
    # -1 = retry forever (Ray's convention).
    max_failures: Annotated[StrictInt, Field(ge=-1)] = 1
    log_every_steps: PositiveInt = 10
    step_log: NonEmptyStr | None = None
    export: Export = "last"

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


@config_dataclass("validation")
class ValidationConfig(ConfigBase):
    """Retrieval evaluation on the validation set, run by rank 0 whenever a checkpoint is written.

    Attributes:
        enabled: switch validation off even when a validation set exists.
        coarse_ks: shortlist sizes of the hierarchical (coarse → fine) evaluation.
        max_items: evaluate on at most this many validation images (and their captions).
        batch_size: encoding batch size.
    """

    enabled: Flag = True
    coarse_ks: Annotated[
        tuple[PositiveInt, ...],
        BeforeValidator(_one_or_many),
        Field(min_length=1),
        AfterValidator(lambda ks: tuple(sorted(set(ks)))),
    ] = (10, 50)
    max_items: PositiveInt = 1000
    batch_size: PositiveInt = 128


@config_dataclass()
class TrainConfig(ConfigBase):
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
    # Validated as a LossConfig by validate()/loss_config(): that class lives with torch.
    loss: FrozenMapping = field(default_factory=lambda: _NO_MAPPING)
    data: DataConfig = field(default_factory=lambda: DataConfig(synthetic=SyntheticConfig()))
    optim: OptimConfig = field(default_factory=OptimConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build and validate a config from a nested mapping (e.g. parsed YAML).

        Args:
            data: sections ``model``, ``loss``, ``data``, ``optim``, ``scaling``, ``run``,
                ``validation``; missing (or empty) sections and keys take their defaults.

        Returns:
            The validated config.

        Raises:
            ConfigError: unknown keys (with the closest known key), wrong types or values.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"the training config must be a mapping of sections, got {type(data).__name__}")
        # An empty YAML section (``validation:``) reads as null: it means the defaults.
        return super().from_dict({key: value for key, value in data.items() if value is not None})

    def validate(self) -> TrainConfig:
        """Also check the parts that need the model package: model config and loss config.

        Returns:
            ``self``, so ``load_config(...).validate()`` chains.

        Raises:
            ConfigError: the model or loss section is invalid.
        """
        model = self.model.resolve()
        loss = self.loss_config()
        # Checked here, not on the workers: there it fails every rank at the first step.
        if loss.itm > 0 and model.fusion is None and not self.model.init_checkpoint:
            raise ConfigError(
                f"loss.itm={loss.itm:g} trains the fusion block, but model {self.model.config!r} has none: "
                "set loss.itm=0, or use a model config with a fusion block (tiny, base)"
            )
        return self

    def loss_config(self) -> Any:
        """The ``LossConfig`` of the ``loss`` section.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        from hivlp_milvus.model.loss import LossConfig

        try:
            return LossConfig.from_dict(plain(self.loss))
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

    Values are parsed as YAML (``3e-4``, which YAML 1.1 reads as a string, is taken as the number
    by every number field); ``key=null`` sets ``None``. Intermediate mappings are created as needed, so
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
    result = plain(data)  # new dicts and lists all the way down: the input stays as it was
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=3e-4)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part (e.g. optim.lr=3e-4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
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


def _deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    patched = {
        key: _deep_merge(dict(base[key]), value)
        if isinstance(value, Mapping) and isinstance(base.get(key), Mapping)
        else value
        for key, value in patch.items()
    }
    return {**base, **patched}  # patched keys keep their place in base, new ones follow
