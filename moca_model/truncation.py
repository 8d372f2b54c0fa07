"""Safe truncation of one processed item: never inside an image's or a video's token runs.

An item longer than ``max_length`` is cut on the right; an image or video whose runs would be cut is dropped
whole with its patch rows (moca-method.md §2.4: the reference cuts blindly). A Qwen3-VL video spans one run
per temporal patch, each after a ``<t seconds>`` timestamp; it is kept or dropped as a whole, and a
timestamp that would dangle at the end is cut too.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from moca_model.images import MoCaInputError

if TYPE_CHECKING:
    from moca_model.processing_moca import Encoded, MoCaProcessor

logger = logging.getLogger(__name__)

_TIMESTAMP = re.compile(r"<\d+\.\d seconds>")  # Qwen3-VL's per-temporal-patch video timestamp


def truncate(processor: MoCaProcessor, enc: Encoded, index: int) -> Encoded:
    """``enc`` right-truncated to ``processor.max_length`` without splitting an image or a video.

    Raises:
        MoCaInputError: the first image or video alone does not fit (names item ``index``).
    """
    ids, proc = enc.input_ids, processor
    if proc.max_length is None or len(ids) <= proc.max_length:
        return enc
    starts = [i for i, t in enumerate(ids) if t == proc.vision_start_id]
    ends = [i for i, t in enumerate(ids) if t == proc.vision_end_id]
    timestamped = proc.spec.video_timestamps
    frames = iter(enc.video_grid_thw[:, 0].tolist() if timestamped else [])  # Qwen3-VL: a run per temporal patch
    media, run = [], 0  # (kind, first run, last run) of each image / video, in text order
    while run < len(starts):
        kind = ids[starts[run] + 1]  # the pad token after each vision_start
        n = next(frames) if kind == proc.video_token_id and timestamped else 1
        media.append((kind, run, run + n - 1))
        run += n
    runs_kept = sum(1 for end in ends if end < proc.max_length)  # visual runs kept, in text order
    kept = [m for m in media if m[2] < runs_kept]
    if not kept:
        raise MoCaInputError(
            f"item {index}: max_length={proc.max_length} is shorter than its first image's (or video's) token "
            "run; raise max_length or lower max_pixels (video_max_pixels, or use fewer frames)"
        )
    cut = proc.max_length
    if len(kept) < len(media):
        cut = min(cut, starts[media[len(kept)][1]])
        cut = _before_timestamp(proc, ids, cut) if timestamped else cut
        logger.warning("item %d: truncated to %d tokens; dropped %d image(s)/video(s)", index, cut,
                       len(media) - len(kept))  # fmt: skip
    kinds = [m[0] for m in kept]
    out = type(enc)(ids[:cut])
    for kind, rows_key, grid_key in ((proc.image_token_id, "pixel_values", "image_grid_thw"),
                                     (proc.video_token_id, "pixel_values_videos", "video_grid_thw")):  # fmt: skip
        grid = getattr(enc, grid_key)
        if grid is not None and kinds.count(kind):
            grid = grid[: kinds.count(kind)]
            setattr(out, grid_key, grid)
            setattr(out, rows_key, getattr(enc, rows_key)[: int(grid.prod(-1).sum())])
    return out


def _before_timestamp(processor: MoCaProcessor, ids: list[int], cut: int) -> int:
    """``cut``, moved before a Qwen3-VL timestamp (``<t seconds>``) that would otherwise dangle at the end."""
    for start in range(cut - 1, max(cut - 16, 0) - 1, -1):
        if _TIMESTAMP.fullmatch(processor.tokenizer.decode(ids[start:cut])):
            return start
    return cut
