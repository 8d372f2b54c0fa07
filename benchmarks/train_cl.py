"""GradCache memory vs the plain contrastive loss, and throughput of the tiny CL recipe (CPU or GPU).

1. Peak memory of ONE contrastive training step (forward + loss + backward) on the tiny random model,
   at global batch 64, 256 and 1024 (2 hard negatives, so 4 sequences per query), with GradCache
   (chunks of ``--chunk`` rows) and without it. Each measurement runs in a fresh subprocess: on CPU
   the peak RSS above the RSS just before the step (Linux VmHWM after a reset), on CUDA
   ``max_memory_allocated`` above the allocation before the step. Step time is reported too.
2. Steps/s of ``configs/cl/tiny.yaml`` (training loop only), with GradCache off (the recipe) and on.

Writes ``results/benchmarks/train_cl.json``.

    python -m benchmarks.train_cl [--batches 64 256 1024] [--chunk 32] [--steps 30]
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import peak_rss_mb, reset_peak_rss, write_result

ROOT = Path(__file__).resolve().parents[1]


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(work: Path, mode: str, batch: int, chunk: int) -> dict:
    """One step in this process; returns peak memory above the pre-step level (MiB) and the step time."""
    from moca_train.cl.batches import CLBatches
    from moca_train.cl.config import CLDataConfig, CLDatasetConfig, CLLossConfig
    from moca_train.cl.data import load_cl_data
    from moca_train.cl.sampler import TaskBatchSampler
    from moca_train.cl.train import contrastive_loss
    from moca_train.config import ModelConfig
    from moca_train.gradcache import gradcache_step, plain_step
    from moca_train.modeling import build_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = build_model(ModelConfig(init_from=str(work / "tiny")))
    model.to(device)
    data_cfg = CLDataConfig(
        datasets=[CLDatasetConfig(name=n, path=str(work / f"world/{n}.jsonl")) for n in ("shapes_i2t", "shapes_t2i")],
        num_negatives=2,
        global_batch_size=batch,
        same_task_batches=False,
    )
    data = load_cl_data(data_cfg)
    sampler = TaskBatchSampler(data.sizes(), global_batch_size=batch, seed=0, same_task=False)
    step = CLBatches(data, processor, sampler, chunk_size=chunk if mode == "gradcache" else 4 * batch).build(0)
    tokens = sum(int(c["attention_mask"].sum()) for k in ("query", "pos", "neg") for c in step[k])
    groups = {k: [{n: t.to(device) for n, t in c.items()} for c in step[k]] for k in ("query", "pos", "neg")}
    cfg = CLLossConfig(temperature=0.03)
    loss_fn = functools.partial(
        contrastive_loss, pos_ids=step["pos_ids"].to(device), neg_ids=step["neg_ids"].to(device), cfg=cfg
    )

    def encode(c):
        return model(**c).embeddings

    run = gradcache_step if mode == "gradcache" else plain_step
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _current_rss_mb()
        reset_peak_rss()
    tic = time.perf_counter()
    loss, _ = run(encode=encode, groups=groups, loss_fn=loss_fn)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = peak_rss_mb() - base
    return {
        "mode": mode,
        "global_batch": batch,
        "sequences": 4 * batch,
        "tokens": tokens,
        "chunk": chunk if mode == "gradcache" else 4 * batch,
        "device": device.type,
        "peak_mib_above_start": round(peak, 1),
        "step_s": round(time.perf_counter() - tic, 3),
        "loss": round(loss.item(), 4),
    }


def recipe_rate(work: Path, steps: int, gradcache: bool) -> dict:
    """Steps/s of the tiny recipe's training loop."""
    import moca_train.cl.train as cl
    from moca_train.cl.config import CLConfig
    from moca_train.cli import parse_config

    out = work / f"run-{gradcache}"
    cfg = parse_config(
        [
            "--config", str(ROOT / "configs/cl/tiny.yaml"), "--model.init_from", str(work / "tiny"),
            "--data.datasets.0.path", str(work / "world/shapes_i2t.jsonl"),
            "--data.datasets.1.path", str(work / "world/shapes_t2i.jsonl"),
            "--train.output_dir", str(out), "--train.max_steps", str(steps), "--train.log_every", str(steps),
            "--train.progress_bar", "false", "--loss.gradcache", str(gradcache).lower(), "--loss.chunk_size", "8",
            "--train.save_every", "0",  # the loop only: no periodic checkpoints (the recipe saves every 10 steps)
        ],
        CLConfig,
    )  # fmt: skip
    cl.run(cfg)
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    return {"gradcache": gradcache, "chunk": 8 if gradcache else None, "steps": steps,
            "steps_per_s": round(last["steps_per_s"], 3), "global_batch": cfg.data.global_batch_size,
            "negatives": cfg.data.num_negatives, "final_loss": round(last["loss"], 4)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_cl", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 1024], help="global batch sizes")
    parser.add_argument("--chunk", type=int, default=32, help="GradCache rows per forward")
    parser.add_argument("--steps", type=int, default=30, help="steps for the recipe throughput")
    parser.add_argument("--measure", nargs=3, metavar=("WORK", "MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    if args.measure:
        work, mode, batch = args.measure
        print(json.dumps(measure(Path(work), mode, int(batch), args.chunk)))
        return 0

    from moca_model.tiny import write_tiny_checkpoint
    from moca_train.cl.synthetic import write_world

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_tiny_checkpoint(work / "tiny")
        write_world(work / "world", rows_per_task=max(args.batches))
        memory = []
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        for batch in args.batches:
            for mode in ("plain", "gradcache"):
                cmd = [sys.executable, "-m", "benchmarks.train_cl", "--chunk", str(args.chunk)]
                cmd += ["--measure", str(work), mode, str(batch)]
                out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
                memory.append(json.loads(out.strip().splitlines()[-1]))
                print(json.dumps(memory[-1]))
        load_before = os.getloadavg()[0]
        rates = [recipe_rate(work, args.steps, gradcache) for gradcache in (False, True)]
        print(json.dumps(rates))
    path = write_result(
        "train_cl",
        {
            "what": "peak memory of one CL step (tiny model, 2 hard negatives) with/without GradCache; "
            "steps/s of configs/cl/tiny.yaml",
            "memory": memory,
            "recipe": rates,
            "load_average_before": load_before,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
