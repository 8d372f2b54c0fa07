"""Qwen2-VL image preprocessing, value-for-value the same as the PIL image processor, ~4x faster.

The upstream PIL processor (``Qwen2VLImageProcessor`` on 4.x, ``Qwen2VLImageProcessorPil`` on 5.x)
spends most of its time in a 9-axis numpy transpose that tiles each image over the temporal axis.
On a GPU that makes preprocessing, not the model, the bottleneck of page encoding. This module does
the same steps in the same order and dtypes (bicubic PIL resize to the ``smart_resize`` grid;
rescale by 1/255 in float64 then float32; CLIP normalisation in float32; patch rows laid out as
(channel, temporal, patch_h, patch_w)), but permutes the uint8 pixels (4x fewer bytes than floats)
and maps each byte through a 3 x 256 lookup table holding exactly those float results.
``tests/moca_model/test_patchify.py`` checks equality with the upstream processor on both
transformers lines.

Shapes: H, W resized image; P = (H / 14) * (W / 14) patch rows of C * T * 14 * 14 = 1176 values.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image


def smart_resize(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize target: sides divisible by ``factor``, area within bounds, aspect kept.

    Args:
        height: original height (aspect ratio must be <= 200; see moca_model.images).
        width: original width.
        factor: patch size x merge size (28).
        min_pixels: lower bound on the resized area.
        max_pixels: upper bound on the resized area.

    Returns:
        (resized_height, resized_width).
    """
    h, w = max(factor, round(height / factor) * factor), max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify(
    image: Image.Image,
    *,
    min_pixels: int,
    max_pixels: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize, normalise and cut one RGB image into Qwen2-VL patch rows.

    Args:
        image: an RGB PIL image.
        min_pixels: lower bound on the resized area.
        max_pixels: upper bound on the resized area.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        patch_size: ViT patch side.
        temporal_patch_size: frames per patch (a still image is repeated).
        merge_size: patches merged per side into one LLM token.

    Returns:
        ``pixel_values`` (P, 3 * T * patch²) float32 and ``image_grid_thw`` (1, 3) long.
    """
    factor = patch_size * merge_size
    h, w = smart_resize(image.height, image.width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    resized = np.asarray(image.resize((w, h), Image.Resampling.BICUBIC))  # (H, W, 3) uint8
    gh, gw, m, p = h // patch_size, w // patch_size, merge_size, patch_size
    u8 = torch.from_numpy(resized.copy()).view(gh // m, m, p, gw // m, m, p, 3)  # (h', m, p, w', m, p, C)
    u8 = u8.permute(0, 3, 1, 4, 6, 2, 5).reshape(gh * gw, 3, p * p)  # (P, C, p*p): move bytes, not floats
    index = u8.long() + torch.arange(3).mul_(256).view(1, 3, 1)  # channel c, value v -> c * 256 + v
    values = torch.take(_lookup_table(mean, std), index)  # (P, C, p*p) float32
    rows = values.unsqueeze(2).expand(-1, -1, temporal_patch_size, -1)  # (P, C, T, p*p)
    return rows.reshape(gh * gw, 3 * temporal_patch_size * p * p), torch.tensor([[1, gh, gw]], dtype=torch.long)


@functools.lru_cache(maxsize=8)
def _lookup_table(mean: tuple[float, ...], std: tuple[float, ...], fused: bool = False) -> torch.Tensor:
    """(3 * 256,) float32: every uint8 value of every channel through the processor's exact arithmetic.

    PIL processors: rescale in float64 then cast to float32, normalisation in float32. ``fused``: the
    torchvision processors' ``(v - mean / rescale) / (std / rescale)`` in float32 (Qwen3-VL's video path).
    """
    if fused:
        scale = 1.0 / (1 / 255)  # transformers: mean * (1.0 / rescale_factor)
        m = torch.tensor(mean, dtype=torch.float32) * scale
        s = torch.tensor(std, dtype=torch.float32) * scale
        v = torch.arange(256, dtype=torch.float32)[None, :]  # (1, 256)
        return ((v - m[:, None]) / s[:, None]).reshape(-1)
    values = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)[None, :]  # (1, 256)
    table = (values - np.asarray(mean, dtype=np.float32)[:, None]) / np.asarray(std, dtype=np.float32)[:, None]
    return torch.from_numpy(table.astype(np.float32).reshape(-1))
