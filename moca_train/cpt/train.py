r"""``python -m moca_train.cpt``: modality-aware continual pre-training (MoCa stage 1, moca-method.md §3).

With ``objective.use_clm`` (and ``model.attention: causal``) the same entry point trains a *base model*
instead: causal next-token prediction on the interleaved corpus, the stand-in for a VLM's own
pre-training (``configs/cpt/demo_base.yaml``).

One forward pass over interleaved text+image rows in which text tokens are masked (MLM through the
tied LM head) and merged image patches are noised (MAE through a one-layer bidirectional decoder);
L = MLM + w * MAE, both terms logged. Cost-bucketed micro-batches give every rank its own share of
the same global batch; the accelerate engine (:mod:`moca_train.engine`) does bf16, accumulation,
clipping, DeepSpeed-style log warmup + linear decay, checkpoints and exact resume. Checkpoints load with
``MoCaEncoder.from_pretrained(checkpoint_dir)``; the heads sit beside the weights in
``cpt_heads.safetensors``, which every loader ignores.

Commands (each also takes dotted overrides, e.g. ``--train.max_steps 100``; ``--help`` lists all)::

    # CPU, about a minute: a tiny random checkpoint and a tiny generated corpus (README "A first training run")
    python -m moca_model.tiny runs/tiny
    python -m moca_train.cpt.synthetic runs/cpt-data
    python -m moca_train.cpt --config configs/cpt/tiny.yaml

    # one GPU
    python -m moca_train.cpt --config configs/cpt/qwen25vl_3b.yaml

    # one node, 8 GPUs (DDP)
    torchrun --nproc_per_node 8 -m moca_train.cpt --config configs/cpt/qwen25vl_3b.yaml

    # FSDP2 or DeepSpeed ZeRO-3 (the reference's engine): an accelerate config file picks the backend
    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml -m moca_train.cpt \
        --config configs/cpt/qwen25vl_7b.yaml

    # 4 nodes x 8 GPUs (the paper's 32 H100s); run on every node with its NODE_RANK
    torchrun --nnodes 4 --nproc_per_node 8 --node_rank $NODE_RANK \
        --rdzv_backend c10d --rdzv_endpoint $MASTER_ADDR:29500 \
        -m moca_train.cpt --config configs/cpt/qwen25vl_3b.yaml
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from moca_model.errors import MoCaConfigError
from moca_train.cli import stage_main
from moca_train.cpt.config import CPTConfig

if TYPE_CHECKING:
    from pathlib import Path

    from moca_model import MoCaProcessor
    from moca_train.cpt.model import CPTModule

logger = logging.getLogger(__name__)

HEADS_FILE = "cpt_heads.safetensors"


def cpt_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The engine's ``loss_fn``: move the micro-batch to the model's device, forward, report both terms.

    The text term is logged as the batch's ``text_objective`` (``mlm``, or ``clm`` for the causal LM).
    """
    from accelerate.utils import send_to_device

    text_key = batch.get("text_objective", "mlm")
    batch = send_to_device(batch, next(model.parameters()).device)
    out = model(batch["inputs"], batch["mlm_labels"], batch["mae_target"], batch["mae_mask"])
    attn = batch["inputs"]["attention_mask"]
    logs = {
        text_key: out["mlm"].item(),
        "mae": out["mae"].item(),
        f"{text_key}_tokens": float(out["mlm_count"]),
        "mae_patches": float(out["mae_count"]),
        "tokens": float(attn.sum()),
        "rows": float(attn.shape[0]),
    }
    return out["loss"], logs


def make_save_fn(processor: MoCaProcessor):
    """Engine ``save_model_fn``: encoder as a loadable checkpoint + processor + heads in their own file."""
    from safetensors.torch import save_file

    from moca_train.cpt.model import ENCODER_PREFIX

    def save(model: CPTModule, directory: Path, state_dict: dict | None) -> None:
        state = state_dict if state_dict is not None else model.state_dict()
        encoder = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
        heads = {k: v.detach().cpu().contiguous() for k, v in model.head_state_dict(state).items()}
        model.encoder.save_pretrained(directory, state_dict=encoder, safe_serialization=True)
        processor.save_pretrained(directory)
        if heads:
            save_file(heads, str(directory / HEADS_FILE), metadata={"format": "pt"})

    return save


def build_batches(cfg: CPTConfig, processor: MoCaProcessor, mask_token_id: int | None, *, accelerator):
    """Corpus (statistics cached, built by the main process first) -> this rank's stateful micro-batches."""
    from moca_train.cpt.batches import CPTBatches
    from moca_train.cpt.collator import CPTCollator, MaskingSettings
    from moca_train.cpt.data import CPTCorpus
    from moca_train.cpt.masking import special_token_ids

    obj = cfg.objective
    settings = MaskingSettings(
        mask_token_id=-1 if mask_token_id is None else mask_token_id,
        never_mask_ids=special_token_ids(processor.tokenizer),
        p_text=obj.p_text,
        p_image=obj.p_image,
        use_mlm=obj.use_mlm,
        use_mae=obj.use_mae,
        use_clm=obj.use_clm,
        shift_labels=obj.shift_labels,
        noise=obj.noise,
        normalize_targets=obj.normalize_targets,
        dummy_image=cfg.data.dummy_image,
        pad_to_multiple_of=cfg.data.pad_to_multiple_of,
    )
    max_length = processor.max_length or torch.iinfo(torch.int64).max
    with accelerator.main_process_first():
        corpus = CPTCorpus(
            cfg.data.sources, processor, seed=cfg.data.seed, cache_dir=cfg.cache_dir(), max_length=max_length
        )
    return CPTBatches(
        corpus,
        CPTCollator(processor, settings),
        token_budget=cfg.data.token_budget,
        world_size=accelerator.num_processes,
        rank=accelerator.process_index,
        seed=cfg.data.seed,
        drop_last=cfg.data.drop_last,
        num_workers=cfg.data.num_workers,
    )


def run(cfg: CPTConfig) -> list[dict[str, float]]:
    """Continual pre-training per ``cfg``; returns the per-step history (see :func:`moca_train.engine.train`)."""
    from moca_model.loading import resolve_checkpoint
    from moca_train.cpt.model import CPTModule, add_mask_token
    from moca_train.engine import build_accelerator, train
    from moca_train.modeling import build_model

    accelerator = build_accelerator(cfg.train)
    if accelerator.num_processes > 1 and not cfg.data.dummy_image:
        raise MoCaConfigError(
            "--data.dummy_image: must be true with several ranks: a rank whose micro-batch has no image would skip "
            "the vision tower (DDP's reducer then fails, FSDP / ZeRO-3 ranks wait for each other forever)"
        )
    torch.manual_seed(cfg.train.seed)  # MAE projection init
    encoder, processor = build_model(cfg.model)
    mask_id = add_mask_token(processor.tokenizer, encoder, cfg.objective.mask_token) if cfg.objective.use_mlm else None
    module = CPTModule(
        encoder,
        use_mlm=cfg.objective.use_mlm or cfg.objective.use_clm,  # both train the LM head on mlm_labels
        use_mae=cfg.objective.use_mae,
        mae_weight=cfg.objective.mae_weight,
        checkpoint_dir=resolve_checkpoint(cfg.model.init_from),
    )
    batches = build_batches(cfg, processor, mask_id, accelerator=accelerator)
    if accelerator.is_main_process:
        n_params = sum(p.numel() for p in module.parameters())
        logger.info("CPT: %d rows, %d micro-batches/epoch/rank, %d parameters", len(batches.corpus),
                    batches.steps_per_epoch(), n_params)  # fmt: skip
    return train(
        model=module,
        batches=batches,
        cfg=cfg.train,
        loss_fn=cpt_loss,
        save_model_fn=make_save_fn(processor),
        run_config=cfg,
        accelerator=accelerator,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse ``--config`` YAML files and dotted overrides into :class:`CPTConfig`, then :func:`run`.

    Returns the exit status (:func:`moca_train.cli.stage_main`): 2 for a config error, 130 / 143 after
    SIGINT / SIGTERM (the log says which checkpoint to resume from).
    """
    return stage_main(argv, CPTConfig, run, prog="python -m moca_train.cpt")


if __name__ == "__main__":
    raise SystemExit(main())
