"""Mask-aware pooling and normalisation over token states.

Shapes: B batch, T tokens, D hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the hidden states of real tokens, accumulated in float32.

    MoCa pools over every non-pad position: text, instruction, vision start/end and image tokens
    (moca-method.md §1.3).

    Args:
        hidden: (B, T, D) token states in any float dtype.
        attention_mask: (B, T) 1 on real tokens, 0 on padding. A row with no real token gives zeros.

    Returns:
        (B, D) float32 means.
    """
    mask = attention_mask.to(torch.float32).unsqueeze(-1)  # (B, T, 1)
    summed = (hidden.to(torch.float32) * mask).sum(dim=1)  # (B, D)
    return summed / mask.sum(dim=1).clamp(min=1.0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) position of each row's last real token, whatever the padding side (0 for a row with none).

    Args:
        attention_mask: (B, T) 1 on real tokens, 0 on padding (left, right, or columns masked anywhere,
            such as the dummy image appended to image-less training batches).
    """
    t = attention_mask.shape[1]
    positions = torch.arange(t, device=attention_mask.device).expand_as(attention_mask)  # (B, T)
    return torch.where(attention_mask.bool(), positions, -1).amax(dim=1).clamp(min=0)


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """State of each row's last real token, in float32 (the reference's causal pooling).

    The reference (``qwen2_5_vl_embed.py:29-44``) takes the last position of a left-padded batch and the
    position ``sum(mask) - 1`` otherwise; the last position whose mask is 1 is both, and stays right when
    padding or masked columns sit anywhere else.

    Args:
        hidden: (B, T, D) token states in any float dtype.
        attention_mask: (B, T) 1 on real tokens, 0 elsewhere.

    Returns:
        (B, D) float32 states.
    """
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows, last_token_index(attention_mask).to(hidden.device)].to(torch.float32)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(B, T, D) -> (B, D) float32: ``mode`` ``"mean"`` (:func:`mean_pool`) or ``"last"`` (:func:`last_token_pool`)."""
    if mode == "mean":
        return mean_pool(hidden, attention_mask)
    if mode == "last":
        return last_token_pool(hidden, attention_mask)
    raise ValueError(f"pooling must be 'mean' or 'last', got {mode!r}")


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit-norm rows: (B, D) -> (B, D); an all-zero row stays zero."""
    return F.normalize(x, p=2, dim=-1)
