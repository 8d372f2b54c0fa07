"""Image loading and the size fixes Qwen's resize needs, with errors that name the offending item.

- Sources: a ``PIL.Image.Image``, a path (``str`` / ``os.PathLike``) or raw encoded ``bytes``.
- The EXIF orientation tag is applied (the image is turned upright), as ``datasets`` does when it
  decodes the images of every mteb and vidore-benchmark task; so an undecoded dataset image (bytes)
  gives the same pixels as the decoded one the harness would hand over.
- Every mode is converted to RGB. 16-bit and float modes (``I;16``, ``I``, ``F``) are rescaled to
  8 bits from their actual value range first, because PIL's plain ``convert`` clips them to white.
  Alpha is dropped by ``convert("RGB")``, as the reference pipeline does; a palette image takes its
  colours from its palette.
- Sides under one merged visual token (28 px; 32 px on Qwen3-VL: ``min_side``) are stretched to it (the
  reference does the same at 28 px, moca-method.md §1.4).
- Qwen's ``smart_resize`` rejects aspect ratios over 200: such images are padded with white on the
  short side up to ratio 200 (content is kept; a warning names the item).

Content keys (:func:`image_key`) identify an image by what the model will see, for de-duplication and
embedding caches. The rule: encoded bytes (a path's file content, or ``bytes``) fully determine the
pixels, because decoding, EXIF orientation and RGB conversion are deterministic; so they are hashed as
they are, which is cheap (no decoding). A ``PIL.Image`` is hashed after the conversion above (EXIF
orientation + RGB), because its raw buffer can omit what changes the pixels (a palette, the
orientation tag). A path and the bytes of the same file share a key; a PIL image never shares one
with them (allowed: it only costs one more forward pass).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

MIN_SIDE = 28  # one merged visual token covers 28 x 28 px (2 x 2 patches of 14 px)
MAX_ASPECT = 200  # Qwen2-VL smart_resize raises above this ratio
EXIF_ORIENTATION = 0x0112  # EXIF tag; values 5..8 swap width and height
_KEY_BYTES = 16  # blake2b digest size of a content key (128 bits)
_READ_CHUNK = 1 << 20


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


def to_rgb(image: Image.Image, index: int, *, min_side: int = MIN_SIDE) -> Image.Image:
    """Decode, turn upright (EXIF) and convert to 8-bit RGB, then apply the small-side and aspect fixes.

    Args:
        image: an opened PIL image.
        index: item index for messages.
        min_side: shorter sides are stretched to this (the backbone's pixels per merged token).

    Returns:
        An RGB image whose sides are >= ``min_side`` px and whose aspect ratio is <= 200.

    Raises:
        MoCaInputError: truncated or corrupt data.
    """
    return fit_for_qwen(upright_rgb(image, index), index, min_side=min_side)


def upright_rgb(image: Image.Image, index: int) -> Image.Image:
    """Decode, apply the EXIF orientation and convert to 8-bit RGB (no resizing): the pixels a key hashes.

    Raises:
        MoCaInputError: truncated or corrupt data.
    """
    try:
        image.load()
        if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
            image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(image, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            image = Image.fromarray(arr.round().astype(np.uint8))
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise MoCaInputError(f"item {index}: corrupt or truncated image ({type(exc).__name__}: {exc})") from exc


def image_key(source, index: int = 0) -> str:
    """Content key of one image source: equal keys mean equal pixels after :func:`upright_rgb`.

    Args:
        source: a path, encoded ``bytes`` or a ``PIL.Image.Image``; a sequence of these (e.g. the
            frames of a video) is keyed by its members' keys in order.
        index: item index for messages.

    Returns:
        A hex digest prefixed by its kind (``f:`` file content, ``p:`` pixels, ``s:`` sequence).

    Raises:
        MoCaInputError: missing file or unsupported type.
    """
    digest = hashlib.blake2b(digest_size=_KEY_BYTES)
    if isinstance(source, (bytes, bytearray, memoryview)):
        digest.update(source)
        return "f:" + digest.hexdigest()
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise MoCaInputError(f"item {index}: image file not found: {str(source)!r}")
        try:
            with open(source, "rb") as f:
                while chunk := f.read(_READ_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise MoCaInputError(f"item {index}: cannot read image ({type(exc).__name__}: {exc})") from exc
        return "f:" + digest.hexdigest()
    if isinstance(source, Image.Image):
        rgb = upright_rgb(source, index)
        digest.update(f"{rgb.width}x{rgb.height}".encode())
        digest.update(rgb.tobytes())
        return "p:" + digest.hexdigest()
    if isinstance(source, Sequence) and not isinstance(source, str):
        for member in source:
            digest.update(image_key(member, index).encode())
        return "s:" + digest.hexdigest()
    raise MoCaInputError(f"item {index}: unsupported image type {type(source).__name__}; use PIL, path or bytes")


def _target_sizes(w: int, h: int, min_side: int = MIN_SIDE) -> tuple[tuple[int, int], tuple[int, int]]:
    """((w, h) after stretching small sides, (w, h) after padding to the aspect limit).

    One rule for :func:`fit_for_qwen` and :func:`fitted_size`, so length estimates match what is encoded.
    """
    w, h = max(w, min_side), max(h, min_side)
    if max(w, h) / min(w, h) <= MAX_ASPECT:
        return (w, h), (w, h)
    return (w, h), ((w, -(-w // MAX_ASPECT)) if w > h else (-(-h // MAX_ASPECT), h))


def fit_for_qwen(image: Image.Image, index: int, *, min_side: int = MIN_SIDE) -> Image.Image:
    """Stretch sides under ``min_side`` px to it; pad extreme aspect ratios to 200 with white."""
    (w, h), (new_w, new_h) = _target_sizes(*image.size, min_side)
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


def fitted_size(image: Image.Image, *, min_side: int = MIN_SIDE) -> tuple[int, int]:
    """(height, width) that :func:`to_rgb` will produce, from the header only (size and EXIF orientation)."""
    w, h = image.size
    if _orientation(image) in (5, 6, 7, 8):  # a quarter turn swaps the sides
        w, h = h, w
    _, (w, h) = _target_sizes(w, h, min_side)
    return h, w


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except (OSError, ValueError, SyntaxError, TypeError):  # unreadable EXIF: decoding will report it
        return 1
