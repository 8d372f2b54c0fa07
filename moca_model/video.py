"""Video inputs: frame folders, the MMEB-V2 reference's frame sampling, and Qwen2-VL video patch rows.

A video is a short list of frames (paths, encoded bytes or PIL images) in temporal order. It reaches the
model as a video (``pixel_values_videos`` / ``video_grid_thw`` and a ``<|video_pad|>`` run), never as
separate images, which is how Qwen2.5-VL was trained on video and what the VLM2Vec harness does
(``src/model/processor.py`` ``processor(videos=[frames])``).

Frame folders follow the reference (VLM2Vec ``src/utils/vision_utils/vision_utils.py``
``load_frames`` / ``sample_frames`` / ``process_video_frames``):

- frames are the ``.jpg`` / ``.jpeg`` / ``.png`` files of the folder (extension case-insensitive),
  natural-sorted (``frame_2`` before ``frame_10``);
- with ``n >= num_frames`` saved frames, ``np.linspace(0, n - 1, num_frames).astype(int)`` picks them
  (first and last included); with fewer, all saved frames are used as they are (``short_clips="as-saved"``,
  the reference at VLM2Vec 6e1e1d4). Later VLM2Vec ``main`` pads such clips by repeating the last frame
  (``short_clips="pad"``).

Patch rows follow the Qwen2-VL image processor's video path (the one VLM2Vec vendors) on Qwen2-VL and
Qwen2.5-VL: every frame is resized to the ``smart_resize`` size of the **first** frame (PIL bicubic,
per-frame pixel bounds), an odd frame count is padded by repeating the last frame (temporal patch 2), and
each row holds (channel, temporal, patch_h, patch_w) values. On Qwen3-VL they follow its stock video
processor (``Qwen3VLVideoProcessor``, which has no PIL variant): the size comes from its clip-level
``smart_resize`` with bounds = the per-frame bounds x the frame count (per-frame semantics, as here), frames
are resized by torch's uint8 bicubic antialiased kernel (what torchvision runs on CPU) and normalised with
the fused ``(v - 255 mean) / (255 std)``; its prompt gets a ``<t seconds>`` timestamp per temporal patch
(:func:`timestamps`).

Shapes: F frames, H x W resized frame, T = temporal patch (2), p = patch (14, or 16 on Qwen3-VL),
P = (F / T) * (H / p) * (W / p) rows of 3 * T * p * p values.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from moca_model.images import MIN_SIDE, MoCaInputError, fitted_size, image_key, open_image, to_rgb
from moca_model.patchify import _lookup_table, smart_resize

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")  # reference IMAGE_EXTENSIONS
DEFAULT_NUM_FRAMES = 8  # MMEB-V2 released configs (num_frames: 8); the VLM2Vec-V2 paper: "8 uniformly sampled frames"
DEFAULT_FPS = 24.0  # Qwen3VLProcessor's assumption when a clip's frame rate is unknown (it warns; we log once)
ShortClips = Literal["as-saved", "pad"]
SHORT_CLIP_RULES: tuple[str, ...] = ("as-saved", "pad")
_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value (``frame_2`` < ``frame_10``), letters case-insensitively."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(name)]


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """The frame files of a folder, natural-sorted; ``[]`` when the folder does not exist.

    Args:
        folder: a directory of extracted frames.

    Returns:
        Paths of its ``.jpg`` / ``.jpeg`` / ``.png`` files (sub-folders and other files ignored).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = [f for f in folder.iterdir() if f.suffix.lower() in FRAME_EXTENSIONS and f.is_file()]
    return sorted(files, key=lambda f: natural_key(f.name))


def sample_indices(n: int, num_frames: int) -> list[int]:
    """Indices of ``num_frames`` frames spread uniformly over ``n >= num_frames`` (first and last included)."""
    return np.linspace(0, n - 1, num_frames).astype(int).tolist()


def sample_frames(frames: Sequence, num_frames: int | None, *, short_clips: ShortClips = "as-saved") -> list:
    """Pick the frames a video is encoded with, as the reference does.

    Args:
        frames: all saved frames, in temporal order.
        num_frames: frames wanted; None keeps every frame (the reference's MomentSeeker clips).
        short_clips: with fewer saved frames than ``num_frames``: ``"as-saved"`` keeps them all (the
            reference at 6e1e1d4), ``"pad"`` repeats the last one up to ``num_frames`` (later VLM2Vec main).

    Returns:
        The chosen frames.

    Raises:
        ValueError: ``num_frames < 1`` or an unknown ``short_clips`` rule.
    """
    if short_clips not in SHORT_CLIP_RULES:
        raise ValueError(f"short_clips must be one of {SHORT_CLIP_RULES}, got {short_clips!r}")
    frames = list(frames)
    if num_frames is None:
        return frames
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if len(frames) >= num_frames:
        return [frames[i] for i in sample_indices(len(frames), num_frames)]
    if short_clips == "pad" and frames:
        return frames + [frames[-1]] * (num_frames - len(frames))
    return frames


@dataclass(frozen=True)
class Video:
    """A video as the frames it is encoded with (paths, encoded bytes or PIL images), in temporal order.

    ``source`` only names the video in messages (e.g. its frame folder). ``fps`` is the frame rate of
    ``frames`` (frame ``i`` is at ``i / fps`` seconds); only Qwen3-VL reads it, for its timestamps, and
    assumes :data:`DEFAULT_FPS` when it is None, as its stock processor does.
    """

    frames: tuple
    source: str = ""
    fps: float | None = None

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike,
        *,
        num_frames: int | None = DEFAULT_NUM_FRAMES,
        short_clips: ShortClips = "as-saved",
    ) -> Video:
        """The sampled frames of a frame folder (:func:`list_frames`, then :func:`sample_frames`).

        A missing or empty folder gives a video without frames, which the processor rejects with a
        message naming the folder.
        """
        frames = sample_frames(list_frames(folder), num_frames, short_clips=short_clips)
        return cls(tuple(str(f) for f in frames), source=str(folder))

    @classmethod
    def coerce(cls, source, *, num_frames: int | None = DEFAULT_NUM_FRAMES) -> Video:
        """A :class:`Video` from a frame folder (sampled, see :meth:`from_folder`), a list of frames (used as
        given) or a Video.

        Raises:
            TypeError: any other type.
        """  # noqa: D205
        if isinstance(source, Video):
            return source
        if isinstance(source, (str, os.PathLike)):
            return cls.from_folder(source, num_frames=num_frames)
        if isinstance(source, (list, tuple)):
            return cls(tuple(source))
        raise TypeError(f"'video' must be a frame folder, a list of frames or a Video, got {type(source).__name__}")

    def describe(self) -> str:
        """Short description for messages: the source folder, else the first frame."""
        if self.source:
            return self.source
        first = self.frames[0] if self.frames else None
        return str(first) if isinstance(first, (str, os.PathLike)) else f"{len(self.frames)} in-memory frames"


def video_key(video: Video, index: int = 0) -> str:
    """Content key of a video: its frames' content keys in order (not their paths or folder).

    Frames follow :func:`moca_model.images.image_key` (file bytes, or converted pixels for PIL frames), so
    two folders holding the same frames share a key and the same folder sampled differently does not.

    Raises:
        MoCaInputError: no frames, or a missing or unreadable frame (names item ``index``).
    """
    _check(video, index)
    key = image_key(video.frames, index)
    return key if video.fps is None else f"{key}@{float(video.fps)!r}"  # the timestamps change the prompt


def _check(video: Video, index: int) -> None:
    if not video.frames:
        raise MoCaInputError(f"item {index}: video has no frames: {video.describe()} "
                             "(expected a folder of .jpg/.jpeg/.png frames or a list of frames)")  # fmt: skip


def frame_sizes(video: Video, index: int, *, min_side: int = MIN_SIDE) -> list[tuple[int, int]]:
    """(height, width) of every frame after the size fixes, from headers only.

    Raises:
        MoCaInputError: no frames, or a missing or unreadable frame (the message names item ``index``).
    """
    _check(video, index)
    return [fitted_size(open_image(f, index), min_side=min_side) for f in video.frames]


def decode_frames(video: Video, index: int, *, min_side: int = MIN_SIDE) -> list[Image.Image]:
    """Every frame decoded to RGB with the size fixes of :func:`moca_model.images.to_rgb`.

    Raises:
        MoCaInputError: no frames, or a missing, unreadable or corrupt frame.
    """
    _check(video, index)
    return [to_rgb(open_image(f, index), index, min_side=min_side) for f in video.frames]


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
