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


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Unit-norm rows: (B, D) -> (B, D); an all-zero row stays zero."""
    return F.normalize(x, p=2, dim=-1)
