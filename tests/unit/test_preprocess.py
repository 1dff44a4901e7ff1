"""load_image and ImageProcessor: every accepted input form, and BadRecordError for bad ones."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hivlp_milvus.errors import BadRecordError
from hivlp_milvus.model import ImageProcessor, load_image

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.5)


def _png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _solid(colour: tuple[int, int, int], size: tuple[int, int] = (20, 10)) -> Image.Image:
    return Image.new("RGB", size, colour)


def test_load_image_accepts_every_form(tmp_path) -> None:
    img = _solid((10, 200, 30))
    path = tmp_path / "x.png"
    img.save(path)
    array = np.asarray(img)
    for form in (img, path, str(path), array, _png_bytes(img), bytearray(_png_bytes(img))):
        out = load_image(form)
        assert out.mode == "RGB"
        assert out.size == (20, 10)
        assert np.array_equal(np.asarray(out), array)


def test_load_image_converts_modes_to_rgb() -> None:
    rgba = Image.new("RGBA", (4, 4), (1, 2, 3, 128))
    assert load_image(rgba).mode == "RGB"
    grey = np.full((5, 6), 77, dtype=np.uint8)
    out = load_image(grey)
    assert out.mode == "RGB"
    assert np.asarray(out)[0, 0].tolist() == [77, 77, 77]
    assert load_image(np.zeros((5, 6, 1), dtype=np.uint8)).size == (6, 5)
    assert load_image(np.zeros((5, 6, 4), dtype=np.uint8)).mode == "RGB"


def _palette_with_transparent_index() -> Image.Image:
    """A palette PNG laid out like the emoji sets': index 0 transparent black, 1 red, 2 half-transparent blue."""
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0, 0, 0] * 253)
    img.putpixel((1, 1), 1)
    img.putpixel((2, 2), 2)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", transparency=bytes([0, 255, 128]))  # per-index alpha: "in bytes"
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_load_image_composites_palette_transparency_without_warning() -> None:
    png = _palette_with_transparent_index()
    assert png.mode == "P"
    assert isinstance(png.info.get("transparency"), bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's "Palette images with Transparency" warning fails here
        out = np.asarray(load_image(png))
        out_grey = np.asarray(load_image(png, background=(10, 20, 30)))
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent -> the white background, not black
    assert out[1, 1].tolist() == [255, 0, 0]  # opaque pixels keep their colour
    assert out[2, 2].tolist() == [127, 127, 255]  # half-transparent blue over white
    assert out_grey[0, 0].tolist() == [10, 20, 30]


def test_load_image_blends_rgba_and_la_alpha_over_the_background() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # transparent black, as emoji PNGs store it
    rgba[0, 0] = (0, 0, 255, 255)
    rgba[0, 1] = (0, 0, 0, 128)
    out = np.asarray(load_image(rgba)).astype(int)
    assert out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [0, 0, 255]
    assert all(abs(v - 127) <= 1 for v in out[0, 1])  # half-transparent black over white: grey
    la = Image.new("LA", (2, 2), (0, 0))
    assert np.asarray(load_image(la, background=(0, 255, 0)))[0, 0].tolist() == [0, 255, 0]
    opaque = Image.new("RGBA", (2, 2), (5, 6, 7, 255))
    assert np.asarray(load_image(opaque))[0, 0].tolist() == [5, 6, 7]


def test_load_image_applies_exif_orientation() -> None:
    img = _solid((255, 0, 0), size=(30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", exif=exif.tobytes())
    assert load_image(buffer.getvalue()).size == (10, 30)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"\x89PNG\r\n\x1a\n this is not a png", "cannot decode image bytes"),
        (b"", "image bytes are empty"),
        (np.zeros((4, 4, 3), dtype=np.float32), "must be uint8"),
        (np.zeros((4, 4, 2), dtype=np.uint8), "got shape"),
        (np.zeros((4,), dtype=np.uint8), "got shape"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "empty"),
        (12345, "unsupported image type int"),
        (None, "unsupported image type NoneType"),
        # Files, made in the test's directory:
        (lambda tmp: tmp / "nope.jpg", "image file not found"),
        (lambda tmp: str(tmp), "image file not found"),  # a directory is not an image file
        (lambda tmp: _write(tmp / "corrupt.png", b"garbage" * 10), "cannot decode image file"),
        (
            lambda tmp: _write(
                tmp / "truncated.png", _png_bytes(Image.new("RGB", (64, 64), (9, 9, 9)).effect_spread(3))[:80]
            ),
            "cannot decode image file",
        ),
    ],
)
def test_load_image_rejects_bad_input(bad, reason, tmp_path) -> None:
    with pytest.raises(BadRecordError, match=reason):
        load_image(bad(tmp_path) if callable(bad) else bad)


def test_processor_normalises_exactly() -> None:
    processor = ImageProcessor(8, MEAN, STD)
    out = processor([_solid((255, 51, 0))])
    assert out.shape == (1, 3, 8, 8)
    assert out.dtype == torch.float32
    expected = [(1.0 - 0.5) / 0.2, (0.2 - 0.4) / 0.25, (0.0 - 0.3) / 0.5]
    for channel, value in enumerate(expected):
        assert torch.allclose(out[0, channel], torch.full((8, 8), value), atol=1e-5)


def test_processor_center_crops_shorter_side_without_flipping() -> None:
    # A wide image whose middle third is green: after resizing the height to 16 and cropping the
    # middle 16 columns only green is left (the border columns may blend under bicubic resampling).
    wide = np.zeros((30, 90, 3), dtype=np.uint8)
    wide[:, 30:60] = (0, 255, 0)
    out = ImageProcessor(16, (0, 0, 0), (1, 1, 1))(wide)
    assert out.shape == (1, 3, 16, 16)
    inner = out[0, :, :, 2:-2]
    assert torch.allclose(inner[1], torch.ones_like(inner[1]), atol=0.02)
    assert inner[0].abs().max() < 0.02

    # Left half red, right half blue: left must stay left (no random or fixed flip).
    split = np.zeros((20, 20, 3), dtype=np.uint8)
    split[:, :10] = (255, 0, 0)
    split[:, 10:] = (0, 0, 255)
    px = ImageProcessor(10, (0, 0, 0), (1, 1, 1))(split)[0]
    assert px[0, :, 0].min() > 0.9
    assert px[2, :, 0].max() < 0.1
    assert px[2, :, -1].min() > 0.9
    assert px[0, :, -1].max() < 0.1


def test_processor_batches_mixed_inputs(tmp_path) -> None:
    img = _solid((1, 2, 3), size=(40, 30))
    path = tmp_path / "a.png"
    img.save(path)
    processor = ImageProcessor(12, MEAN, STD)
    batch = processor([img, path, np.asarray(img), _png_bytes(img)])
    assert batch.shape == (4, 3, 12, 12)
    for row in batch[1:]:
        assert torch.equal(row, batch[0])
    assert processor(img).shape == (1, 3, 12, 12)
    assert processor(_png_bytes(img)).shape == (1, 3, 12, 12)
    assert processor(np.zeros((5, 20, 20, 3), dtype=np.uint8)).shape == (5, 3, 12, 12)
    assert processor([]).shape == (0, 3, 12, 12)


def test_processor_raises_bad_record_for_one_bad_item() -> None:
    processor = ImageProcessor(12, MEAN, STD)
    with pytest.raises(BadRecordError):
        processor([_solid((1, 2, 3)), b"not an image"])


def test_processor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="image_size"):
        ImageProcessor(0, MEAN, STD)
    with pytest.raises(ValueError, match="three values"):
        ImageProcessor(8, (0.5,), STD)
