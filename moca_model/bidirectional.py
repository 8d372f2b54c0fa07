"""The only code that turns a Qwen-VL causal text decoder into a bidirectional one.

Supported: transformers >= 4.52, < 6 (checked by :func:`moca_model.compat.check_transformers_version`), on
every backbone of :mod:`moca_model.backbones` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): one mechanism for both
transformers lines and all three, tested per backbone (``tests/moca_model/test_backbones.py``).

MoCa's reference code vendors transformers 4.50's modeling file and flips three things (moca-method.md
§1.1). On the stock class the same effect needs two steps, because each attention backend decides
causality differently:

1. ``is_causal = False`` on every text self-attention module. flash-attention-2 reads this flag and
   gets a 2-D padding mask (varlen), so this alone makes it bidirectional. SDPA reads it only when no
   mask is passed (``is_causal = q_len > 1 and mask is None and module.is_causal``).
2. For SDPA and eager, a 4-D *padding-only* mask: key ``j`` is visible to every query iff it is a real
   token. ``masking_utils`` returns an already-4-D mask unchanged, so no causal triangle is added.
   (``is_causal=False`` with a 2-D mask is NOT enough: ``create_causal_mask`` ignores the module flag
   and padded batches stay causal. ``_update_causal_mask``, which the mteb port patches, is gone
   since 4.53.)

Both steps are idempotent. The vision tower is already non-causal and is not touched.

Fast path (:func:`decoder_mask`): a batch without padding needs no mask at all. SDPA and eager then get
``None`` per layer (a ``{layer type: None}`` mapping, which the text decoder uses as given, so no causal
mask is built), and SDPA, seeing no mask and ``is_causal=False``, may pick its fused kernels
(flash / memory-efficient). The embeddings are the same (tests: <= 1e-6). Qwen3-VL's text model always
builds its mask (it has no mapping pass-through), so it never takes the fast path
(``MoCaQwen3VLModel.supports_unpadded_fast_path``): unpadded Qwen3-VL batches get the all-real 4-D mask.
"""

from __future__ import annotations

import torch

FLASH_IMPLEMENTATIONS = ("flash_attention_2", "flash_attention_3")


def set_causal(language_model: torch.nn.Module, causal: bool) -> None:
    """Set ``is_causal`` on every text self-attention module (idempotent).

    Args:
        language_model: the base model's ``language_model`` (the text decoder).
        causal: False for MoCa's bidirectional attention.
    """
    for layer in language_model.layers:
        layer.self_attn.is_causal = causal


def attention_mask_for(attention_mask: torch.Tensor, *, implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """The mask to hand to the text decoder so that attention is bidirectional over real tokens.

    Args:
        attention_mask: (B, T) 1 for real tokens, 0 for padding.
        implementation: the model's ``config._attn_implementation``.
        dtype: compute dtype (eager adds the mask to fp scores).

    Returns:
        (B, T) unchanged for flash attention (it reads ``is_causal``); (B, 1, T, T) bool for SDPA;
        (B, 1, T, T) additive float (0 or dtype min) for eager and anything else.
    """
    if implementation in FLASH_IMPLEMENTATIONS:
        return attention_mask
    b, t = attention_mask.shape
    keep = attention_mask.bool()[:, None, None, :].expand(b, 1, t, t)  # (B, 1, T, T)
    if implementation == "sdpa":
        return keep
    mask = torch.zeros((b, 1, t, t), dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~keep, torch.finfo(dtype).min)


def decoder_mask(attention_mask: torch.Tensor, *, implementation: str, dtype: torch.dtype, fast: bool = True):
    """The text decoder's ``attention_mask`` argument: :func:`attention_mask_for`, or no mask when unpadded.

    Args:
        attention_mask: (B, T) 1 for real tokens, 0 for padding.
        implementation: the model's ``config._attn_implementation``.
        dtype: compute dtype.
        fast: allow the no-mask fast path (``MoCaModel.unpadded_fast_path``).

    Returns:
        ``{"full_attention": None, "sliding_attention": None}`` when ``fast``, the backend is not flash
        attention and no token is padding; otherwise :func:`attention_mask_for`'s mask.
    """
    if fast and implementation not in FLASH_IMPLEMENTATIONS and bool(attention_mask.all()):
        return {"full_attention": None, "sliding_attention": None}
    return attention_mask_for(attention_mask, implementation=implementation, dtype=dtype)
