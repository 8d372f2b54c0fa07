"""One contrastive (CL) training step of the 3B architecture under DeepSpeed ZeRO-3 with GradCache, on one device.

Launched by ``benchmarks/gpu_check.sh`` through the same launcher users run::

    accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml --num_processes 1 \\
        --offload_optimizer_device cpu -m benchmarks.gpu_cl_step --out results/gpu/cl_step.json

Random weights (Qwen2.5-VL-3B's architecture, bf16 under DeepSpeed's bf16 mode), a global batch of text queries
against document pages of 1,024 visual tokens, InfoNCE with GradCache chunks: the engine, optimizer (torch AdamW,
its fp32 states offloaded to the CPU: 3.75 B parameters x 16 bytes do not fit one 80 GB card next to the bf16 copy),
schedule, clipping and backward are ``moca_train``'s own (``make_step_fn``, ``_run_step``). Two steps run; the
second is timed. Nothing is saved. ``--dry-run``: the tiny architecture on DeepSpeed's CPU accelerator.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import time
from pathlib import Path

import torch

from benchmarks.gpu_check import ARCH_3B, ARCH_TINY, OUT, build, corpus, processor

logger = logging.getLogger(__name__)


def _batch(proc, n_queries: int, page_side: int, chunk: int) -> dict:
    """A CL global batch in ``CLBatches.build``'s layout: queries vs pages (positives), no extra negatives."""
    from moca_model.processing_moca import normalize_item

    items = corpus(n_queries, n_queries, page_side)
    enc = [proc.process(normalize_item(x, i), i) for i, x in enumerate(items)]
    queries, pages = enc[:n_queries], enc[n_queries:]
    chunks = lambda xs: [proc.collate(xs[i : i + chunk]) for i in range(0, len(xs), chunk)]  # noqa: E731
    return {"task": "gpu_check", "query": chunks(queries), "pos": chunks(pages), "neg": [],
            "pos_ids": torch.arange(n_queries), "neg_ids": torch.zeros((n_queries, 0), dtype=torch.long),
            "replaced": 0}  # fmt: skip


def run(args) -> dict:
    """Build, prepare under DeepSpeed, run two steps; return timings and memory."""
    from moca_train.cl.config import CLLossConfig
    from moca_train.cl.train import make_step_fn
    from moca_train.config import TrainConfig
    from moca_train.engine import _run_step
    from moca_train.launcher import build_accelerator
    from moca_train.optim import build_optimizer, build_scheduler, configure_deepspeed, is_deepspeed

    cfg = TrainConfig(output_dir=str(args.out.parent), max_steps=2, learning_rate=1e-5, warmup_ratio=0.0,
                      mixed_precision="no" if args.dry_run else "bf16", max_grad_norm=5.0, progress_bar=False,
                      report_to="none")  # fmt: skip
    accelerator = build_accelerator(cfg)
    if not is_deepspeed(accelerator):
        raise RuntimeError(
            "launch this under DeepSpeed: accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml "
            "--num_processes 1 -m benchmarks.gpu_cl_step"
        )
    arch = ARCH_TINY if args.dry_run else ARCH_3B
    proc = processor()
    t0 = time.perf_counter()
    model = build(arch, accelerator.device, torch.float32 if args.dry_run else torch.bfloat16, "sdpa", proc.tokenizer)
    model.train()
    build_s = time.perf_counter() - t0
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    configure_deepspeed(accelerator, cfg.max_grad_norm, 1.0)
    t0 = time.perf_counter()
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    prepare_s = time.perf_counter() - t0
    batch = _batch(proc, args.queries, args.page_side, args.chunk_size)
    step_fn = make_step_fn(CLLossConfig(temperature=0.03, gradcache=True, chunk_size=args.chunk_size))
    run_step = functools.partial(_run_step, cfg=cfg, loss_fn=None, step_fn=step_fn, divisor=1.0)
    cuda = accelerator.device.type == "cuda"
    steps = []
    for _ in range(2):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        logs, grad_norm = run_step(model, iter([batch]), accelerator)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        record = {"seconds": round(time.perf_counter() - t0, 2), "loss": logs["loss"],
                  "grad_norm": None if math.isnan(grad_norm) else grad_norm}  # fmt: skip
        if cuda:
            record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        steps.append(record)
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    n_params = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu (dry run)",
        "arch": "tiny" if args.dry_run else "qwen2.5-vl-3b",
        "n_params": n_params,
        "zero_stage": ds["zero_optimization"]["stage"],
        "offload_optimizer": ds["zero_optimization"].get("offload_optimizer", {}).get("device", "none"),
        "bf16": bool(ds.get("bf16", {}).get("enabled", False)),
        "global_batch": {
            "queries": args.queries,
            "pages": args.queries,
            "page_side_px": args.page_side,
            "gradcache_chunk": args.chunk_size,
        },  # fmt: skip
        "build_seconds": round(build_s, 1),
        "prepare_seconds": round(prepare_s, 1),
        "steps": steps,
        "finite": all(math.isfinite(s["loss"]) for s in steps),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (run under ``accelerate launch``; see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny architecture (CPU, DeepSpeed's CPU accelerator)")
    p.add_argument("--queries", type=int, default=32, help="queries (and pages) in the global batch")
    p.add_argument("--page-side", type=int, default=896, help="page side in px (896 -> 1024 visual tokens)")
    p.add_argument("--chunk-size", type=int, default=8, help="GradCache chunk (rows per forward)")
    p.add_argument("--out", type=Path, default=OUT / "cl_step.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(args)
    if int(os.environ.get("RANK", "0")) == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, args.out)
        logger.info(json.dumps(result, indent=2))
    return 0 if result["finite"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
