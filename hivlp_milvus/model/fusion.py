"""The fusion scorer: a small cross-attention transformer giving one match logit per image–text pair.

As in ALBEF's fusion encoder and LightningDOT's UNITER re-ranker, the text's token features attend
to the image's spatial features (ViT patch tokens, or a CNN's last feature map flattened to one
token per cell), so the scorer can check *where* and *which* object a caption names — what one
pooled dot product cannot. It is the third, most expensive stage of search: it runs on the fine
stage's top-M only (``HiVLP.score_pairs``).

Each layer is pre-norm: text self-attention, text→image cross-attention, MLP
(``nn.TransformerDecoderLayer`` with the text as target and the image as memory). The match logit
is a linear read-out of the masked mean of the last layer's text tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hivlp_milvus.errors import DimensionMismatchError
from hivlp_milvus.model.config import FusionConfig
from hivlp_milvus.model.embedding import HiVLPOutput

__all__ = ["FusedOutput", "FusionInputs", "FusionScorer", "spatial_tokens"]


def spatial_tokens(features: torch.Tensor) -> torch.Tensor:
    """A timm ``forward_features`` output as a ``(N, tokens, channels)`` sequence.

    ViTs already return ``(N, tokens, D)``; CNNs return ``(N, C, H, W)``, whose cells become tokens.

    Raises:
        DimensionMismatchError: the features are neither 3-D nor 4-D.
    """
    if features.dim() == 4:
        return features.flatten(2).transpose(1, 2)
    if features.dim() == 3:
        return features
    raise DimensionMismatchError(
        f"the image tower's forward_features gave shape {tuple(features.shape)}; the fusion block needs "
        "(N, tokens, D) or (N, C, H, W) spatial features"
    )


class FusionScorer(nn.Module):
    """Text tokens cross-attend to image tokens; one match logit per pair.

    Args:
        config: layers, heads and width.
        text_dim: width of the text tower's token features.
        image_dim: channels of the image tower's spatial features.
        image_tokens: number of image tokens (fixed by the tower and the image size), so each
            gets a learned position embedding: a CNN feature map carries no position of its own,
            and captions name positions.
    """

    def __init__(self, config: FusionConfig, *, text_dim: int, image_dim: int, image_tokens: int) -> None:
        super().__init__()
        width = config.width
        self.text_in = nn.Linear(text_dim, width)
        self.image_in = nn.Linear(image_dim, width)
        self.image_pos = nn.Parameter(torch.zeros(1, image_tokens, width))
        nn.init.trunc_normal_(self.image_pos, std=0.02)
        layer = nn.TransformerDecoderLayer(
            width,
            config.heads,
            dim_feedforward=4 * width,
            dropout=0.0,  # scores must be deterministic; the towers carry the regularisation
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerDecoder(layer, num_layers=config.layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)

    def forward(self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Match logits of aligned pairs.

        Args:
            text: ``(N, L, text_dim)`` token features of the text tower.
            text_mask: ``(N, L)`` attention mask (1 = token, 0 = padding).
            image: ``(N, T, image_dim)`` image tokens (:func:`spatial_tokens`).

        Returns:
            ``(N,)`` logits; higher means a better match.

        Raises:
            DimensionMismatchError: the batches are not aligned or the image has another token count.
        """
        if not len(text) == len(text_mask) == len(image):
            raise DimensionMismatchError(
                f"fusion pairs must be aligned: {len(text)} texts, {len(text_mask)} masks, {len(image)} images"
            )
        if image.shape[1] != self.image_pos.shape[1]:
            raise DimensionMismatchError(
                f"{image.shape[1]} image tokens but the fusion block was built for {self.image_pos.shape[1]}; "
                "images must be pre-processed to the model's image_size"
            )
        memory = self.image_in(image) + self.image_pos
        padding = text_mask == 0
        hidden = self.layers(self.text_in(text), memory, tgt_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).to(hidden.dtype)
        pooled = (self.norm(hidden) * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1)


@dataclass(frozen=True, eq=False)
class FusionInputs:
    """What a training forward pass keeps for the fusion block: token features of the batch.

    Attributes:
        scorer: the model's fusion block.
        image: ``(B, T, D_img)`` image tokens (:func:`spatial_tokens`).
        text: ``(B, L, D_txt)`` token features of the text tower.
        text_mask: ``(B, L)`` attention mask.
    """

    scorer: FusionScorer
    image: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor

    def match(self, image_index: torch.Tensor, text_index: torch.Tensor) -> torch.Tensor:
        """Match logits of the pairs ``(image[image_index[k]], text[text_index[k]])``, with gradients."""
        return self.scorer(self.text[text_index], self.text_mask[text_index], self.image[image_index])


@dataclass(frozen=True)
class FusedOutput(HiVLPOutput):
    """``HiVLP.forward``'s output for a model with a fusion block: the embeddings plus the fusion inputs.

    It is a :class:`~hivlp_milvus.model.embedding.HiVLPOutput`, so every consumer of that keeps
    working; the ``itm`` loss term reads :attr:`fusion`.
    """

    fusion: FusionInputs | None = None
