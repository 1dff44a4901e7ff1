"""``HiVLP``: the hierarchical dual encoder, its factory, save/load and fingerprint."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from hivlp_milvus.device import inference_dtype, resolve_device
from hivlp_milvus.errors import CheckpointError, ConfigError, DimensionMismatchError
from hivlp_milvus.model.config import HiVLPConfig, get_config
from hivlp_milvus.model.embedding import HierarchicalEmbedding, HiVLPOutput
from hivlp_milvus.model.fusion import FusedOutput, FusionInputs, FusionScorer, spatial_tokens
from hivlp_milvus.model.heads import build_head
from hivlp_milvus.model.preprocess import ImageLike, ImageProcessor, as_image_list, is_single_image
from hivlp_milvus.model.tokenizer import load_pretrained_tokenizer, train_wordpiece
from hivlp_milvus.model.towers import ImageTower, TextTower

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# The text encoder's own transformers config, so a checkpoint whose tower came from the hub
# rebuilds offline. A subdirectory because transformers also calls it config.json.
TEXT_CONFIG_DIR = "text_tower"


class HiVLP(nn.Module):
    """The HiVLP dual encoder: image and text towers, each with a (low, high) hierarchical head.

    Most code builds one with :func:`create_model` or :meth:`from_pretrained`.

    Args:
        config: the model config. Missing ``image.mean`` / ``image.std`` are filled from timm's
            ``pretrained_cfg`` so the saved config pins the normalisation.
        tokenizer: the text tokenizer (its vocabulary sizes a random-init text tower).
        pretrained_towers: ``False`` builds the towers' architecture without downloading
            pretrained weights (used when a checkpoint's own weights are loaded right after).
        text_model_config: build the text encoder from this transformers config (offline).

    Attributes:
        config: the (normalisation-resolved) config.
        tokenizer: the tokenizer used by :meth:`tokenize`.
        image_processor: the :class:`ImageProcessor` used by :meth:`preprocess_images`.
        logit_scale_low: learnable log inverse temperature of the low level (0-d parameter).
        logit_scale_high: learnable log inverse temperature of the high level (0-d parameter).
        fusion: the cross-attention scorer of the third search stage when ``config.fusion`` is
            set (:meth:`score_pairs`), else ``None``.

    Raises:
        ConfigError: invalid config, or a tokenizer that does not fit the text tower.
    """

    def __init__(
        self,
        config: HiVLPConfig,
        tokenizer: PreTrainedTokenizerBase,
        *,
        pretrained_towers: bool = True,
        text_model_config: PretrainedConfig | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, HiVLPConfig):
            raise ConfigError(f"config must be a HiVLPConfig, got {type(config).__name__}")
        if tokenizer.pad_token_id is None:
            raise ConfigError("the tokenizer has no padding token; set tokenizer.pad_token before building HiVLP")
        load = None if pretrained_towers else False
        self.image_tower = ImageTower(config.image, pretrained=load)
        if config.image.mean is None or config.image.std is None:
            mean, std = self.image_tower.default_mean_std()
            image = replace(config.image, mean=config.image.mean or mean, std=config.image.std or std)
            config = replace(config, image=image)
        self.config = config
        self.tokenizer = tokenizer
        self.image_processor = ImageProcessor(config.image.image_size, config.image.mean, config.image.std)
        self.text_tower = TextTower(
            config.text,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            model_config=text_model_config,
            pretrained=load,
        )
        embeddings = self.text_tower.model.get_input_embeddings().num_embeddings
        if len(tokenizer) > embeddings:
            raise ConfigError(
                f"the tokenizer has {len(tokenizer)} tokens but the text tower only {embeddings} embeddings; "
                "use the tokenizer that belongs to text.name"
            )
        self.image_head = build_head(config.head, self.image_tower.out_dim, config.low_dim, config.high_dim)
        self.text_head = build_head(config.head, self.text_tower.out_dim, config.low_dim, config.high_dim)
        init = math.log(1.0 / config.init_temperature)
        self.logit_scale_low = nn.Parameter(torch.tensor(init, dtype=torch.float32))
        self.logit_scale_high = nn.Parameter(torch.tensor(init, dtype=torch.float32))
        # Built last, so the towers and heads draw the same random init with or without it.
        self.fusion = self._build_fusion() if config.fusion is not None else None

    def _build_fusion(self) -> FusionScorer:
        assert self.config.fusion is not None
        # The token count of the image features depends on the tower and the image size: measure it
        # with one blank image, in eval mode so BatchNorm running statistics are not touched.
        size = self.config.image.image_size
        with eval_mode(self.image_tower), torch.no_grad():
            probe = spatial_tokens(self.image_tower.model.forward_features(torch.zeros(1, 3, size, size)))
        return FusionScorer(
            self.config.fusion, text_dim=self.text_tower.out_dim, image_dim=probe.shape[-1], image_tokens=probe.shape[1]
        )

    # -- inputs --------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters (inputs are moved there)."""
        return self.logit_scale_low.device

    def preprocess_images(self, images: ImageLike | Iterable[ImageLike]) -> torch.Tensor:
        """Images (PIL / path / HWC uint8 array / bytes, one or many) → ``(N, 3, S, S)`` tensor.

        Raises:
            BadRecordError: an image cannot be loaded.
        """
        return self.image_processor(images)

    def tokenize(self, texts: str | Iterable[str]) -> dict[str, torch.Tensor]:
        """Captions → ``{"input_ids", "attention_mask"}``, each ``(N, max_length)`` int64.

        Every caption is padded and truncated to ``config.text.max_length`` so batches have one
        fixed shape (what distributed training and dynamic batching in serving want).

        Args:
            texts: one caption or several.

        Returns:
            The token ids and attention mask as CPU tensors.

        Raises:
            TypeError: an item is not a string.
        """
        batch = [texts] if isinstance(texts, str) else list(texts)
        for text in batch:
            if not isinstance(text, str):
                raise TypeError(f"captions must be strings, got {type(text).__name__}")
        length = self.config.text.max_length
        if not batch:
            empty = torch.zeros(0, length, dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        encoded = self.tokenizer(
            batch,
            padding="max_length",
            truncation=True,
            max_length=length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    # -- encoders ------------------------------------------------------------------------------

    def encode_image(self, pixel_values: torch.Tensor) -> HierarchicalEmbedding:
        """``(N, 3, S, S)`` pixels → L2-normalised (low, high) torch embeddings."""
        return self.image_head(self.image_tower(pixel_values.to(self.device)))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> HierarchicalEmbedding:
        """``(N, L)`` token ids and mask → L2-normalised (low, high) torch embeddings."""
        return self.text_features(input_ids, attention_mask)[0]

    def image_features(self, pixel_values: torch.Tensor) -> tuple[HierarchicalEmbedding, torch.Tensor]:
        """:meth:`encode_image` and the ``(N, tokens, D)`` spatial tokens the fusion block reads, from one pass.

        timm's forward is ``forward_head(forward_features(x))``: the features are kept on the way.
        """
        features = self.image_tower.model.forward_features(pixel_values.to(self.device))
        return self.image_head(self.image_tower.model.forward_head(features)), spatial_tokens(features)

    def text_features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[HierarchicalEmbedding, torch.Tensor]:
        """:meth:`encode_text` and the ``(N, L, D)`` token states the fusion block reads, from one pass."""
        mask = attention_mask.to(self.device)
        hidden = self.text_tower.model(input_ids=input_ids.to(self.device), attention_mask=mask).last_hidden_state
        return self.text_head(self.text_tower.pool(hidden, mask)), hidden

    def logit_scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (low, high) multiplicative inverse temperatures, clamped to ``max_logit_scale``."""
        # Clamp the log before exp, as CLIP does: beyond ~100 the softmax saturates and training
        # becomes unstable, and the gradient past the cap is zero so the scale stops growing.
        cap = math.log(self.config.max_logit_scale)
        return self.logit_scale_low.clamp(max=cap).exp(), self.logit_scale_high.clamp(max=cap).exp()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> HiVLPOutput:
        """Encode a batch of image–caption pairs for training.

        Args:
            pixel_values: ``(N, 3, S, S)`` images.
            input_ids: ``(M, L)`` token ids.
            attention_mask: ``(M, L)`` mask.

        Returns:
            Both modalities at both levels and the clamped logit scales; with a fusion block, a
            :class:`~hivlp_milvus.model.fusion.FusedOutput` that also keeps the batch's token
            features for the ``itm`` loss term.
        """
        scale_low, scale_high = self.logit_scales()
        if self.fusion is None:
            return HiVLPOutput(
                image=self.encode_image(pixel_values),
                text=self.encode_text(input_ids, attention_mask),
                logit_scale_low=scale_low,
                logit_scale_high=scale_high,
            )
        # One pass per tower serves both the embeddings and the fusion inputs.
        image, image_tokens = self.image_features(pixel_values)
        text, hidden = self.text_features(input_ids, attention_mask)
        inputs = FusionInputs(self.fusion, image_tokens, hidden, attention_mask.to(self.device))
        return FusedOutput(image, text, scale_low, scale_high, fusion=inputs)

    # -- fusion (third stage) -------------------------------------------------------------------

    @property
    def has_fusion(self) -> bool:
        """Whether this model carries a fusion block (can run :meth:`score_pairs`)."""
        return self.fusion is not None

    @property
    def fusion_score_weight(self) -> float | None:
        """The third stage's score mix (``config.fusion.score_weight``; ``None``: fusion score alone)."""
        return None if self.config.fusion is None else self.config.fusion.score_weight

    def set_fusion_score_weight(self, weight: float | None) -> None:
        """Store the third stage's score mix in the config (saved with the checkpoint; part of the fingerprint).

        Raises:
            ConfigError: the model has no fusion block, or the weight is negative.
        """
        self._require_fusion()
        assert self.config.fusion is not None
        self.config = replace(self.config, fusion=replace(self.config.fusion, score_weight=weight))

    def _require_fusion(self) -> FusionScorer:
        if self.fusion is None:
            raise ConfigError(
                "this model has no fusion block (its config's fusion is null), so it cannot score pairs or run "
                "a fusion stage; search without fusion_limit, or use a checkpoint trained with a fusion block"
            )
        return self.fusion

    def match_logits(
        self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Fusion match logits of aligned image–text pairs, with gradients (for an ITM loss).

        Args:
            pixel_values: ``(N, 3, S, S)`` images.
            input_ids: ``(N, L)`` token ids of the paired captions.
            attention_mask: ``(N, L)`` mask.

        Returns:
            ``(N,)`` logits, higher = better match.

        Raises:
            ConfigError: the model has no fusion block.
        """
        fusion = self._require_fusion()
        _, image = self.image_features(pixel_values)
        _, text = self.text_features(input_ids, attention_mask)
        return fusion(text, attention_mask.to(self.device), image)

    def score_pairs(
        self, images: ImageLike | Iterable[ImageLike], texts: str | Iterable[str], batch_size: int = 64
    ) -> np.ndarray:
        """Fusion scores of image–text pairs, batched, without gradients.

        Pair ``i`` is ``(images[i], texts[i])``; one image (or one text) is paired with every item
        of the other side, which is how search re-scores a query against its M candidates. Each
        distinct text and image object is encoded once.

        Args:
            images: one image or a sequence of images (path, PIL image, HWC uint8 array, bytes).
            texts: one caption or a sequence of captions.
            batch_size: pairs (and items encoded) per forward pass.

        Returns:
            float32 ``(N,)`` match logits (higher = better match).

        Raises:
            ConfigError: the model has no fusion block.
            DimensionMismatchError: both sides have several items but not the same number.
            BadRecordError: an image cannot be loaded.
            ValueError: ``batch_size`` is not positive.
        """
        fusion = self._require_fusion()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        image_list = as_image_list(images)
        text_list = [texts] if isinstance(texts, str) else list(texts)
        n = max(len(image_list), len(text_list))
        if len(image_list) not in (1, n) or len(text_list) not in (1, n):
            raise DimensionMismatchError(
                f"{len(image_list)} images and {len(text_list)} texts: give as many of each, or one of either"
            )
        if n == 0 or not image_list or not text_list:
            return np.zeros(0, dtype=np.float32)
        image_list = image_list * n if len(image_list) == 1 else image_list
        text_list = text_list * n if len(text_list) == 1 else text_list
        # Images are deduplicated by object (arrays are not hashable), texts by value.
        unique_images: dict[int, int] = {}
        image_of = [unique_images.setdefault(id(img), len(unique_images)) for img in image_list]
        first_image = {slot: img for img, slot in zip(image_list, image_of, strict=True)}
        unique_texts: dict[str, int] = {}
        text_of = [unique_texts.setdefault(t, len(unique_texts)) for t in text_list]
        with eval_mode(self), torch.inference_mode():
            image_feats = torch.cat(
                [
                    self.image_features(self.preprocess_images(chunk))[1]
                    for chunk in _chunks([first_image[k] for k in range(len(first_image))], batch_size)
                ]
            )
            hidden, masks = [], []
            for chunk in _chunks(list(unique_texts), batch_size):
                tokens = self.tokenize(chunk)
                hidden.append(self.text_features(tokens["input_ids"], tokens["attention_mask"])[1])
                masks.append(tokens["attention_mask"].to(self.device))
            text_feats, text_masks = torch.cat(hidden), torch.cat(masks)
            scores = []
            for start in range(0, n, batch_size):
                ti = torch.as_tensor(text_of[start : start + batch_size], device=self.device)
                ii = torch.as_tensor(image_of[start : start + batch_size], device=self.device)
                scores.append(fusion(text_feats[ti], text_masks[ti], image_feats[ii]).float())
        return torch.cat(scores).cpu().numpy().astype(np.float32, copy=False)

    # -- inference helpers ---------------------------------------------------------------------

    def embed_images(
        self, images: ImageLike | Iterable[ImageLike], batch_size: int = 64, progress: bool = False
    ) -> HierarchicalEmbedding:
        """Embed images for indexing or search, in batches, without gradients.

        Args:
            images: one image or an iterable of images (read lazily, one batch at a time).
            batch_size: images per forward pass.
            progress: show a tqdm progress bar.

        Returns:
            float32 numpy (low, high) arrays, one row per image.

        Raises:
            BadRecordError: an image cannot be loaded (load images with :func:`load_image` first
                to skip bad ones individually).
            ValueError: ``batch_size`` is not positive.
        """
        items = [images] if is_single_image(images) else images
        return self._embed(
            items, batch_size, progress, lambda chunk: self.encode_image(self.preprocess_images(chunk)), "img"
        )

    def embed_texts(
        self, texts: str | Iterable[str], batch_size: int = 256, progress: bool = False
    ) -> HierarchicalEmbedding:
        """Embed captions or queries, in batches, without gradients.

        Args:
            texts: one string or an iterable of strings.
            batch_size: texts per forward pass.
            progress: show a tqdm progress bar.

        Returns:
            float32 numpy (low, high) arrays, one row per text.

        Raises:
            TypeError: an item is not a string.
            ValueError: ``batch_size`` is not positive.
        """
        items = [texts] if isinstance(texts, str) else texts
        return self._embed(items, batch_size, progress, lambda chunk: self.encode_text(**self.tokenize(chunk)), "text")

    def _embed(
        self,
        items: Iterable[Any],
        batch_size: int,
        progress: bool,
        encode: Callable[[list[Any]], HierarchicalEmbedding],
        unit: str,
    ) -> HierarchicalEmbedding:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        total = len(items) if hasattr(items, "__len__") else None
        # Starts with an empty batch of the model's dims: no input gives (0, low_dim) and (0, high_dim).
        low, high = self.config.low_dim, self.config.high_dim
        parts = [HierarchicalEmbedding(np.zeros((0, low), np.float32), np.zeros((0, high), np.float32))]
        # Mixed precision only where inference_dtype allows it (CUDA: bf16, or fp16 before Ampere);
        # the CPU keeps float32, so CPU vectors are bit-for-bit what they were.
        dtype = inference_dtype(self.device)
        mixed = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        # eval_mode: dropout off, the same item must always give the same vector.
        with eval_mode(self), torch.inference_mode(), mixed, tqdm(total=total, disable=not progress, unit=unit) as bar:
            for chunk in _chunks(items, batch_size):
                out = encode(chunk)
                if dtype is not None:
                    # Half-precision vectors are unit length only to ~3 digits: re-normalise in
                    # float32 so inner products stay cosine similarities.
                    out = HierarchicalEmbedding(_unit(out.low), _unit(out.high))
                parts.append(out.numpy())
                bar.update(len(chunk))
        return HierarchicalEmbedding.concat(parts)

    # -- persistence ---------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        """A 16-hex-char sha256 of the model: config, tokenizer vocabulary and every tensor.

        Hashed in order: the canonical config JSON, the sorted vocabulary, then each state-dict
        tensor's name, dtype, shape and bytes in sorted name order. Identical for a model and its
        saved-and-reloaded copy; any weight or config change gives another value. Collections
        record it so vectors from another model are refused. It hashes all weights, so compute it
        once per use rather than per batch.
        """
        digest = hashlib.sha256()
        # (A config without a fusion block has no "fusion" key: such models keep their fingerprint.)
        digest.update(json.dumps(self.config.to_dict(), sort_keys=True, separators=(",", ":")).encode())
        # Same weights over another vocabulary map text to other vectors, so the vocab counts too.
        vocab = sorted(self.tokenizer.get_vocab().items())
        digest.update(json.dumps(vocab, separators=(",", ":")).encode())
        state = self.state_dict()
        for name in sorted(state):
            tensor = state[name].detach().to("cpu").contiguous()
            digest.update(f"\0{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
            # View as bytes so every dtype (bfloat16 included, which numpy lacks) hashes the same way.
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors``, the tokenizer files and ``text_tower/``.

        Args:
            directory: created if missing; existing files of the same names are overwritten.

        Returns:
            The checkpoint directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        self.tokenizer.save_pretrained(str(directory))
        self.text_tower.model.config.save_pretrained(str(directory / TEXT_CONFIG_DIR))
        # save_model (not save_file) drops duplicate names of shared/tied tensors, which
        # safetensors cannot store twice, and load_model restores them.
        metadata = {"format": "pt", "hivlp_fingerprint": self.fingerprint}
        safetensors.torch.save_model(self, str(directory / WEIGHTS_FILE), metadata=metadata)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> HiVLP:
        """Load a checkpoint written by :meth:`save_pretrained`, offline and without unpickling.

        Args:
            directory: the checkpoint directory.
            device: where to put the model: ``"cpu"`` (the default, what training and Ray workers
                expect), ``"auto"`` (CUDA when usable, else the CPU), ``"cuda"`` / ``"cuda:N"``
                (an error saying why when CUDA cannot be used), or a ``torch.device``.

        Returns:
            The model, in eval mode.

        Raises:
            CheckpointError: the directory or one of its files is missing or unreadable (the
                message names it), or the weights do not match the config.
            ConfigError: ``device`` is unknown, or CUDA was asked for and cannot be used.
        """
        target = resolve_device(device)  # before the weights load: a bad device fails fast
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {directory}")
        for name in (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_CONFIG_FILE, f"{TEXT_CONFIG_DIR}/{CONFIG_FILE}"):
            if not (directory / name).is_file():
                raise CheckpointError(
                    f"{directory} is not a complete HiVLP checkpoint: missing {name} "
                    "(write checkpoints with HiVLP.save_pretrained)"
                )
        try:
            config = HiVLPConfig.load(directory / CONFIG_FILE)
        except ConfigError as exc:
            raise CheckpointError(f"invalid {CONFIG_FILE} in {directory}: {exc}") from exc
        tokenizer = load_pretrained_tokenizer(directory)
        try:
            text_model_config = AutoConfig.from_pretrained(str(directory / TEXT_CONFIG_DIR))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"invalid {TEXT_CONFIG_DIR}/{CONFIG_FILE} in {directory}: {exc}") from exc
        model = cls(config, tokenizer, pretrained_towers=False, text_model_config=text_model_config)
        try:
            safetensors.torch.load_model(model, str(directory / WEIGHTS_FILE), strict=True)
        except (RuntimeError, SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot load {WEIGHTS_FILE} from {directory}: {exc}") from exc
        return model.to(target).eval()


def create_model(
    config: str | HiVLPConfig,
    *,
    texts: Iterable[str] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int | None = None,
) -> HiVLP:
    """Build a new HiVLP model from a named config or a :class:`HiVLPConfig`.

    Args:
        config: a name from :func:`list_configs` (``"micro"``, ``"tiny"``, ``"base"``) or a config.
        texts: captions to train the WordPiece vocabulary from, needed when ``text.name`` is
            ``None`` and no ``tokenizer`` is given; ignored otherwise.
        tokenizer: use this tokenizer instead of training one / loading ``text.name``'s.
        seed: seed the random initialisation (without disturbing the global torch RNG).

    Returns:
        The model, in train mode, on CPU.

    Raises:
        ConfigError: unknown config name, invalid config, or a vocabulary is needed and neither
            ``texts`` nor ``tokenizer`` was given.
        CheckpointError: a named pretrained tower or tokenizer cannot be loaded.
    """
    cfg = get_config(config) if isinstance(config, str) else config
    if not isinstance(cfg, HiVLPConfig):
        raise ConfigError(f"config must be a config name or a HiVLPConfig, got {type(config).__name__}")
    if tokenizer is None:
        if cfg.text.name is not None:
            tokenizer = load_pretrained_tokenizer(cfg.text.name)
        elif texts is None:
            raise ConfigError(
                "this config's text tower has no pretrained tokenizer (text.name is null), so its WordPiece "
                "vocabulary is trained from captions: pass texts=<your training captions>, "
                "or tokenizer=<a transformers tokenizer>"
            )
        else:
            tokenizer = train_wordpiece(texts, vocab_size=cfg.text.vocab_size, max_length=cfg.text.max_length)
    # fork_rng: a seeded build must not reset the caller's RNG stream (e.g. their data shuffling).
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return HiVLP(cfg, tokenizer)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode (dropout off, BatchNorm statistics untouched) for the ``with`` body, then as it was."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 rows of unit length (the half-precision output of an autocast pass)."""
    return torch.nn.functional.normalize(x.float(), dim=-1, eps=1e-12)
