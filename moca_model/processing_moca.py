"""MoCa's input conventions: items -> token ids + Qwen2-VL patch rows, and batch collation.

Conventions (moca-method.md §2): no chat template, no system prompt, no EOS; an image is written as
``<|vision_start|><|image_pad|><|vision_end|>`` and comes before the text unless the text places it;
Phi-3-V placeholders (``<|image_1|>``, used by MMEB data) are rewritten to Qwen's. Images are resized
by Qwen's ``smart_resize`` to between ``min_pixels`` and ``max_pixels`` (MoCa: 256..1024 visual tokens).

Works without torchvision: it uses the tokenizer and :mod:`moca_model.patchify` (value-for-value the
PIL Qwen2-VL image processor, whose config it keeps) instead of ``Qwen2_5_VLProcessor``, which needs a
video processor, hence torchvision.

Shapes: T tokens, P patch rows (1176 values each), I images.
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

from moca_model.compat import pil_image_processor_class
from moca_model.images import MoCaInputError, fitted_size, image_key, open_image, to_rgb
from moca_model.patchify import patchify, smart_resize

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
_PHI3_PLACEHOLDER = re.compile(r"<\|image_\d+\|>")
TOKENS_PER_SIDE = 28  # pixels per merged visual token side: patch 14 x merge 2
DEFAULT_MIN_PIXELS = 256 * TOKENS_PER_SIDE**2  # reference: --min_patch_size 256
DEFAULT_MAX_PIXELS = 1024 * TOKENS_PER_SIDE**2  # reference: --max_patch_size 1024
DEFAULT_MAX_LENGTH = 1280  # reference scripts: MAX_LEN=1280 (after image expansion)
MOCA_CONFIG_FILE = "moca_config.json"  # optional per-checkpoint processing defaults


@dataclass(frozen=True)
class Item:
    """A normalised input: text with one placeholder per image, and the image sources in order."""

    text: str
    images: tuple = ()


@dataclass
class Encoded:
    """One processed item. ``input_ids`` (T,) list; ``pixel_values`` (P, 1176); ``image_grid_thw`` (I, 3)."""

    input_ids: list[int]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None


def normalize_item(item, index: int) -> Item:
    """Turn a user item into an :class:`Item`.

    Args:
        item: ``str``; a PIL image; or a mapping with ``text`` and ``image`` (one source) or
            ``images`` (a list, for interleaved input; the text then places them with placeholders).
        index: position in the caller's list, for error messages.

    Returns:
        The normalised item.

    Raises:
        MoCaInputError: unsupported type, or placeholder count != image count.
    """
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
    else:
        raise MoCaInputError(f"item {index}: unsupported type {type(item).__name__}; use str, PIL image or dict")
    text = _PHI3_PLACEHOLDER.sub(IMAGE_PLACEHOLDER, text)
    n_placeholders = text.count(IMAGE_PLACEHOLDER)
    if images and n_placeholders == 0:
        text = IMAGE_PLACEHOLDER * len(images) + text
    elif not images and n_placeholders:
        logger.warning("item %d: text has %d image placeholder(s) but no image; removed", index, n_placeholders)
        text = text.replace(IMAGE_PLACEHOLDER, "")
    elif n_placeholders != len(images):
        raise MoCaInputError(f"item {index}: {n_placeholders} image placeholders for {len(images)} images")
    return Item(text=text, images=tuple(images))


def item_key(item: Item, index: int = 0) -> str:
    """Content key of a normalised item: its exact text and the content key of each image, in order.

    Two items share a key only when the model would read the same tokens and the same pixels
    (:func:`moca_model.images.image_key` states the image rule).

    Raises:
        MoCaInputError: an image that cannot be read or has an unsupported type; names ``index``.
    """
    text = item.text.encode("utf-8")
    digest = hashlib.blake2b(len(text).to_bytes(8, "little") + text, digest_size=16)
    for src in item.images:
        digest.update(image_key(src, index).encode())  # fixed-length keys: no separator needed
    return digest.hexdigest()


class MoCaProcessor:
    """Tokenizer + PIL Qwen2-VL image processor with MoCa's conventions and safe truncation."""

    def __init__(
        self,
        tokenizer,
        *,
        min_pixels: int = DEFAULT_MIN_PIXELS,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_length: int | None = DEFAULT_MAX_LENGTH,
        image_processor_kwargs: Mapping | None = None,
    ):
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels ({min_pixels}) must be <= max_pixels ({max_pixels})")
        self.tokenizer = tokenizer
        self.min_pixels, self.max_pixels, self.max_length = min_pixels, max_pixels, max_length
        keep = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
        kwargs = {k: v for k, v in (image_processor_kwargs or {}).items() if k in keep}
        self.image_processor = pil_image_processor_class()(min_pixels=min_pixels, max_pixels=max_pixels, **kwargs)
        self.factor = self.image_processor.patch_size * self.image_processor.merge_size
        vocab = tokenizer.convert_tokens_to_ids
        self.image_token_id = vocab("<|image_pad|>")
        self.vision_start_id, self.vision_end_id = vocab("<|vision_start|>"), vocab("<|vision_end|>")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab("<|endoftext|>")

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> MoCaProcessor:
        """Load the tokenizer and image-processor settings from a local directory.

        Processing defaults come, in order of precedence, from ``overrides`` (``None`` values are
        ignored), ``moca_config.json`` in ``path``, then MoCa's paper values. The checkpoint's own
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
        if (path / MOCA_CONFIG_FILE).is_file():
            settings.update(json.loads((path / MOCA_CONFIG_FILE).read_text()))
        settings.update({k: v for k, v in overrides.items() if v is not None})
        ip_file = path / "preprocessor_config.json"
        ip_kwargs = json.loads(ip_file.read_text()) if ip_file.is_file() else {}
        return cls(tokenizer, image_processor_kwargs=ip_kwargs, **settings)

    def save_pretrained(self, path: str | Path) -> None:
        """Write tokenizer, image-processor config and ``moca_config.json`` to ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        self.image_processor.save_pretrained(path)
        settings = {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "max_length": self.max_length}
        (path / MOCA_CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")

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

    def estimate_length(self, item: Item, index: int) -> int:
        """Token count after image expansion, from image headers only (no pixel decoding)."""
        n = len(self._tokenize(item.text)) - len(item.images)
        for src in item.images:
            n += self.num_image_tokens(*fitted_size(open_image(src, index)))
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
        if not item.images:
            return Encoded(input_ids=ids[: self.max_length] if self.max_length else ids)
        images = [to_rgb(open_image(src, index), index) for src in item.images]
        patches = [self._patchify(img) for img in images]
        pixel_values = torch.cat([rows for rows, _ in patches])  # (P, 1176)
        grid = torch.cat([g for _, g in patches])  # (I, 3)
        counts = (grid.prod(-1) // self.image_processor.merge_size**2).tolist()
        expanded: list[int] = []
        it = iter(counts)
        for tok in ids:
            expanded.extend([tok] * next(it) if tok == self.image_token_id else [tok])
        return self._truncate(Encoded(expanded, pixel_values, grid), index)

    def _truncate(self, enc: Encoded, index: int) -> Encoded:
        """Right-truncate to ``max_length``; an image whose token run would be cut is dropped whole."""
        ids = enc.input_ids
        if self.max_length is None or len(ids) <= self.max_length:
            return enc
        starts = [i for i, t in enumerate(ids) if t == self.vision_start_id]
        ends = [i for i, t in enumerate(ids) if t == self.vision_end_id]
        keep_images = sum(1 for end in ends if end < self.max_length)
        cut = self.max_length if keep_images == len(starts) else min(self.max_length, starts[keep_images])
        if keep_images == 0:
            raise MoCaInputError(
                f"item {index}: max_length={self.max_length} is shorter than its first image's token run; "
                "raise max_length or lower max_pixels"
            )
        if keep_images < len(starts):
            logger.warning(
                "item %d: truncated to %d tokens; dropped %d image(s)", index, cut, len(starts) - keep_images
            )
        grid = enc.image_grid_thw[:keep_images]
        rows = int(grid.prod(-1).sum())
        return Encoded(ids[:cut], enc.pixel_values[:rows], grid)

    def collate(self, batch: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """Right-pad a list of :class:`Encoded` into model inputs.

        Returns:
            ``input_ids`` (B, T), ``attention_mask`` (B, T), and when any image is present
            ``pixel_values`` (P, 1176) and ``image_grid_thw`` (I, 3), in row-major batch order.
        """
        longest = max(len(e.input_ids) for e in batch)
        input_ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, enc in enumerate(batch):
            input_ids[row, : len(enc.input_ids)] = torch.tensor(enc.input_ids)
            attention_mask[row, : len(enc.input_ids)] = 1
        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        with_images = [e for e in batch if e.pixel_values is not None]
        if with_images:
            out["pixel_values"] = torch.cat([e.pixel_values for e in with_images])
            out["image_grid_thw"] = torch.cat([e.image_grid_thw for e in with_images])
        return out
