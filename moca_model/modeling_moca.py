"""MoCaMixin: a stock Qwen-VL base model made bidirectional, returning pooled unit embeddings.

One mixin, applied to the stock base-model class of each backbone (:mod:`moca_model.backbones`):
``MoCaModel`` (``Qwen2_5_VLModel``, the released MoCa models), ``MoCaQwen2VLModel`` and
``MoCaQwen3VLModel``. The two real differences from upstream (moca-method.md §1): attention over the text decoder is
bidirectional (see :mod:`moca_model.bidirectional`), and the output is the mask-weighted mean of the
final-norm hidden states, L2-normalised. Both are switches: ``attention`` (bidirectional | causal) and
``pooling`` (mean | last: the last real token's state, the reference's pooling for causal attention).
There is no LM head: the class is the base model, so a checkpoint's ``lm_head.weight`` is never
materialised.

Shapes: B batch, T tokens, D hidden size, P patch rows (each 3 * 2 * patch² values: 1176 with 14-px
patches, 1536 with Qwen3-VL's 16-px ones), I images, V videos.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Qwen2_5_VLModel
from transformers.utils import ModelOutput

from moca_model import moca_config
from moca_model.bidirectional import decoder_mask, set_causal
from moca_model.compat import check_transformers_version, rope_index
from moca_model.pooling import l2_normalize, pool

check_transformers_version()


@dataclass
class EmbeddingOutput(ModelOutput):
    """Output of a MoCa model (:class:`MoCaMixin`).

    Attributes:
        embeddings: (B, D) float32; unit norm when ``normalize=True``.
        last_hidden_state: (B, T, D) final-norm token states in the model dtype.
    """

    embeddings: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class MoCaMixin:
    """Embedder on a stock Qwen-VL base model: bidirectional (MoCa) unless switched to causal, mean-pooled
    unless set to ``last``. Put it first in the bases: ``class M(MoCaMixin, Qwen2_5_VLModel)``.

    ``bidirectional`` and ``pooling`` are the runtime truth; :func:`moca_model.loading.load_model` sets
    them from the checkpoint's ``moca_config.json`` (or the caller's overrides), and
    :meth:`save_pretrained` records them there, with the ``backbone``.
    """  # noqa: D205

    backbone: str = "qwen2_5_vl"
    """The :mod:`moca_model.backbones` name of the stock class this mixin is applied to."""
    supports_unpadded_fast_path: bool = True
    """The text decoder accepts a ``{layer type: None}`` mask (False for Qwen3-VL, which always builds one)."""

    def __init__(self, config):
        super().__init__(config)
        self.bidirectional = True
        self.pooling = moca_config.DEFAULT_POOLING
        # no mask for batches without padding (see moca_model.bidirectional)
        self.unpadded_fast_path = self.supports_unpadded_fast_path
        set_causal(self.language_model, causal=False)

    def set_bidirectional(self, bidirectional: bool) -> None:
        """Switch between MoCa's bidirectional attention and Qwen's causal attention (idempotent)."""
        self.bidirectional = bidirectional
        set_causal(self.language_model, causal=not bidirectional)

    @property
    def attention(self) -> str:
        """``"bidirectional"`` or ``"causal"`` (the value ``moca_config.json`` records)."""
        return "bidirectional" if self.bidirectional else "causal"

    def set_attention(self, attention: str) -> None:
        """Set the mode by name (``bidirectional`` | ``causal``)."""
        self.set_bidirectional(moca_config.check_attention(attention) == "bidirectional")

    def set_pooling(self, pooling: str) -> None:
        """``"mean"`` (MoCa) or ``"last"`` (the last real token's state)."""
        self.pooling = moca_config.check_pooling(pooling)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """The stock ``save_pretrained``, then record backbone, attention and pooling in ``moca_config.json``."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            moca_config.update(save_directory, backbone=self.backbone, attention=self.attention, pooling=self.pooling)

    @classmethod
    def stock_class(cls) -> type:
        """The stock transformers base model this class extends (e.g. ``Qwen3VLModel``)."""
        return next(c for c in cls.__mro__ if c.__module__.startswith("transformers.models."))

    @property
    def attn_implementation(self) -> str:
        """The text decoder's attention backend (``sdpa``, ``eager``, ``flash_attention_2``)."""
        return self.language_model.config._attn_implementation

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        *,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        normalize: bool = True,
        position_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> EmbeddingOutput:
        """Embed a batch.

        Args:
            input_ids: (B, T) with each image's ``<|image_pad|>`` run already expanded.
            attention_mask: (B, T) 1 on real tokens; None means no padding.
            pixel_values: (P, C) patch rows of all images in row-major batch order, or None.
            image_grid_thw: (I, 3) patch grid of each image, or None.
            pixel_values_videos: (P_v, C) patch rows of all videos in row-major batch order, or None.
            video_grid_thw: (V, 3) patch grid of each video, or None.
            normalize: L2-normalise the pooled embeddings.
            position_ids: (3, B, T) mRoPE positions when the caller already has them (CPT reuses them
                for its MAE decoder); computed here otherwise.
            **kwargs: passed to the upstream forward (e.g. ``output_hidden_states``).

        Returns:
            :class:`EmbeddingOutput` with (B, D) embeddings and (B, T, D) hidden states.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = rope_index(
                self, input_ids, attention_mask, image_grid_thw, self.config.image_token_id, video_grid_thw
            )
        mask = attention_mask
        if self.bidirectional:
            mask = decoder_mask(
                attention_mask, implementation=self.attn_implementation, dtype=self.dtype, fast=self.unpadded_fast_path
            )
        out = super().forward(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            use_cache=False,
            return_dict=True,
            **kwargs,
        )
        hidden = out.last_hidden_state  # (B, T, D)
        emb = pool(hidden, attention_mask, self.pooling)  # (B, D) float32
        return EmbeddingOutput(embeddings=l2_normalize(emb) if normalize else emb, last_hidden_state=hidden)


class MoCaModel(MoCaMixin, Qwen2_5_VLModel):
    """MoCa on Qwen2.5-VL (the released MoCa-3B/7B): the stock ``Qwen2_5_VLModel`` plus :class:`MoCaMixin`."""
