"""GPU check for a lent machine: random-weight MoCa at the 3B architecture, SDPA vs flash-attention-2.

Measures encode throughput (items/s, tokens/s) and model FLOPs utilisation for text queries and
document pages (1024 visual tokens) with SDPA, and with flash-attention-2 when ``flash_attn`` imports;
checks FA2-vs-SDPA embedding parity on the same inputs (bf16; tolerance written in the result). Then
pages/s on pages alone (equal sizes, so batches carry no padding): SDPA with the 4-D mask vs the
no-mask fast path (``MoCaModel.unpadded_fast_path``), and one device vs a pool over ``--devices``
(default: every GPU; :mod:`moca_model.parallel`); and SDPA pages/s with the vision tower's stock
per-window loop vs batched windows (``MoCaModel.batched_vision_attention``, issue 25). Writes
``results/gpu/gpu_check.json``. No network, no checkpoint: the weights are random.

    python -m benchmarks.gpu_check                      # on the GPU machine (see gpu_check.sh)
    python -m benchmarks.gpu_check --dry-run            # CPU, tiny architecture: checks the script itself
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)
OUT = Path(__file__).resolve().parents[1] / "results" / "gpu"
PARITY_ATOL = 2e-2  # bf16: embeddings are unit vectors; per-dimension differences of a few bf16 ulps
PARITY_MIN_COSINE = 0.999
# Qwen2.5-VL-3B-Instruct architecture (its config.json); MoCa-3B keeps it unchanged.
ARCH_3B = {
    "hidden": 2048,
    "layers": 36,
    "heads": 16,
    "kv_heads": 2,
    "intermediate": 11008,
    "vocab": 151936,
    "vision": {
        "depth": 32,
        "hidden_size": 1280,
        "num_heads": 16,
        "intermediate_size": 3420,
        "out_hidden_size": 2048,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}
ARCH_TINY = {
    "hidden": 64,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "intermediate": 256,
    "vocab": 512,
    "vision": {
        "depth": 2,
        "hidden_size": 64,
        "num_heads": 4,
        "intermediate_size": 128,
        "out_hidden_size": 64,
        "fullatt_block_indexes": [1],
    },
}


def build(arch: dict, device: torch.device, dtype: torch.dtype, impl: str, tokenizer):
    """A random-weight MoCaModel with the given architecture, built directly on ``device``."""
    from moca_model.modeling_moca import MoCaModel
    from moca_model.testing import random_config

    cfg = random_config(
        tokenizer, hidden=arch["hidden"], layers=arch["layers"], heads=arch["heads"], kv_heads=arch["kv_heads"],
        intermediate=arch["intermediate"], vision=arch["vision"], vocab_size=max(arch["vocab"], len(tokenizer)),
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = MoCaModel._from_config(cfg, attn_implementation=impl, dtype=dtype)
    return model.eval()


def corpus(n_queries: int, n_pages: int, page_side: int) -> list:
    """Text queries and synthetic pages of ``page_side`` px (896 px -> 1024 visual tokens)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    items: list = [
        f"what is the total value reported for item {i} in table {rng.integers(99)}?" for i in range(n_queries)
    ]
    for i in range(n_pages):
        page = Image.new("RGB", (page_side, page_side), (255, 255, 255))
        d = ImageDraw.Draw(page)
        for y in range(10, page_side - 10, 18):
            d.text((10, y), f"line {y} of page {i}: value {rng.integers(1000)}", fill=(0, 0, 0))
        items.append({"image": page, "text": "\nRepresent the given document image."})
    return items


def measure(encoder, items: list, batch_size: int, n_params: int, peak_flops: float | None) -> dict:
    """Throughput and MFU of one encode pass (after a warm-up), and the embeddings."""
    from moca_model.processing_moca import normalize_item

    tokens = sum(encoder.processor.estimate_length(normalize_item(x, i), i) for i, x in enumerate(items))
    encoder.encode(items[: 2 * batch_size], batch_size=batch_size, show_progress=False)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    vecs = encoder.encode(items, batch_size=batch_size, show_progress=False)
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    flops = 2 * n_params * tokens  # forward matmul FLOPs; attention adds a little on 1k-token pages
    out = {
        "seconds": round(dt, 3),
        "items_per_s": round(len(items) / dt, 2),
        "tokens_per_s": round(tokens / dt, 1),
        "tokens": tokens,
        "achieved_tflops": round(flops / dt / 1e12, 2),
    }
    if peak_flops:
        out["mfu"] = round(flops / dt / peak_flops, 4)
    if encoder.device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out, vecs


def processor():
    """The tiny tokenizer (ids only matter for markers; the vocab size is the 3B one) at MoCa's 1280 tokens."""
    from moca_model.processing_moca import MoCaProcessor
    from moca_model.testing import tiny_tokenizer

    return MoCaProcessor(tiny_tokenizer(), max_length=1280)


def random_encoder(arch: dict, dtype: torch.dtype, impl: str, device: str, *, fast_path: bool = True):
    """A MoCaEncoder over random weights, without a cache (module-level: device-pool workers build one each)."""
    from moca_model.encode import MoCaEncoder

    proc = processor()
    model = build(arch, torch.device(device), dtype, impl, proc.tokenizer)
    model.unpadded_fast_path = fast_path
    return MoCaEncoder(model, proc, device=device, cache=False)


def _pages_per_s(encoder, pages: list, batch_size: int) -> dict:
    encoder.encode(pages[:batch_size], batch_size=batch_size, show_progress=False)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    encoder.encode(pages, batch_size=batch_size, show_progress=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"seconds": round(dt, 3), "pages_per_s": round(len(pages) / dt, 2), "batches": encoder.last_stats.batches}


def measure_pages(args, arch: dict, dtype: torch.dtype, device: torch.device) -> dict:
    """Pages/s: 4-D mask vs no-mask fast path (SDPA, one device), then one device vs the device pool."""
    from moca_model.encode import MoCaEncoder
    from moca_model.parallel import DevicePool, parse_devices

    pages = corpus(0, args.pages, args.page_side)
    out = {"n_pages": len(pages)}
    for name, fast in (("sdpa_4d_mask", False), ("sdpa_fast_path", True)):
        enc = random_encoder(arch, dtype, "sdpa", str(device), fast_path=fast)
        out[name] = _pages_per_s(enc, pages, args.batch_size)
        del enc
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["fast_path_speedup"] = round(out["sdpa_fast_path"]["pages_per_s"] / out["sdpa_4d_mask"]["pages_per_s"], 3)
    devices = parse_devices(args.devices or ("cpu,cpu" if args.dry_run else "all"))
    factory = functools.partial(random_encoder, arch, dtype, "sdpa")
    pool = DevicePool(factory, devices, threads=1 if args.dry_run else None)
    try:
        enc = MoCaEncoder(None, processor(), cache=False, pool=pool)
        out["devices"] = {"list": devices, "pool": _pages_per_s(enc, pages, args.batch_size)}
    finally:
        pool.close()
    out["devices"]["speedup_vs_one_device"] = round(
        out["devices"]["pool"]["pages_per_s"] / out["sdpa_fast_path"]["pages_per_s"], 3
    )
    return out


def measure_vision_batching(args, arch: dict, dtype: torch.dtype, device: torch.device) -> dict:
    """Pages/s on SDPA with the vision tower's stock per-window loop vs batched (issue 25), alternated.

    The same pages as :func:`measure_pages`, one model; ``batched_vision_attention`` is the only change.
    """
    pages = corpus(0, args.pages, args.page_side)
    enc = random_encoder(arch, dtype, "sdpa", str(device))
    out: dict = {"n_pages": len(pages)}
    vectors, first = {}, pages[: args.batch_size]
    try:
        for repeat in range(2):
            for name, batched in (("stock_loop", False), ("batched", True)):
                enc.model.batched_vision_attention = batched
                out.setdefault(name, []).append(_pages_per_s(enc, pages, args.batch_size))
                if repeat == 0:
                    vectors[name] = enc.encode(first, batch_size=args.batch_size, show_progress=False)
    finally:
        enc.model.batched_vision_attention = True
        del enc
        if device.type == "cuda":
            torch.cuda.empty_cache()
    best = {name: max(r["pages_per_s"] for r in out[name]) for name in ("stock_loop", "batched")}
    out["speedup"] = round(best["batched"] / best["stock_loop"], 3)
    out["max_abs_diff"] = float(np.abs(vectors["batched"] - vectors["stock_loop"]).max())
    return out


def run(args) -> dict:
    """Build, measure each backend, compare embeddings; return the result record."""
    device = torch.device("cpu" if args.dry_run else "cuda")
    arch = ARCH_TINY if args.dry_run else ARCH_3B
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    items = corpus(args.queries, args.pages, args.page_side)
    impls = ["sdpa"]
    try:
        import flash_attn  # noqa: F401

        impls.append("flash_attention_2")
    except ImportError:
        logger.warning("flash_attn not importable: measuring SDPA only")
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "arch": "tiny" if args.dry_run else "qwen2.5-vl-3b",
        "dtype": str(dtype),
        "batch_size": args.batch_size,
        "n_queries": args.queries,
        "n_pages": args.pages,
        "page_side_px": args.page_side,
        "backends": {},
    }
    vectors = {}
    for impl in impls:
        enc = random_encoder(arch, dtype, impl, str(device))
        n_params = sum(p.numel() for p in enc.model.parameters())
        result["n_params"] = n_params
        result["backends"][impl], vectors[impl] = measure(
            enc, items, args.batch_size, n_params, args.peak_tflops * 1e12
        )
        del enc
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if len(vectors) == 2:
        a, b = vectors["sdpa"], vectors["flash_attention_2"]
        cos = (a * b).sum(1)
        result["parity"] = {
            "max_abs_diff": float(np.abs(a - b).max()),
            "min_cosine": float(cos.min()),
            "atol": PARITY_ATOL,
            "min_cosine_required": PARITY_MIN_COSINE,
            "pass": bool(np.abs(a - b).max() <= PARITY_ATOL and cos.min() >= PARITY_MIN_COSINE),
        }
    result["pages"] = measure_pages(args, arch, dtype, device)
    result["vision_attention_pages"] = measure_vision_batching(args, arch, dtype, device)
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny architecture on CPU (checks the script)")
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--pages", type=int, default=128)
    p.add_argument("--page-side", type=int, default=896, help="page side in px (896 -> 1024 visual tokens)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--devices", default=None, help="device pool for the pages/s test (default: all GPUs)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the card (H100 SXM: 989)")
    p.add_argument("--out", type=Path, default=OUT / "gpu_check.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    logger.info(json.dumps(result, indent=2))
    return 0 if result.get("parity", {}).get("pass", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
