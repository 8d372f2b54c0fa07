"""``python -m moca_train.cl``: heterogeneous contrastive fine-tuning (MoCa stage 2, moca-method.md §4).

InfoNCE over the global batch with hard negatives (other queries' negatives included, paper Eq. 3),
optional false-negative masking (off in the paper recipe), embeddings gathered across ranks with
gradients through the local slice (loss scaled by the world size, so DDP's averaging yields the
full-batch gradient; clipping is measured in the reference's unscaled units, see
``TrainConfig.max_grad_norm``), same-task global batches, and GradCache so the paper's global batch of
2048 fits on few GPUs. GradCache takes one backward per chunk but exactly one optimizer step per training
step on every engine: DDP runs the step without its reducer and averages once, FSDP reduce-scatters per
chunk, and DeepSpeed's gradient-accumulation boundary is held until the last chunk. The checkpoint folders
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

    # FSDP2 or DeepSpeed ZeRO-3 via an accelerate config file
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m moca_train.cl --config configs/cl/qwen25vl_3b.yaml

Override any field with ``--section.field value``; ``--help`` lists them all.

Tested on CPU: 2 gloo ranks under DDP, FSDP2 and DeepSpeed ZeRO-3 (a real engine on DeepSpeed's CPU
accelerator) equal 1 process (weights to 1e-5, steps where one rank has no image included; chunks without
images carry a masked dummy image so every rank runs the vision tower); a step on transformers' flash-attention-2
path (a plain-torch kernel stand-in) equals SDPA's. Not run here: bf16 autocast on CUDA and the real
flash-attention kernels (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Callable, Iterator
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


def deepspeed_backward(accelerator: Accelerator) -> tuple[Callable, Callable]:
    """``(backward, no_sync)`` that make a DeepSpeed engine step once after several backward passes.

    accelerate's ``backward`` under DeepSpeed calls ``engine.step()`` after every backward outside gradient
    accumulation (accelerate >= 1.x ``DeepSpeedEngineWrapper.backward``): GradCache's per-chunk backward
    passes would each take an optimizer step on a partial gradient, with the weights changing between the
    cached re-forwards. Here the engine is driven as DeepSpeed documents for manual accumulation
    (``set_gradient_accumulation_boundary``): every backward inside ``no_sync()`` is not a boundary
    (gradients accumulate), the last one is, and only it is followed by ``engine.step()`` (clipping,
    optimizer, scheduler).
    """
    engine = accelerator.deepspeed_engine_wrapped.engine
    boundary = [True]

    @contextlib.contextmanager
    def no_sync() -> Iterator[None]:
        boundary[0] = False
        try:
            yield
        finally:
            boundary[0] = True

    def backward(loss: torch.Tensor) -> None:
        engine.set_gradient_accumulation_boundary(boundary[0])
        engine.backward(loss)
        if boundary[0]:
            engine.step()

    return backward, no_sync


def make_step_fn(cfg: CLLossConfig):
    """The engine ``step_fn``: embed query/positive/negative chunks, InfoNCE, backward (GradCache or plain)."""
    from moca_train.gradcache import gradcache_step, plain_step
    from moca_train.optim import is_deepspeed

    def step_fn(model: torch.nn.Module, batch: dict[str, Any], accelerator: Accelerator) -> dict[str, float]:
        device = accelerator.device
        groups = {name: batch[name] for name in ("query", "pos", "neg") if batch[name]}
        pos_ids, neg_ids = batch["pos_ids"].to(device), batch["neg_ids"].to(device)

        def encode(chunk: dict[str, torch.Tensor]) -> torch.Tensor:
            return model(**_to_device(chunk, device)).embeddings  # (n, D)

        loss_fn = functools.partial(contrastive_loss, pos_ids=pos_ids, neg_ids=neg_ids, cfg=cfg)
        backward, kwargs = accelerator.backward, {}
        if is_deepspeed(accelerator):  # one engine step per training step, at the last backward
            backward, no_sync = deepspeed_backward(accelerator)
            kwargs = {"no_sync": no_sync} if cfg.gradcache else {}
        step = gradcache_step if cfg.gradcache else plain_step
        # DDP: all passes without the reducer, then one explicit average (robust to parameters a chunk does
        # not use). FSDP reduce-scatters inside each backward; DeepSpeed reduces in its engine.
        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        with accelerator.no_sync(model) if ddp else contextlib.nullcontext():
            _, logs = step(encode=encode, groups=groups, loss_fn=loss_fn, backward=backward, **kwargs)
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
        grad_norm_divisor=world,  # the reference's loss is not scaled by the world size (max_grad_norm's units)
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
