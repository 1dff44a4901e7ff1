"""Ray Train for HiVLP: YAML configs, the per-worker training loop, the trainer builder and CLI.

Run it with ``python -m training --config training/configs/quickstart.yaml [key=value ...]`` or
``hivlp-milvus train --config ...`` (the same code). From Python::

    from training import load_config, run_training
    result = run_training(load_config("quickstart", ["optim.epochs=2"]))
    print(result.summary())  # result.model_dir loads with HiVLP.from_pretrained

Names are imported lazily: ``import training`` stays cheap, and Ray workers import only what
the loop needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hivlp_milvus.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from training.config import TrainConfig, apply_overrides, load_config, shipped_config
    from training.loop import train_loop_per_worker
    from training.trainer import TrainResult, build_trainer, cli, run_training

_LAZY = {
    "TrainConfig": "training.config",
    "apply_overrides": "training.config",
    "load_config": "training.config",
    "shipped_config": "training.config",
    "train_loop_per_worker": "training.loop",
    "TrainResult": "training.trainer",
    "build_trainer": "training.trainer",
    "run_training": "training.trainer",
    "cli": "training.trainer",
}

__all__ = [
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "build_trainer",
    "cli",
    "load_config",
    "run_training",
    "shipped_config",
    "train_loop_per_worker",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
