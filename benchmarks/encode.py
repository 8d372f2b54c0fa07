"""Encode throughput: MoCaEncoder (length-sorted batches) vs the reference's naive batching.

Both run in one process on the same random model and the same mixed corpus (short text queries plus
document pages whose resolutions give 256..1024 visual tokens, MoCa's bounds):

- ours: ``MoCaEncoder.encode`` (sort by estimated length, batch, restore order), with its default
  prefetch thread (1 on CPU, so a second core prepares the next batch) and inline (``num_workers=0``),
  which isolates the effect of batching;
- naive: the input order as given, each batch right-padded to a multiple of 32 (reference collator,
  moca-method.md §2.4).

Per-item preprocessing is the same code for both; only batching differs. Reports items/s, tokens/s,
padded-token fraction and peak RSS, and writes ``results/benchmarks/encode.json``.

    python -m benchmarks.encode [--size tiny|mid] [--queries 96] [--pages 48] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from benchmarks.common import peak_rss_mb, reset_peak_rss, write_result

logger = logging.getLogger(__name__)
SIZES = {"tiny": {"hidden": 64, "layers": 2}, "mid": {"hidden": 256, "layers": 4}}
PAD_MULTIPLE = 32


def make_corpus(n_queries: int, n_pages: int, seed: int = 0) -> list:
    """Short queries and pages of 256..1024 visual tokens, shuffled together (a fixed, mixed order)."""
    rng = random.Random(seed)
    words = "revenue table figure energy report growth margin chart policy annual total value".split()
    items: list = [" ".join(rng.choices(words, k=rng.randint(4, 16))) for _ in range(n_queries)]
    for i in range(n_pages):
        tokens = rng.randint(256, 1024)
        aspect = rng.uniform(0.6, 1.5)
        w = int(math.sqrt(tokens * aspect) * 28)
        h = int(tokens * 28 * 28 / w)
        page = Image.new("RGB", (w, h), (255, 255, 255))
        d = ImageDraw.Draw(page)
        for y in range(20, h - 20, 24):
            d.text((20, y), " ".join(rng.choices(words, k=8)) + f" {i}", fill=(0, 0, 0))
        items.append({"text": "\nRepresent the given document image.", "image": page})
    rng.shuffle(items)
    return items


def naive_encode(encoder, items: list, batch_size: int) -> tuple[np.ndarray, int, int]:
    """Fixed order, padding to a multiple of 32; returns (vectors, real tokens, padded tokens)."""
    from moca_model.processing_moca import normalize_item

    proc, out, real, padded = encoder.processor, [], 0, 0
    for s in range(0, len(items), batch_size):
        encs = [proc.process(normalize_item(x, s + k), s + k) for k, x in enumerate(items[s : s + batch_size])]
        batch = proc.collate(encs)
        t = batch["input_ids"].shape[1]
        extra = -t % PAD_MULTIPLE
        if extra:
            b = batch["input_ids"].shape[0]
            batch["input_ids"] = torch.cat([batch["input_ids"], torch.full((b, extra), proc.pad_id)], 1)
            batch["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros((b, extra), dtype=torch.long)], 1)
        real += int(batch["attention_mask"].sum())
        padded += int(batch["attention_mask"].numel() - batch["attention_mask"].sum())
        with torch.inference_mode():
            out.append(encoder.model(**batch).embeddings.float().numpy())
    return np.concatenate(out), real, padded


def ours_padding(encoder, items: list, batch_size: int) -> tuple[int, int]:
    """Real and padded token counts of MoCaEncoder's batching (same estimate, sort and cut as encode())."""
    from moca_model.batching import length_batches
    from moca_model.processing_moca import normalize_item

    lengths = [encoder.processor.estimate_length(normalize_item(x, i), i) for i, x in enumerate(items)]
    order = sorted(range(len(lengths)), key=lambda u: -lengths[u])
    batches = length_batches(order, lengths, batch_size)
    real = sum(lengths)
    return real, sum(lengths[b[0]] * len(b) for b in batches) - real


def run(size: str, n_queries: int, n_pages: int, batch_size: int, repeats: int) -> dict:
    """Time both approaches alternately and return the result record."""
    from moca_model import MoCaEncoder
    from moca_model.processing_moca import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
    from moca_model.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_checkpoint(tmp, seed=0, **SIZES[size])
        enc = MoCaEncoder.from_pretrained(
            tmp,
            device="cpu",
            min_pixels=DEFAULT_MIN_PIXELS,
            max_pixels=DEFAULT_MAX_PIXELS,
            max_length=DEFAULT_MAX_LENGTH,
            cache_memory_mb=0,  # every repeat must really encode
        )
    items = make_corpus(n_queries, n_pages)
    enc.encode(items[:4], show_progress=False)  # warm-up
    times = {"ours": [], "ours_inline": [], "naive": []}
    peaks = {"ours": 0.0, "ours_inline": 0.0, "naive": 0.0}
    for _ in range(repeats):
        for name, workers in (("ours", None), ("ours_inline", 0)):
            reset_peak_rss()
            t0 = time.perf_counter()
            ours = enc.encode(items, batch_size=batch_size, show_progress=False, num_workers=workers)
            times[name].append(time.perf_counter() - t0)
            peaks[name] = max(peaks[name], peak_rss_mb())
        reset_peak_rss()
        t0 = time.perf_counter()
        naive, real_n, pad_n = naive_encode(enc, items, batch_size)
        times["naive"].append(time.perf_counter() - t0)
        peaks["naive"] = max(peaks["naive"], peak_rss_mb())
    real_o, pad_o = ours_padding(enc, items, batch_size)
    result = {"size": size, "n_items": len(items), "n_queries": n_queries, "n_pages": n_pages, "batch_size": batch_size}
    for name, real, pad in (("ours", real_o, pad_o), ("ours_inline", real_o, pad_o), ("naive", real_n, pad_n)):
        best = min(times[name])
        result[name] = {
            "seconds_best": round(best, 3),
            "seconds_all": [round(t, 3) for t in times[name]],
            "items_per_s": round(len(items) / best, 2),
            "real_tokens_per_s": round(real / best, 1),
            "padded_token_fraction": round(pad / (real + pad), 4),
            "peak_rss_mb": round(peaks[name], 1),
        }
    result["throughput_ratio"] = round(result["ours"]["items_per_s"] / result["naive"]["items_per_s"], 2)
    # batching alone, without the prefetch thread (which uses the second core)
    result["throughput_ratio_inline"] = round(result["ours_inline"]["items_per_s"] / result["naive"]["items_per_s"], 2)
    result["max_abs_diff_vs_naive"] = float(np.abs(ours - naive).max())
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="mid")
    p.add_argument("--queries", type=int, default=96)
    p.add_argument("--pages", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    result = run(args.size, args.queries, args.pages, args.batch_size, args.repeats)
    path = write_result(f"encode_{args.size}", result)
    logger.info("ours  : %s", result["ours"])
    logger.info("naive : %s", result["naive"])
    logger.info(
        "ratio : %.2fx items/s (max |diff| %.2e) -> %s",
        result["throughput_ratio"],
        result["max_abs_diff_vs_naive"],
        path,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
