"""Training-only heads for continual pre-training: the MAE decoder + pixel projection, and the MLM head.

``moca_model`` never imports this module (inference has no use for these weights). Sizes come from the
model config, never from literals:

- MAE decoder (moca-method.md §3.1, PAPER "light-weight decoder"): ONE extra Qwen2.5-VL text decoder
  layer, a copy of the middle LLM layer (index ``num_layers // 2``; the paper initialises from it "to
  improve loss stability"), run bidirectionally over the final-norm hidden states with the encoder's
  padding mask and mRoPE position embeddings. Copying happens before any sharding (FSDP / ZeRO-3 wrap
  the finished module), which avoids the reference's partitioned-copy problem (§7 item 11).
- MAE projection: ``Linear(hidden -> merge_size**2 * C)`` with C = channels * temporal_patch *
  patch**2 (1176 for Qwen2.5-VL), weights N(0, 0.02), zero bias. Its output is laid out as K rows of C
  in patch-row order, the same layout as :func:`moca_train.cpt.masking.patch_targets`. (The reference puts
  the patch index on the fastest axis; for a freshly initialised layer that is only a permutation.)
- MLM head: a ``Linear`` sharing the input embedding's Parameter (tied, 3B) or, for untied checkpoints
  (7B), the checkpoint's own ``lm_head.weight`` loaded from its safetensors. Logits are computed only
  at scored positions, in float32.

Shapes: B batch, T tokens, D hidden size, M selected positions, V vocabulary, K merge_size**2, C patch row.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from moca_model.bidirectional import set_causal

if TYPE_CHECKING:
    from moca_model import MoCaModel

logger = logging.getLogger(__name__)

MAE_PROJ_INIT_STD = 0.02  # reference src/model.py:316-318 (normal_(std=0.02), zero bias)


def patch_row_size(vision_config) -> int:
    """Values per ``pixel_values`` row: channels * temporal_patch * patch**2 (1176 for Qwen2.5-VL)."""
    channels = getattr(vision_config, "in_channels", None) or getattr(vision_config, "in_chans", 3)
    return channels * vision_config.temporal_patch_size * vision_config.patch_size**2


def mae_output_size(vision_config) -> int:
    """Values regressed per merged visual token: merge_size**2 patch rows (4 * 1176 = 4704)."""
    return vision_config.spatial_merge_size**2 * patch_row_size(vision_config)


class MAEDecoder(nn.Module):
    """One bidirectional copy of the middle text decoder layer, applied to final-norm hidden states."""

    def __init__(self, model: MoCaModel):
        super().__init__()
        layers = model.language_model.layers
        self.layer = copy.deepcopy(layers[len(layers) // 2])
        set_causal(self, causal=False)

    @property
    def layers(self) -> list[nn.Module]:
        """The decoder layers (one), so :func:`moca_model.bidirectional.set_causal` applies."""
        return [self.layer]

    def forward(
        self, hidden: torch.Tensor, *, attention_mask: torch.Tensor, position_embeddings: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """Run the layer.

        Args:
            hidden: (B, T, D) final-norm hidden states of the encoder.
            attention_mask: the mask the encoder's layers received (from ``attention_mask_for``).
            position_embeddings: ``(cos, sin)`` from the encoder's rotary embedding.

        Returns:
            (B, T, D) decoder outputs.
        """
        out = self.layer(hidden, attention_mask=attention_mask, position_embeddings=position_embeddings)
        return out[0] if isinstance(out, tuple) else out  # transformers 4.x returns a tuple, 5.x a tensor


def build_mae_proj(model: MoCaModel) -> nn.Linear:
    """``Linear(hidden -> merge_size**2 * C)`` with N(0, 0.02) weight and zero bias."""
    hidden = model.config.get_text_config().hidden_size
    proj = nn.Linear(hidden, mae_output_size(model.config.vision_config), dtype=model.dtype)
    nn.init.normal_(proj.weight, std=MAE_PROJ_INIT_STD)
    nn.init.zeros_(proj.bias)
    return proj


def load_untied_lm_head(model: MoCaModel, checkpoint_dir: str | Path) -> nn.Linear | None:
    """The checkpoint's own ``lm_head`` for untied models (Qwen2.5-VL-7B); None when embeddings are tied.

    Args:
        model: the loaded encoder (its embedding has the final vocabulary size).
        checkpoint_dir: directory of the checkpoint the encoder came from.

    Returns:
        A bias-free ``Linear(D -> V)`` initialised from ``lm_head.weight`` (extra vocabulary rows, e.g.
        for a newly added mask token, start from the input embedding), or None if tied.

    Raises:
        KeyError: the model is untied but the checkpoint has no ``lm_head.weight``.
    """
    from safetensors import safe_open

    from moca_model.loading import checkpoint_keys

    if model.config.get_text_config().tie_word_embeddings or getattr(model.config, "tie_word_embeddings", False):
        return None
    keys = checkpoint_keys(Path(checkpoint_dir))
    if "lm_head.weight" not in keys:
        raise KeyError(f"untied model but no lm_head.weight in {checkpoint_dir}")
    with safe_open(keys["lm_head.weight"], framework="pt") as f:
        stored = f.get_tensor("lm_head.weight")  # (V_ckpt, D)
    embed = model.get_input_embeddings().weight  # (V, D)
    weight = embed.detach().clone()
    rows = min(stored.shape[0], weight.shape[0])
    weight[:rows] = stored[:rows].to(weight.dtype)
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
    head.weight.data.copy_(weight)
    logger.info("MLM head: untied lm_head.weight loaded from %s", checkpoint_dir)
    return head


def tied_lm_head(model: MoCaModel) -> nn.Linear:
    """A bias-free ``Linear(D -> V)`` whose weight IS the input embedding's Parameter (tied, as in 3B).

    Calling the head as a module (rather than ``F.linear`` on the embedding weight) lets ZeRO-3 and FSDP
    gather the shared weight for the call, the way they handle a ``...ForConditionalGeneration`` head.
    """
    weight = model.get_input_embeddings().weight  # (V, D)
    with torch.device("meta"):  # no throw-away V x D allocation
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    head.weight = weight
    return head
