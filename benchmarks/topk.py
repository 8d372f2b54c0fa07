"""Top-k retrieval over 1M passages x 1k queries (fp32, dim 2048) in bounded memory vs the full matrix.

The passages (8 GB at the default size) are written once to an ``.npy`` file, as a large encoded corpus
would be. Two variants, each in a fresh process so its peak RSS is its own:

- full: load every passage, compute the (Q, P) score matrix, ``topk`` on it (what the reference-style
  "score everything, then rank" code does; 12 GB at the default size);
- streamed: read the file block by block (plain reads into one reused buffer, no mmap) and keep a
  running top-k with :func:`moca_bench.scoring.topk_scores` (exact; ties go to the lower index).

Reports seconds, peak RSS and their ratios, and checks that both return the same indices. Writes
``results/benchmarks/topk.json``.

    OMP_NUM_THREADS=1 python -m benchmarks.topk [--queries 1000] [--passages 1000000] [--dim 2048] [--k 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import peak_rss_mb, reset_peak_rss, write_result

logger = logging.getLogger(__name__)
BLOCK_ROWS = 16384  # passages per read: 128 MiB at dim 2048


def write_corpus(path: Path, n: int, dim: int, seed: int) -> None:
    """Random unit vectors written block by block (never all in memory)."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for s in range(0, n, BLOCK_ROWS):
        x = rng.standard_normal((min(BLOCK_ROWS, n - s), dim), dtype=np.float32)
        out[s : s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out


def _blocks(path: Path):
    """(offset, (rows, dim) float32 array) blocks of an .npy file via plain reads into one buffer."""
    with path.open("rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, _ = read_header(f)  # header text only; the data is raw float32
        n, dim = shape
        buf = np.empty((BLOCK_ROWS, dim), dtype=np.float32)
        for s in range(0, n, BLOCK_ROWS):
            rows = min(BLOCK_ROWS, n - s)
            f.readinto(memoryview(buf[:rows]).cast("B"))
            yield s, buf[:rows]


def streamed(queries: np.ndarray, path: Path, k: int):
    """Running exact top-k over file blocks: (values (Q, k), indices (Q, k))."""
    import torch

    from moca_bench.scoring import topk_scores

    best_v = best_i = None
    for offset, block in _blocks(path):
        v, i = topk_scores(queries, block, k)
        i += offset
        if best_v is not None:  # earlier blocks first: a stable sort keeps ties on the lower index
            v, i = torch.cat([best_v, v], 1), torch.cat([best_i, i], 1)
            order = torch.sort(v, dim=1, descending=True, stable=True).indices[:, :k]
            v, i = v.gather(1, order), i.gather(1, order)
        best_v, best_i = v, i
    return best_v, best_i


def full(queries: np.ndarray, path: Path, k: int):
    """Load everything, score everything, rank."""
    import torch

    passages = torch.from_numpy(np.load(path))  # (P, D)
    scores = torch.from_numpy(queries) @ passages.T  # (Q, P)
    return scores.topk(k, dim=1)


def worker(variant: str, corpus: Path, n_q: int, dim: int, k: int) -> dict:
    """One timed run in this process; returns seconds, peak RSS and a digest of the result."""
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(7)
    q = rng.standard_normal((n_q, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    reset_peak_rss()
    t0 = time.perf_counter()
    values, indices = (streamed if variant == "streamed" else full)(q, corpus, k)
    seconds = time.perf_counter() - t0
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "indices_head": indices[:8, :5].tolist(),
        "values_sum": float(values.double().sum()),
    }


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--passages", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--worker", choices=["full", "streamed"], help=argparse.SUPPRESS)
    p.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        sys.stdout.write(json.dumps(worker(args.worker, args.corpus, args.queries, args.dim, args.k)) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "passages.npy"
        t0 = time.perf_counter()
        write_corpus(corpus, args.passages, args.dim, seed=1)
        logger.info("corpus of %d x %d written in %.1f s", args.passages, args.dim, time.perf_counter() - t0)
        res = {}
        for variant in ("streamed", "full"):
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.topk",
                "--worker",
                variant,
                "--corpus",
                str(corpus),
                "--queries",
                str(args.queries),
                "--dim",
                str(args.dim),
                "--k",
                str(args.k),
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            res[variant] = json.loads(out.strip().splitlines()[-1])
            logger.info("%s: %s", variant, {k: v for k, v in res[variant].items() if k != "indices_head"})
    result = {
        "queries": args.queries,
        "passages": args.passages,
        "dim": args.dim,
        "k": args.k,
        "streamed": res["streamed"],
        "full": res["full"],
        "time_ratio_streamed_vs_full": round(res["streamed"]["seconds"] / res["full"]["seconds"], 3),
        "memory_ratio_streamed_vs_full": round(res["streamed"]["peak_rss_mb"] / res["full"]["peak_rss_mb"], 4),
        "same_indices": res["streamed"]["indices_head"] == res["full"]["indices_head"],
    }
    logger.info("-> %s", write_result("topk", result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
