"""The CPT training module: MoCa encoder + MAE decoder/projection + MLM head in one ``nn.Module``.

One forward over the corrupted batch gives both losses (moca-method.md §3.1: L = MLM + w * MAE on the
same corrupted input). It is a single module so FSDP / DeepSpeed / DDP wrap and call it as a whole.
Either objective can be switched off, in which case its head is not built at all (the reference
crashes on these ablations, §7 item 8). Losses use masked-count denominators, so a batch without a
masked token or patch gives finite zeros (§7 item 9).

Parameter names: ``encoder.*`` is the ``MoCaModel`` (saved as a normal checkpoint); ``mae_decoder.*``,
``mae_proj.*`` and ``lm_head.*`` are the training heads, which every MoCa loader ignores. A tied
``lm_head`` shares the embedding's Parameter and is not saved separately.

Shapes: B batch, T tokens, D hidden, P patch rows, N merged visual tokens, M MLM targets, V vocabulary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from moca_model.bidirectional import attention_mask_for
from moca_model.compat import rope_index
from moca_train.cpt.heads import MAEDecoder, build_mae_proj, load_untied_lm_head, tied_lm_head
from moca_train.cpt.masking import IGNORE_INDEX
from moca_train.losses import cpt_objective, mim_loss, mlm_loss

if TYPE_CHECKING:
    from pathlib import Path

    from moca_model import MoCaModel

ENCODER_PREFIX = "encoder."


def add_mask_token(tokenizer, encoder: MoCaModel, token: str = "<|mask|>") -> int:
    """Add the MLM mask token as a special token (no-op if present) and make the embedding cover it.

    Real Qwen2.5-VL embeddings are padded to 151,936 rows, so the new id (one past the tokenizer)
    already has a row (moca-method.md §3.1); tiny test models are resized by one row.

    Args:
        tokenizer: the processor's tokenizer (modified in place).
        encoder: the model whose input embedding must have a row for the token.
        token: the mask token's text.

    Returns:
        The mask token id.
    """
    tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_additional_special_tokens=False)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id >= encoder.get_input_embeddings().weight.shape[0]:
        encoder.resize_token_embeddings(token_id + 1, mean_resizing=False)
    return token_id


class CPTModule(nn.Module):
    """Encoder plus the heads of the enabled objectives.

    Args:
        encoder: the bidirectional ``MoCaModel`` being pre-trained.
        use_mlm: build the MLM head and compute the text loss on ``mlm_labels`` (cross-entropy at labelled
            positions; the causal LM reuses it with next-token labels).
        use_mae: build the MAE decoder/projection and compute the MAE loss.
        mae_weight: w in L = MLM + w * MAE.
        checkpoint_dir: where ``encoder`` was loaded from (untied models read ``lm_head.weight`` there).
    """

    def __init__(
        self,
        encoder: MoCaModel,
        *,
        use_mlm: bool = True,
        use_mae: bool = True,
        mae_weight: float = 0.5,
        checkpoint_dir: str | Path | None = None,
    ):
        super().__init__()
        if not (use_mlm or use_mae):
            raise ValueError("at least one of use_mlm / use_mae must be on")
        self.encoder = encoder
        self._no_split_modules = list(getattr(encoder, "_no_split_modules", None) or [])  # FSDP auto-wrap
        self.use_mlm, self.use_mae, self.mae_weight = use_mlm, use_mae, mae_weight
        if use_mae:
            self.mae_decoder = MAEDecoder(encoder)
            self.mae_proj = build_mae_proj(encoder)
        if use_mlm:
            untied = load_untied_lm_head(encoder, checkpoint_dir) if checkpoint_dir is not None else None
            self.lm_head_tied = untied is None
            self.lm_head = tied_lm_head(encoder) if untied is None else untied

    def head_state_dict(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The training heads' own weights: everything outside ``encoder.*``, minus a tied LM head.

        Args:
            state: a full state dict of this module (e.g. gathered under FSDP); default ``state_dict()``.
        """
        state = self.state_dict() if state is None else state
        skip = ("lm_head.weight",) if getattr(self, "lm_head_tied", False) else ()
        return {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIX) and k not in skip}

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        mlm_labels: torch.Tensor | None = None,
        mae_target: torch.Tensor | None = None,
        mae_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of one corrupted micro-batch.

        Args:
            inputs: ``input_ids`` (B, T), ``attention_mask`` (B, T), optional ``pixel_values`` (P, 1176)
                and ``image_grid_thw`` (I, 3).
            mlm_labels: (B, T) targets aligned with hidden positions, -100 where unscored.
            mae_target: (N, K * C) original pixels of each real merged visual token.
            mae_mask: (N,) bool, True where the token was noised.

        Returns:
            ``loss`` (scalar, differentiable), ``mlm`` and ``mae`` (detached scalars, 0 when off),
            ``mlm_count`` and ``mae_count`` (number of scored tokens / patches).
        """
        enc = self.encoder
        ids, attn = inputs["input_ids"], inputs["attention_mask"]
        grid = inputs.get("image_grid_thw")
        position_ids = rope_index(enc, ids, attn, grid, enc.config.image_token_id)  # (3, B, T)
        out = enc(**inputs, position_ids=position_ids, normalize=False)
        hidden = out.last_hidden_state  # (B, T, D)
        zero = hidden.sum() * 0.0  # keeps every term on the graph and on the right device/dtype
        mlm = mae = zero.float()
        mlm_count = mae_count = torch.zeros((), device=hidden.device, dtype=torch.long)
        if self.use_mlm and mlm_labels is not None:
            scored = mlm_labels != IGNORE_INDEX  # (B, T)
            logits = self.lm_head(hidden[scored]).float()  # (M, V): only scored positions, CE in fp32
            mlm = mlm_loss(logits, mlm_labels[scored])
            mlm_count = scored.sum()
        if self.use_mae and mae_target is not None and mae_mask is not None:
            mae, mae_count = self._mae(hidden, ids, attn, position_ids, mae_target, mae_mask)
        loss = cpt_objective(mlm, mae, mae_weight=self.mae_weight if self.use_mae else 0.0) + zero
        return {"loss": loss, "mlm": mlm.detach(), "mae": mae.detach(), "mlm_count": mlm_count, "mae_count": mae_count}

    def _mae(self, hidden, ids, attn, position_ids, target, mask):
        enc = self.encoder
        mask4d = attention_mask_for(attn, implementation=enc.attn_implementation, dtype=hidden.dtype)
        cos_sin = enc.language_model.rotary_emb(hidden, position_ids)
        decoded = self.mae_decoder(hidden, attention_mask=mask4d, position_embeddings=cos_sin)  # (B, T, D)
        image_positions = (ids == enc.config.image_token_id) & attn.bool()  # (B, T), row-major = patch order
        tokens = decoded[image_positions]  # (N, D)
        if tokens.shape[0] != target.shape[0]:
            raise ValueError(f"{tokens.shape[0]} image tokens in the batch but {target.shape[0]} MAE targets")
        pred = self.mae_proj(tokens)  # (N, K*C)
        return mim_loss(pred.float(), target.float(), mask), mask.sum()
