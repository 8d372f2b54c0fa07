"""Image loading and the size fixes Qwen's resize needs, with errors that name the offending item.

- Sources: a ``PIL.Image.Image``, a path (``str`` / ``os.PathLike``) or raw encoded ``bytes``.
- Every mode is converted to RGB. 16-bit and float modes (``I;16``, ``I``, ``F``) are rescaled to
  8 bits from their actual value range first, because PIL's plain ``convert`` clips them to white.
  Alpha is dropped by ``convert("RGB")``, as the reference pipeline does.
- Sides under 28 px are stretched to 28 px (the reference does the same, moca-method.md §1.4).
- Qwen's ``smart_resize`` rejects aspect ratios over 200: such images are padded with white on the
  short side up to ratio 200 (content is kept; a warning names the item).
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

MIN_SIDE = 28  # one merged visual token covers 28 x 28 px (2 x 2 patches of 14 px)
MAX_ASPECT = 200  # Qwen2-VL smart_resize raises above this ratio


class MoCaInputError(ValueError):
    """An input item that cannot be encoded; the message names the item's index."""


def open_image(source, index: int) -> Image.Image:
    """Open an image source lazily (header only) so its size is known without decoding.

    Args:
        source: PIL image, path or encoded bytes.
        index: position of the item in the caller's list (for the error message).

    Returns:
        A PIL image (not yet decoded for paths and bytes).

    Raises:
        MoCaInputError: missing file, unreadable or unrecognised data, unsupported type.
    """
    if isinstance(source, Image.Image):
        return source
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            return Image.open(io.BytesIO(bytes(source)))
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise MoCaInputError(f"item {index}: image file not found: {str(path)!r}")
            return Image.open(path)
    except MoCaInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MoCaInputError(f"item {index}: cannot read image ({type(exc).__name__}: {exc})") from exc
    raise MoCaInputError(f"item {index}: unsupported image type {type(source).__name__}; use PIL, path or bytes")


def to_rgb(image: Image.Image, index: int) -> Image.Image:
    """Decode and convert to 8-bit RGB, then apply the small-side and aspect-ratio fixes.

    Args:
        image: an opened PIL image.
        index: item index for messages.

    Returns:
        An RGB image whose sides are >= 28 px and whose aspect ratio is <= 200.

    Raises:
        MoCaInputError: truncated or corrupt data.
    """
    try:
        image.load()
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(image, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            image = Image.fromarray(arr.round().astype(np.uint8))
        rgb = image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise MoCaInputError(f"item {index}: corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
    return fit_for_qwen(rgb, index)


def _target_sizes(w: int, h: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((w, h) after stretching small sides, (w, h) after padding to the aspect limit).

    One rule for :func:`fit_for_qwen` and :func:`fitted_size`, so length estimates match what is encoded.
    """
    w, h = max(w, MIN_SIDE), max(h, MIN_SIDE)
    if max(w, h) / min(w, h) <= MAX_ASPECT:
        return (w, h), (w, h)
    return (w, h), ((w, -(-w // MAX_ASPECT)) if w > h else (-(-h // MAX_ASPECT), h))


def fit_for_qwen(image: Image.Image, index: int) -> Image.Image:
    """Stretch sides under 28 px to 28 px; pad extreme aspect ratios to 200 with white."""
    (w, h), (new_w, new_h) = _target_sizes(*image.size)
    if (w, h) != image.size:
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    if (new_w, new_h) != (w, h):
        logger.warning(
            "item %d: aspect ratio %dx%d exceeds %d; padding to %dx%d", index, w, h, MAX_ASPECT, new_w, new_h
        )
        canvas = Image.new("RGB", (new_w, new_h), (255, 255, 255))
        canvas.paste(image, ((new_w - w) // 2, (new_h - h) // 2))
        image = canvas
    return image


def fitted_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) that :func:`fit_for_qwen` will produce, from the header size only."""
    _, (w, h) = _target_sizes(*image.size)
    return h, w
