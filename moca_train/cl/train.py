"""``python -m moca_train.cl``: heterogeneous contrastive fine-tuning (MoCa stage 2, moca-method.md §4).

InfoNCE over the global batch with hard negatives (other queries' negatives included, paper Eq. 3),
false-negative masking, embeddings gathered across ranks with gradients through the local slice
(loss scaled by the world size, so DDP's averaging yields the full-batch gradient), same-task global
batches, and GradCache so the paper's global batch of 2048 fits on few GPUs. The checkpoint folders
load with ``MoCaEncoder.from_pretrained`` (hence ``vidore-benchmark --model-class moca``, mteb and
``python -m moca_bench.mmeb``).

Commands::

    # CPU, tiny random model and generated shapes, about a minute (paths as in configs/cl/tiny.yaml)
    python -m moca_model.tiny /tmp/moca-tiny
    python -m moca_train.cl.synthetic /tmp/moca-cl-data
    python -m moca_train.cl --config configs/cl/tiny.yaml --train.output_dir runs/cl-tiny

    # one GPU (GradCache keeps the 2048 global batch in memory)
    python -m moca_train.cl --config configs/cl/qwen25vl_3b.yaml --model.init_from runs/cpt/checkpoint-3311

    # 8 GPUs, DDP
    torchrun --nproc_per_node 8 -m moca_train.cl --config configs/cl/qwen25vl_3b.yaml

    # FSDP or DeepSpeed ZeRO via an accelerate config file (GradCache: see moca_train.gradcache)
    accelerate launch --config_file fsdp.yaml -m moca_train.cl --config configs/cl/qwen25vl_3b.yaml

Override any field with ``--section.field value``; ``--help`` lists them all.

Limits: DDP is tested (2 gloo ranks on CPU equal 1 process). Under FSDP/ZeRO-3 every rank must run
the vision tower on the same steps (sharded collectives); keep ``same_task_batches`` on with tasks whose
rows share one modality layout (the reference inserts a dummy image instead). GPU paths (bf16 autocast
on CUDA, flash-attention, FSDP, DeepSpeed) were not run in this project's CPU-only test setting.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from typing import TYPE_CHECKING, Any

import torch

from moca_train.cl.config import CLConfig
from moca_train.cli import parse_config
from moca_train.distributed import all_reduce_gradients, gather_nograd, gather_with_grad, get_world_size
from moca_train.losses import contrastive_logits

if TYPE_CHECKING:
    from accelerate import Accelerator

    from moca_train.cl.config import CLLossConfig

logger = logging.getLogger(__name__)


def contrastive_loss(
    reps: dict[str, torch.Tensor], pos_ids: torch.Tensor, neg_ids: torch.Tensor, cfg: CLLossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Global-batch InfoNCE from this rank's embeddings.

    Args:
        reps: ``query`` (L, D), ``pos`` (L, D) and, with negatives, ``neg`` (L*K, D) local embeddings.
        pos_ids: (L,) content ids of the positives.
        neg_ids: (L, K) content ids of the negatives (K may be 0).
        cfg: loss settings.

    Returns:
        ``(loss * world_size, logs)``: the scaling makes DDP's gradient average equal the full-batch
        gradient (each rank only back-propagates through its own rows). ``logs`` holds the unscaled
        ``loss`` and the in-batch top-1 ``accuracy``.
    """
    world = get_world_size()
    q, d = gather_with_grad(reps["query"]), gather_with_grad(reps["pos"])  # (W*L, D)
    k = neg_ids.shape[1]
    negs = gather_with_grad(reps["neg"]).reshape(d.shape[0], k, -1) if k else None  # (W*L, K, D)
    masking = cfg.mask_false_negatives
    logits, targets = contrastive_logits(
        q,
        d,
        temperature=cfg.temperature,
        negatives=negs,
        other_negatives=cfg.other_negatives,
        pos_ids=gather_nograd(pos_ids) if masking else None,
        neg_ids=gather_nograd(neg_ids) if masking and k else None,
    )
    loss = torch.nn.functional.cross_entropy(logits, targets)
    accuracy = (logits.argmax(-1) == targets).float().mean().item()
    return loss * world, {"loss": loss.item(), "accuracy": accuracy}


def _to_device(chunk: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in chunk.items()}


def make_step_fn(cfg: CLLossConfig):
    """The engine ``step_fn``: embed query/positive/negative chunks, InfoNCE, backward (GradCache or plain)."""
    from moca_train.gradcache import gradcache_step, plain_step

    def step_fn(model: torch.nn.Module, batch: dict[str, Any], accelerator: Accelerator) -> dict[str, float]:
        device = accelerator.device
        groups = {name: batch[name] for name in ("query", "pos", "neg") if batch[name]}
        pos_ids, neg_ids = batch["pos_ids"].to(device), batch["neg_ids"].to(device)

        def encode(chunk: dict[str, torch.Tensor]) -> torch.Tensor:
            return model(**_to_device(chunk, device)).embeddings  # (n, D)

        loss_fn = functools.partial(contrastive_loss, pos_ids=pos_ids, neg_ids=neg_ids, cfg=cfg)
        step = gradcache_step if cfg.gradcache else plain_step
        # DDP: all passes without the reducer, then one explicit average (unused vision tower on text-only
        # chunks would stall DDP's reducer). FSDP/DeepSpeed reduce inside their own backward.
        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        with accelerator.no_sync(model) if ddp else contextlib.nullcontext():
            _, logs = step(encode=encode, groups=groups, loss_fn=loss_fn, backward=accelerator.backward)
        if ddp:
            all_reduce_gradients(model.parameters())
        return {**logs, "replaced_rows": float(batch["replaced"])}

    return step_fn


def run(cfg: CLConfig) -> list[dict[str, float]]:
    """Train per ``cfg`` and return the per-step history (see :func:`moca_train.engine.train`)."""
    from moca_train.cl.batches import CLBatches
    from moca_train.cl.data import load_cl_data
    from moca_train.cl.sampler import TaskBatchSampler
    from moca_train.distributed import log0
    from moca_train.engine import build_accelerator, train
    from moca_train.modeling import build_model, make_save_fn

    accelerator = build_accelerator(cfg.train)
    if accelerator.distributed_type.value == "DEEPSPEED" and cfg.loss.gradcache:
        local = cfg.data.local_batch_size(accelerator.num_processes)
        if cfg.loss.chunk_size < local * (1 + cfg.data.num_negatives):
            raise ValueError("--loss.gradcache: DeepSpeed steps on every backward; use DDP/FSDP or one chunk")
    world, rank = accelerator.num_processes, accelerator.process_index
    local_batch = cfg.data.local_batch_size(world)
    model, processor = build_model(cfg.model)
    data = load_cl_data(cfg.data)
    log0(logger, "CL data: %s tasks, sizes %s, counts %s", len(data.tasks), data.sizes(), dict(data.stats))
    sampler = TaskBatchSampler(
        data.sizes(),
        global_batch_size=cfg.data.global_batch_size,
        seed=cfg.data.seed,
        same_task=cfg.data.same_task_batches,
    )
    batches = CLBatches(
        data,
        processor,
        sampler,
        rank=rank,
        world_size=world,
        chunk_size=cfg.loss.chunk_size if cfg.loss.gradcache else local_batch * max(1, cfg.data.num_negatives),
        num_workers=cfg.data.num_workers,
    )
    return train(
        model=model,
        batches=batches,
        cfg=cfg.train,
        step_fn=make_step_fn(cfg.loss),
        save_model_fn=make_save_fn(processor),
        run_config=cfg,
        accelerator=accelerator,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` into a :class:`CLConfig` and :func:`run` it; 2 on a configuration error."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_config(argv, CLConfig, prog="python -m moca_train.cl")
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    run(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
