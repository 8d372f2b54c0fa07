"""CPT training throughput of the tiny recipe on CPU (``configs/cpt/tiny.yaml``).

Writes a tiny random checkpoint and the synthetic interleaved corpus to a temporary folder, runs
``moca_train.cpt.run`` for ``--steps`` optimizer steps (one process, one torch thread) and reports
steps/s and tokens/s of the training loop (model build, statistics pass and checkpoint excluded),
together with the first/last losses. Tokens are real (non-padding) positions, image tokens included.
Writes ``results/benchmarks/train_cpt.json``.

    python -m benchmarks.train_cpt [--steps 50] [--rows 300]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import peak_rss_mb, reset_peak_rss, write_result

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_cpt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps")
    parser.add_argument("--rows", type=int, default=300, help="synthetic corpus rows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    import moca_train.cpt.train as cpt
    from moca_model.tiny import write_tiny_checkpoint
    from moca_train.cli import parse_config
    from moca_train.cpt.config import CPTConfig
    from moca_train.cpt.synthetic import write_corpus

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_tiny_checkpoint(tmp / "tiny")
        corpus = write_corpus(tmp / "data", rows=args.rows, seed=0)
        cfg = parse_config(
            [
                "--config", str(ROOT / "configs/cpt/tiny.yaml"),
                "--model.init_from", str(tmp / "tiny"),
                "--data.sources", f"[{{path: {corpus}}}]",
                "--train.output_dir", str(tmp / "run"),
                "--train.max_steps", str(args.steps),
                "--train.log_every", str(args.steps),
                "--train.progress_bar", "false",
                "--train.save_every", "0",  # the loop only (the recipe saves every 10 steps)
            ],
            CPTConfig,
        )  # fmt: skip
        reset_peak_rss()
        load_before = os.getloadavg()[0]  # the CPU is shared: a loaded machine gives lower rates
        t0 = time.perf_counter()
        history = cpt.run(cfg)
        total_s = time.perf_counter() - t0
        log = [json.loads(line) for line in (tmp / "run/log.jsonl").read_text().splitlines()]
    steps_per_s = log[-1]["steps_per_s"]  # the engine's rate over the training loop only
    accum = cfg.train.grad_accum_steps
    tokens = sum(r["tokens"] for r in history) * accum
    rows = sum(r["rows"] for r in history) * accum
    loop_s = len(history) / steps_per_s
    result = {
        "recipe": "configs/cpt/tiny.yaml",
        "steps": len(history),
        "steps_per_s": round(steps_per_s, 3),
        "tokens_per_s": round(tokens / loop_s, 1),
        "rows_per_s": round(rows / loop_s, 2),
        "mean_tokens_per_step": round(tokens / len(history), 1),
        "wall_s_total_including_setup": round(total_s, 2),
        "loss_first5": {k: round(sum(r[k] for r in history[:5]) / 5, 4) for k in ("mlm", "mae")},
        "loss_last10": {k: round(sum(r[k] for r in history[-10:]) / 10, 4) for k in ("mlm", "mae")},
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    path = write_result("train_cpt", result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
