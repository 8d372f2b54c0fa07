"""Qwen2.5-VL, the backbone of the released MoCa-3B/7B: ``Qwen2_5_VLModel`` + :class:`MoCaMixin` = ``MoCaModel``.

Geometry: 14-px patches, 2 x 2 merge, so one visual token is 28 x 28 px and MoCa's 256..1,024 tokens per
image are 200,704..802,816 px. CLIP normalisation. The vision tower attends within windows of 8 x 8
patches except in ``fullatt_block_indexes``. Videos: one ``<|vision_start|><|video_pad|>...<|vision_end|>``
run, temporal positions ``tokens_per_second`` apart per second (1 s per temporal patch here).
Bidirectional text attention: :mod:`moca_model.bidirectional` (flag + padding-only 4-D mask, and the
``{layer: None}`` no-mask fast path for unpadded batches).
"""

from __future__ import annotations

from transformers import Qwen2_5_VLConfig

from moca_model.backbones import Backbone
from moca_model.modeling_moca import MoCaModel

SPEC = Backbone(name="qwen2_5_vl", model_type="qwen2_5_vl", patch_size=14)
MODEL_CLASS = MoCaModel


def random_config(
    ids: dict[str, int],
    *,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    vision: dict,
    vocab_size: int,
) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of any size (tests, benchmarks); see :func:`moca_model.testing.random_config`.

    Args:
        ids: the tokenizer's ids of Qwen's special tokens (``<|image_pad|>`` ...).
        hidden: text hidden size.
        layers: text decoder layers.
        heads: attention heads.
        kv_heads: key/value heads.
        intermediate: text FFN size.
        vision: ViT fields (``depth``, ``hidden_size``, ``intermediate_size``, ``num_heads``, optionally
            ``fullatt_block_indexes``, default: the last block).
        vocab_size: embedding rows.

    Returns:
        The config, with Qwen2.5-VL's mRoPE proportions (t, h, w = 1/4, 3/8, 3/8 of head_dim / 2).
    """
    half = hidden // heads // 2  # mrope sections must sum to head_dim / 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # 3B/7B: [16, 24, 24]
    vision = {"fullatt_block_indexes": [vision["depth"] - 1], **vision}
    return Qwen2_5_VLConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_scaling={"type": "mrope", "mrope_section": section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_config={
            **vision,
            "out_hidden_size": hidden,
            "patch_size": SPEC.patch_size,
            "spatial_merge_size": SPEC.merge_size,
            "temporal_patch_size": SPEC.temporal_patch_size,
            "window_size": 112,
        },
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )
