"""HiVLPConfig: JSON round trips, every validation error, and the named configs."""

from __future__ import annotations

import dataclasses
import functools
import json
import operator

import pytest

from hivlp_milvus.errors import ConfigError
from hivlp_milvus.model import HiVLPConfig, ImageTowerConfig, TextTowerConfig, get_config, list_configs


@pytest.mark.parametrize("name", ["micro", "tiny", "base"])
def test_named_config_json_round_trip(name, tmp_path) -> None:
    config = get_config(name)
    assert HiVLPConfig.from_dict(config.to_dict()) == config
    assert HiVLPConfig.from_json(config.to_json()) == config
    path = config.save(tmp_path / "c.json")
    loaded = HiVLPConfig.load(path)
    assert loaded == config
    assert loaded.to_json() == config.to_json()
    assert json.loads(path.read_text())["low_dim"] == config.low_dim


def test_round_trip_keeps_types() -> None:
    config = HiVLPConfig(
        image=ImageTowerConfig(image_size=32, mean=[0.1, 0.2, 0.3], std=(0.5, 0.5, 0.5), timm_kwargs={"img_size": 32}),
        text=TextTowerConfig(pooling="mean", intermediate_size=100),
        low_dim=8,
        high_dim=8,
        head="nested",
    )
    again = HiVLPConfig.from_json(config.to_json())
    assert again == config
    assert again.image.mean == (0.1, 0.2, 0.3)
    assert isinstance(again.image.mean, tuple)
    assert dict(again.image.timm_kwargs) == {"img_size": 32}
    assert again.text.pooling == "mean"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "micro",
            {
                "image.image_size": 32,
                "image.timm_kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 1, "num_heads": 2},
                "text.name": None,
                "text.num_layers": 1,
                "text.hidden_size": 64,
                "text.max_length": 16,
                "low_dim": 16,
                "high_dim": 64,
            },
        ),
        # A small CNN, not a ViT: from scratch on CPU the ViT learned ~nothing in quickstart time
        # (docs/objective.md, "Why the tiny image tower is a CNN").
        (
            "tiny",
            {
                "image.name": "resnet10t",
                "image.timm_kwargs": {"channels": [32, 64, 128, 256]},
                "text.num_layers": 3,
                "text.hidden_size": 128,
                "text.num_heads": 4,
                "text.max_length": 32,
                "low_dim": 32,
                "high_dim": 256,
            },
        ),
        # base is only parsed here: building it would download weights.
        (
            "base",
            {
                "image.name": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
                "image.pretrained": True,
                "text.pretrained": True,
                "text.name": "bert-base-uncased",
                "low_dim": 128,
                "high_dim": 768,
                "image.image_size": 224,
                "text.max_length": 64,
                "head": "separate",
            },
        ),
    ],
)
def test_named_config_values(name, expected) -> None:
    assert name in list_configs()
    config = get_config(name)
    assert {key: operator.attrgetter(key)(config) for key in expected} == expected


def test_unknown_config_name_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown model config 'huge'") as info:
        get_config("huge")
    for name in ("micro", "tiny", "base"):
        assert name in str(info.value)


def test_defaults() -> None:
    config = HiVLPConfig()
    assert config.head == "separate"
    assert config.init_temperature == pytest.approx(0.07)
    assert config.max_logit_scale == 100
    assert config.text.pooling == "cls"


def test_frozen_and_hashable() -> None:
    config = get_config("micro")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.low_dim = 3
    with pytest.raises(TypeError):
        config.image.timm_kwargs["depth"] = 12
    assert hash(config) == hash(get_config("micro"))
    assert dataclasses.replace(config, low_dim=8).low_dim == 8
    with pytest.raises(ConfigError, match="low_dim must be > 0"):
        dataclasses.replace(config, low_dim=0)  # replace re-validates: no invalid copy can be made


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: HiVLPConfig(text={"max_length": 0}), r"text.max_length must be > 0, got 0"),
        (lambda: ImageTowerConfig(image_size="32"), r"image.image_size must be an integer"),
        (lambda: HiVLPConfig(colour="red"), r"unknown keys \['colour'\]"),
        (lambda: HiVLPConfig(low_dim=128, high_dim=64, head="nested"), r"low_dim \(128\) must be <= high_dim \(64\)"),
        (lambda: HiVLPConfig.from_json("{low_dim: 3"), "not valid JSON"),
        (lambda: HiVLPConfig.from_json("[1, 2]"), "must be a mapping of keys to values"),
    ],
)
def test_constructor_and_json_errors_are_config_errors_naming_the_key(build, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_yaml_exponent_strings_are_numbers() -> None:
    # YAML 1.1 reads 7e-2 as a string; it is the number the user meant, and only that form is coerced.
    assert HiVLPConfig(init_temperature="7e-2").init_temperature == pytest.approx(0.07)


# A checkpoint's config.json as written by the dataclass configs before they were pydantic
# (micro with the timm mean/std filled in by HiVLP): old checkpoints must keep loading.
OLD_CHECKPOINT_CONFIG = (
    '{"head": "separate", "high_dim": 64, "image": {"image_size": 32, "mean": [0.485, 0.456, 0.406], '
    '"name": "vit_tiny_patch16_224", "pretrained": false, "std": [0.229, 0.224, 0.225], "timm_kwargs": '
    '{"depth": 1, "embed_dim": 64, "img_size": 32, "num_heads": 2, "patch_size": 8}}, "init_temperature": 0.07, '
    '"low_dim": 16, "max_logit_scale": 100.0, "text": {"hidden_size": 64, "intermediate_size": 128, '
    '"max_length": 16, "name": null, "num_heads": 2, "num_layers": 1, "pooling": "mean", "pretrained": false, '
    '"vocab_size": 1000}}'
)


def test_existing_checkpoint_config_json_still_loads(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(OLD_CHECKPOINT_CONFIG)
    config = HiVLPConfig.load(path)
    assert config == dataclasses.replace(
        get_config("micro"),
        image=dataclasses.replace(get_config("micro").image, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    )
    assert json.loads(config.to_json()) == json.loads(OLD_CHECKPOINT_CONFIG)  # the same format is written back


def test_nested_dicts_accepted_by_constructor() -> None:
    config = HiVLPConfig(image={"image_size": 32}, text={"max_length": 8})
    assert isinstance(config.image, ImageTowerConfig)
    assert config.text.max_length == 8


def _with(path: tuple[str, ...], value: object) -> dict:
    """The micro config as a dict with the key at ``path`` (nested keys) set to ``value``."""
    data = get_config("micro").to_dict()
    functools.reduce(dict.__getitem__, path[:-1], data)[path[-1]] = value
    return data


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("colour",), 1, r"unknown keys \['colour'\]; known keys are \['image', 'text', 'low_dim'"),
        (("image", "resolution"), 1, r"unknown image keys \['resolution'\]; known keys are \['name'"),
        (("text", "layers"), 1, r"unknown text keys \['layers'\]; did you mean text.num_layers\?"),
        (("head",), "pyramid", "head must be 'separate' or 'nested', got 'pyramid'"),
        (("low_dim",), 0, "low_dim must be > 0, got 0"),
        (("low_dim",), -4, "low_dim must be > 0, got -4"),
        (("high_dim",), 0, "high_dim must be > 0"),
        (("high_dim",), 64.0, "high_dim must be an integer, got 64.0"),
        (("low_dim",), True, "low_dim must be an integer, got True"),
        (("low_dim",), "8", "low_dim must be an integer, got '8'"),
        (("image", "image_size"), 0, "image.image_size must be > 0"),
        (("text", "max_length"), 0, "text.max_length must be > 0"),
        (("text", "vocab_size"), -1, "text.vocab_size must be > 0"),
        (("text", "num_heads"), 3, "text: hidden_size=64 is not divisible by num_heads=3"),
        (("text", "pooling"), "max", "text.pooling must be 'cls' or 'mean', got 'max'"),
        (("text", "pretrained"), True, "text: pretrained is true but name is null"),
        (("image", "pretrained"), "yes", "image.pretrained must be true or false, got 'yes'"),
        (("image", "name"), "", "image.name must be a non-empty string"),
        (("image", "timm_kwargs"), [1], r"image.timm_kwargs must be a mapping of keys to values \(a JSON object\)"),
        (("image", "timm_kwargs"), {"img_size": 64}, "image: timm_kwargs.img_size=64 differs from image_size=32"),
        (("image", "mean"), [0.5, 0.5], r"image.mean\[2\] is required"),
        (("image", "mean"), [0.5, True, 0.5], r"image.mean\[1\]: must be a number, not true"),
        (("image", "std"), [0.5, 0.0, 0.5], r"image.std\[1\] must be > 0, got 0.0"),
        (("image",), "vit", "image must be a mapping of keys to values"),
        (("init_temperature",), 0, "init_temperature must be > 0"),
        (("init_temperature",), float("nan"), "init_temperature must be a finite number"),
        (("max_logit_scale",), -1, "max_logit_scale must be > 0"),
        (("init_temperature",), 0.001, "raise init_temperature or max_logit_scale"),
    ],
)
def test_invalid_config_raises_config_error(path, value, message) -> None:
    with pytest.raises(ConfigError, match=message):
        HiVLPConfig.from_dict(_with(path, value))


def test_low_dim_above_high_dim_needs_a_separate_head() -> None:
    HiVLPConfig(low_dim=64, high_dim=64, head="nested")  # equal is a valid (degenerate) prefix
    HiVLPConfig(low_dim=128, high_dim=64, head="separate")  # separate heads have no such constraint


def test_missing_and_invalid_files_are_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read HiVLP config"):
        HiVLPConfig.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"low_dim": 0}))
    with pytest.raises(ConfigError, match="bad.json"):
        HiVLPConfig.load(bad)


def test_partial_dict_takes_defaults() -> None:
    config = HiVLPConfig.from_dict({"low_dim": 8, "high_dim": 32, "text": {"max_length": 12}})
    assert config.text.max_length == 12
    assert config.text.pooling == "cls"
    assert config.image == ImageTowerConfig()
