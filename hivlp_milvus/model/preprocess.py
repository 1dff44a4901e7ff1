"""Images in any form users have them (path, PIL, array, bytes) → normalised float tensors."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from hivlp_milvus.errors import BadRecordError

ImageLike = Any  # str | Path | PIL.Image.Image | np.ndarray (HWC uint8) | bytes

_DECODE_ERRORS = (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError, SyntaxError)
# Transparent pixels are composited on this colour (emoji sets are drawn for light backgrounds too).
BACKGROUND = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def load_image(image: ImageLike, *, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Decode one image into an RGB PIL image.

    Images with transparency (RGBA, LA, palette or grey images with a transparent colour, e.g. the
    emoji PNGs) are composited over ``background`` before the conversion to RGB: dropping the
    alpha channel would show whatever colour the transparent pixels happen to store (often
    black), so the same drawing would look different from one file to the next.

    Args:
        image: a file path (``str`` / ``Path``), a PIL image, an ``(H, W)`` or ``(H, W, C)`` uint8
            array with C in 1, 3, 4 (4 = RGBA), or encoded bytes (JPEG, PNG, ...).
        background: the RGB colour transparent pixels are composited on (white by default).

    Returns:
        A fully decoded RGB image (EXIF orientation applied, transparency flattened).

    Raises:
        BadRecordError: the file is missing, the bytes cannot be decoded, the array has the wrong
            dtype or shape, the image is empty, or the type is not supported. Ingest catches it for
            this one record and goes on.
    """
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise BadRecordError(f"image file not found: {path}")
        img = _decode(path, f"image file {path}")
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise BadRecordError("image bytes are empty")
        img = _decode(io.BytesIO(data), f"image bytes ({len(data)} bytes)")
    elif isinstance(image, np.ndarray):
        img = _from_array(image)
    else:
        raise BadRecordError(
            f"unsupported image type {type(image).__name__}; pass a path, PIL image, HWC uint8 array or bytes"
        )
    if img.width == 0 or img.height == 0:
        raise BadRecordError(f"image is empty ({img.width}x{img.height})")
    # Palette (and L / RGB) images carry a transparent colour in info["transparency"], not a band.
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        # convert("RGBA") is the conversion PIL asks for ("Palette images with Transparency expressed
        # in bytes should be converted to RGBA images"); it honours every form of transparency.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _decode(source: Path | io.BytesIO, what: str) -> Image.Image:
    """Decode a file or an in-memory file; ``what`` names it in the error."""
    try:
        with Image.open(source) as opened:
            # load() inside the context: decode now (so a truncated file fails here, inside the
            # per-record try of ingest) and do not keep a file handle open per image.
            opened.load()
            # Phone photos store their rotation in EXIF; without this "left" and "right" in the
            # captions would not match the pixels.
            return ImageOps.exif_transpose(opened)
    except _DECODE_ERRORS as exc:
        raise BadRecordError(f"cannot decode {what}: {exc}") from exc


def _from_array(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise BadRecordError(f"image array must be uint8 (HWC, 0-255), got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise BadRecordError(f"image array must be HxW or HxWxC with C in (1, 3, 4), got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise BadRecordError(f"image array is empty (shape {array.shape})")
    return Image.fromarray(np.ascontiguousarray(array))


class ImageProcessor:
    """Resize the shorter side, center-crop, normalise: PIL/path/array/bytes → ``(N, 3, S, S)`` float.

    No random flips or crops here: captions say "left of" / "right of", and evaluation must see
    exactly what ingest sees. Training augmentation, if any, belongs to the training loop.

    Args:
        image_size: side ``S`` of the square output.
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel std divided by after subtracting the mean.
        interpolation: PIL resampling filter for the resize (bicubic, as timm's ViTs were trained).

    Raises:
        ValueError: ``image_size`` is not positive or mean/std do not have three entries.
    """

    def __init__(
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: Image.Resampling = Image.Resampling.BICUBIC,
    ) -> None:
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need three values (RGB), got {mean!r} and {std!r}")
        self.image_size = int(image_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.interpolation = interpolation

    def __repr__(self) -> str:
        return f"ImageProcessor(image_size={self.image_size}, mean={self.mean}, std={self.std})"

    def process(self, image: ImageLike) -> torch.Tensor:
        """One image → ``(3, S, S)`` float32 tensor.

        Raises:
            BadRecordError: the image cannot be loaded (see :func:`load_image`).
        """
        img = load_image(image)
        size = self.image_size
        scale = size / min(img.width, img.height)
        # max(size, ...) guards the rounding so the crop box never exceeds the resized image.
        new_w = max(size, round(img.width * scale))
        new_h = max(size, round(img.height * scale))
        if (new_w, new_h) != img.size:
            img = img.resize((new_w, new_h), resample=self.interpolation)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        pixels = np.asarray(img, dtype=np.float32) / 255.0
        pixels = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """A batch of images (or one image) → ``(N, 3, S, S)`` float32 tensor.

        Args:
            images: one image or a sequence of images in any form :func:`load_image` accepts; a
                4-D ``(N, H, W, C)`` uint8 array is a batch.

        Returns:
            The stacked, normalised batch (``N = 0`` gives an empty ``(0, 3, S, S)`` tensor).

        Raises:
            BadRecordError: one of the images cannot be loaded.
        """
        batch = as_image_list(images)
        if not batch:
            return torch.empty(0, 3, self.image_size, self.image_size)
        return torch.stack([self.process(image) for image in batch])


def is_single_image(images: Any) -> bool:
    """Whether ``images`` is one image rather than several (a 4-D ``(N, H, W, C)`` array is several)."""
    # bytes and str are sequences too, so single images are recognised by type.
    if isinstance(images, np.ndarray):
        return images.ndim != 4
    return isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image))


def as_image_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or many → a list of images."""
    return [images] if is_single_image(images) else list(images)
