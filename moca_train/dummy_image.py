"""A masked-out dummy image for model inputs that have none, so the vision tower runs in every forward.

Sharded engines (FSDP, DeepSpeed ZeRO-3) gather a module's weights collectively when it runs: every rank
must run the same modules in the same order, and a rank whose micro-batch (or GradCache chunk) has no
image would leave the others waiting in the vision tower's all-gather. The reference writes a black image
over the last 6 tokens of row 0 of every image-less training batch (``utils_new.py:85-126``,
moca-method.md §2.4), which overwrites real tokens when that row has no padding (§7 item 5). Here the
dummy goes into *extra* columns with attention 0: mean pooling skips them and no real token attends to
them, so every embedding and loss is unchanged and the vision weights get an exactly-zero gradient (which
AdamW still applies, as in the reference).

Shapes: B rows, T tokens, C = 3 * temporal_patch * patch**2 values per patch row (1176 for Qwen2.5-VL),
K = merge_size**2 patch rows per merged visual token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from moca_model import MoCaProcessor


def dummy_pixels(processor: MoCaProcessor) -> tuple[torch.Tensor, torch.Tensor]:
    """A black image of one merged visual token.

    Returns:
        ``(pixel_values (K, C) CLIP-normalised black rows, image_grid_thw (1, 3))``.
    """
    ip = processor.image_processor
    row_size = 3 * ip.temporal_patch_size * ip.patch_size**2  # RGB x temporal x patch x patch
    black = [(0.0 - m) / s for m, s in zip(ip.image_mean, ip.image_std)]  # normalised value per channel
    row = torch.tensor(black).repeat_interleave(row_size // 3)  # (C,) channel-major, like Qwen's rows
    grid = torch.tensor([[1, ip.merge_size, ip.merge_size]])
    return row.expand(ip.merge_size**2, -1).clone(), grid


def add_dummy_image(inputs: dict[str, torch.Tensor], processor: MoCaProcessor) -> dict[str, torch.Tensor]:
    """``inputs`` plus a one-token dummy image in 3 extra, attention-0 columns (row 0 holds the run).

    Args:
        inputs: ``input_ids`` (B, T) and ``attention_mask`` (B, T) of an image-less batch.
        processor: gives the special token ids and the image processor's geometry.

    Returns:
        A new dict: ``input_ids`` and ``attention_mask`` (B, T + 3), ``pixel_values`` (K, C),
        ``image_grid_thw`` (1, 3).

    Raises:
        ValueError: ``inputs`` already has an image.
    """
    if "pixel_values" in inputs:
        raise ValueError("add_dummy_image: the batch already has images")
    pixels, grid = dummy_pixels(processor)
    run = torch.tensor([processor.vision_start_id, processor.image_token_id, processor.vision_end_id])
    b, t = inputs["input_ids"].shape
    ids = torch.full((b, t + len(run)), processor.pad_id, dtype=inputs["input_ids"].dtype)
    ids[:, :t], ids[0, t:] = inputs["input_ids"], run
    attn = torch.nn.functional.pad(inputs["attention_mask"], (0, len(run)), value=0)
    return {"input_ids": ids, "attention_mask": attn, "pixel_values": pixels, "image_grid_thw": grid}
