"""``HiVLPConfig``: everything needed to rebuild a HiVLP model, validated by pydantic, with JSON round-trip.

Named configs (``micro``, ``tiny``, ``base``) are JSON data files in ``model/configs/`` so they can be
read, diffed and copied without reading code.

The configs are pydantic *dataclasses* (frozen, unknown keys forbidden): the field declarations are
the validation, and they stay real dataclasses, so ``dataclasses.replace(config, low_dim=8)``
re-validates and a frozen field raises ``FrozenInstanceError``. :func:`config_dataclass` also
turns pydantic's ``ValidationError`` into one :class:`~hivlp_milvus.errors.ConfigError` naming
each dotted key; ``training/config.py`` and ``LossConfig`` use the same decorator and field types.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import typing
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass

from hivlp_milvus.errors import ConfigError

__all__ = [
    "ConfigBase",
    "FusionConfig",
    "HiVLPConfig",
    "ImageTowerConfig",
    "TextTowerConfig",
    "config_dataclass",
    "describe_validation_error",
    "get_config",
    "list_configs",
    "plain",
]

T = TypeVar("T")

# -- field types shared by every config (model, loss, training) ------------------------------------

# YAML 1.1 reads "3e-4" as a string; a user writing it means the number. Nothing else is coerced:
# a bool is never a number, and "1" in quotes is a mistake worth reporting.
_EXPONENT = re.compile(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+")


def _yaml_number(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
        return float(value)
    return value


def frozen(value: Any) -> Any:
    """A deep read-only copy: mappings become ``MappingProxyType``, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(frozen(v) for v in value)
    return value


def plain(value: Any) -> Any:
    """A config (or any nesting of dataclasses, mappings, tuples) as plain JSON/YAML-ready values.

    ``dataclasses.asdict`` cannot be used: it deep-copies the read-only mappings, which cannot be copied.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


Number = Annotated[float, BeforeValidator(_yaml_number), Field(strict=True, allow_inf_nan=False)]
PositiveNumber = Annotated[Number, Field(gt=0)]
NonNegativeNumber = Annotated[Number, Field(ge=0)]
PositiveInt = Annotated[StrictInt, Field(gt=0)]
NonNegativeInt = Annotated[StrictInt, Field(ge=0)]
NonEmptyStr = Annotated[str, Field(strict=True, min_length=1)]
#: A read-only mapping, nested mappings and lists included (a frozen config hands out nothing mutable).
FrozenMapping = Annotated[Mapping[str, Any], AfterValidator(frozen)]
Flag = StrictBool

# -- the decorator ----------------------------------------------------------------------------------


class ConfigBase:
    """``from_dict`` / ``to_dict`` of every config class made by :func:`config_dataclass`."""

    #: The dotted prefix of this class's keys in messages (``"optim"``, ``"image"``, ``"LossConfig"``).
    where: ClassVar[str] = ""

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
        """Build and validate from a mapping (parsed JSON/YAML); missing keys take their defaults.

        Raises:
            ConfigError: not a mapping, unknown keys (with the closest known one) or invalid values.
        """
        if not isinstance(data, Mapping):
            what = cls.where or "the config"  # type: ignore[attr-defined]
            raise ConfigError(f"{what} must be a mapping of keys to values (a JSON object), got {type(data).__name__}")
        return cls(**{str(k): v for k, v in data.items()})

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (JSON/YAML-ready) that :meth:`from_dict` turns back into an equal config."""
        return plain(self)


def config_dataclass(where: str = "") -> Callable[[type[T]], type[T]]:
    """Make a frozen pydantic dataclass that forbids unknown keys and raises :class:`ConfigError`.

    Args:
        where: the dotted prefix of the class's keys in error messages (e.g. ``"optim"``).

    Returns:
        A class decorator.
    """

    def wrap(cls: type[T]) -> type[T]:
        made: Any = pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
        validate = made.__init__

        @functools.wraps(validate)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807 - replaces __init__
            try:
                validate(self, *args, **kwargs)
            except ValidationError as exc:
                raise ConfigError(describe_validation_error(exc, made, where)) from exc

        made.__init__ = __init__
        made.where = where
        return made

    return wrap


def describe_validation_error(exc: ValidationError, root: type, where: str = "") -> str:
    """One message for all of pydantic's errors, each naming its dotted key and what is allowed.

    Args:
        exc: the pydantic error.
        root: the config class that was validated (to list the known keys of a section).
        where: the dotted prefix of ``root``'s keys.

    Returns:
        The messages joined by ``"; "``.
    """
    unknown: dict[tuple[str, ...], list[str]] = {}
    messages: list[str] = []
    for error in exc.errors():
        loc = tuple(str(p) for p in error["loc"])
        if error["type"] in ("unexpected_keyword_argument", "extra_forbidden") and loc:
            unknown.setdefault(loc[:-1], []).append(loc[-1])
            continue
        messages.append(_describe(error, _dotted(where, loc)))
    for parent, names in unknown.items():
        section = _dotted(where, parent)
        known = _field_names(root, parent)
        close = difflib.get_close_matches(names[0], known, n=1)
        hint = f"did you mean {_dotted(section, (close[0],))}? " if close else ""
        messages.insert(0, f"unknown {section + ' ' if section else ''}keys {names}; {hint}known keys are {known}")
    return "; ".join(messages)


def _dotted(where: str, loc: tuple[str, ...]) -> str:
    text = where
    for part in loc:
        text = f"{text}[{part}]" if part.isdigit() else f"{text}.{part}" if text else part
    return text


def _describe(error: Any, key: str) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    got = repr(error.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    phrases = {
        "int_type": "must be an integer",
        "bool_type": "must be true or false",
        "string_type": "must be a string",
        "string_too_short": "must be a non-empty string",
        "float_type": "must be a number",
        "finite_number": "must be a finite number",
        "dict_type": "must be a mapping of keys to values (a JSON object)",
        "mapping_type": "must be a mapping of keys to values (a JSON object)",
        "dataclass_type": "must be a mapping of keys to values (a JSON object)",
        "literal_error": f"must be {ctx.get('expected')}",
        "greater_than": f"must be > {ctx.get('gt')}",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than": f"must be < {ctx.get('lt')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "too_short": f"must have at least {ctx.get('min_length')} item(s)",
        "too_long": f"must have at most {ctx.get('max_length')} item(s)",
    }
    if kind in ("value_error", "assertion_error"):
        reason = str(ctx.get("error", error["msg"]))
        return f"{key}: {reason}" if key else reason
    if kind == "missing":
        return f"{key} is required"
    if kind in phrases:
        return f"{key} {phrases[kind]}, got {got}"
    return f"{key}: {error['msg']}, got {got}"


def _field_names(root: type, loc: tuple[str, ...]) -> list[str]:
    """The field names of the (nested) config class at ``loc`` (``[]`` when it is no config class)."""
    cls: Any = root
    for part in loc:
        # A missing field or a non-config type leaves cls None, whose fields are [].
        field = getattr(cls, "__pydantic_fields__", {}).get(part)
        types = (field.annotation, *typing.get_args(field.annotation)) if field else ()
        cls = next((t for t in types if dataclasses.is_dataclass(t)), None)
    return list(getattr(cls, "__pydantic_fields__", {}))


# -- the model config --------------------------------------------------------------------------------

RGB = tuple[Number, Number, Number]


@config_dataclass("image")
class ImageTowerConfig(ConfigBase):
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

    name: NonEmptyStr = "vit_tiny_patch16_224"
    pretrained: Flag = False
    image_size: PositiveInt = 224
    # Read-only at the top level only: timm takes lists (e.g. ResNet ``channels``) as they are.
    timm_kwargs: Annotated[Mapping[str, Any], AfterValidator(lambda v: MappingProxyType(dict(v)))] = dataclasses.field(
        default_factory=lambda: MappingProxyType({})
    )
    mean: RGB | None = None
    std: tuple[PositiveNumber, PositiveNumber, PositiveNumber] | None = None

    @model_validator(mode="after")
    def _img_size_matches(self) -> ImageTowerConfig:
        img_size = self.timm_kwargs.get("img_size")
        if img_size is not None and img_size != self.image_size:
            raise ValueError(
                f"timm_kwargs.img_size={img_size} differs from image_size={self.image_size}; set both to the "
                "same value (the pre-processor crops to image_size, the tower expects img_size)"
            )
        return self

    def __hash__(self) -> int:
        # The generated hash would fail on the kwargs mapping; hash the canonical JSON instead.
        return hash(json.dumps(self.to_dict(), sort_keys=True))


@config_dataclass("text")
class TextTowerConfig(ConfigBase):
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

    name: NonEmptyStr | None = None
    pretrained: Flag = False
    vocab_size: PositiveInt = 8000
    hidden_size: PositiveInt = 128
    num_layers: PositiveInt = 3
    num_heads: PositiveInt = 4
    intermediate_size: PositiveInt | None = None
    max_length: PositiveInt = 32
    pooling: Literal["cls", "mean"] = "cls"

    @model_validator(mode="after")
    def _consistent(self) -> TextTowerConfig:
        if self.pretrained and self.name is None:
            raise ValueError(
                "pretrained is true but name is null: give a hub name or local directory to load, "
                "or set pretrained to false for a random-init tower"
            )
        if self.name is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                "pick a head count that divides the width"
            )
        return self


@config_dataclass("fusion")
class FusionConfig(ConfigBase):
    """The optional fusion scorer: text tokens cross-attend to the image tower's spatial features.

    Attributes:
        layers: transformer layers (each: text self-attention, cross-attention to the image, MLP).
        heads: attention heads per layer.
        width: the scorer's hidden width (both towers' token features are projected to it).
        score_weight: how the third stage orders the fine top-M: by ``distance + score_weight *
            fusion_score`` (0 keeps the two-stage order exactly), or ``None`` by the fusion score
            alone. Chosen on the validation split by ``training/fusion_finetune.py``.
    """

    layers: PositiveInt = 2
    heads: PositiveInt = 4
    width: PositiveInt = 256
    score_weight: NonNegativeNumber | None = None

    @model_validator(mode="after")
    def _heads_divide_width(self) -> FusionConfig:
        if self.width % self.heads:
            raise ValueError(
                f"width={self.width} is not divisible by heads={self.heads}; pick a head count that divides the width"
            )
        return self


@config_dataclass()
class HiVLPConfig(ConfigBase):
    """A whole HiVLP model: both towers, the hierarchical heads and the temperatures.

    Attributes:
        image: the image tower (a dict is accepted, so ``HiVLPConfig(image={...})`` reads like the JSON).
        text: the text tower (a dict is accepted).
        low_dim: dimension of the coarse (ANN-indexed) vector.
        high_dim: dimension of the fine (re-ranking) vector.
        head: ``"separate"`` (two independent projections) or ``"nested"`` (Matryoshka: low is the
            first ``low_dim`` dims of the high projection, normalised separately).
        init_temperature: initial softmax temperature of both levels (logit scale = 1 / T).
        max_logit_scale: the learnable logit scales are clamped to at most this value.
        fusion: the optional cross-attention scorer of the third search stage (``None``: no
            fusion block; a dict is accepted).
    """

    image: ImageTowerConfig = dataclasses.field(default_factory=ImageTowerConfig)
    text: TextTowerConfig = dataclasses.field(default_factory=TextTowerConfig)
    low_dim: PositiveInt = 128
    high_dim: PositiveInt = 768
    head: Literal["separate", "nested"] = "separate"
    init_temperature: PositiveNumber = 0.07
    max_logit_scale: PositiveNumber = 100.0
    fusion: FusionConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> HiVLPConfig:
        if self.head == "nested" and self.low_dim > self.high_dim:
            raise ValueError(
                f"a nested head takes low as the first low_dim dims of high, so low_dim ({self.low_dim}) "
                f"must be <= high_dim ({self.high_dim}); lower low_dim or use head='separate'"
            )
        if 1.0 / self.init_temperature > self.max_logit_scale:
            raise ValueError(
                f"init_temperature={self.init_temperature} starts the logit scale at "
                f"{1.0 / self.init_temperature:.4g}, above max_logit_scale={self.max_logit_scale}; "
                "raise init_temperature or max_logit_scale"
            )
        return self

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict; without a fusion block it has no ``fusion`` key at all.

        So a model without one writes the ``config.json`` (and has the fingerprint) it had before
        the fusion block existed: its checkpoints and collections keep working with older readers.
        """
        data = super().to_dict()
        if data.get("fusion") is None:
            data.pop("fusion", None)
        elif data["fusion"].get("score_weight") is None:
            # Likewise a fusion block ordered by its score alone keeps its pre-mix config and fingerprint.
            data["fusion"].pop("score_weight", None)
        return data

    def to_json(self, *, indent: int | None = 2) -> str:
        """The config as JSON with sorted keys (stable text, so it can be hashed and diffed)."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HiVLPConfig:
        """Parse :meth:`to_json` output (a checkpoint's ``config.json``).

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
