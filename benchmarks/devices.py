"""Data-parallel encoding on CPU: 2 worker processes (1 torch thread each) vs 1 process (1 torch thread).

Same random model, same mixed corpus (short queries + pages of 256..1024 visual tokens, as in
``benchmarks.encode``), same batches; every run prepares batches inline (no prefetch thread), so each
side uses exactly the threads it names. The pool's start-up (spawning, loading the model in each
worker) is timed separately: it is paid once per process, not per call. Reports items/s, the ratio,
the largest difference between the two results, and CPU seconds (this process, and the workers from
``/proc``). On a shared machine the ratio is bounded by the CPU the scheduler grants: ``parallel_cores``
is the CPU two concurrent busy loops got, measured just before (2.0 on an idle 2-core machine; 1.0
means a second process gains nothing, whatever the code does). Writes ``results/benchmarks/devices.json``.

    python -m benchmarks.devices [--queries 48] [--pages 24] [--size mid] [--repeats 2]
"""

from __future__ import annotations

import argparse
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import write_result
from benchmarks.encode import SIZES, make_corpus

logger = logging.getLogger(__name__)


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of this process and of the given live processes (Linux /proc)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    tick = 100.0  # os.sysconf("SC_CLK_TCK") on Linux
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


BUSY = "import time\nt=time.perf_counter();c=time.process_time()\nwhile time.perf_counter()-t<{s}:pass\n" \
       "print((time.process_time()-c)/(time.perf_counter()-t))"


def parallel_cores(seconds: float = 2.0) -> float:
    """CPU cores two concurrent single-threaded busy loops actually got (sum of their CPU/wall ratios)."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(s=seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    return round(sum(float(p.communicate()[0]) for p in procs), 2)


def _timed(encoder, items: list, batch_size: int, repeats: int, pids: list[int]) -> tuple[dict, np.ndarray]:
    walls, cpus = [], []
    for _ in range(repeats):
        c0, t0 = _cpu_seconds(pids), time.perf_counter()
        out = encoder.encode(items, batch_size=batch_size, show_progress=False, num_workers=0)
        walls.append(time.perf_counter() - t0)
        cpus.append(_cpu_seconds(pids) - c0)
    best = min(walls)
    return {
        "seconds_best": round(best, 3),
        "seconds_all": [round(w, 3) for w in walls],
        "cpu_seconds_all": [round(c, 2) for c in cpus],
        "items_per_s": round(len(items) / best, 2),
        "batches": encoder.last_stats.batches,
    }, out


def run(checkpoint: Path, n_queries: int, n_pages: int, batch_size: int, repeats: int) -> dict:
    """Both configurations side by side; returns the result record."""
    from moca_model import MoCaEncoder
    from moca_model.processing_moca import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    paper = {"min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": DEFAULT_MAX_PIXELS, "max_length": DEFAULT_MAX_LENGTH}
    items = make_corpus(n_queries, n_pages)
    result: dict = {"n_items": len(items), "n_queries": n_queries, "n_pages": n_pages, "batch_size": batch_size}
    torch.set_num_threads(1)
    result["parallel_cores"] = parallel_cores()
    one = MoCaEncoder.from_pretrained(checkpoint, device="cpu", cache_memory_mb=0, **paper)
    one.encode(items[:4], show_progress=False, num_workers=0)  # warm-up
    result["one_process"], reference = _timed(one, items, batch_size, repeats, [])
    t0 = time.perf_counter()
    two = MoCaEncoder.from_pretrained(checkpoint, devices=["cpu", "cpu"], worker_threads=1, cache_memory_mb=0, **paper)
    result["pool_start_seconds"] = round(time.perf_counter() - t0, 2)
    try:
        pids = [info["pid"] for info in two.pool.infos.values()]
        two.encode(items[:4], show_progress=False, num_workers=0)  # warm-up
        result["two_workers"], pooled = _timed(two, items, batch_size, repeats, pids)
    finally:
        two.close()
    result["throughput_ratio"] = round(result["two_workers"]["items_per_s"] / result["one_process"]["items_per_s"], 3)
    result["max_abs_diff"] = float(np.abs(pooled - reference).max())
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=48)
    p.add_argument("--pages", type=int, default=24)
    p.add_argument("--size", choices=sorted(SIZES), default="mid")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from moca_model.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_checkpoint(tmp, seed=0, **SIZES[args.size])
        result = run(Path(tmp), args.queries, args.pages, args.batch_size, args.repeats)
    result["size"] = args.size
    path = write_result("devices", result)
    logger.info("1 process : %s", result["one_process"])
    logger.info("2 workers : %s (start-up %.1f s)", result["two_workers"], result["pool_start_seconds"])
    logger.info("ratio %.2fx items/s, max |diff| %.1e -> %s", result["throughput_ratio"], result["max_abs_diff"], path)
    return 0 if result["max_abs_diff"] <= 1e-6 else 1


if __name__ == "__main__":
    raise SystemExit(main())
