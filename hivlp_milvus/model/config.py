"""``HiVLPConfig``: everything needed to rebuild a HiVLP model, as frozen dataclasses with JSON round-trip.

Named configs (``micro``, ``tiny``, ``base``) are JSON data files in ``model/configs/`` so they can be
read, diffed and copied without reading code.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hivlp_milvus.errors import ConfigError

HEADS = ("separate", "nested")
POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class ImageTowerConfig:
    """The timm image tower.

    Attributes:
        name: a timm model name, optionally with a pretrained tag
            (``"vit_base_patch16_224.augreg2_in21k_ft_in1k"``).
        pretrained: download timm's pretrained weights when the model is first created (needs the
            hub or its cache; never needed to reload a saved HiVLP checkpoint).
        image_size: side of the square input in pixels.
        timm_kwargs: extra ``timm.create_model`` keyword arguments (e.g. ``img_size``,
            ``patch_size``, ``embed_dim``, ``depth``, ``num_heads``) for small random-init towers.
        mean: per-channel normalisation mean; ``None`` = timm's ``pretrained_cfg`` of the model.
        std: per-channel normalisation std; ``None`` = timm's ``pretrained_cfg`` of the model.
    """

    name: str = "vit_tiny_patch16_224"
    pretrained: bool = False
    image_size: int = 224
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        _check_str(self.name, "image.name")
        _check_bool(self.pretrained, "image.pretrained")
        _check_positive_int(self.image_size, "image.image_size")
        if not isinstance(self.timm_kwargs, Mapping):
            kind = type(self.timm_kwargs).__name__
            raise ConfigError(f"image.timm_kwargs must be a JSON object, got {kind}")
        # A read-only copy: the dataclass is frozen, so its dict must not be mutable behind its back.
        object.__setattr__(self, "timm_kwargs", MappingProxyType(dict(self.timm_kwargs)))
        img_size = self.timm_kwargs.get("img_size")
        if img_size is not None and img_size != self.image_size:
            raise ConfigError(
                f"image.timm_kwargs.img_size={img_size} differs from image.image_size={self.image_size}; "
                "set both to the same value (the pre-processor crops to image_size, the tower expects "
                "img_size)"
            )
        for attr in ("mean", "std"):
            value = getattr(self, attr)
            if value is None:
                continue
            if (
                isinstance(value, (str, bytes))
                or not hasattr(value, "__len__")
                or len(value) != 3
                or not all(_is_number(v) for v in value)
            ):
                raise ConfigError(f"image.{attr} must be three numbers (one per RGB channel) or null, got {value!r}")
            object.__setattr__(self, attr, tuple(float(v) for v in value))
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"image.std must be positive per channel, got {self.std}")

    def __hash__(self) -> int:
        # The generated hash would fail on the kwargs mapping; hash the canonical JSON instead.
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples as lists, the read-only kwargs as a plain dict)."""
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "image_size": self.image_size,
            "timm_kwargs": dict(self.timm_kwargs),
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageTowerConfig:
        """Build from a dict such as :meth:`to_dict` returns.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        return cls(**_known_keys(cls, data, "image"))


@dataclass(frozen=True)
class TextTowerConfig:
    """The transformers text tower.

    Attributes:
        name: a hub name or local directory for ``transformers.AutoModel`` / ``AutoTokenizer``;
            ``None`` = a small random-init BERT over a WordPiece vocabulary trained from captions.
        pretrained: load the pretrained weights of ``name`` (else only its architecture).
        vocab_size: size of the WordPiece vocabulary to train (``name is None`` only).
        hidden_size: width of the random-init BERT (``name is None`` only).
        num_layers: layers of the random-init BERT (``name is None`` only).
        num_heads: attention heads of the random-init BERT (``name is None`` only).
        intermediate_size: feed-forward width of the random-init BERT; ``None`` = 4 × hidden_size.
        max_length: captions are padded and truncated to this many tokens.
        pooling: ``"cls"`` (first token) or ``"mean"`` (mean of non-padding tokens).
    """

    name: str | None = None
    pretrained: bool = False
    vocab_size: int = 8000
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int | None = None
    max_length: int = 32
    pooling: str = "cls"

    def __post_init__(self) -> None:
        if self.name is not None:
            _check_str(self.name, "text.name")
        _check_bool(self.pretrained, "text.pretrained")
        if self.pretrained and self.name is None:
            raise ConfigError(
                "text.pretrained is true but text.name is null: give a hub name or local directory to load, "
                "or set pretrained to false for a random-init tower"
            )
        for attr in ("vocab_size", "hidden_size", "num_layers", "num_heads", "max_length"):
            _check_positive_int(getattr(self, attr), f"text.{attr}")
        if self.intermediate_size is not None:
            _check_positive_int(self.intermediate_size, "text.intermediate_size")
        if self.name is None and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"text.hidden_size={self.hidden_size} is not divisible by text.num_heads={self.num_heads}; "
                "pick a head count that divides the width"
            )
        if self.pooling not in POOLINGS:
            raise ConfigError(f"text.pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextTowerConfig:
        """Build from a dict such as :meth:`to_dict` returns.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        return cls(**_known_keys(cls, data, "text"))


@dataclass(frozen=True)
class HiVLPConfig:
    """A whole HiVLP model: both towers, the hierarchical heads and the temperatures.

    Attributes:
        image: the image tower.
        text: the text tower.
        low_dim: dimension of the coarse (ANN-indexed) vector.
        high_dim: dimension of the fine (re-ranking) vector.
        head: ``"separate"`` (two independent projections) or ``"nested"`` (Matryoshka: low is the
            first ``low_dim`` dims of the high projection, normalised separately).
        init_temperature: initial softmax temperature of both levels (logit scale = 1 / T).
        max_logit_scale: the learnable logit scales are clamped to at most this value.
    """

    image: ImageTowerConfig = field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    low_dim: int = 128
    high_dim: int = 768
    head: str = "separate"
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0

    def __post_init__(self) -> None:
        # Accept plain dicts for the towers so ``HiVLPConfig(image={...})`` reads like the JSON.
        if isinstance(self.image, Mapping):
            object.__setattr__(self, "image", ImageTowerConfig.from_dict(self.image))
        if isinstance(self.text, Mapping):
            object.__setattr__(self, "text", TextTowerConfig.from_dict(self.text))
        if not isinstance(self.image, ImageTowerConfig):
            raise ConfigError(f"image must be an ImageTowerConfig or a dict, got {type(self.image).__name__}")
        if not isinstance(self.text, TextTowerConfig):
            raise ConfigError(f"text must be a TextTowerConfig or a dict, got {type(self.text).__name__}")
        _check_positive_int(self.low_dim, "low_dim")
        _check_positive_int(self.high_dim, "high_dim")
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        if self.head == "nested" and self.low_dim > self.high_dim:
            raise ConfigError(
                f"a nested head takes low as the first low_dim dims of high, so low_dim ({self.low_dim}) "
                f"must be <= high_dim ({self.high_dim}); lower low_dim or use head='separate'"
            )
        for attr in ("init_temperature", "max_logit_scale"):
            value = getattr(self, attr)
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{attr} must be a positive finite number, got {value!r}")
            object.__setattr__(self, attr, float(value))
        if 1.0 / self.init_temperature > self.max_logit_scale:
            raise ConfigError(
                f"init_temperature={self.init_temperature} starts the logit scale at "
                f"{1.0 / self.init_temperature:.4g}, above max_logit_scale={self.max_logit_scale}; "
                "raise init_temperature or max_logit_scale"
            )

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready nested dict."""
        return {
            "image": self.image.to_dict(),
            "text": self.text.to_dict(),
            "low_dim": self.low_dim,
            "high_dim": self.high_dim,
            "head": self.head,
            "init_temperature": self.init_temperature,
            "max_logit_scale": self.max_logit_scale,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HiVLPConfig:
        """Build from a nested dict such as :meth:`to_dict` returns; missing keys take defaults.

        Raises:
            ConfigError: unknown keys (at any level) or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a HiVLP config must be a JSON object, got {type(data).__name__}")
        kwargs = _known_keys(cls, data, "config")
        if "image" in kwargs:
            kwargs["image"] = ImageTowerConfig.from_dict(_mapping(kwargs["image"], "image"))
        if "text" in kwargs:
            kwargs["text"] = TextTowerConfig.from_dict(_mapping(kwargs["text"], "text"))
        return cls(**kwargs)

    def to_json(self, *, indent: int | None = 2) -> str:
        """The config as JSON with sorted keys (stable text, so it can be hashed and diffed)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HiVLPConfig:
        """Parse :meth:`to_json` output.

        Raises:
            ConfigError: invalid JSON, unknown keys or invalid values.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"HiVLP config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        """Write the config as JSON to ``path`` and return the path."""
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> HiVLPConfig:
        """Read a config JSON file.

        Raises:
            ConfigError: the file is missing or its content is invalid.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read HiVLP config {path}: {exc}") from exc
        try:
            return cls.from_json(text)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


# -- named configs -----------------------------------------------------------------------------


def list_configs() -> list[str]:
    """Names accepted by :func:`get_config` (the JSON files shipped in ``model/configs``)."""
    root = _configs_dir()
    return sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json"))


def get_config(name: str) -> HiVLPConfig:
    """A named config: ``micro`` (unit tests), ``tiny`` (CPU quickstart) or ``base`` (GPU).

    Args:
        name: one of :func:`list_configs`.

    Returns:
        The parsed config.

    Raises:
        ConfigError: the name is unknown (the message lists the known ones).
    """
    known = list_configs()
    if name not in known:
        raise ConfigError(f"unknown model config {name!r}; known configs: {', '.join(known)}")
    text = _configs_dir().joinpath(f"{name}.json").read_text(encoding="utf-8")
    try:
        return HiVLPConfig.from_json(text)
    except ConfigError as exc:
        raise ConfigError(f"named config {name!r}: {exc}") from exc


def _configs_dir() -> Any:
    # Resolved through the installed package (not __file__) so it also works from a wheel.
    return resources.files("hivlp_milvus.model").joinpath("configs")


# -- validation helpers ------------------------------------------------------------------------


def _known_keys(cls: type, data: Mapping[str, Any], where: str) -> dict[str, Any]:
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; allowed keys: {allowed}")
    return dict(data)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if isinstance(value, (ImageTowerConfig, TextTowerConfig)):
        return value.to_dict()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


def _is_number(value: Any) -> bool:
    # bool is an int subclass; a JSON ``true`` is never a sensible dimension or temperature.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive_int(value: Any, where: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")


def _check_bool(value: Any, where: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")


def _check_str(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
