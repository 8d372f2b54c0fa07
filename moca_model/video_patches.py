"""Video patch rows: the clip's patch grid, Qwen3-VL's clip sizing and timestamps, resize + normalise + cut.

Qwen2-VL / Qwen2.5-VL follow the Qwen2-VL image processor's video path (the one VLM2Vec vendors): every
frame is resized to the ``smart_resize`` size of the **first** frame (PIL bicubic, per-frame pixel bounds),
an odd frame count is padded by repeating the last frame (temporal patch 2), and each row holds
(channel, temporal, patch_h, patch_w) values. Qwen3-VL follows its stock video processor
(``Qwen3VLVideoProcessor``, which has no PIL variant): the size comes from its clip-level ``smart_resize``
with bounds = the per-frame bounds x the frame count (per-frame semantics, as for the others), frames are
resized by torch's uint8 bicubic antialiased kernel (what torchvision runs on CPU) and normalised with the
fused ``(v - 255 mean) / (255 std)``; its prompt gets a ``<t seconds>`` timestamp per temporal patch
(:func:`timestamps`). Frame selection and content keys are :mod:`moca_model.video`'s.

Shapes: F frames, H x W resized frame, T = temporal patch (2), p = patch (14, or 16 on Qwen3-VL),
P = (F / T) * (H / p) * (W / p) rows of 3 * T * p * p values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from moca_model.patchify import _lookup_table, smart_resize

DEFAULT_FPS = 24.0  # Qwen3VLProcessor's assumption when a clip's frame rate is unknown


def video_grid(
    height: int,
    width: int,
    n_frames: int,
    *,
    min_pixels: int,
    max_pixels: int,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    clip_sizing: bool = False,
) -> tuple[int, int, int]:
    """``(t, h, w)`` patch grid of a video whose first frame is ``height x width`` (after the size fixes).

    Args:
        height: first frame's height.
        width: first frame's width.
        n_frames: frames given (an odd count gets its last frame repeated).
        min_pixels: per-frame lower bound on the resized area.
        max_pixels: per-frame upper bound on the resized area.
        patch_size: ViT patch side.
        temporal_patch_size: frames per temporal patch.
        merge_size: patches merged per side.
        clip_sizing: Qwen3-VL's clip-level ``smart_resize`` (:func:`clip_resize`) instead of the per-frame one.
    """
    factor = patch_size * merge_size
    if clip_sizing:
        frames = max(n_frames, temporal_patch_size)
        h, w = clip_resize(frames, height, width, factor=factor, temporal_factor=temporal_patch_size,
                           min_pixels=min_pixels * frames, max_pixels=max_pixels * frames)  # fmt: skip
    else:
        h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return -(-n_frames // temporal_patch_size), h // patch_size, w // patch_size


def clip_resize(
    n_frames: int, height: int, width: int, *, factor: int, temporal_factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen3-VL's video ``smart_resize``: bounds on frames x height x width (transformers'
    ``video_processing_qwen3_vl.smart_resize``, step for step, so grids are the stock processor's).

    Returns:
        (resized_height, resized_width), multiples of ``factor``.
    """  # noqa: D205
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(n_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((n_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (n_frames * height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def timestamps(n_frames: int, *, fps: float | None, temporal_patch_size: int = 2) -> list[float]:
    """Seconds of each temporal patch as Qwen3-VL renders them: the mean of its first and last frame's time.

    Frame ``i`` is at ``i / fps`` (``fps`` None: :data:`DEFAULT_FPS`); an odd last group repeats its frame.
    """
    fps = DEFAULT_FPS if fps is None else fps
    idx = list(range(n_frames)) + [n_frames - 1] * (-n_frames % temporal_patch_size)
    step = temporal_patch_size
    return [(idx[i] / fps + idx[i + step - 1] / fps) / 2 for i in range(0, len(idx), step)]


def patchify_video(
    frames: Sequence[Image.Image],
    *,
    min_pixels: int,
    max_pixels: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    clip_sizing: bool = False,
    resize: str = "pil",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize, normalise and cut RGB frames into video patch rows.

    Args:
        frames: F >= 1 RGB PIL images; all are resized to the first frame's target size.
        min_pixels: per-frame lower bound on the resized area.
        max_pixels: per-frame upper bound on the resized area.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
        patch_size: ViT patch side.
        temporal_patch_size: frames per patch; an odd last group repeats the last frame.
        merge_size: patches merged per side into one LLM token.
        clip_sizing: size as Qwen3-VL's video processor does (see :func:`video_grid`).
        resize: ``pil`` (the Qwen2-VL image processor's video path: PIL bicubic, rescale then normalise)
            or ``torch`` (Qwen3-VL's video processor: torch uint8 bicubic with antialias, fused normalisation).

    Returns:
        ``pixel_values_videos`` (P, 3 * T * patch²) float32 and ``video_grid_thw`` (1, 3) long.
    """
    if not frames:
        raise ValueError("a video needs at least one frame")
    geometry = {"patch_size": patch_size, "temporal_patch_size": temporal_patch_size, "merge_size": merge_size}
    _, gh, gw = video_grid(frames[0].height, frames[0].width, len(frames), min_pixels=min_pixels,
                           max_pixels=max_pixels, clip_sizing=clip_sizing, **geometry)  # fmt: skip
    h, w = gh * patch_size, gw * patch_size
    if resize == "torch":
        pixels = list(_torch_resize(frames, h, w))
    else:
        pixels = [np.asarray(f.resize((w, h), Image.Resampling.BICUBIC)) for f in frames]  # F x (H, W, 3) uint8
    pixels += [pixels[-1]] * (-len(pixels) % temporal_patch_size)
    m, p, t = merge_size, patch_size, temporal_patch_size
    gt = len(pixels) // t
    u8 = torch.from_numpy(np.stack(pixels)).view(gt, t, gh // m, m, p, gw // m, m, p, 3)
    u8 = u8.permute(0, 2, 5, 3, 6, 8, 1, 4, 7).reshape(gt * gh * gw, 3, t * p * p)  # (P, C, T*p*p): bytes, not floats
    index = u8.long() + torch.arange(3).mul_(256).view(1, 3, 1)
    values = torch.take(_lookup_table(tuple(mean), tuple(std), fused=resize == "torch"), index)  # (P, C, T*p*p)
    return values.reshape(gt * gh * gw, -1), torch.tensor([[gt, gh, gw]], dtype=torch.long)


def _torch_resize(frames: Sequence[Image.Image], h: int, w: int) -> np.ndarray:
    """(F, H, W, 3) uint8: torch's uint8 bicubic antialiased resize, which torchvision's ``resize`` runs on CPU."""
    x = torch.from_numpy(np.stack([np.asarray(f) for f in frames])).permute(0, 3, 1, 2)  # (F, 3, H0, W0) uint8
    if tuple(x.shape[-2:]) != (h, w):  # torchvision returns the input unchanged at the same size
        x = torch.nn.functional.interpolate(x.contiguous(), size=(h, w), mode="bicubic", antialias=True,
                                            align_corners=False)  # fmt: skip
    return x.permute(0, 2, 3, 1).contiguous().numpy()
