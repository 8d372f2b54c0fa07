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

from moca_model.backbones import Backbone, ModelSize
from moca_model.backbones.qwen2_vl import qwen2_text_config
from moca_model.modeling_moca import MoCaModel

SPEC = Backbone(name="qwen2_5_vl", model_type="qwen2_5_vl", patch_size=14)
MODEL_CLASS = MoCaModel


def random_config(ids: dict[str, int], size: ModelSize) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config of any size (tests, benchmarks); see :func:`moca_model.testing.random_config`.

    ``size.vision`` may set ``fullatt_block_indexes`` (default: the last block); windows are 112 px.
    """
    vision = {"fullatt_block_indexes": [size.vision["depth"] - 1], **size.vision}
    return Qwen2_5_VLConfig(
        **qwen2_text_config(ids, size),
        vision_config={
            **vision,
            "out_hidden_size": size.hidden,
            "patch_size": SPEC.patch_size,
            "spatial_merge_size": SPEC.merge_size,
            "temporal_patch_size": SPEC.temporal_patch_size,
            "window_size": 112,
        },
        architectures=["Qwen2_5_VLForConditionalGeneration"],
    )
