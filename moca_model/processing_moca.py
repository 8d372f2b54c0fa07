"""MoCa's input conventions: items -> token ids + Qwen2-VL patch rows, and batch collation.

Conventions (moca-method.md §2): no chat template, no system prompt, no EOS; an image is written as
``<|vision_start|><|image_pad|><|vision_end|>`` and comes before the text unless the text places it;
Phi-3-V placeholders (``<|image_1|>``, used by MMEB data) are rewritten to Qwen's. Images are resized
by Qwen's ``smart_resize`` to between ``min_pixels`` and ``max_pixels`` (MoCa: 256..1024 visual tokens).
A video (:mod:`moca_model.video`) is written as ``<|vision_start|><|video_pad|><|vision_end|>`` and goes
to the model as ``pixel_values_videos`` / ``video_grid_thw``; its frames have their own pixel bounds.

Works without torchvision: it uses the tokenizer and :mod:`moca_model.patchify` (value-for-value the
PIL Qwen2-VL image processor, whose config it keeps) instead of ``Qwen2_5_VLProcessor``, which needs a
video processor, hence torchvision.

Shapes: T tokens, P patch rows (1176 values each), I images, V videos.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from moca_model import backbones, moca_config
from moca_model.backbones import DEFAULT_BACKBONE
from moca_model.compat import pil_image_processor_class, split_video_grids
from moca_model.console import did_you_mean
from moca_model.images import MoCaInputError, fitted_size, image_key, open_image, to_rgb
from moca_model.patchify import patchify, smart_resize
from moca_model.truncation import truncate
from moca_model.video import (
    DEFAULT_NUM_FRAMES,
    Video,
    decode_frames,
    frame_sizes,
    patchify_video,
    timestamps,
    video_grid,
    video_key,
)

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
_PHI3_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
# Pixel bounds are areas in pixels, as in Qwen's processors; their defaults are MoCa's token counts times
# the backbone's pixels per merged token (28² on Qwen2-VL / Qwen2.5-VL, 32² on Qwen3-VL).
DEFAULT_MIN_TOKENS = 256  # reference: --min_patch_size 256
DEFAULT_MAX_TOKENS = 1024  # reference: --max_patch_size 1024
# Per-frame bounds for videos. MoCa was never trained on video, so these are a setting, not a reproduction:
# qwen-vl-utils' VIDEO_MIN_PIXELS (128 tokens) and 256 tokens per frame at most, so 8 frames (4 temporal
# patches) stay within 1,024 visual tokens and fit MoCa's 1,280-token length with the text.
DEFAULT_VIDEO_MIN_TOKENS = 128
DEFAULT_VIDEO_MAX_TOKENS = 256
TOKENS_PER_SIDE = 28  # Qwen2.5-VL's pixels per merged visual token side: patch 14 x merge 2
DEFAULT_MIN_PIXELS = DEFAULT_MIN_TOKENS * TOKENS_PER_SIDE**2  # Qwen2.5-VL values (the released models)
DEFAULT_MAX_PIXELS = DEFAULT_MAX_TOKENS * TOKENS_PER_SIDE**2
DEFAULT_MAX_LENGTH = 1280  # reference scripts: MAX_LEN=1280 (after image expansion)
DEFAULT_VIDEO_MIN_PIXELS = DEFAULT_VIDEO_MIN_TOKENS * TOKENS_PER_SIDE**2
DEFAULT_VIDEO_MAX_PIXELS = DEFAULT_VIDEO_MAX_TOKENS * TOKENS_PER_SIDE**2
MOCA_CONFIG_FILE = moca_config.FILE  # optional per-checkpoint processing defaults (and attention mode)


@dataclass(frozen=True)
class Item:
    """A normalised input: text with one placeholder per image and per video, and their sources in order."""

    text: str
    images: tuple = ()
    videos: tuple[Video, ...] = ()


@dataclass
class Encoded:
    """One processed item: ``input_ids`` (T,) list, ``pixel_values`` (P, 1176), ``image_grid_thw`` (I, 3),
    ``pixel_values_videos`` (P_v, 1176), ``video_grid_thw`` (V, 3)."""  # noqa: D205, D209

    input_ids: list[int]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None


ITEM_KEYS = ("text", "image", "images", "video", "num_frames")
"""The keys an item mapping may have (README "Input items"); any other key is an error, never ignored."""
_SOURCE_TYPES = (str, bytes, bytearray, memoryview, os.PathLike, Image.Image)


def normalize_item(item, index: int) -> Item:
    """Turn a user item into an :class:`Item` (the one input contract: README "Input items").

    Args:
        item: ``str`` (text); a PIL image; or a mapping with the keys of :data:`ITEM_KEYS`:

            - ``text``: a string (may place the images with ``<|vision_start|><|image_pad|><|vision_end|>``;
              without placeholders the images come first, then the text);
            - ``image``: one image (path, encoded bytes or PIL image) or a list of them;
            - ``images``: a list of images (or one), for interleaved input; ``"image": [a, b]`` and
              ``"images": [a, b]`` mean the same; with both, ``image`` comes first;
            - ``video``: a frame folder (sampled as :meth:`moca_model.video.Video.from_folder` does,
              ``num_frames`` from the mapping, default 8), a list of frames (used as given) or a
              :class:`~moca_model.video.Video`.
        index: position in the caller's list, for error messages.

    Returns:
        The normalised item.

    Raises:
        MoCaInputError: unsupported type, an unknown key (named, with the allowed ones), or placeholder
            count != image (video) count.
    """
    videos: list[Video] = []
    if isinstance(item, str):
        text, images = item, []
    elif isinstance(item, Image.Image):
        text, images = "", [item]
    elif isinstance(item, Mapping):
        unknown = [k for k in item if k not in ITEM_KEYS]
        if unknown:
            hint = did_you_mean(str(unknown[0]), ITEM_KEYS)
            raise MoCaInputError(
                f"item {index}: unknown key {unknown[0]!r}{f' ({hint})' if hint else ''}; "
                f"an item's keys are {', '.join(ITEM_KEYS)}"
            )
        text = item.get("text") or ""
        if not isinstance(text, str):
            raise MoCaInputError(f"item {index}: 'text' must be a string, got {type(text).__name__}")
        images = _sources(item.get("image"), "image", index) + _sources(item.get("images"), "images", index)
        if item.get("video") is not None:
            try:
                videos.append(Video.coerce(item["video"], num_frames=item.get("num_frames", DEFAULT_NUM_FRAMES)))
            except TypeError as exc:
                raise MoCaInputError(f"item {index}: {exc}") from exc
    else:
        raise MoCaInputError(f"item {index}: unsupported type {type(item).__name__}; use str, PIL image or dict")
    text = _PHI3_PLACEHOLDER.sub(IMAGE_PLACEHOLDER, text)
    text = _place(text, IMAGE_PLACEHOLDER, len(images), "image", index)
    text = _place(text, VIDEO_PLACEHOLDER, len(videos), "video", index)
    return Item(text=text, images=tuple(images), videos=tuple(videos))


def _sources(value, key: str, index: int) -> list:
    """``image`` / ``images`` as a list of sources: None -> [], one source -> [it], a list -> itself."""
    if value is None:
        return []
    if isinstance(value, _SOURCE_TYPES):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise MoCaInputError(
        f"item {index}: {key!r} must be an image (path, bytes or PIL image) or a list of them, "
        f"got {type(value).__name__}"
    )


def _place(text: str, placeholder: str, n: int, kind: str, index: int) -> str:
    """Put ``n`` placeholders first when the text has none; drop stray ones; reject a mismatch."""
    found = text.count(placeholder)
    if n and found == 0:
        return placeholder * n + text
    if not n and found:
        logger.warning("item %d: text has %d %s placeholder(s) but no %s; removed", index, found, kind, kind)
        return text.replace(placeholder, "")
    if found != n:
        raise MoCaInputError(f"item {index}: {found} {kind} placeholders for {n} {kind}s")
    return text


def item_key(item: Item, index: int = 0) -> str:
    """Content key of a normalised item: its exact text, each image's content key and each video's frames.

    Two items share a key only when the model would read the same tokens and the same pixels
    (:func:`moca_model.images.image_key` states the rule; a video is keyed by its frames, in order).

    Raises:
        MoCaInputError: an image or frame that cannot be read or has an unsupported type; names ``index``.
    """
    text = item.text.encode("utf-8")
    digest = hashlib.blake2b(len(text).to_bytes(8, "little") + text, digest_size=16)
    for src in item.images:
        digest.update(image_key(src, index).encode())  # fixed-length keys: no separator needed
    for video in item.videos:
        digest.update(b"v" + video_key(video, index).encode())
    return digest.hexdigest()


class MoCaProcessor:
    """Tokenizer + PIL Qwen2-VL image processor with MoCa's conventions and safe truncation, per backbone.

    Args:
        tokenizer: the checkpoint's tokenizer.
        backbone: ``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl`` (:mod:`moca_model.backbones`): decides the
            default geometry and normalisation, the pixel bounds' defaults and how videos are written.
        min_pixels: per-image lower bound on the resized area, in pixels (default 256 visual tokens:
            256 x 28² on Qwen2/2.5-VL, 256 x 32² on Qwen3-VL).
        max_pixels: per-image upper bound (default 1,024 visual tokens).
        max_length: token limit after image expansion.
        video_min_pixels: per-frame lower bound for videos (default 128 tokens).
        video_max_pixels: per-frame upper bound for videos (default 256 tokens).
        image_processor_kwargs: a ``preprocessor_config.json``'s fields; its patch geometry and
            normalisation override the backbone's defaults.
    """

    def __init__(
        self,
        tokenizer,
        *,
        backbone: str = DEFAULT_BACKBONE,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_length: int | None = DEFAULT_MAX_LENGTH,  # 0 or None: no truncation
        video_min_pixels: int | None = None,
        video_max_pixels: int | None = None,
        image_processor_kwargs: Mapping | None = None,
    ):
        self.spec = spec = backbones.get(backbone)
        self.backbone = spec.name
        min_pixels = spec.pixels(DEFAULT_MIN_TOKENS) if min_pixels is None else min_pixels
        max_pixels = spec.pixels(DEFAULT_MAX_TOKENS) if max_pixels is None else max_pixels
        video_min_pixels = spec.pixels(DEFAULT_VIDEO_MIN_TOKENS) if video_min_pixels is None else video_min_pixels
        video_max_pixels = spec.pixels(DEFAULT_VIDEO_MAX_TOKENS) if video_max_pixels is None else video_max_pixels
        for lo, hi, name in ((min_pixels, max_pixels, ""), (video_min_pixels, video_max_pixels, "video_")):
            if lo > hi:
                raise ValueError(f"{name}min_pixels ({lo}) must be <= {name}max_pixels ({hi})")
        self.tokenizer = tokenizer
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.max_length = max_length or None  # 0 or None: no limit
        self.video_min_pixels, self.video_max_pixels = video_min_pixels, video_max_pixels
        kwargs = {"patch_size": spec.patch_size, "temporal_patch_size": spec.temporal_patch_size,
                  "merge_size": spec.merge_size, "image_mean": list(spec.image_mean), "image_std": list(spec.image_std)}
        kwargs.update({k: v for k, v in (image_processor_kwargs or {}).items() if k in kwargs})  # fmt: skip
        self.image_processor = pil_image_processor_class()(min_pixels=min_pixels, max_pixels=max_pixels, **kwargs)
        self.factor = self.image_processor.patch_size * self.image_processor.merge_size
        vocab = tokenizer.convert_tokens_to_ids
        self.image_token_id, self.video_token_id = vocab("<|image_pad|>"), vocab("<|video_pad|>")
        self.vision_start_id, self.vision_end_id = vocab("<|vision_start|>"), vocab("<|vision_end|>")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab("<|endoftext|>")

    @classmethod
    def from_pretrained(cls, path: str | Path, *, backbone: str | None = None, **overrides) -> MoCaProcessor:
        """Load the tokenizer and image-processor settings from a local directory.

        Processing defaults come, in order of precedence, from ``overrides`` (``None`` values are
        ignored), ``moca_config.json`` in ``path`` (its processing keys only; ``attention`` is the
        loader's), then MoCa's paper values in the backbone's units. The checkpoint's own
        ``min_pixels``/``max_pixels`` are deliberately NOT used: released checkpoints ship Qwen's
        (4..16384 tokens), while MoCa trained and evaluated at 256..1024 tokens. ``backbone`` defaults to
        the folder's (:func:`moca_model.moca_config.backbone`).
        """
        from transformers import AutoTokenizer

        path = Path(path)
        backbone = backbone or moca_config.backbone(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "right"
        settings = {"max_length": DEFAULT_MAX_LENGTH, **moca_config.processing_settings(path)}
        settings.update({k: v for k, v in overrides.items() if v is not None})
        ip_file = path / "preprocessor_config.json"
        ip_kwargs = json.loads(ip_file.read_text()) if ip_file.is_file() else {}
        return cls(tokenizer, backbone=backbone, image_processor_kwargs=ip_kwargs, **settings)

    def save_pretrained(self, path: str | Path) -> None:
        """Write tokenizer, image-processor config and the processing keys of ``moca_config.json`` to ``path``.

        Other keys of an existing ``moca_config.json`` (the model's ``attention``) are kept.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        moca_config.update(path, min_pixels=self.min_pixels, max_pixels=self.max_pixels, max_length=self.max_length,
                           video_min_pixels=self.video_min_pixels, video_max_pixels=self.video_max_pixels,
                           backbone=self.backbone)

    def _patchify(self, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        ip = self.image_processor
        return patchify(
            image,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            mean=tuple(ip.image_mean),
            std=tuple(ip.image_std),
            patch_size=ip.patch_size,
            temporal_patch_size=ip.temporal_patch_size,
            merge_size=ip.merge_size,
        )

    def num_image_tokens(self, height: int, width: int) -> int:
        """Merged visual tokens for an image of this size (Qwen2-VL ``smart_resize``, then / factor²)."""
        h, w = smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return (h // self.factor) * (w // self.factor)

    def fitted_size(self, source, index: int) -> tuple[int, int]:
        """(height, width) of an image source after the size fixes, from its header only."""
        return fitted_size(open_image(source, index), min_side=self.factor)

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _video_kwargs(self) -> dict:
        ip = self.image_processor
        return {"min_pixels": self.video_min_pixels, "max_pixels": self.video_max_pixels,
                "patch_size": ip.patch_size, "temporal_patch_size": ip.temporal_patch_size, "merge_size": ip.merge_size,
                "clip_sizing": self.spec.video_timestamps}  # fmt: skip

    def video_grid(self, video: Video, index: int) -> tuple[int, int, int]:
        """``(t, h, w)`` patch grid of a video, from its frames' headers (every frame is opened, none decoded).

        Raises:
            MoCaInputError: no frames, or a missing or unreadable frame.
        """
        sizes = frame_sizes(video, index, min_side=self.factor)
        return video_grid(*sizes[0], len(sizes), **self._video_kwargs())

    def num_video_tokens(self, video: Video, index: int) -> int:
        """Merged visual tokens of a video (its ``<|video_pad|>`` tokens), from its frames' headers."""
        t, h, w = self.video_grid(video, index)
        return t * h * w // self.image_processor.merge_size**2

    def _render_videos(self, text: str, videos: Sequence[Video], grids: Sequence[Sequence[int]]) -> str:
        """Qwen3-VL's video prompt: each placeholder becomes, per temporal patch, ``<t seconds>`` and one run.

        As ``Qwen3VLProcessor`` renders ``<|vision_start|><|video_pad|><|vision_end|>`` on transformers 4.57
        (5.x renders the same from a bare ``<|video_pad|>``; from the triple it keeps an extra outer pair).
        """
        parts = text.split(VIDEO_PLACEHOLDER)  # normalize_item put exactly one placeholder per video
        out = parts[0]
        for part, video, (t, _, _) in zip(parts[1:], videos, grids):
            stamps = timestamps(len(video.frames), fps=video.fps, temporal_patch_size=self.spec.temporal_patch_size)
            out += "".join(f"<{stamp:.1f} seconds>{VIDEO_PLACEHOLDER}" for stamp in stamps[:t]) + part
        return out

    def _video_runs(self, grids: torch.Tensor) -> torch.Tensor:
        """(R, 3) grids of the video token runs in the prompt: one per video, or one per temporal patch (Qwen3-VL)."""
        return split_video_grids(grids) if self.spec.video_timestamps else grids

    def estimate_length(self, item: Item, index: int) -> int:
        """Token count after image and video expansion, from headers only (no pixel decoding)."""
        grids = [self.video_grid(v, index) for v in item.videos]
        text = self._render_videos(item.text, item.videos, grids) if self.spec.video_timestamps else item.text
        runs = sum(t for t, _, _ in grids) if self.spec.video_timestamps else len(grids)
        n = len(self._tokenize(text)) - len(item.images) - runs
        n += sum(self.num_image_tokens(*self.fitted_size(src, index)) for src in item.images)
        n += sum(t * h * w for t, h, w in grids) // self.image_processor.merge_size**2
        return max(n, 1)

    def process(self, item: Item, index: int) -> Encoded:
        """Tokenize, load and patchify images, expand placeholders, truncate safely.

        Raises:
            MoCaInputError: unreadable image, or truncation would remove every image of the item.
        """
        if not item.images and not item.videos:
            ids = self._tokenize(item.text)
            if not ids:
                logger.warning("item %d: empty text; encoded as a single space", index)
                return Encoded(input_ids=self._tokenize(" "))
            return Encoded(input_ids=ids[: self.max_length] if self.max_length else ids)
        enc = Encoded([])
        text = item.text
        if item.images:
            patches = [self._patchify(to_rgb(open_image(src, index), index, min_side=self.factor))
                       for src in item.images]  # fmt: skip
            enc.pixel_values = torch.cat([rows for rows, _ in patches])  # (P, C)
            enc.image_grid_thw = torch.cat([g for _, g in patches])  # (I, 3)
        if item.videos:
            patches = [self._patchify_video(v, index) for v in item.videos]
            enc.pixel_values_videos = torch.cat([rows for rows, _ in patches])  # (P_v, C)
            enc.video_grid_thw = torch.cat([g for _, g in patches])  # (V, 3)
            if self.spec.video_timestamps:
                text = self._render_videos(text, item.videos, enc.video_grid_thw.tolist())
        merge = self.image_processor.merge_size**2
        grids = ((self.image_token_id, enc.image_grid_thw),
                 (self.video_token_id, None if enc.video_grid_thw is None else self._video_runs(enc.video_grid_thw)))
        runs = {tok: iter((grid.prod(-1) // merge).tolist()) for tok, grid in grids if grid is not None}
        enc.input_ids = [t for tok in self._tokenize(text) for t in ([tok] * next(runs[tok]) if tok in runs else [tok])]
        return self._truncate(enc, index)

    def _patchify_video(self, video: Video, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ip = self.image_processor
        frames = decode_frames(video, index, min_side=self.factor)
        return patchify_video(frames, mean=tuple(ip.image_mean), std=tuple(ip.image_std),
                              resize=self.spec.video_resize, **self._video_kwargs())  # fmt: skip

    def _truncate(self, enc: Encoded, index: int) -> Encoded:
        """Right-truncate to ``max_length``; an image or video whose token runs would be cut is dropped whole."""
        return truncate(self, enc, index)

    def collate(self, batch: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """Right-pad a list of :class:`Encoded` into model inputs.

        Returns:
            ``input_ids`` (B, T), ``attention_mask`` (B, T), and when any image is present
            ``pixel_values`` (P, 1176) and ``image_grid_thw`` (I, 3), when any video is present
            ``pixel_values_videos`` (P_v, 1176) and ``video_grid_thw`` (V, 3), in row-major batch order.
        """
        longest = max(len(e.input_ids) for e in batch)
        input_ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, enc in enumerate(batch):
            input_ids[row, : len(enc.input_ids)] = torch.tensor(enc.input_ids)
            attention_mask[row, : len(enc.input_ids)] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        for rows_key, grid_key in (("pixel_values", "image_grid_thw"), ("pixel_values_videos", "video_grid_thw")):
            present = [e for e in batch if getattr(e, rows_key) is not None]
            if present:
                out[rows_key] = torch.cat([getattr(e, rows_key) for e in present])
                out[grid_key] = torch.cat([getattr(e, grid_key) for e in present])
        return out
