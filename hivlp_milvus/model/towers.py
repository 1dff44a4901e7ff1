"""The two encoders: a timm image tower and a transformers text tower, each → pooled features."""

from __future__ import annotations

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, PretrainedConfig

from hivlp_milvus.errors import CheckpointError, ConfigError
from hivlp_milvus.model.config import ImageTowerConfig, TextTowerConfig


class ImageTower(nn.Module):
    """``timm.create_model(name, num_classes=0, **timm_kwargs)``: pixels → pooled features.

    Args:
        config: the image tower config.
        pretrained: override ``config.pretrained``; reloading a saved HiVLP passes ``False``
            because its own weights replace timm's anyway (and that must work offline).

    Raises:
        ConfigError: timm does not know the model name or rejects the keyword arguments.
    """

    def __init__(self, config: ImageTowerConfig, *, pretrained: bool | None = None) -> None:
        super().__init__()
        # "hf-hub:org/repo" and "local-dir:/path" names are resolved by timm itself at creation.
        if ":" not in config.name and not timm.is_model(config.name):
            raise ConfigError(f"timm has no model {config.name!r}; see timm.list_models() for valid names")
        load = config.pretrained if pretrained is None else pretrained
        try:
            self.model = timm.create_model(config.name, pretrained=load, num_classes=0, **config.timm_kwargs)
        except TypeError as exc:  # an unknown keyword in timm_kwargs
            raise ConfigError(f"timm rejected image.timm_kwargs {dict(config.timm_kwargs)}: {exc}") from exc
        # head_hidden_size is what forward() returns with num_classes=0 (it differs from
        # num_features for models with a pre-logits layer); older timm models only have num_features.
        self.out_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    def default_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Normalisation the timm model was (or would be) pretrained with."""
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        mean = tuple(float(x) for x in cfg.get("mean", IMAGENET_DEFAULT_MEAN))
        std = tuple(float(x) for x in cfg.get("std", IMAGENET_DEFAULT_STD))
        return mean, std

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` → ``(N, out_dim)`` pooled features."""
        return self.model(pixel_values)


class TextTower(nn.Module):
    """A transformers encoder: token ids → CLS or masked-mean pooled features.

    Which model is built:

    * ``model_config`` given (reloading a checkpoint): ``AutoModel.from_config(model_config)``,
      offline; the checkpoint's weights are loaded afterwards.
    * ``config.name`` and ``config.pretrained``: ``AutoModel.from_pretrained(name)`` (hub or dir).
    * ``config.name`` only: ``AutoModel.from_config(AutoConfig.from_pretrained(name))``, random init.
    * no name: a random-init ``BertModel`` sized from the config and the tokenizer's vocabulary.

    Args:
        config: the text tower config.
        vocab_size: size of the tokenizer vocabulary (needed when ``config.name`` is ``None``).
        pad_token_id: the tokenizer's padding id.
        model_config: a transformers config to build from instead (see above).
        pretrained: override ``config.pretrained``.

    Raises:
        ConfigError: the random-init tower has no vocabulary size.
        CheckpointError: the named model or its config cannot be loaded.
    """

    def __init__(
        self,
        config: TextTowerConfig,
        *,
        vocab_size: int | None = None,
        pad_token_id: int = 0,
        model_config: PretrainedConfig | None = None,
        pretrained: bool | None = None,
    ) -> None:
        super().__init__()
        self.pooling = config.pooling
        if model_config is not None:
            self.model = AutoModel.from_config(model_config)
        elif config.name is None:
            if vocab_size is None:
                raise ConfigError("a random-init text tower needs the tokenizer's vocab_size")
            self.model = BertModel(_bert_config(config, vocab_size, pad_token_id), add_pooling_layer=False)
        else:
            load = config.pretrained if pretrained is None else pretrained
            self.model = _load_named(config.name, pretrained=load)
        # The pooler (BERT's tanh layer over CLS) is not used: we pool last_hidden_state ourselves.
        # Dropping it keeps every parameter in the graph, which DistributedDataParallel requires.
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.out_dim = int(self.model.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` ids and mask → ``(N, out_dim)`` pooled features."""
        return self.pool(
            self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask
        )

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(N, L, out_dim)`` token states → ``(N, out_dim)``: the CLS token or the mean of the non-padding ones."""
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def _bert_config(config: TextTowerConfig, vocab_size: int, pad_token_id: int) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size or 4 * config.hidden_size,
        # Tokens never exceed max_length, so larger position tables would be dead weight.
        max_position_embeddings=config.max_length,
        pad_token_id=pad_token_id,
    )


def _load_named(name: str, *, pretrained: bool) -> nn.Module:
    try:
        if pretrained:
            return AutoModel.from_pretrained(name)
        return AutoModel.from_config(AutoConfig.from_pretrained(name))
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"cannot load text model {name!r} ({'weights' if pretrained else 'config'}): {exc}. "
            "Give a local directory, or make the hub (or its cache) reachable"
        ) from exc
