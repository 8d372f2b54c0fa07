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

Patch rows (resize, normalise, cut, per backbone) are :mod:`moca_model.video_patches`'; its names are
re-exported here.

Shapes: F frames.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from moca_model.images import MIN_SIDE, MoCaInputError, fitted_size, image_key, open_image, to_rgb
from moca_model.video_patches import DEFAULT_FPS, clip_resize, patchify_video, timestamps, video_grid

__all__ = ["DEFAULT_FPS", "Video", "clip_resize", "decode_frames", "frame_sizes", "list_frames", "patchify_video",
           "sample_frames", "timestamps", "video_grid", "video_key"]  # fmt: skip

logger = logging.getLogger(__name__)

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")  # reference IMAGE_EXTENSIONS
DEFAULT_NUM_FRAMES = 8  # MMEB-V2 released configs (num_frames: 8); the VLM2Vec-V2 paper: "8 uniformly sampled frames"
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

    A frame whose pixels cannot be decoded (a truncated or corrupt file whose header reads) is dropped with a
    warning and the video keeps its other frames, as the MMEB-V2 reference's image processor does
    (VLM2Vec ``image_processing_qwen2_vl.py``: "MVBench: OSError: image file is truncated").

    Raises:
        MoCaInputError: no frames, a missing or unreadable frame (its header), or no frame that decodes.
    """
    _check(video, index)
    frames, damaged = [], []
    for f in video.frames:
        image = open_image(f, index)
        try:
            frames.append(to_rgb(image, index, min_side=min_side))
        except MoCaInputError as exc:
            damaged.append(f"{f if isinstance(f, (str, os.PathLike)) else 'a frame'} ({exc})")
    if damaged:
        if not frames:
            raise MoCaInputError(f"item {index}: no frame of video {video.describe()} decodes: {damaged[0]}")
        logger.warning("item %d: dropped %d damaged frame(s) of video %s, kept %d: %s", index, len(damaged),
                       video.describe(), len(frames), "; ".join(damaged))  # fmt: skip
    return frames
