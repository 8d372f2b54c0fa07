"""Encode speed: the sentence-transformers export vs MoCaEncoder, side by side on the same random model.

One process (.venv-mteb: sentence-transformers 6.2, transformers 5.x), one torch thread, the mixed corpus
of :mod:`benchmarks.encode` (short text queries + document pages of 256..1024 visual tokens, shuffled),
the same batch size. The model is written with ``moca_model.tiny`` at the ``--size`` of encode.py and
exported with ``moca_model.export_st``. Runs alternate (MoCaEncoder with its prefetch thread, MoCaEncoder
inline, sentence-transformers), and each records wall and CPU seconds (``time.process_time``: all threads
of the process), because the machine may be shared. Also records the max |diff| between the two outputs.

    .venv-mteb/bin/python -m benchmarks.st_encode [--size tiny|mid] [--queries 64] [--pages 32]

Writes ``results/benchmarks/st_encode_<size>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import peak_rss_mb, reset_peak_rss, write_result
from benchmarks.encode import SIZES, make_corpus

logger = logging.getLogger(__name__)


def _timed(fn) -> tuple[np.ndarray, dict]:
    reset_peak_rss()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "peak_rss_mb": peak_rss_mb()}


def _summary(runs: list[dict], n_items: int) -> dict:
    best = min(runs, key=lambda r: r["wall_s"])
    return {
        "wall_s_best": round(best["wall_s"], 3),
        "cpu_s_of_best": round(best["cpu_s"], 3),
        "wall_s_all": [round(r["wall_s"], 3) for r in runs],
        "cpu_s_all": [round(r["cpu_s"], 3) for r in runs],
        "items_per_s": round(n_items / best["wall_s"], 2),
        "items_per_cpu_s": round(n_items / min(r["cpu_s"] for r in runs), 2),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
    }


def run(size: str, n_queries: int, n_pages: int, batch_size: int, repeats: int) -> dict:
    """Export a random model, then time both encoders alternately on the mixed corpus."""
    from sentence_transformers import SentenceTransformer

    from moca_model import MoCaEncoder
    from moca_model.export_st import export_checkpoint
    from moca_model.processing_moca import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
    from moca_model.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        src = write_tiny_checkpoint(Path(tmp) / "src", seed=0, **SIZES[size])
        settings = {"min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": DEFAULT_MAX_PIXELS,
                    "max_length": DEFAULT_MAX_LENGTH}  # fmt: skip
        (src / "moca_config.json").write_text(json.dumps(settings))  # MoCa's bounds, as in encode.py
        folder = export_checkpoint(src, Path(tmp) / "st")
        enc = MoCaEncoder.from_pretrained(src, device="cpu", cache_memory_mb=0)  # every repeat must really encode
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    items = make_corpus(n_queries, n_pages)
    enc.encode(items[:4], show_progress=False)  # warm-up both
    st.encode(items[:4], show_progress_bar=False)
    runs: dict[str, list[dict]] = {"moca": [], "moca_inline": [], "st": []}
    outputs = {}
    for _ in range(repeats):
        for name, fn in (
            ("moca", lambda: enc.encode(items, batch_size=batch_size, show_progress=False)),
            ("moca_inline", lambda: enc.encode(items, batch_size=batch_size, show_progress=False, num_workers=0)),
            ("st", lambda: st.encode(items, batch_size=batch_size, show_progress_bar=False)),
        ):
            outputs[name], record = _timed(fn)
            runs[name].append(record)
            logger.info("%-12s %.2f s wall, %.2f s CPU", name, record["wall_s"], record["cpu_s"])
    result = {"size": size, "n_items": len(items), "n_queries": n_queries, "n_pages": n_pages,
              "batch_size": batch_size, "repeats": repeats, "torch_threads": torch.get_num_threads()}  # fmt: skip
    for name, rs in runs.items():
        result[name] = _summary(rs, len(items))
    for ref in ("moca", "moca_inline"):  # > 1: MoCaEncoder is faster
        result[f"wall_ratio_{ref}_vs_st"] = round(result["st"]["wall_s_best"] / result[ref]["wall_s_best"], 2)
        cpu = {k: min(r["cpu_s"] for r in runs[k]) for k in ("st", ref)}
        result[f"cpu_ratio_{ref}_vs_st"] = round(cpu["st"] / cpu[ref], 2)
    result["max_abs_diff_st_vs_moca"] = float(np.abs(outputs["st"] - outputs["moca"]).max())
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="mid")
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--pages", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    result = run(args.size, args.queries, args.pages, args.batch_size, args.repeats)
    path = write_result(f"st_encode_{args.size}", result)
    logger.info("sentence-transformers takes %.2fx MoCaEncoder's wall time (%.2fx inline), %.2fx its CPU time; "
                "max |diff| %.1e -> %s", result["wall_ratio_moca_vs_st"], result["wall_ratio_moca_inline_vs_st"],
                result["cpu_ratio_moca_vs_st"], result["max_abs_diff_st_vs_moca"], path)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
