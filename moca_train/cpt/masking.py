"""Corruption for continual pre-training: text-token masking (MLM) and merged-patch noising (MAE).

Pure functions: every random draw comes from the explicit ``torch.Generator`` argument, nothing reads
global RNG or module state, so the same generator seed gives the same masks (moca-method.md §3.1).

- Text: each maskable token is masked independently with probability ``p`` and replaced by
  ``<|mask|>`` (100 %, no 80/10/10). Padding, special tokens (``<|im_start|>``, vision start/end,
  ``<|image_pad|>``, the mask token itself) are never masked. Labels are aligned with the hidden-state
  positions that must predict them: shifted (paper, after LLM2Vec: token ``i`` from position ``i-1``)
  or unshifted (reference code: token ``i`` from position ``i``).
- Causal LM (the base-model stage, not a corruption): every text token is a target of the position
  before it; inputs are not changed. With causal attention that is ordinary next-token prediction.
- Images: the unit is one merged LLM visual token = ``merge_size**2`` consecutive rows of
  ``pixel_values`` (Qwen2-VL emits rows grouped by merge unit). A masked unit's rows are replaced by
  unit-Gaussian noise, drawn per row (paper) or as one vector shared by every masked row of the batch
  (reference code). Tokens are not dropped; targets are the original normalised pixels.

Shapes: B batch, T tokens, P patch rows, C values per patch row (1176), K merge_size**2, N = P / K merged
visual tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

IGNORE_INDEX = -100  # torch cross_entropy's default ignore_index
NoiseMode = Literal["per_patch", "shared"]


@dataclass
class TextMasking:
    """Result of :func:`mask_text_tokens`.

    Attributes:
        input_ids: (B, T) corrupted ids (masked positions hold the mask token).
        labels: (B, T) target ids at the hidden positions that predict them, ``IGNORE_INDEX`` elsewhere.
        mask: (B, T) bool, True where the *input* token was replaced.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor


@dataclass
class PatchMasking:
    """Result of :func:`mask_image_patches`.

    Attributes:
        pixel_values: (P, C) corrupted patch rows.
        target: (N, K * C) original rows of each merged token, concatenated in row order.
        mask: (N,) bool, True for merged tokens whose rows were replaced by noise.
    """

    pixel_values: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor


def special_token_ids(tokenizer) -> list[int]:
    """Ids that must never be masked: the tokenizer's special tokens plus every added special token.

    Args:
        tokenizer: a Hugging Face tokenizer (Qwen's registers vision and chat tokens as added specials).

    Returns:
        Sorted unique ids.
    """
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    return sorted(ids)


def mask_text_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    mask_token_id: int,
    never_mask_ids: list[int] | torch.Tensor,
    probability: float,
    generator: torch.Generator,
    shift_labels: bool = True,
) -> TextMasking:
    """Bernoulli-mask text tokens for MLM.

    Args:
        input_ids: (B, T) ids after image expansion.
        attention_mask: (B, T) 1 on real tokens, 0 on padding.
        mask_token_id: id of ``<|mask|>``.
        never_mask_ids: special and vision ids that are never masked (see :func:`special_token_ids`).
        probability: masking probability per maskable token, in [0, 1].
        generator: the only source of randomness (on ``input_ids``' device).
        shift_labels: True (paper): the label of token ``i`` sits at position ``i-1``, and only if
            ``i-1`` is a real token; False (reference code): at position ``i``.

    Returns:
        :class:`TextMasking`.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mask probability must be in [0, 1], got {probability}")
    never = torch.as_tensor(never_mask_ids, dtype=input_ids.dtype, device=input_ids.device)
    maskable = attention_mask.bool() & ~torch.isin(input_ids, never)  # (B, T)
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)  # (B, T)
    mask = maskable & (draw < probability)
    corrupted = input_ids.masked_fill(mask, mask_token_id)
    if shift_labels:
        labels = _shifted_labels(input_ids, attention_mask, mask)
    else:
        labels = torch.where(mask, input_ids, IGNORE_INDEX)
    return TextMasking(input_ids=corrupted, labels=labels, mask=mask)


def causal_lm_labels(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, *, never_predict_ids: list[int] | torch.Tensor
) -> torch.Tensor:
    """Next-token targets: the label at position ``i`` is token ``i+1`` when that token is real text.

    Padding, special and vision ids (``<|image_pad|>``, vision start/end) are never targets, so the loss
    is over text only; an image still conditions the text that follows it.

    Args:
        input_ids: (B, T) ids after image expansion.
        attention_mask: (B, T) 1 on real tokens, 0 on padding.
        never_predict_ids: ids that are never targets (see :func:`special_token_ids`).

    Returns:
        (B, T) labels, ``IGNORE_INDEX`` where nothing is predicted (always at the last position).
    """
    never = torch.as_tensor(never_predict_ids, dtype=input_ids.dtype, device=input_ids.device)
    target = attention_mask.bool() & ~torch.isin(input_ids, never)  # (B, T)
    return _shifted_labels(input_ids, attention_mask, target)


def _shifted_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T) labels predicting token ``i`` at position ``i-1``, where ``target[:, i]`` and ``i-1`` is real."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    predictable = target[:, 1:] & attention_mask[:, :-1].bool()  # (B, T-1): target i, predictor i-1 real
    labels[:, :-1] = torch.where(predictable, input_ids[:, 1:], IGNORE_INDEX)
    return labels


def patch_targets(pixel_values: torch.Tensor, *, merge_size: int, normalize: bool = False) -> torch.Tensor:
    """Group patch rows by merged visual token: the MAE regression target.

    Args:
        pixel_values: (P, C) normalised patch rows, ``merge_size**2`` consecutive rows per merged token.
        merge_size: the vision config's ``spatial_merge_size``.
        normalize: per-token target normalisation (MAE ``norm_pix_loss``): subtract the mean and divide
            by the std over each merged token's values. Off in the paper and the reference code.

    Returns:
        (N, K * C) targets.
    """
    k = merge_size**2
    if pixel_values.shape[0] % k:
        raise ValueError(f"{pixel_values.shape[0]} patch rows is not a multiple of merge_size**2 = {k}")
    target = pixel_values.reshape(pixel_values.shape[0] // k, -1)  # (N, K*C)
    if normalize:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return target


def mask_image_patches(
    pixel_values: torch.Tensor,
    *,
    merge_size: int,
    probability: float,
    generator: torch.Generator,
    noise: NoiseMode = "per_patch",
    normalize_targets: bool = False,
) -> PatchMasking:
    """Bernoulli-mask merged visual tokens and replace their patch rows with unit-Gaussian noise.

    Args:
        pixel_values: (P, C) patch rows of every image of the batch, in row-major batch order.
        merge_size: the vision config's ``spatial_merge_size`` (2 for Qwen2.5-VL).
        probability: masking probability per merged token, in [0, 1].
        generator: the only source of randomness (on ``pixel_values``' device).
        noise: ``per_patch`` (paper: an independent N(0, 1) draw for every masked row) or ``shared``
            (reference code: one C-dim N(0, 1) vector written into every masked row).
        normalize_targets: see :func:`patch_targets`.

    Returns:
        :class:`PatchMasking`.
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"mask probability must be in [0, 1], got {probability}")
    if noise not in ("per_patch", "shared"):
        raise ValueError(f"noise must be 'per_patch' or 'shared', got {noise!r}")
    target = patch_targets(pixel_values, merge_size=merge_size, normalize=normalize_targets)  # (N, K*C)
    n, dev = target.shape[0], pixel_values.device
    mask = torch.rand(n, generator=generator, device=dev) < probability  # (N,)
    rows = mask.repeat_interleave(merge_size**2)  # (P,)
    n_rows, width = int(rows.sum()), pixel_values.shape[1]
    if noise == "shared":
        values = torch.randn(width, generator=generator, device=dev).expand(n_rows, width)  # (M, C)
    else:
        values = torch.randn((n_rows, width), generator=generator, device=dev)  # (M, C)
    corrupted = pixel_values.clone()
    corrupted[rows] = values.to(pixel_values.dtype)
    return PatchMasking(pixel_values=corrupted, target=target, mask=mask)
