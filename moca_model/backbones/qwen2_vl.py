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

from moca_model.backbones import Backbone
from moca_model.modeling_moca import MoCaMixin

SPEC = Backbone(name="qwen2_vl", model_type="qwen2_vl", patch_size=14, default_processor="Qwen/Qwen2-VL-2B-Instruct")


class MoCaQwen2VLModel(MoCaMixin, Qwen2VLModel):
    """MoCa on Qwen2-VL: the stock ``Qwen2VLModel`` plus :class:`MoCaMixin`."""

    backbone = "qwen2_vl"


MODEL_CLASS = MoCaQwen2VLModel


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
) -> Qwen2VLConfig:
    """A Qwen2-VL config of any size (tests, benchmarks); arguments as :func:`moca_model.testing.random_config`.

    ``vision`` holds ``depth``, ``hidden_size`` (the ViT width, Qwen2-VL's ``embed_dim``), ``intermediate_size``
    (turned into ``mlp_ratio``) and ``num_heads``.
    """
    half = hidden // heads // 2
    section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # 2B/7B: [16, 24, 24]
    return Qwen2VLConfig(
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
            "depth": vision["depth"],
            "embed_dim": vision["hidden_size"],
            "mlp_ratio": vision["intermediate_size"] // vision["hidden_size"],  # an int on transformers 5
            "num_heads": vision["num_heads"],
            "hidden_size": hidden,  # Qwen2-VL's merger output size (= the text hidden size)
            "patch_size": SPEC.patch_size,
            "spatial_merge_size": SPEC.merge_size,
            "temporal_patch_size": SPEC.temporal_patch_size,
        },
        architectures=["Qwen2VLForConditionalGeneration"],
    )
