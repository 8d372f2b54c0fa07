"""Everything that differs between the two supported transformers lines (4.52-4.x and 5.x).

- ``get_rope_index``: 4.x takes ``(input_ids, image_grid_thw, video_grid_thw, attention_mask=...)``;
  5.x needs ``mm_token_type_ids`` (1 on image tokens) and silently falls back to 1-D positions
  without it, so we always compute the 3-D mRoPE positions ourselves and pass them in.
- Videos: the two lines disagree on the text that follows a video. 4.x (and Qwen2.5-VL's original code,
  which MoCa vendored) resumes at ``max(previous positions) + 1``, past the video's scaled temporal
  positions; 5.24 resumes at ``start + max(h, w) / merge`` and ignores the temporal extent, so text after
  a long video reuses positions (8 frames: no difference unless a frame is under 7 tokens wide; 64 frames:
  every text token after the video moves). 4.57 also casts ``second_per_grid_ts`` to an integer before
  scaling (0.5 s becomes 0). Batches with a video therefore use :func:`video_rope_index`, the 4.x rule
  with 1.0 s per temporal patch written out here, on both lines (same embeddings in both environments).
- The image processor: 5.x resolves ``Qwen2VLImageProcessor`` to a torchvision implementation when
  torchvision is installed; MoCa was trained with the PIL one (bicubic resize, rescale, CLIP
  normalisation), which is ``Qwen2VLImageProcessorPil`` on 5.x. We always use the PIL one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import transformers

if TYPE_CHECKING:
    import torch

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
MIN_VERSION = (4, 52)
MAX_MAJOR = 5


def check_transformers_version(version: str | None = None) -> None:
    """Raise with an actionable message outside the range this package supports.

    Args:
        version: the version to check (default: the installed transformers).

    Raises:
        ImportError: transformers is older than 4.52 or newer than 5.x.
    """
    version = version or transformers.__version__
    major, minor = (int(p) for p in version.split(".")[:2])
    if (major, minor) < MIN_VERSION or major > MAX_MAJOR:
        raise ImportError(
            f"moca_model supports transformers>=4.52,<6 (found {version}). "
            "4.52 is the first release whose Qwen2_5_VLModel owns the vision tower and get_rope_index; "
            "install a supported version, e.g. pip install 'transformers>=4.57,<6'."
        )


def rope_index(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    image_token_id: int,
    video_grid_thw: torch.Tensor | None = None,
) -> torch.Tensor:
    """3-D mRoPE positions of a batch, as the backbone computes them over attended tokens.

    Images: the backbone's own ``get_rope_index`` (the same on both transformers lines). Videos: the 4.x rule
    of :func:`video_rope_index` on both lines: Qwen2-VL advances time by one per temporal patch (no
    ``tokens_per_second``), Qwen2.5-VL by ``tokens_per_second`` per second, Qwen3-VL not at all (its
    video is one single-step grid per temporal patch, separated by timestamp text, as upstream splits it).

    Args:
        model: a Qwen-VL base model (owns ``get_rope_index`` and the config).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 on real tokens, 0 on padding.
        image_grid_thw: (I, 3) grid of every image in row-major batch order, or None.
        image_token_id: id of ``<|image_pad|>``.
        video_grid_thw: (V, 3) grid of every video in row-major batch order, or None.

    Returns:
        (3, B, T) position ids (temporal, height, width axes).
    """
    if video_grid_thw is not None:
        cfg = model.config
        if cfg.model_type == "qwen3_vl":  # one single-step grid per temporal patch, each after its timestamp
            video_grid_thw = split_video_grids(video_grid_thw)
        return video_rope_index(
            input_ids, attention_mask, image_grid_thw, video_grid_thw, image_token_id=image_token_id,
            video_token_id=cfg.video_token_id, merge_size=cfg.vision_config.spatial_merge_size,
            tokens_per_second=getattr(cfg.vision_config, "tokens_per_second", 1.0),
        )  # fmt: skip
    if TRANSFORMERS_MAJOR >= 5:
        mm_token_type_ids = (input_ids == image_token_id).int()
        pos, _ = model.get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
    else:
        pos, _ = model.get_rope_index(input_ids, image_grid_thw, None, attention_mask=attention_mask)
    return pos


def config_dict_for_this_line(config: dict) -> dict:
    """A ``config.json`` dict this transformers line can parse (a copy when something had to change).

    transformers 5 writes ``rope_parameters`` (theta included) where 4.x reads ``rope_scaling`` +
    ``rope_theta``; 4.x's Qwen3-VL text model fails on a config without ``rope_scaling``. On 4.x such a
    ``text_config`` (or flat config) is translated back; 5.x reads both forms itself.
    """
    if TRANSFORMERS_MAJOR >= 5:
        return config

    def fix(section: dict) -> dict:
        rope = section.get("rope_parameters")
        if not isinstance(rope, dict) or section.get("rope_scaling") is not None:
            return section
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        out = {**section, "rope_scaling": scaling}
        if "rope_theta" in rope:
            out["rope_theta"] = rope["rope_theta"]
        return out

    fixed = fix(config)
    if isinstance(config.get("text_config"), dict):
        fixed = {**fixed, "text_config": fix(config["text_config"])}
    return fixed


def split_video_grids(video_grid_thw: torch.Tensor) -> torch.Tensor:
    """Qwen3-VL's view of videos: (V, 3) grids -> (sum t, 3) grids of one temporal patch each, in order."""
    import torch

    grids = torch.repeat_interleave(video_grid_thw, video_grid_thw[:, 0], dim=0)
    grids[:, 0] = 1
    return grids


def pil_image_processor_class():
    """The PIL-backed Qwen2-VL image processor class of the installed transformers."""
    if TRANSFORMERS_MAJOR >= 5:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor


# Seconds covered by one temporal patch of a video. Qwen2_5_VLProcessor sends temporal_patch_size / fps
# with its default fps=2.0, i.e. 1.0; the MMEB-V2 reference drops second_per_grid_ts and the model's
# default is also 1.0. Pre-extracted frames carry no timestamps, so 1.0 is the only defensible value.
VIDEO_SECONDS_PER_GRID = 1.0


def video_rope_index(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    video_grid_thw: torch.Tensor,
    *,
    image_token_id: int,
    video_token_id: int,
    merge_size: int,
    tokens_per_second: float,
    seconds_per_grid: float = VIDEO_SECONDS_PER_GRID,
) -> torch.Tensor:
    """3-D mRoPE positions with Qwen2.5-VL's 4.x rule, for batches holding videos (and images).

    Per row, over attended tokens: text advances all three axes by one; a visual run (an image or a
    video, in text order, each a contiguous run of its pad token) starts at ``s`` = the running text
    position and gets ``(s + floor(t * seconds_per_grid * tokens_per_second), s + row, s + col)`` (images:
    temporal index 0); the next text resumes at ``max(all positions so far) + 1``. Padding gets 1.

    Args:
        input_ids: (B, T).
        attention_mask: (B, T).
        image_grid_thw: (I, 3) or None.
        video_grid_thw: (V, 3).
        image_token_id: id of ``<|image_pad|>``.
        video_token_id: id of ``<|video_pad|>``.
        merge_size: spatial merge of the vision tower (2).
        tokens_per_second: ``vision_config.tokens_per_second``.
        seconds_per_grid: seconds per temporal patch.

    Returns:
        (3, B, T) long.
    """
    import torch

    grids = {image_token_id: iter(image_grid_thw.tolist() if image_grid_thw is not None else []),
             video_token_id: iter(video_grid_thw.tolist())}  # fmt: skip
    out = torch.ones((3, *input_ids.shape), dtype=input_ids.dtype, device=input_ids.device)
    for b in range(input_ids.shape[0]):
        keep = attention_mask[b].bool()
        tokens = input_ids[b][keep].tolist()
        parts, nxt, i = [], 0, 0
        while i < len(tokens):
            if tokens[i] not in grids:  # a run of text tokens
                j = next((k for k in range(i, len(tokens)) if tokens[k] in grids), len(tokens))
                parts.append(torch.arange(nxt, nxt + j - i).expand(3, -1))
                nxt, i = nxt + j - i, j
                continue
            t, h, w = next(grids[tokens[i]])
            h, w = h // merge_size, w // merge_size
            scale = seconds_per_grid * tokens_per_second if tokens[i] == video_token_id else 0.0
            t_idx = (torch.arange(t, dtype=torch.float64) * scale).long()  # floor, as upstream's .long()
            grid = torch.stack(torch.meshgrid(t_idx, torch.arange(h), torch.arange(w), indexing="ij")).reshape(3, -1)
            parts.append(grid + nxt)
            nxt, i = int(grid.max()) + nxt + 1, i + t * h * w
        out[:, b, keep] = torch.cat(parts, dim=1).to(out.device, out.dtype)
    return out
