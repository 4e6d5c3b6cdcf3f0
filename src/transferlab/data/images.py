"""Image files, bytes and PIL images to 8-bit RGB: the one decoder of training, predict, export and serve.

EXIF rotation is applied; grey, 16-bit, palette, RGBA and CMYK are converted (transparency
onto white). The content decides the format, not the extension. Images with more than
:func:`max_pixels` pixels are refused before any pixel is decoded.

This module imports torch only inside :func:`to_tensor`, so that ``export.onnx_predict``
and the command line's start stay free of it.
"""

from __future__ import annotations

import errno
import io
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import TransferlabError, first_line

if TYPE_CHECKING:
    import torch

__all__ = ["MAX_PIXELS_ENV", "DEFAULT_MAX_PIXELS", "MAX_ASPECT", "READABLE_FORMATS", "ImageError", "ImageSource",
           "max_pixels", "open_header", "to_rgb", "load_rgb", "to_tensor"]

MAX_PIXELS_ENV = "TRANSFERLAB_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit (about 9,459 x 9,459)
# The formats a user is told we read when a file is none of them (datasets.IMAGE_EXTENSIONS has them all).
READABLE_FORMATS = "JPEG, PNG, WebP, GIF, BMP, TIFF, ..."

ImageSource = str | Path | bytes | Image.Image


class ImageError(TransferlabError):
    """An image that cannot be used. ``kind``: empty, unreadable, not_image, too_large or damaged."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# The most elongated image accepted: resizing the shorter side of a 300000x1 strip to 256 px would need
# ~230 GB, so the decoded size is bounded by the resize, not only by the source's pixel count.
MAX_ASPECT = 50


def max_pixels() -> int:
    """The pixel limit: ``$TRANSFERLAB_MAX_PIXELS``, read at each call, else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise TransferlabError(f"{MAX_PIXELS_ENV}={value}: expected a positive whole number of pixels; "
                               "fix or unset it")
    return limit


_HEADER_LOCK = threading.Lock()


def open_header(source: Path | bytes) -> Image.Image:
    """``Image.open`` (reads the header only) with Pillow's own bomb check off: :func:`load_rgb` applies
    the limit itself, so no Pillow warning line precedes its error. The lock keeps decoding threads
    from racing on Pillow's global."""
    with _HEADER_LOCK:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _convert(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float grey
        array = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if array.max() > 255 else 255.0
        img = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """A decoded PIL image as 8-bit RGB, upright (EXIF rotation applied), transparency onto white."""
    return _convert(ImageOps.exif_transpose(img))


def _unusable(name: str, exc: BaseException, advice: str) -> ImageError:
    """One line for an image that cannot be used: what is wrong, then the fix."""
    if isinstance(exc, UnidentifiedImageError):
        return ImageError(f"{name}: not an image we can read ({READABLE_FORMATS}), whatever its extension says; "
                          f"{advice}", "not_image")
    if isinstance(exc, OSError) and exc.strerror:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return ImageError(f"{name}: cannot read ({exc.strerror}); fix its permissions or remove it", "unreadable")
        return ImageError(f"{name}: cannot read ({exc.strerror}); {advice}", "unreadable")
    first = first_line(exc, 200, default="")
    reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return ImageError(f"{name}: cannot decode ({reason}); the file is truncated or damaged; {advice}", "damaged")


def _check_shape(name: str, width: int, height: int, limit: int, too_large: str, advice: str) -> None:
    """Refuse, before decoding, an image over the pixel limit or so elongated that resizing it would not fit."""
    if width * height > limit:
        raise ImageError(f"{name}: {width}x{height} = {width * height} pixels is over the limit of "
                         f"{limit}; {too_large}", "too_large")
    if max(width, height) > MAX_ASPECT * min(width, height):  # resized, its long side would be enormous
        raise ImageError(f"{name}: {width}x{height} pixels, longer than {MAX_ASPECT}:1; no classifier reads "
                         f"such a strip: crop it, or {advice}", "too_large")


def load_rgb(source: ImageSource, limit: int | None = None, name: str | None = None,
             reduce_to: int | None = None) -> Image.Image:
    """Decode a file, bytes or PIL image fully as 8-bit RGB, or raise a one-line :class:`ImageError`.

    ``limit``: the most pixels accepted (default :func:`max_pixels`); a 1x1 image is fine.
    ``name`` names the image in messages (default: its path, or "the image").
    ``reduce_to``: shrink an image whose shorter side is over twice that many pixels while
    decoding (JPEG decodes at a reduced scale; others are reduced right after), so a large
    upload costs little memory; the result is no longer pixel-identical to a full decode.
    """
    limit = max_pixels() if limit is None else limit
    if isinstance(source, Image.Image):
        _check_shape(name or "the image", *source.size, limit, "pass a smaller image", "pass another image")
        return to_rgb(source)
    if isinstance(source, bytes):
        name, advice, size = name or "the image", "send another image", len(source)
        too_large = "send a smaller image"
    else:
        source = Path(source)
        name, advice = name or str(source), "remove or replace the file"
        too_large = f"refusing a possible decompression bomb (if the image is genuine, raise {MAX_PIXELS_ENV})"
    try:
        if not isinstance(source, bytes):
            size = source.stat().st_size
        if size == 0:
            raise ImageError(f"{name}: empty file (0 bytes); {advice}", "empty")
        with open_header(source) as img:
            width, height = img.size
            _check_shape(name, width, height, limit, too_large, advice)
            if reduce_to and min(width, height) > 2 * reduce_to:
                img.draft("RGB", (2 * reduce_to, 2 * reduce_to))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
            img.load()  # Pillow is lazy: decode everything here, so truncated data fails inside this try
            if reduce_to and min(img.size) > 2 * reduce_to:
                img = img.reduce(min(img.size) // (2 * reduce_to))
            return to_rgb(img)
    except TransferlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, ValueError, SyntaxError, struct.error...
        raise _unusable(name, exc, advice) from None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> uint8 CHW tensor."""
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
