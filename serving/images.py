"""What the ingress checks before anything reaches a deployment: request sizes and query images.

* :class:`BodyLimit` — ASGI middleware answering 413 for a body above the limit, before or while
  it streams in (nothing large is buffered);
* :func:`decode_base64_image` / :func:`check_image_bytes` — a JSON or uploaded image -> bytes that
  an encoder batch can decode (400 bad base64, 413 too large, 415 not an image);
* :func:`thumbnail` — the re-encoded thumbnail ``GET /media/{id}`` serves.

Errors are :class:`~serving.http_errors.ApiError`, answered as JSON by the ingress.
"""

# No `from __future__ import annotations`: the module sits under the Serve ingress, as ingress.py.

import base64
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from hivlp_milvus.errors import BadRecordError
from serving.encoders import ImageTooLargeError, check_image_header
from serving.http_errors import ApiError

THUMBNAIL_SIDE = 256
# The same rule as serving.schemas.BASE64_PATTERN (the OpenAPI document's), in three steps.
_DATA_URL = re.compile(r"^[ \t\r\n]*data:[A-Za-z0-9_.+/-]*;base64,", re.IGNORECASE)
_ASCII_SPACE = re.compile(r"[ \t\r\n]+")
_CANONICAL_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


class ImageLimits(Protocol):
    """The image limits of a deployment (``serving.ingress.IngressSettings`` has them)."""

    max_image_bytes: int
    max_image_pixels: int


def decode_base64_image(data: str, limits: ImageLimits) -> bytes:
    """A base64 (or ``data:...;base64,``) image -> bytes, with size and header checks.

    Args:
        data: the base64 text of a request's ``image`` field.
        limits: the largest image accepted, in bytes and in pixels.

    Returns:
        The image's encoded bytes.

    Raises:
        ApiError: 400 not base64; 413 too many bytes or pixels; 415 not a decodable image.
    """
    text = _ASCII_SPACE.sub("", _DATA_URL.sub("", data, count=1))
    # Check the size before decoding: 4 base64 chars carry 3 bytes.
    if len(text) * 3 // 4 > limits.max_image_bytes + 3:
        raise ApiError(
            413,
            "image_too_large",
            f"the image has about {len(text) * 3 // 4} bytes; the limit is {limits.max_image_bytes}",
        )
    if not _CANONICAL_BASE64.fullmatch(text):
        # Python's decoder also takes padding past the end ("aGk=="); the schema's pattern does not.
        raise ApiError(
            400,
            "invalid_base64",
            "'image' is not valid base64: use A-Z a-z 0-9 + / with '=' padding only at the end, as much as "
            "needed (white space and a data:...;base64, prefix are allowed)",
        )
    return check_image_bytes(base64.b64decode(text), limits)


def check_image_bytes(raw: bytes, limits: ImageLimits) -> bytes:
    """Refuse empty, oversized or undecodable images before they reach an encoder batch.

    Raises:
        ApiError: 413 too many bytes or pixels; 415 not a decodable image.
    """
    if len(raw) > limits.max_image_bytes:
        raise ApiError(413, "image_too_large", f"the image has {len(raw)} bytes; the limit is {limits.max_image_bytes}")
    try:
        check_image_header(raw, limits.max_image_pixels)
    except ImageTooLargeError as exc:
        raise ApiError(413, "image_too_large", str(exc)) from exc
    except BadRecordError as exc:
        raise ApiError(415, "undecodable_image", f"{exc}; send a JPEG, PNG, GIF, BMP, TIFF or WebP image") from exc
    return raw


def thumbnail(path: Path) -> tuple[bytes, str]:
    """A PNG/JPEG thumbnail of an image file (re-encoded, so only real images are ever served)."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at reduced size
        img = ImageOps.exif_transpose(img)
        img.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        # Transparent pixels composited on white as the model sees them (convert("RGB") alone
        # turns an emoji's transparent background black). Imported here: it brings torch.
        from hivlp_milvus.model.preprocess import load_image

        img = load_image(img)
        out = io.BytesIO()
        if img.width * img.height <= 128 * 128:
            img.save(out, format="PNG")  # synthetic scenes: crisp edges, small either way
            return out.getvalue(), "image/png"
        img.save(out, format="JPEG", quality=85)
        return out.getvalue(), "image/jpeg"


class BodyLimit:
    """ASGI middleware: refuse bodies above ``limit()`` bytes with 413.

    A declared Content-Length is checked before anything is read; a chunked body is counted as it
    streams and the request fails as soon as it passes the limit (nothing large is buffered).

    Args:
        app: the ASGI app behind the middleware.
        limit: returns the current limit (read per request: the ingress sets it when its replica starts).
    """

    def __init__(self, app: Any, limit: Callable[[], int]) -> None:
        self.app = app
        self._limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit()
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = _too_large(int(declared), limit).response()
            await response(scope, receive, send)
            return
        received = 0
        exceeded = False

        # Raising inside receive() would reach FastAPI's body parser, which turns any error into a
        # 400 "error parsing the body". Instead the app sees the client go away, nothing it sends
        # is passed on, and the 413 is answered here.
        async def limited_receive() -> dict[str, Any]:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await _too_large(received, limit).response()(scope, receive, send)


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"the request body has {size} bytes or more; the limit is {limit} bytes")
