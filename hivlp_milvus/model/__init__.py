"""The HiVLP model: config, towers, hierarchical heads, pre-processing, save/load, objective.

Names are imported lazily so ``from hivlp_milvus.model.embedding import HierarchicalEmbedding``
(used by collection, ingest and serving code that never runs a model) does not pay for importing
timm and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hivlp_milvus.lazy import lazy_exports

if TYPE_CHECKING:
    from hivlp_milvus.model.config import (
        FusionConfig,
        HiVLPConfig,
        ImageTowerConfig,
        TextTowerConfig,
        get_config,
        list_configs,
    )
    from hivlp_milvus.model.embedding import HierarchicalEmbedding, HiVLPOutput
    from hivlp_milvus.model.hivlp import HiVLP, create_model
    from hivlp_milvus.model.loss import HiVLPLoss, LossConfig, LossOutput
    from hivlp_milvus.model.preprocess import ImageProcessor, load_image

_LAZY = {
    "HiVLP": "hivlp_milvus.model.hivlp",
    "create_model": "hivlp_milvus.model.hivlp",
    "HiVLPConfig": "hivlp_milvus.model.config",
    "FusionConfig": "hivlp_milvus.model.config",
    "ImageTowerConfig": "hivlp_milvus.model.config",
    "TextTowerConfig": "hivlp_milvus.model.config",
    "get_config": "hivlp_milvus.model.config",
    "list_configs": "hivlp_milvus.model.config",
    "load_image": "hivlp_milvus.model.preprocess",
    "ImageProcessor": "hivlp_milvus.model.preprocess",
    "HierarchicalEmbedding": "hivlp_milvus.model.embedding",
    "HiVLPOutput": "hivlp_milvus.model.embedding",
    "HiVLPLoss": "hivlp_milvus.model.loss",
    "LossConfig": "hivlp_milvus.model.loss",
    "LossOutput": "hivlp_milvus.model.loss",
}

__all__ = [
    "FusionConfig",
    "HiVLP",
    "HiVLPConfig",
    "HiVLPLoss",
    "HiVLPOutput",
    "HierarchicalEmbedding",
    "ImageProcessor",
    "ImageTowerConfig",
    "LossConfig",
    "LossOutput",
    "TextTowerConfig",
    "create_model",
    "get_config",
    "list_configs",
    "load_image",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
