"""GPU check for a lent machine: random-weight MoCa at the 3B architecture, SDPA vs flash-attention-2.

Sections (``--sections``; each writes its part of ``results/gpu/gpu_check.json``; a new check is one function added
to ``SECTIONS``):

- ``encode``: throughput (items/s, tokens/s, pages/s), model FLOPs utilisation and peak memory for text queries and
  document pages of 1,024 visual tokens with SDPA, and with flash-attention-2 when ``flash_attn`` imports; FA2-vs-SDPA
  embedding parity on the same inputs (bf16; tolerance written in the result); bf16 vs fp32 (SDPA) cosines.
- ``pages``: pages/s on pages alone (equal sizes, so batches carry no padding): SDPA with the 4-D mask vs the
  no-mask fast path (``MoCaModel.unpadded_fast_path``), and one device vs a pool over ``--devices`` (default: every
  GPU; :mod:`moca_model.parallel`).

The real-kernel parity tests (``tests/gpu``) and one CL step under DeepSpeed ZeRO-3 (``benchmarks/gpu_cl_step.py``)
are separate sections of ``benchmarks/gpu_check.sh``. No network, no checkpoint: the weights are random.

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


def measure(encoder, items: list, batch_size: int, flops: float, peak_flops: float | None) -> tuple[dict, np.ndarray]:
    """Throughput, achieved FLOP/s, MFU and peak memory of one encode pass (after a warm-up), and the embeddings."""
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
    out = {
        "seconds": round(dt, 3),
        "items_per_s": round(len(items) / dt, 2),
        "tokens_per_s": round(tokens / dt, 1),
        "tokens": tokens,
        "achieved_tflops": float(f"{flops / dt / 1e12:.4g}"),
    }
    if peak_flops:
        out["mfu"] = float(f"{flops / dt / peak_flops:.4g}")
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


def page_patches(encoder, items: list) -> tuple[list[int], list[int]]:
    """(text-model tokens per item, vision patches per image) of ``items`` as the processor cuts them."""
    from moca_model.processing_moca import normalize_item

    lengths, patches = [], []
    for i, x in enumerate(items):
        enc = encoder.processor.process(normalize_item(x, i), i)
        lengths.append(len(enc.input_ids))
        if enc.image_grid_thw is not None:
            patches += [int(g.prod()) for g in enc.image_grid_thw]
    return lengths, patches


def forward_flops(arch: dict, seq_lens: list[int], patches: list[int]) -> float:
    """Matmul FLOPs of one forward: text decoder linears and attention, vision tower, merger (no embedding lookup).

    Per text token 2 x (q, k, v, o and the SwiGLU MLP weights) per layer, plus 4 T^2 d per sequence and layer for
    QK^T and AV. Vision: 2 x the block weights per patch, windowed attention over 64-patch windows except in the
    full-attention blocks (whole image), the patch embedding (1176 -> h) and the 2-layer merger per 4 patches.
    """
    d, layers, heads, kv = arch["hidden"], arch["layers"], arch["heads"], arch["kv_heads"]
    per_token = 2 * layers * (2 * d * d + 2 * d * (d // heads) * kv + 3 * d * arch["intermediate"])
    text = per_token * sum(seq_lens) + layers * sum(4 * t * t * d for t in seq_lens)
    v = arch["vision"]
    h, depth, full = v["hidden_size"], v["depth"], len(v["fullatt_block_indexes"])
    per_patch = 2 * depth * (4 * h * h + 3 * h * v["intermediate_size"]) + 2 * 1176 * h
    merger = 2 * ((4 * h) * (4 * h) + 4 * h * v["out_hidden_size"]) / 4  # per patch
    attn = sum((depth - full) * 4 * n * 64 * h + full * 4 * n * n * h for n in patches)
    return float(text + sum(patches) * (per_patch + merger) + attn)


def section_encode(args, ctx: dict) -> dict:
    """Each backend: throughput, MFU, peak memory; FA2-vs-SDPA parity; bf16 vs fp32 cosines (SDPA)."""
    device, arch, dtype = ctx["device"], ctx["arch"], ctx["dtype"]
    items = corpus(args.queries, args.pages, args.page_side)
    impls = ["sdpa"]
    try:
        import flash_attn  # noqa: F401

        impls.append("flash_attention_2")
    except ImportError:
        logger.warning("flash_attn not importable: measuring SDPA only")
    out: dict = {"n_queries": args.queries, "n_pages": args.pages, "page_side_px": args.page_side,
                 "batch_size": args.batch_size, "backends": {}}  # fmt: skip
    vectors = {}
    for impl in impls:
        enc = random_encoder(arch, dtype, impl, str(device))
        out["n_params"] = sum(p.numel() for p in enc.model.parameters())
        lengths, patches = page_patches(enc, items)
        flops = forward_flops(arch, lengths, patches)
        out["flops_per_pass"] = flops
        out["visual_tokens_per_page"] = patches[0] // 4 if patches else 0
        out["backends"][impl], vectors[impl] = measure(enc, items, args.batch_size, flops, args.peak_tflops * 1e12)
        out["backends"][impl]["pages_per_s"] = round(args.pages / out["backends"][impl]["seconds"], 2)
        del enc
        _free(device)
    if len(vectors) == 2:
        out["parity"] = _parity(vectors["sdpa"], vectors["flash_attention_2"], PARITY_ATOL, PARITY_MIN_COSINE)
    if args.bf16_vs_fp32 and dtype != torch.float32:
        sample = items[: args.bf16_vs_fp32 // 2] + items[args.queries : args.queries + args.bf16_vs_fp32 // 2]
        enc = random_encoder(arch, torch.float32, "sdpa", str(device))
        ref = enc.encode(sample, batch_size=args.batch_size, show_progress=False)
        del enc
        _free(device)
        n = len(sample) // 2
        got = np.concatenate([vectors["sdpa"][:n], vectors["sdpa"][args.queries : args.queries + n]])
        cos = (ref * got).sum(1)
        out["bf16_vs_fp32"] = {"items": len(sample), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean())}
    return out


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _parity(a: np.ndarray, b: np.ndarray, atol: float, min_cosine: float) -> dict:
    cos = (a * b).sum(1)
    diff = float(np.abs(a - b).max())
    return {"max_abs_diff": diff, "min_cosine": float(cos.min()), "atol": atol, "min_cosine_required": min_cosine,
            "pass": bool(diff <= atol and cos.min() >= min_cosine)}  # fmt: skip


SECTIONS = {"encode": section_encode, "pages": lambda args, ctx: measure_pages(args, ctx["arch"], ctx["dtype"],
                                                                              ctx["device"])}  # fmt: skip


def run(args) -> dict:
    """Run the requested sections; return the result record."""
    device = torch.device("cpu" if args.dry_run else "cuda")
    ctx = {"device": device, "arch": ARCH_TINY if args.dry_run else ARCH_3B,
           "dtype": torch.float32 if args.dry_run else torch.bfloat16}  # fmt: skip
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (dry run)",
        "arch": "tiny" if args.dry_run else "qwen2.5-vl-3b",
        "dtype": str(ctx["dtype"]),
        "peak_tflops": args.peak_tflops,
        "sections": list(args.sections),
    }
    for name in args.sections:
        t0 = time.perf_counter()
        result[name] = SECTIONS[name](args, ctx)
        result[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
        logger.info("section %s done in %.0f s", name, result[name]["section_seconds"])
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
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS), help="what to run")
    p.add_argument("--bf16-vs-fp32", type=int, default=32, help="items compared bf16 vs fp32 in encode (0: skip)")
    p.add_argument("--out", type=Path, default=OUT / "gpu_check.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    logger.info(json.dumps(result, indent=2))
    return 0 if result.get("encode", {}).get("parity", {}).get("pass", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
