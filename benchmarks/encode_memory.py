"""Peak host memory of one ``encode`` call over 1,000 page-sized images on CPU (issue 24, item 6).

A harness hands a whole corpus to one ``encode`` call (mteb does), so what a call keeps alive must not
grow with the corpus. Two variants, each in a fresh process on the same tiny random checkpoint and the
same 1,000 page images (1,240 x 1,754 px JPEGs, an A4 page at 150 dpi):

- ``before``: the batch prefetcher of the code before issue 24, which kept every prepared batch (decoded,
  patchified pixels) until the call returned (copied here as the baseline);
- ``after``: :func:`moca_model.batching.prefetched`, which releases each batch once it is handed over.

Each child reports its resident memory after loading (baseline), its peak during the call (``VmHWM``) and
the most prepared batches alive at once (counted with weak references). Pages are encoded at ``--tokens``
visual tokens each (min = max pixels), batch 16, one prefetch thread (the CPU default). At MoCa's own
bound (1,024 tokens a page) a prepared page is ~19 MiB of float32 patch rows, so ``before`` would need
~19 GiB here; the default 256 tokens (~4.8 MiB a page) lets both variants run on a 24 GiB machine, and
``after`` is also run at 1,024 tokens on the first ``--full-pages`` pages (its peak does not grow with the
corpus, and 1,024-token pages take ~5x longer to encode on CPU).

    python -m benchmarks.encode_memory [--pages 1000] [--tokens 256] [--full-tokens 1024] [--full-pages 200]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)
PAGE = (1240, 1754)  # A4 at 150 dpi


def write_pages(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` page-like JPEGs: white paper, dark text lines and a grey figure, different on every page."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        img = Image.new("RGB", PAGE, (255, 255, 255))
        draw = ImageDraw.Draw(img)
        y = 120
        while y < PAGE[1] - 120:
            width = int(rng.integers(400, PAGE[0] - 240))
            draw.rectangle([120, y, 120 + width, y + 14], fill=tuple(int(c) for c in rng.integers(0, 80, 3)))
            y += int(rng.integers(24, 40))
        x0, y0 = int(rng.integers(120, 600)), int(rng.integers(200, 1200))
        draw.rectangle([x0, y0, x0 + 500, y0 + 350], fill=tuple(int(c) for c in rng.integers(100, 220, 3)))
        path = folder / f"page_{i:04d}.jpg"
        img.save(path, quality=85)
        paths.append(path)
    return paths


def keep_all_prefetched(batches, prepare, workers):
    """The prefetcher before issue 24: every future, hence every prepared batch, lives until the call ends."""
    from concurrent.futures import ThreadPoolExecutor

    if workers <= 0:
        for k, batch in enumerate(batches):
            yield k, prepare(batch)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(prepare, b) for b in batches[: workers + 1]]
        for k in range(len(batches)):
            if k + workers + 1 < len(batches):
                futures.append(pool.submit(prepare, batches[k + workers + 1]))
            yield k, futures[k].result()


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(variant: str, checkpoint: str, folder: str, tokens: int, batch_size: int) -> dict:
    """Encode every page of ``folder`` once in this process; returns the memory figures."""
    import torch

    import moca_model.encode as encode_mod
    from benchmarks.common import reset_peak_rss
    from moca_model import MoCaEncoder
    from moca_model.testing import count_live_batches

    torch.set_num_threads(1)
    if variant == "before":
        encode_mod.prefetched = keep_all_prefetched
    pixels = tokens * 28 * 28
    enc = MoCaEncoder.from_pretrained(checkpoint, device="cpu", min_pixels=pixels, max_pixels=pixels,
                                      max_length=tokens + 64, cache_memory_mb=0)  # fmt: skip
    pages = sorted(Path(folder).glob("*.jpg"))
    items = [{"image": str(p), "text": "\nRepresent the given document image."} for p in pages]
    enc.encode(items[:2], batch_size=2, show_progress=False)  # warm-up: first-call allocations
    live = count_live_batches(enc, "pixel_values")
    baseline = _rss_mb("VmRSS")
    reset_peak_rss()
    start = time.perf_counter()
    vectors = enc.encode(items, batch_size=batch_size, show_progress=False)
    seconds = time.perf_counter() - start
    peak = _rss_mb("VmHWM")
    return {"variant": variant, "pages": len(items), "tokens_per_page": tokens, "batch_size": batch_size,
            "batches": enc.last_stats.batches, "baseline_rss_mb": round(baseline, 1), "peak_rss_mb": round(peak, 1),
            "growth_mb": round(peak - baseline, 1), "max_live_prepared_batches": max(live),
            "prepared_mb_per_page": round(tokens * 4 * 1176 * 4 / 2**20, 2), "seconds": round(seconds, 1),
            "vector_checksum": float(abs(vectors).sum())}  # fmt: skip


def run_child(variant: str, checkpoint: Path, folder: Path, tokens: int, batch_size: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.encode_memory", "--child", variant, "--checkpoint", str(checkpoint),
           "--folder", str(folder), "--tokens", str(tokens), "--batch-size", str(batch_size)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    logger.info("%s at %d tokens: peak %.0f MB (+%.0f MB), %d prepared batches alive at most", variant, tokens,
                result["peak_rss_mb"], result["growth_mb"], result["max_live_prepared_batches"])  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=256, help="visual tokens per page for both variants")
    p.add_argument("--full-tokens", type=int, default=1024, help="MoCa's bound, run for 'after' only (0: skip)")
    p.add_argument("--full-pages", type=int, default=200, help="pages of the run at --full-tokens")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--child", choices=["before", "after"], help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.checkpoint, args.folder, args.tokens, args.batch_size)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks.common import write_result
    from moca_model.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = write_tiny_checkpoint(Path(tmp) / "tiny", layout="current", seed=0)
        t0 = time.perf_counter()
        write_pages(Path(tmp) / "pages", args.pages)
        logger.info("wrote %d pages in %.0f s", args.pages, time.perf_counter() - t0)
        pages = Path(tmp) / "pages"
        runs = [run_child(v, checkpoint, pages, args.tokens, args.batch_size) for v in ("before", "after")]
        if args.full_tokens:
            for extra in sorted(pages.glob("*.jpg"))[args.full_pages :]:
                extra.unlink()
            runs.append(run_child("after", checkpoint, pages, args.full_tokens, args.batch_size))
    before, after = runs[0], runs[1]
    payload = {
        "what": "peak host memory of one encode call over page-sized images (1240 x 1754 JPEG), tiny model, CPU",
        "runs": runs,
        "growth_ratio_before_over_after": round(before["growth_mb"] / max(after["growth_mb"], 1.0), 1),
        "same_vectors": abs(before["vector_checksum"] - after["vector_checksum"]) < 1e-3 * before["vector_checksum"],
        "before_projected_at_1024_tokens_gb": round(before["pages"] * before["prepared_mb_per_page"] * 4 / 1024, 1),
    }  # fmt: skip
    path = write_result("encode_memory", payload)
    logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
