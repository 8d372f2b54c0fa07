"""Qwen2-VL: ``Qwen2VLModel`` + :class:`MoCaMixin` = ``MoCaQwen2VLModel``.

Geometry as Qwen2.5-VL: 14-px patches, 2 x 2 merge, 28 x 28 px per visual token (MoCa's 256..1,024 tokens:
200,704..802,816 px), CLIP normalisation; same image processor and tokenizer. Differences that matter
here: the vision tower attends over whole frames (no windows) with LayerNorm + quick-GELU blocks, and a
video's temporal positions advance by one per temporal patch (no ``tokens_per_second``). Text attention
is Qwen2's (q/k/v bias, chunked M-RoPE), made bidirectional exactly as on Qwen2.5-VL, with the
``{layer: None}`` no-mask fast path.
"""

from __future__ import annotations

from transformers import Qwen2VLConfig, Qwen2VLModel

from moca_model.backbones import Backbone, ModelSize
from moca_model.modeling_moca import MoCaMixin

SPEC = Backbone(name="qwen2_vl", model_type="qwen2_vl", patch_size=14, default_processor="Qwen/Qwen2-VL-2B-Instruct")


class MoCaQwen2VLModel(MoCaMixin, Qwen2VLModel):
    """MoCa on Qwen2-VL: the stock ``Qwen2VLModel`` plus :class:`MoCaMixin`."""

    backbone = "qwen2_vl"


MODEL_CLASS = MoCaQwen2VLModel


def qwen2_text_config(ids: dict[str, int], size: ModelSize) -> dict:
    """The text fields of a Qwen2-VL / Qwen2.5-VL config (flat, as their hub configs are), chunked M-RoPE."""
    half = size.head_dim // 2  # mrope sections must sum to head_dim / 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # t, h, w = 1/4, 3/8, 3/8 ([16, 24, 24])
    return {
        **size.text_fields(),
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def random_config(ids: dict[str, int], size: ModelSize) -> Qwen2VLConfig:
    """A Qwen2-VL config of any size (tests, benchmarks); see :func:`moca_model.testing.random_config`.

    ``size.vision``'s ``hidden_size`` is the ViT width (Qwen2-VL's ``embed_dim``) and ``intermediate_size``
    becomes ``mlp_ratio``.
    """
    vision = size.vision
    return Qwen2VLConfig(
        **qwen2_text_config(ids, size),
        vision_config={
            "depth": vision["depth"],
            "embed_dim": vision["hidden_size"],
            "mlp_ratio": vision["intermediate_size"] // vision["hidden_size"],  # an int on transformers 5
            "num_heads": vision["num_heads"],
            "hidden_size": size.hidden,  # Qwen2-VL's merger output size (= the text hidden size)
            "patch_size": SPEC.patch_size,
            "spatial_merge_size": SPEC.merge_size,
            "temporal_patch_size": SPEC.temporal_patch_size,
        },
        architectures=["Qwen2VLForConditionalGeneration"],
    )
