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
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from moca_model import moca_config
from moca_model.compat import pil_image_processor_class
from moca_model.images import MoCaInputError, fitted_size, image_key, open_image, to_rgb
from moca_model.patchify import patchify, smart_resize
from moca_model.video import (
    DEFAULT_NUM_FRAMES,
    Video,
    decode_frames,
    frame_sizes,
    patchify_video,
    video_grid,
    video_key,
)

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
_PHI3_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
TOKENS_PER_SIDE = 28  # pixels per merged visual token side: patch 14 x merge 2
DEFAULT_MIN_PIXELS = 256 * TOKENS_PER_SIDE**2  # reference: --min_patch_size 256
DEFAULT_MAX_PIXELS = 1024 * TOKENS_PER_SIDE**2  # reference: --max_patch_size 1024
DEFAULT_MAX_LENGTH = 1280  # reference scripts: MAX_LEN=1280 (after image expansion)
# Per-frame bounds for videos. MoCa was never trained on video, so these are a setting, not a reproduction:
# qwen-vl-utils' VIDEO_MIN_PIXELS (128 tokens) and 256 tokens per frame at most, so 8 frames (4 temporal
# patches) stay within 1,024 visual tokens and fit MoCa's 1,280-token length with the text.
DEFAULT_VIDEO_MIN_PIXELS = 128 * TOKENS_PER_SIDE**2
DEFAULT_VIDEO_MAX_PIXELS = 256 * TOKENS_PER_SIDE**2
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


def normalize_item(item, index: int) -> Item:
    """Turn a user item into an :class:`Item`.

    Args:
        item: ``str``; a PIL image; or a mapping with ``text`` and ``image`` (one source) or
            ``images`` (a list, for interleaved input; the text then places them with placeholders),
            and/or ``video``: a frame folder (sampled as :meth:`moca_model.video.Video.from_folder` does,
            ``num_frames`` from the mapping, default 8), a list of frames (used as given) or a
            :class:`~moca_model.video.Video`.
        index: position in the caller's list, for error messages.

    Returns:
        The normalised item.

    Raises:
        MoCaInputError: unsupported type, or placeholder count != image (video) count.
    """
    videos: list[Video] = []
    if isinstance(item, str):
        text, images = item, []
    elif isinstance(item, Image.Image):
        text, images = "", [item]
    elif isinstance(item, Mapping):
        text = item.get("text") or ""
        if not isinstance(text, str):
            raise MoCaInputError(f"item {index}: 'text' must be a string, got {type(text).__name__}")
        images = list(item.get("images") or [])
        if item.get("image") is not None:
            images.insert(0, item["image"])
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
    """Tokenizer + PIL Qwen2-VL image processor with MoCa's conventions and safe truncation."""

    def __init__(
        self,
        tokenizer,
        *,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_length: int | None = DEFAULT_MAX_LENGTH,  # 0 or None: no truncation
        video_min_pixels: int = DEFAULT_VIDEO_MIN_PIXELS,
        video_max_pixels: int = DEFAULT_VIDEO_MAX_PIXELS,
        image_processor_kwargs: Mapping | None = None,
    ):
        for lo, hi, name in ((min_pixels, max_pixels, ""), (video_min_pixels, video_max_pixels, "video_")):
            if lo > hi:
                raise ValueError(f"{name}min_pixels ({lo}) must be <= {name}max_pixels ({hi})")
        self.tokenizer = tokenizer
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.max_length = max_length or None  # 0 or None: no limit
        self.video_min_pixels, self.video_max_pixels = video_min_pixels, video_max_pixels
        keep = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
        kwargs = {k: v for k, v in (image_processor_kwargs or {}).items() if k in keep}
        self.image_processor = pil_image_processor_class()(min_pixels=min_pixels, max_pixels=max_pixels, **kwargs)
        self.factor = self.image_processor.patch_size * self.image_processor.merge_size
        vocab = tokenizer.convert_tokens_to_ids
        self.image_token_id, self.video_token_id = vocab("<|image_pad|>"), vocab("<|video_pad|>")
        self.vision_start_id, self.vision_end_id = vocab("<|vision_start|>"), vocab("<|vision_end|>")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab("<|endoftext|>")

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> MoCaProcessor:
        """Load the tokenizer and image-processor settings from a local directory.

        Processing defaults come, in order of precedence, from ``overrides`` (``None`` values are
        ignored), ``moca_config.json`` in ``path`` (its processing keys only; ``attention`` is the
        loader's), then MoCa's paper values. The checkpoint's own
        ``min_pixels``/``max_pixels`` are deliberately NOT used: released checkpoints ship Qwen's
        (4..16384 tokens), while MoCa trained and evaluated at 256..1024 tokens.
        """
        from transformers import AutoTokenizer

        path = Path(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "right"
        settings = {
            "min_pixels": DEFAULT_MIN_PIXELS,
            "max_pixels": DEFAULT_MAX_PIXELS,
            "max_length": DEFAULT_MAX_LENGTH,
        }
        settings.update(moca_config.processing_settings(path))
        settings.update({k: v for k, v in overrides.items() if v is not None})
        ip_file = path / "preprocessor_config.json"
        ip_kwargs = json.loads(ip_file.read_text()) if ip_file.is_file() else {}
        return cls(tokenizer, image_processor_kwargs=ip_kwargs, **settings)

    def save_pretrained(self, path: str | Path) -> None:
        """Write tokenizer, image-processor config and the processing keys of ``moca_config.json`` to ``path``.

        Other keys of an existing ``moca_config.json`` (the model's ``attention``) are kept.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        moca_config.update(path, min_pixels=self.min_pixels, max_pixels=self.max_pixels, max_length=self.max_length,
                           video_min_pixels=self.video_min_pixels, video_max_pixels=self.video_max_pixels)

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
        """Merged visual tokens for an image of this size (Qwen2-VL ``smart_resize``, then / 28²)."""
        h, w = smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return (h // self.factor) * (w // self.factor)

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _video_kwargs(self) -> dict:
        ip = self.image_processor
        return {"min_pixels": self.video_min_pixels, "max_pixels": self.video_max_pixels,
                "patch_size": ip.patch_size, "temporal_patch_size": ip.temporal_patch_size, "merge_size": ip.merge_size}

    def num_video_tokens(self, video: Video, index: int) -> int:
        """Merged visual tokens of a video, from its frames' headers (every frame is opened, none decoded).

        Raises:
            MoCaInputError: no frames, or a missing or unreadable frame.
        """
        sizes = frame_sizes(video, index)
        t, h, w = video_grid(*sizes[0], len(sizes), **self._video_kwargs())
        return t * h * w // self.image_processor.merge_size**2

    def estimate_length(self, item: Item, index: int) -> int:
        """Token count after image and video expansion, from headers only (no pixel decoding)."""
        n = len(self._tokenize(item.text)) - len(item.images) - len(item.videos)
        for src in item.images:
            n += self.num_image_tokens(*fitted_size(open_image(src, index)))
        for video in item.videos:
            n += self.num_video_tokens(video, index)
        return max(n, 1)

    def process(self, item: Item, index: int) -> Encoded:
        """Tokenize, load and patchify images, expand placeholders, truncate safely.

        Raises:
            MoCaInputError: unreadable image, or truncation would remove every image of the item.
        """
        ids = self._tokenize(item.text)
        if not ids:
            logger.warning("item %d: empty text; encoded as a single space", index)
            return Encoded(input_ids=self._tokenize(" "))
        if not item.images and not item.videos:
            return Encoded(input_ids=ids[: self.max_length] if self.max_length else ids)
        enc = Encoded(ids)
        if item.images:
            patches = [self._patchify(to_rgb(open_image(src, index), index)) for src in item.images]
            enc.pixel_values = torch.cat([rows for rows, _ in patches])  # (P, 1176)
            enc.image_grid_thw = torch.cat([g for _, g in patches])  # (I, 3)
        if item.videos:
            patches = [self._patchify_video(v, index) for v in item.videos]
            enc.pixel_values_videos = torch.cat([rows for rows, _ in patches])  # (P_v, 1176)
            enc.video_grid_thw = torch.cat([g for _, g in patches])  # (V, 3)
        merge = self.image_processor.merge_size**2
        grids = ((self.image_token_id, enc.image_grid_thw), (self.video_token_id, enc.video_grid_thw))
        runs = {tok: iter((grid.prod(-1) // merge).tolist()) for tok, grid in grids if grid is not None}
        enc.input_ids = [t for tok in ids for t in ([tok] * next(runs[tok]) if tok in runs else [tok])]
        return self._truncate(enc, index)

    def _patchify_video(self, video: Video, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ip = self.image_processor
        frames = decode_frames(video, index)
        return patchify_video(frames, mean=tuple(ip.image_mean), std=tuple(ip.image_std), **self._video_kwargs())

    def _truncate(self, enc: Encoded, index: int) -> Encoded:
        """Right-truncate to ``max_length``; an image or video whose token run would be cut is dropped whole."""
        ids = enc.input_ids
        if self.max_length is None or len(ids) <= self.max_length:
            return enc
        starts = [i for i, t in enumerate(ids) if t == self.vision_start_id]
        ends = [i for i, t in enumerate(ids) if t == self.vision_end_id]
        keep = sum(1 for end in ends if end < self.max_length)  # visual runs kept, in text order
        cut = self.max_length if keep == len(starts) else min(self.max_length, starts[keep])
        if keep == 0:
            raise MoCaInputError(
                f"item {index}: max_length={self.max_length} is shorter than its first image's (or video's) token "
                "run; raise max_length or lower max_pixels (video_max_pixels, or use fewer frames)"
            )
        if keep < len(starts):
            logger.warning("item %d: truncated to %d tokens; dropped %d image(s)/video(s)", index, cut,
                           len(starts) - keep)
        kinds = [ids[s + 1] for s in starts[:keep]]  # the pad token after each kept vision_start
        out = Encoded(ids[:cut])
        for kind, rows_key, grid_key in ((self.image_token_id, "pixel_values", "image_grid_thw"),
                                         (self.video_token_id, "pixel_values_videos", "video_grid_thw")):
            grid = getattr(enc, grid_key)
            if grid is not None and kinds.count(kind):
                grid = grid[: kinds.count(kind)]
                setattr(out, grid_key, grid)
                setattr(out, rows_key, getattr(enc, rows_key)[: int(grid.prod(-1).sum())])
        return out

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
