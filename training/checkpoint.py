"""Training checkpoints: the model's ``save_pretrained`` layout plus the state to resume from.

Layout of one checkpoint directory (what ``ray.train.report(checkpoint=...)`` persists)::

    config.json  model.safetensors  tokenizer files  text_tower/   <- HiVLP.save_pretrained
    training_state.json                                            <- step, epoch, position, metrics
    optimizer.pt                                                   <- AdamW state (tensors only)
    scheduler.json                                                 <- LR scheduler counters
    loss_state.safetensors                                         <- the loss's negative queue
                                                                      (only with loss.queue_size > 0)

So ``HiVLP.from_pretrained(checkpoint_dir)`` loads any checkpoint directly. Nothing is pickled:
weights and the negative queue are safetensors, the optimizer state is ``torch.save``-d plain tensors and numbers that
are read back with ``torch.load(..., weights_only=True)``, everything else is JSON.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hivlp_milvus.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    import torch

    from hivlp_milvus.model.hivlp import HiVLP

__all__ = [
    "STATE_FILE",
    "TRAINING_FILES",
    "TrainingState",
    "export_model",
    "load_loss_state",
    "load_optimizer_state",
    "load_scheduler_state",
    "load_training_state",
    "publish_directory",
    "save_checkpoint",
]

STATE_FILE = "training_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.json"
LOSS_STATE_FILE = "loss_state.safetensors"
#: Files a checkpoint has on top of the model's own; :func:`export_model` leaves them out.
TRAINING_FILES = (STATE_FILE, OPTIMIZER_FILE, SCHEDULER_FILE, LOSS_STATE_FILE)
STATE_VERSION = 1


@dataclass(frozen=True)
class TrainingState:
    """Where training stands, written as ``training_state.json``.

    Attributes:
        step: optimizer steps completed (the next step is ``step + 1``).
        epoch: the epoch the next micro-batch belongs to.
        micro_in_epoch: micro-batches of ``epoch`` already trained on (a resumed run skips them).
        total_steps: the run's planned optimizer steps (the cosine schedule's length).
        samples_seen: image–caption pairs trained on, over all workers.
        world_size: workers of the run that wrote the checkpoint.
        global_batch: contrastive batch (``batch_size * world_size``) of that run.
        metrics: the metrics reported with this checkpoint.
        version: layout version of this file.
    """

    step: int
    epoch: int
    micro_in_epoch: int
    total_steps: int
    samples_seen: int
    world_size: int
    global_batch: int
    metrics: dict[str, Any] = field(default_factory=dict)
    version: int = STATE_VERSION

    def to_json(self) -> str:
        """The state as indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=_json_default)


def save_checkpoint(
    directory: str | Path,
    *,
    model: HiVLP,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainingState,
    loss_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete checkpoint into ``directory``.

    Args:
        directory: target directory (created).
        model: the unwrapped model (``ddp_model.module``).
        optimizer: its optimizer.
        scheduler: its learning-rate scheduler.
        state: the training position and metrics.
        loss_state: ``HiVLPLoss.queue_state()``; written as ``loss_state.safetensors`` when not empty.

    Returns:
        The directory.
    """
    import torch

    directory = Path(directory)
    model.save_pretrained(directory)
    torch.save(optimizer.state_dict(), directory / OPTIMIZER_FILE)
    # LambdaLR's state stores its lambdas as None (they are rebuilt from the config on resume);
    # the rest is JSON already, 0-d tensors aside.
    (directory / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict(), indent=2, default=_json_default) + "\n")
    if loss_state:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in loss_state.items()}, str(directory / LOSS_STATE_FILE))
    # Written last: a directory with training_state.json is complete.
    (directory / STATE_FILE).write_text(state.to_json() + "\n", encoding="utf-8")
    return directory


def load_training_state(directory: str | Path) -> TrainingState:
    """Read ``training_state.json`` of a checkpoint.

    Raises:
        CheckpointError: the file is missing or malformed.
    """
    path = Path(directory) / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(TrainingState)}
        return TrainingState(**{k: v for k, v in data.items() if k in known})
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(
            f"{path} is missing or invalid ({exc}); is {directory} a training checkpoint "
            "(written by training.loop) rather than a bare model directory?"
        ) from exc


def load_optimizer_state(directory: str | Path) -> dict[str, Any]:
    """Read ``optimizer.pt`` without unpickling arbitrary objects (``weights_only=True``).

    Raises:
        CheckpointError: the file is missing or not a plain state dict.
    """
    import torch

    path = Path(directory) / OPTIMIZER_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot read optimizer state {path}: {exc}") from exc


def load_loss_state(directory: str | Path) -> dict[str, torch.Tensor]:
    """Read ``loss_state.safetensors`` (the negative queue); ``{}`` when the checkpoint has none.

    A checkpoint written without a queue resumes with an empty one, which then fills as it would
    have from step 0.

    Raises:
        CheckpointError: the file exists but is not a readable safetensors file.
    """
    path = Path(directory) / LOSS_STATE_FILE
    if not path.exists():
        return {}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"cannot read the loss state {path}: {exc}; resume from another checkpoint") from exc


def load_scheduler_state(directory: str | Path) -> dict[str, Any]:
    """Read ``scheduler.json``.

    Raises:
        CheckpointError: the file is missing or malformed.
    """
    path = Path(directory) / SCHEDULER_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read scheduler state {path}: {exc}") from exc


def export_model(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy the model part of a checkpoint (its ``save_pretrained`` files) to ``out_dir``.

    ``out_dir`` is replaced, so it never mixes files of two models.

    Args:
        checkpoint_dir: a local checkpoint directory.
        out_dir: destination; ``HiVLP.from_pretrained(out_dir)`` loads it.

    Returns:
        ``out_dir``.
    """
    src, dst = Path(checkpoint_dir), Path(out_dir)
    staging = dst.with_name(dst.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging, ignore=shutil.ignore_patterns(*TRAINING_FILES, ".*"))
    # Swap in one rename so a reader never sees half a model.
    shutil.rmtree(dst, ignore_errors=True)
    staging.rename(dst)
    return dst


def publish_directory(local_dir: str | Path, destination: str) -> str:
    """Copy a local directory to ``destination`` (a local path or a ``s3://`` / ``gs://`` URI).

    Used for the initial model, which every worker (on every node) must read.

    Args:
        local_dir: the directory to copy.
        destination: the target path or URI; replaced if present.

    Returns:
        ``destination``.
    """
    from training.config import is_uri

    if not is_uri(destination):
        dst = Path(destination)
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(local_dir, dst)
        return str(dst)
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(destination)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(local_dir), path, source_filesystem=pyarrow.fs.LocalFileSystem(),
                          destination_filesystem=fs)  # fmt: skip
    return destination


def directory_exists(location: str) -> bool:
    """Whether ``location`` (a local path or a URI) is an existing directory."""
    from training.config import is_uri

    if not is_uri(location):
        return Path(location).is_dir()
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    return fs.get_file_info(path).type == pyarrow.fs.FileType.Directory


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)
