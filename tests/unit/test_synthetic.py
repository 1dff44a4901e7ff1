"""The synthetic generator: deterministic, varied, captions that match the pictures, splits on disk."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from PIL import Image

from hivlp_milvus.data import load_source, synthetic
from hivlp_milvus.data.synthetic import COLORS, POSITIONS, Scene, SceneObject, describe, render_scene


def _contents(records) -> list[tuple]:
    """Everything a record holds, its image as RGB pixel bytes (read from the file for a path)."""
    images = [Image.open(r.image) if isinstance(r.image, str) else r.image for r in records]
    return [
        (r.id, r.captions, r.group, r.attributes, np.asarray(im.convert("RGB")).tobytes())
        for r, im in zip(records, images, strict=True)
    ]


def test_same_seed_same_data_and_prefix_stable():
    a = synthetic.generate(12, seed=3)
    assert _contents(a) == _contents(synthetic.generate(20, seed=3)[:12])
    c = synthetic.generate(12, seed=4)
    assert [r.captions for r in c] != [r.captions for r in a]


def test_records_shape_and_variety():
    records = synthetic.generate(300, seed=0, image_size=48, captions_per_image=4, id_prefix="t")
    assert records[0].id.startswith("t-")
    assert len({r.id for r in records}) == 300
    for r in records:
        assert r.image.size == (48, 48)
        assert r.image.mode == "RGB"
        assert len(r.captions) == 4
        assert len(set(r.captions)) == 4
        assert r.attributes["n_objects"] == len(r.attributes["colors"]) == len(r.attributes["shapes"])
    seen = lambda key: {v for r in records for v in r.attributes[key]}  # noqa: E731
    assert seen("colors") == set(COLORS)
    assert seen("shapes") == set(synthetic.SHAPES)
    assert seen("positions") == set(POSITIONS)
    assert {r.attributes["n_objects"] for r in records} == {1, 2, 3}
    assert len({r.attributes["background"] for r in records}) == 15
    words = {w for r in records for c in r.captions for w in re.findall(r"[a-z-]+", c)}
    assert {"above", "below", "left", "right", "striped", "violet", "rhombus"} <= words


def test_group_is_content_signature():
    records = synthetic.generate(400, seed=1)
    by_group: dict[str, list] = {}
    for r in records:
        by_group.setdefault(r.group, []).append(r)
    for group, members in by_group.items():
        # Same group <=> same captioned content (attributes are derived from content only).
        assert len({json.dumps(m.attributes, sort_keys=True) for m in members}) == 1, group
    assert len({json.dumps(r.attributes, sort_keys=True) for r in records}) == len(by_group)


def _scene(*objects: tuple[str, str, str, int], pattern: str = "plain", background: str = "grey") -> Scene:
    objs = tuple(SceneObject(shape=s, color=c, size=z, cell=cell, rgb=COLORS[c]) for s, c, z, cell in objects)
    return Scene(objects=objs, pattern=pattern, background=background)


# Written out here, independently of the generator's phrase tables.
_PLACE_WORDS = {
    0: (("top", "upper"), ("left",)),
    4: (("center", "middle"),),
    5: (("right",),),
    6: (("bottom", "lower"), ("left",)),
}
_SHAPE_WORDS = {"circle": ("circle", "disc"), "diamond": ("diamond", "rhombus"), "cross": ("cross", "plus")}


@pytest.mark.parametrize("shape", [s for s in synthetic.SHAPES if s != "ring"])
@pytest.mark.parametrize("cell", [0, 4, 5, 6])
def test_object_is_drawn_where_the_caption_says(shape, cell):
    scene = _scene((shape, "red", "large", cell), pattern="striped")
    pixels = np.asarray(render_scene(scene, 64), dtype=np.int16)
    row, col = divmod(cell, 3)
    centre = pixels[int((row + 0.5) * 64 / 3), int((col + 0.5) * 64 / 3)]
    assert np.abs(centre - np.array(COLORS["red"])).max() < 20
    other = pixels[int((2 - row + 0.5) * 64 / 3), int((2 - col + 0.5) * 64 / 3)] if cell != 4 else pixels[3, 3]
    assert np.abs(other - np.array(COLORS["red"])).max() > 60  # the opposite cell is background
    for caption in describe(scene, random.Random(cell), 5):
        words = set(re.findall(r"[a-z]+", caption))
        for alternatives in _PLACE_WORDS[cell] + (
            _SHAPE_WORDS.get(shape, (shape,)),
            ("red",),
            ("large", "big", "huge"),
        ):
            assert words & set(alternatives), (caption, alternatives)


def test_ring_is_hollow_and_circle_is_not():
    ring = np.asarray(render_scene(_scene(("ring", "blue", "large", 4)), 64), dtype=np.int16)
    disc = np.asarray(render_scene(_scene(("circle", "blue", "large", 4)), 64), dtype=np.int16)
    blue = np.array(COLORS["blue"])
    assert np.abs(disc[32, 32] - blue).max() < 20
    assert np.abs(ring[32, 32] - blue).max() > 60


def test_relations_follow_the_grid():
    # Red circle top-middle, blue star bottom-middle: the red one is above the blue one.
    scene = _scene(("circle", "red", "small", 1), ("star", "blue", "large", 7))
    above, below = ("above", "over"), ("below", "under", "beneath")
    checked = 0
    for seed in range(40):
        for caption in describe(scene, random.Random(seed), 5):
            words = caption.split()
            rel = [w for w in words if w in above + below]
            if not rel:
                continue
            red_first = words.index("red") < words.index("blue")  # words: "colored" contains "red"
            assert (rel[0] in above) == red_first, caption
            checked += 1
    assert checked > 20


def test_background_and_size_match_the_picture():
    small = _scene(("square", "yellow", "small", 4), background="black")
    large = _scene(("square", "yellow", "large", 4), background="black")
    yellow = np.array(COLORS["yellow"])
    count = lambda s: int((np.abs(np.asarray(render_scene(s, 64), np.int16) - yellow).max(-1) < 30).sum())  # noqa: E731
    assert count(large) > 2.5 * count(small)
    corner = np.asarray(render_scene(small, 64), np.int16)[0, 0]
    assert np.abs(corner - np.array(synthetic.BACKGROUND_COLORS["black"])).max() < 10


@pytest.mark.parametrize("arguments", [{"n": -1}, {"n": 2, "captions_per_image": 0}, {"n": 2, "image_size": 7}])
def test_invalid_arguments(arguments):
    with pytest.raises(ValueError, match="need n >= 0"):
        synthetic.generate(**arguments)


def test_write_splits_round_trip(tmp_path):
    manifests = synthetic.write_splits(tmp_path, {"train": 6, "test": 4}, seed=7, progress=False)
    assert set(manifests) == {"train", "test"}
    rows = [json.loads(line) for line in manifests["test"].read_text().splitlines()]
    assert len(rows) == 4
    assert set(rows[0]) == {"id", "image", "captions", "group", "attributes"}
    assert not rows[0]["image"].startswith("/")
    assert (tmp_path / "test" / rows[0]["image"]).is_file()
    train_ids = {json.loads(line)["id"] for line in manifests["train"].read_text().splitlines()}
    assert not train_ids & {r["id"] for r in rows}
    assert json.loads((tmp_path / "dataset.json").read_text())["seed"] == 7

    source = load_source(tmp_path, split="test")
    records = list(source)
    assert source.report.read == 4
    assert not source.report.skipped
    expected = synthetic.generate(4, seed=synthetic.split_seed(7, "test"), id_prefix="syn-test")
    assert _contents(records) == _contents(expected)  # PNG is lossless: the exact generated pixels
    assert [r.id for r in load_source(tmp_path / "train")] == sorted(train_ids)
