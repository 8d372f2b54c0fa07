"""Qwen3-VL: ``Qwen3VLModel`` + :class:`MoCaMixin` = ``MoCaQwen3VLModel``.

What differs from Qwen2.5-VL (transformers' own files are the spec; /work/shared/docs/backbones-notes.md):

- Geometry: **16-px** patches (each ``pixel_values`` row holds 3 x 2 x 16 x 16 = 1,536 values), 2 x 2
  merge, so one visual token is 32 x 32 px: MoCa's 256..1,024 tokens per image are 262,144..1,048,576 px
  (Qwen3-VL's own processor allows 64..16,384 tokens). Normalisation mean = std = 0.5 (the checkpoint's
  ``preprocessor_config.json`` wins when present).
- Vision tower: full attention per frame, a learned absolute position embedding (interpolated to each
  grid) plus 2-D RoPE, and **DeepStack**: the outputs of ``deepstack_visual_indexes`` blocks go through
  their own mergers and are added to the text hidden states at the visual positions after text layers
  0, 1, 2. ``Qwen3VLModel.forward`` does this; MoCa's forward calls it unchanged.
- Text: Qwen3 attention (RMSNorm on q and k), **interleaved** M-RoPE.
- Videos: the processor writes ``<t seconds>`` (one decimal) and a vision start/end pair around every
  temporal patch; every temporal patch sits at time index 0 of M-RoPE (time is in the text).
- Bidirectional attention: the same flag + padding-only 4-D mask as the other backbones, but the text
  model always builds its own mask (no ``{layer: None}`` pass-through), so there is no no-mask fast path.
"""

from __future__ import annotations

from transformers import Qwen3VLConfig, Qwen3VLModel

from moca_model.backbones import Backbone, ModelSize
from moca_model.compat import TRANSFORMERS_MAJOR
from moca_model.modeling_moca import MoCaMixin

SPEC = Backbone(
    name="qwen3_vl",
    model_type="qwen3_vl",
    patch_size=16,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    video_timestamps=True,
    video_resize="torch",
    dict_mask=False,
    default_processor="Qwen/Qwen3-VL-4B-Instruct",
)
ROPE_THETA = 5_000_000.0  # Qwen3-VL checkpoints; the config class default differs between 4.57 and 5.x


class MoCaQwen3VLModel(MoCaMixin, Qwen3VLModel):
    """MoCa on Qwen3-VL: the stock ``Qwen3VLModel`` (DeepStack included) plus :class:`MoCaMixin`."""

    backbone = "qwen3_vl"
    supports_unpadded_fast_path = SPEC.dict_mask


MODEL_CLASS = MoCaQwen3VLModel


def random_config(ids: dict[str, int], size: ModelSize) -> Qwen3VLConfig:
    """A Qwen3-VL config of any size (tests, benchmarks); see :func:`moca_model.testing.random_config`.

    ``size.vision`` may set ``deepstack_visual_indexes`` (default: the first ``min(3, depth, layers)``
    blocks, so DeepStack is exercised) and ``num_position_embeddings`` (default 64, an 8 x 8 grid).
    """
    half = size.head_dim // 2  # interleaved sections: t takes the rest, h and w 5/16 each (4B/8B: [24, 20, 20])
    section = [half - 2 * (5 * half // 16), 5 * half // 16, 5 * half // 16]
    rope = {"rope_type": "default", "mrope_section": section, "mrope_interleaved": True}
    text = {
        **size.text_fields(),
        "head_dim": size.head_dim,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    }
    if TRANSFORMERS_MAJOR >= 5:
        text["rope_parameters"] = {**rope, "rope_theta": ROPE_THETA}
    else:
        text.update(rope_scaling=rope, rope_theta=ROPE_THETA)
    vision = size.vision
    return Qwen3VLConfig(
        text_config=text,
        vision_config={
            "depth": vision["depth"],
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"],
            "out_hidden_size": size.hidden,
            "num_position_embeddings": vision.get("num_position_embeddings", 64),
            "deepstack_visual_indexes": vision.get(
                "deepstack_visual_indexes", list(range(min(3, vision["depth"], size.layers)))
            ),
            "patch_size": SPEC.patch_size,
            "spatial_merge_size": SPEC.merge_size,
            "temporal_patch_size": SPEC.temporal_patch_size,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
        architectures=["Qwen3VLForConditionalGeneration"],
    )
