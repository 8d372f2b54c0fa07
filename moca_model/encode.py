"""MoCaEncoder: the one batch loop that users, the harness adapters and the MMEB runner share.

Items are normalised and de-duplicated, their token counts estimated from image headers, then encoded
longest-first in batches of similar length (little padding), and the caller's order is restored.
Images are decoded only when their batch is prepared, so memory stays bounded for large corpora.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from moca_model.images import MoCaInputError
from moca_model.loading import default_attn_implementation, load_model, resolve_checkpoint
from moca_model.processing_moca import Item, MoCaProcessor, normalize_item
from moca_model.video import video_key

logger = logging.getLogger(__name__)

DEFAULT_PROCESSOR = "Qwen/Qwen2.5-VL-3B-Instruct"  # what the reference scripts load the processor from


def _image_key(src) -> tuple:
    if isinstance(src, Image.Image):
        return ("pil", src.mode, src.size, hashlib.sha1(src.tobytes()).hexdigest())
    if isinstance(src, (bytes, bytearray, memoryview)):
        return ("bytes", hashlib.sha1(bytes(src)).hexdigest())
    if isinstance(src, (str, os.PathLike)):
        return ("path", str(Path(src).expanduser().resolve()))
    return ("id", id(src))


def item_key(item: Item) -> tuple:
    """Identity of an item for de-duplication: its text, the identity of each image, the frames of each video."""
    return (item.text, *(_image_key(src) for src in item.images), *(video_key(v) for v in item.videos))


class MoCaEncoder:
    r"""Encode text, images and interleaved inputs into unit-norm MoCa embeddings.

    Example:
        >>> enc = MoCaEncoder.from_pretrained("moca-embed/MoCa-Qwen25VL-3B")  # doctest: +SKIP
        >>> vecs = enc.encode(["a query", {"image": "page.png", "text": "\\nRepresent the given document image."}])
    """

    def __init__(self, model, processor: MoCaProcessor, *, device: torch.device | str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_length: int | None = None,
        revision: str | None = None,
        processor_name_or_path: str | Path | None = None,
        video_min_pixels: int | None = None,
        video_max_pixels: int | None = None,
    ) -> MoCaEncoder:
        """Load model and processor from a local directory or a hub id.

        Args:
            name_or_path: checkpoint directory or hub id (e.g. ``moca-embed/MoCa-Qwen25VL-3B``).
            device: default CUDA when available, else CPU.
            dtype: default bfloat16 on CUDA, float32 on CPU.
            attn_implementation: default flash_attention_2 on CUDA when installed, else sdpa.
            min_pixels: per-image lower bound in pixels (default 256 * 28²).
            max_pixels: per-image upper bound in pixels (default 1024 * 28²).
            max_length: token limit after image expansion (default 1280).
            revision: hub revision.
            processor_name_or_path: where the tokenizer comes from when the checkpoint has none
                (default: the checkpoint, then ``Qwen/Qwen2.5-VL-3B-Instruct``, as the reference does).
            video_min_pixels: per-frame lower bound for videos (default 128 * 28²).
            video_max_pixels: per-frame upper bound for videos (default 256 * 28²).

        Returns:
            A ready encoder.
        """
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        path = resolve_checkpoint(name_or_path, revision=revision)
        impl = attn_implementation or default_attn_implementation(device)
        model = load_model(path, device=device, dtype=dtype, attn_implementation=impl)
        has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        if processor_name_or_path is None and has_tokenizer:
            proc_dir = path
        else:
            proc_dir = resolve_checkpoint(processor_name_or_path or DEFAULT_PROCESSOR)
        settings = _given(min_pixels=min_pixels, max_pixels=max_pixels, max_length=max_length,
                          video_min_pixels=video_min_pixels, video_max_pixels=video_max_pixels)
        if proc_dir != path:  # the checkpoint's own moca_config.json still wins over the processor's
            settings = {**_moca_settings(path), **settings}
        processor = MoCaProcessor.from_pretrained(proc_dir, **settings)
        logger.info("loaded %s (%s, %s, %s) on %s", name_or_path, impl, dtype, type(model).__name__, device)
        return cls(model, processor, device=device)

    @property
    def dim(self) -> int:
        """Embedding dimension (the LLM hidden size: 2048 for 3B, 3584 for 7B)."""
        return self.model.config.text_config.hidden_size

    def encode(
        self,
        items: Sequence,
        *,
        batch_size: int = 16,
        show_progress: bool = True,
        desc: str = "encoding",
        num_workers: int | None = None,
    ) -> np.ndarray:
        """Encode items into unit-norm float32 vectors.

        Args:
            items: each a ``str``, a ``PIL.Image.Image``, or a mapping ``{"text": str | None,
                "image": PIL | path | bytes | None}``; interleaved input is ``{"text": "... <|vision_start|>
                <|image_pad|><|vision_end|> ...", "images": [...]}``; a video is ``{"text": ..., "video":
                frame folder | [frames] | Video}`` (a folder is sampled to ``num_frames``, default 8, as
                the MMEB-V2 reference does; see :mod:`moca_model.video`).
            batch_size: items per forward pass.
            show_progress: tqdm progress bar.
            desc: progress-bar label.
            num_workers: threads that decode and patchify the next batches while the model runs
                (default 2 on CUDA, 1 on CPU; 0 prepares batches inline).

        Returns:
            (N, D) float32 array in the caller's order.

        Raises:
            MoCaInputError: an item that cannot be encoded; the message names its index.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(items) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        normalized = [normalize_item(x, i) for i, x in enumerate(items)]
        first_index: dict[tuple, int] = {}  # item identity -> unique id
        originals: list[int] = []  # unique id -> caller index of its first occurrence
        inverse = np.empty(len(items), dtype=np.int64)
        for i, item in enumerate(normalized):
            key = item_key(item)
            if key not in first_index:
                first_index[key] = len(originals)
                originals.append(i)
            inverse[i] = first_index[key]
        lengths = [
            self.processor.estimate_length(normalized[originals[u]], originals[u]) for u in range(len(originals))
        ]
        order = sorted(range(len(originals)), key=lambda u: -lengths[u])
        batches = length_batches(order, lengths, batch_size)
        out = np.zeros((len(originals), self.dim), dtype=np.float32)
        workers = num_workers if num_workers is not None else (2 if self.device.type == "cuda" else 1)
        bar = tqdm(total=len(originals), desc=desc, unit="item", disable=not show_progress)
        for batch, inputs in self._prepared(batches, normalized, originals, workers):
            out[batch] = self._forward(inputs)
            bar.update(len(batch))
        bar.close()
        return out[inverse]

    def _prepare(self, batch: list[int], normalized: list[Item], originals: list[int]) -> dict[str, torch.Tensor]:
        encoded = [self.processor.process(normalized[originals[u]], originals[u]) for u in batch]
        return self.processor.collate(encoded)

    def _prepared(self, batches, normalized, originals, workers: int) -> Iterable[tuple[list[int], dict]]:
        if workers <= 0:
            for batch in batches:
                yield batch, self._prepare(batch, normalized, originals)
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(self._prepare, b, normalized, originals) for b in batches[: workers + 1]]
            for k, batch in enumerate(batches):
                if k + workers + 1 < len(batches):
                    futures.append(pool.submit(self._prepare, batches[k + workers + 1], normalized, originals))
                yield batch, futures[k].result()

    @torch.inference_mode()
    def _forward(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        return self.model(**inputs).embeddings.float().cpu().numpy()


PAD_TOLERANCE = 0.1  # a batch closes early rather than pad an item by more than 10% of the batch length
PAD_SLACK = 16  # ... unless the padding is at most this many tokens (short texts)


def length_batches(order: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Cut items sorted by decreasing length into batches of at most ``batch_size`` similar lengths.

    A batch also closes when the next item is shorter than its longest by more than
    ``max(PAD_TOLERANCE * longest, PAD_SLACK)`` tokens, which bounds padding on corpora with few items
    of very different lengths (where fixed-size batches would pad a lot).

    Args:
        order: item ids sorted by decreasing length.
        lengths: token count of each item id.
        batch_size: maximum items per batch.

    Returns:
        The batches, as lists of item ids.
    """
    batches: list[list[int]] = []
    for u in order:
        if batches and len(batches[-1]) < batch_size:
            longest = lengths[batches[-1][0]]
            if longest - lengths[u] <= max(PAD_TOLERANCE * longest, PAD_SLACK):
                batches[-1].append(u)
                continue
        batches.append([u])
    return batches


def _moca_settings(path: Path) -> dict:
    import json

    f = path / "moca_config.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _given(**settings) -> dict:
    return {k: v for k, v in settings.items() if v is not None}


__all__ = ["MoCaEncoder", "MoCaInputError", "item_key"]
