"""Encode throughput: MoCaEncoder (length-sorted batches, batched vision attention) vs the reference's way.

Both run in one process on the same random model and the same mixed corpus (short text queries plus
document pages whose resolutions give 256..1024 visual tokens, MoCa's bounds):

- ours: ``MoCaEncoder.encode`` (sort by estimated length, batch, restore order) with the vision tower's
  batched window/frame attention (:mod:`moca_model.vision_attention`, the default), with its default
  prefetch thread (1 on CPU, so a second core prepares the next batch) and inline (``num_workers=0``),
  which isolates the effect of batching;
- ours_stock_vision: ours with the vision tower's stock per-window loop (the switch off), i.e. what ours
  was before the batched attention, measured in the same run;
- naive: the reference-style encoder: the input order as given, each batch right-padded to a multiple of
  32 (reference collator, moca-method.md §2.4), on stock transformers' vision attention (the loop).

Per-item preprocessing is the same code for all; only batching and the vision attention path differ.
Reports items/s, tokens/s, padded-token fraction and peak RSS, and writes
``results/benchmarks/encode_<size>.json``. ``--profile`` also writes a cProfile of one inline ``ours``
pass (``encode_<size>_profile.txt``: where the time goes).

    python -m benchmarks.encode [--size tiny|mid] [--queries 96] [--pages 48] [--batch-size 16] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import math
import pstats
import random
import tempfile
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from benchmarks.common import RESULTS, peak_rss_mb, reset_peak_rss, write_result

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
    """Fixed order, padding to a multiple of 32, stock vision attention; returns (vectors, real, padded tokens)."""
    from moca_model.processing_moca import normalize_item

    encoder.model.batched_vision_attention = False
    try:
        return _naive_batches(encoder, items, batch_size, normalize_item)
    finally:
        encoder.model.batched_vision_attention = True


def _naive_batches(encoder, items: list, batch_size: int, normalize_item) -> tuple[np.ndarray, int, int]:
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


def run(size: str, n_queries: int, n_pages: int, batch_size: int, repeats: int, profile: bool = False) -> dict:
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
    names = ("ours", "ours_inline", "ours_stock_vision", "naive")
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    peaks = dict.fromkeys(names, 0.0)

    def ours_encode(workers, batched):
        enc.model.batched_vision_attention = batched
        try:
            return enc.encode(items, batch_size=batch_size, show_progress=False, num_workers=workers)
        finally:
            enc.model.batched_vision_attention = True

    runs = {
        "ours": lambda: ours_encode(None, True),
        "ours_inline": lambda: ours_encode(0, True),
        "ours_stock_vision": lambda: ours_encode(None, False),
        "naive": lambda: naive_encode(enc, items, batch_size),
    }
    vectors = {}
    for _ in range(repeats):
        for name in names:
            reset_peak_rss()
            t0, c0 = time.perf_counter(), time.process_time()
            vectors[name] = runs[name]()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            peaks[name] = max(peaks[name], peak_rss_mb())
    naive, real_n, pad_n = vectors["naive"]
    real_o, pad_o = ours_padding(enc, items, batch_size)
    result = {"size": size, "n_items": len(items), "n_queries": n_queries, "n_pages": n_pages, "batch_size": batch_size}
    for name in names:
        real, pad = (real_n, pad_n) if name == "naive" else (real_o, pad_o)
        best = min(times[name])
        result[name] = {
            "seconds_best": round(best, 3),
            "seconds_all": [round(t, 3) for t in times[name]],
            "cpu_seconds_all": [round(t, 3) for t in cpu[name]],
            "items_per_s": round(len(items) / best, 2),
            "real_tokens_per_s": round(real / best, 1),
            "padded_token_fraction": round(pad / (real + pad), 4),
            "peak_rss_mb": round(peaks[name], 1),
        }
    result["throughput_ratio"] = round(result["ours"]["items_per_s"] / result["naive"]["items_per_s"], 2)
    # batching alone, without the prefetch thread (which uses the second core)
    result["throughput_ratio_inline"] = round(result["ours_inline"]["items_per_s"] / result["naive"]["items_per_s"], 2)
    # the same comparison with ours on the stock vision loop: the ratio before the batched vision attention
    result["throughput_ratio_stock_vision"] = round(
        result["ours_stock_vision"]["items_per_s"] / result["naive"]["items_per_s"], 2
    )
    result["max_abs_diff_vs_naive"] = float(
        max(np.abs(vectors[name] - naive).max() for name in ("ours", "ours_inline", "ours_stock_vision"))
    )
    if profile:
        result["profile"] = str(profile_encode(enc, items, batch_size, RESULTS / f"encode_{size}_profile.txt"))
    return result


def profile_encode(enc, items: list, batch_size: int, path) -> object:
    """cProfile one inline ``ours`` pass (one thread, so the profile sees everything); write the top entries."""
    profiler = cProfile.Profile()
    profiler.enable()
    enc.encode(items, batch_size=batch_size, show_progress=False, num_workers=0)
    profiler.disable()
    text = io.StringIO()
    for key in ("cumulative", "tottime"):
        pstats.Stats(profiler, stream=text).sort_stats(key).print_stats(40)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.getvalue())
    return path.relative_to(RESULTS.parents[1])


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="mid")
    p.add_argument("--queries", type=int, default=96)
    p.add_argument("--pages", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="also write a cProfile of one inline pass")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    result = run(args.size, args.queries, args.pages, args.batch_size, args.repeats, args.profile)
    path = write_result(f"encode_{args.size}", result)
    for name in ("ours", "ours_inline", "ours_stock_vision", "naive"):
        logger.info("%-17s: %s", name, result[name])
    logger.info(
        "ratio : %.2fx items/s (%.2fx with ours on the stock vision loop; max |diff| %.2e) -> %s",
        result["throughput_ratio"],
        result["throughput_ratio_stock_vision"],
        result["max_abs_diff_vs_naive"],
        path,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
