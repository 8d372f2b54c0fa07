"""Vision attention: SDPA calls and time per vision forward, stock per-chunk loop vs batched vs block-diagonal mask.

Random-weight Qwen2.5-VL vision towers (:mod:`moca_model.vision_attention` is what is measured):

- ``small``: the 3B tower's structure (32 blocks, full attention in blocks 7/15/23/31) at width 64 (4 heads
  of 16), where per-call overhead weighs most, as it does on a GPU. Workloads: the issue's 4 pages of 64x48
  patches (5,392 stock calls), one such page, and 8 pages of 256..1,024 visual tokens with edge windows;
- ``3b``: the 3B/7B tower at its real width (1280, 16 heads, MLP 3420, 32 blocks), one 896x896 page
  (64x64 patches, 1,024 visual tokens, 64 windows); on a GPU also 16 such pages in one batch, and
  ``3b_encode``: pages/s of the whole random-weight 3B MoCaEncoder (SDPA) with the switch off vs on.

Strategies, measured alternately in one process: ``stock`` (upstream's loop, the switch off), ``grouped``
(the default: one call per distinct chunk length) and ``block_diagonal`` (one call per block with an
``N x N`` boolean mask, what transformers <= 4.53 did; only where ``N`` is small enough to be sane).
Per strategy: SDPA calls per forward, wall seconds per forward (best of ``--repeats``) and the process CPU
seconds of that run (steadier than wall time on a shared machine), seconds inside the window blocks' and
the full blocks' attention modules (timed by hooks; CPU seconds on CPU), max |diff| to stock. On CPU the
whole 3B tower costs about a minute per forward, so it runs once per strategy (``stock`` and ``grouped``);
``block_diagonal`` is measured at 3B width on one window block's attention module (``3b_block``).

    python -m benchmarks.vision_attention [--workloads small small_1page ...] [--repeats 3] [--device cuda]
    python -m benchmarks.vision_attention --dry-run     # CPU, a 4-block tower and the tiny MoCa: checks the script
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import random
import time
from pathlib import Path

import torch

from benchmarks.common import write_result

logger = logging.getLogger(__name__)
FULL_BLOCKS = [7, 15, 23, 31]
TOWERS = {
    "small": {"depth": 32, "hidden_size": 64, "num_heads": 4, "intermediate_size": 128, "out_hidden_size": 64},
    "3b": {"depth": 32, "hidden_size": 1280, "num_heads": 16, "intermediate_size": 3420, "out_hidden_size": 2048},
}
STRATEGIES = ("stock", "grouped", "block_diagonal")
BLOCK_DIAGONAL_MAX_TOKENS = 4096  # the mask is N^2 and every window block does full-attention work


def mixed_pages(n: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """Patch grids of ``n`` pages of 256..1,024 visual tokens and varied aspect (most have edge windows)."""
    rng = random.Random(seed)
    grids = []
    for _ in range(n):
        tokens, aspect = rng.randint(256, 1024), rng.uniform(0.6, 1.5)
        w = max(1, int(math.sqrt(tokens * aspect)))
        h = max(1, tokens // w)
        grids.append((1, 2 * h, 2 * w))
    return grids


# workload -> (tower, patch grids, strategies)
WORKLOADS = {
    "small": ("small", [(1, 64, 48)] * 4, ("stock", "grouped")),
    "small_1page": ("small", [(1, 64, 48)], STRATEGIES),
    "small_mixed": ("small", mixed_pages(8), ("stock", "grouped")),
    "3b": ("3b", [(1, 64, 64)], ("stock", "grouped")),
    "3b_16pages": ("3b", [(1, 64, 64)] * 16, ("stock", "grouped")),
}
CPU_WORKLOADS = ["small", "small_1page", "small_mixed", "3b_block", "3b"]
GPU_WORKLOADS = ["small", "small_1page", "small_mixed", "3b_block", "3b", "3b_16pages", "3b_encode"]


@contextlib.contextmanager
def count_sdpa_calls():
    """Count ``torch.nn.functional.scaled_dot_product_attention`` calls in the block (yields a dict)."""
    counter = {"calls": 0}
    original = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        counter["calls"] += 1
        return original(*args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = counting
    try:
        yield counter
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def attend_block_diagonal(module, query, key, value, cu_seqlens, attention_interface, **kwargs) -> torch.Tensor:
    """The alternative to :func:`moca_model.vision_attention.attend_chunks`: one SDPA call, block-diagonal mask.

    Args and returns as ``attend_chunks``; (N, H, Dh) in, (N, H, Dh) out.
    """
    n, heads, dim = query.shape
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    segment = torch.repeat_interleave(torch.arange(lengths.numel(), device=query.device), lengths)
    mask = (segment[:, None] == segment[None, :])[None, None]  # (1, 1, N, N) bool: True = attend
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))
    out, _ = attention_interface(
        module, q, k, v, attention_mask=mask, scaling=module.scaling, is_causal=False, **kwargs
    )
    return out.reshape(n, heads, dim)


@contextlib.contextmanager
def strategy(tower: torch.nn.Module, name: str):
    """Run the block with the tower's attention in ``name`` (``stock`` | ``grouped`` | ``block_diagonal``)."""
    from moca_model import vision_attention

    vision_attention.set_batched(tower, name != "stock")
    original = vision_attention.attend_chunks
    if name == "block_diagonal":
        vision_attention.attend_chunks = attend_block_diagonal
    try:
        yield
    finally:
        vision_attention.attend_chunks = original
        vision_attention.set_batched(tower, True)


def build_tower(fields: dict, device: torch.device, dtype: torch.dtype):
    """A random-weight Qwen2.5-VL vision tower (``fields`` as in ``TOWERS``; window 112, patch 14) on ``device``."""
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    fields = {**fields, "fullatt_block_indexes": FULL_BLOCKS, "window_size": 112, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2}  # fmt: skip
    cfg = Qwen2_5_VLConfig(vision_config=fields).vision_config
    torch.manual_seed(0)
    with torch.device(device):
        tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg, attn_implementation="sdpa", dtype=dtype)
    return tower.eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _output(out) -> torch.Tensor:
    return out if torch.is_tensor(out) else out.pooler_output  # 4.x: the merged tokens; 5.x: an output object


class _AttentionTimers:
    """Seconds spent inside the window blocks' and the full blocks' attention modules (forward hooks).

    Process CPU seconds on CPU (steady on a shared machine), wall seconds around synchronisation on CUDA.
    """

    def __init__(self, tower: torch.nn.Module, device: torch.device):
        self.seconds = {"window": 0.0, "full": 0.0}
        self._clock = time.perf_counter if device.type == "cuda" else time.process_time
        self._start = 0.0
        self._handles = []
        for i, block in enumerate(tower.blocks):
            kind = "full" if i in tower.fullatt_block_indexes else "window"
            self._handles.append(block.attn.register_forward_pre_hook(self._pre(device)))
            self._handles.append(block.attn.register_forward_hook(self._post(device, kind)))

    def _pre(self, device):
        def hook(module, args):
            _sync(device)
            self._start = self._clock()

        return hook

    def _post(self, device, kind):
        def hook(module, args, output):
            _sync(device)
            self.seconds[kind] += self._clock() - self._start

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``; CUDA is synchronised around it."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _summarise(result: dict, times: dict, outputs: dict, reference: str) -> None:
    for name, runs in times.items():
        best = min(range(len(runs)), key=lambda i: runs[i][0])
        result["strategies"][name].update(
            seconds_best=round(runs[best][0], 4),
            cpu_seconds_of_best=round(runs[best][1], 4),
            seconds_all=[round(w, 4) for w, _ in runs],
            max_abs_diff_vs_stock=float((outputs[name] - outputs[reference]).abs().max()),
        )


def measure_tower(tower, grids: list, strategies, *, repeats: int, device: torch.device, dtype: torch.dtype) -> dict:
    """SDPA calls, wall/CPU time and per-kind attention time of one vision forward per strategy, alternated.

    A first pass per strategy counts the calls and keeps the output (and warms up); then ``repeats`` timed
    passes in turn, the attention modules timed by hooks (on CUDA they synchronise, so the per-kind times
    come from a separate pass there). ``repeats=0`` times the first pass instead (the 3B tower on CPU).
    """
    grid = torch.tensor(grids, device=device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    pixels = torch.randn(int(grid.prod(1).sum()), 1176, generator=gen).to(device, dtype)
    result = {"images": len(grids), "tokens": int(grid.prod(1).sum()), "strategies": {}}
    outputs, times = {}, {name: [] for name in strategies}

    def forward(name: str, *, hooks: bool) -> None:
        timers = _AttentionTimers(tower, device) if hooks else None
        try:
            outputs[name] = _output(tower(pixels, grid_thw=grid)).float()
        finally:
            if timers:
                timers.remove()
                for kind, seconds in timers.seconds.items():
                    result["strategies"][name][f"{kind}_attention_s"] = round(seconds, 4)

    with torch.inference_mode():
        for name in strategies:
            result["strategies"][name] = {}
            with strategy(tower, name), count_sdpa_calls() as counter:
                run_time = _timed(lambda n=name: forward(n, hooks=repeats == 0), device)
            result["strategies"][name]["sdpa_calls"] = counter["calls"]
            if repeats == 0:
                times[name].append(run_time)
        for _ in range(repeats):
            for name in strategies:
                with strategy(tower, name):
                    times[name].append(_timed(lambda n=name: forward(n, hooks=device.type == "cpu"), device))
        if repeats and device.type == "cuda":
            for name in strategies:
                with strategy(tower, name):
                    forward(name, hooks=True)
    _summarise(result, times, outputs, strategies[0])
    stock, grouped = result["strategies"].get("stock"), result["strategies"].get("grouped")
    if stock and grouped:
        result["speedup_grouped_vs_stock"] = round(stock["seconds_best"] / grouped["seconds_best"], 3)
        result["cpu_speedup_grouped_vs_stock"] = round(stock["cpu_seconds_of_best"] / grouped["cpu_seconds_of_best"], 3)
        result["window_attention_speedup"] = round(stock["window_attention_s"] / grouped["window_attention_s"], 3)
    return result


def measure_block(tower, grids: list, *, repeats: int, device: torch.device, dtype: torch.dtype) -> dict:
    """One window block's attention module (qkv, rotary, attention, proj) per strategy, alternated."""
    block = next(b for i, b in enumerate(tower.blocks) if i not in tower.fullatt_block_indexes)
    grid = torch.tensor(grids, device=device)
    tokens = int(grid.prod(1).sum())
    _, cu_windows = _window_seqlens(tower, grid)
    gen = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(tokens, tower.config.hidden_size, generator=gen).to(device, dtype)
    angles = torch.rand(tokens, tower.config.hidden_size // tower.config.num_heads // 2, generator=gen) * 6.28
    emb = torch.cat((angles, angles), dim=-1).to(device)
    kwargs = {"cu_seqlens": cu_windows, "position_embeddings": (emb.cos(), emb.sin())}
    result = {"images": len(grids), "tokens": tokens, "windows": int(cu_windows.numel() - 1), "strategies": {}}
    outputs, times = {}, {name: [] for name in STRATEGIES}
    with torch.inference_mode():
        for name in STRATEGIES:
            with strategy(tower, name):
                block.attn(hidden, **kwargs)
                with count_sdpa_calls() as counter:
                    outputs[name] = block.attn(hidden, **kwargs).float()
            result["strategies"][name] = {"sdpa_calls": counter["calls"]}
        for _ in range(repeats):
            for name in STRATEGIES:
                with strategy(tower, name):
                    times[name].append(_timed(lambda: block.attn(hidden, **kwargs), device))
    _summarise(result, times, outputs, "stock")
    return result


def measure_encoder_pages(
    *, pages: int, page_side: int, batch_size: int, device: torch.device, dtype: torch.dtype, tiny: bool = False
) -> dict:
    """Pages/s of a random-weight MoCaEncoder (3B architecture, SDPA) with the stock loop vs batched, alternated."""
    import numpy as np

    from benchmarks.gpu_check import ARCH_3B, ARCH_TINY, _pages_per_s, corpus, random_encoder

    items = corpus(0, pages, page_side)
    enc = random_encoder(ARCH_TINY if tiny else ARCH_3B, dtype, "sdpa", str(device))
    out: dict = {"n_pages": pages, "page_side_px": page_side, "batch_size": batch_size}
    vectors = {}
    try:
        for repeat in range(2):
            for name, batched in (("stock", False), ("grouped", True)):
                enc.model.batched_vision_attention = batched
                out.setdefault(name, []).append(_pages_per_s(enc, items, batch_size))
                if repeat == 0:
                    vectors[name] = enc.encode(items[:batch_size], batch_size=batch_size, show_progress=False)
    finally:
        enc.model.batched_vision_attention = True
    best = {name: max(r["pages_per_s"] for r in out[name]) for name in ("stock", "grouped")}
    out["speedup_grouped_vs_stock"] = round(best["grouped"] / best["stock"], 3)
    out["max_abs_diff"] = float(np.abs(vectors["grouped"] - vectors["stock"]).max())
    return out


def _window_seqlens(tower, grid: torch.Tensor):
    """(window_index, cu_window_seqlens) as the installed transformers computes them for ``grid``."""
    if hasattr(tower, "get_window_index"):  # 4.x
        index, cu = tower.get_window_index(grid)
        cu = torch.unique_consecutive(torch.tensor(cu, device=grid.device, dtype=torch.int32))
        return index, cu
    from transformers.vision_utils import get_vision_window_index  # 5.x

    cfg = tower.config
    return get_vision_window_index(grid, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)


def run(
    workloads: list[str],
    *,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    encode_pages: int = 128,
    towers_cfg: dict | None = None,
    workload_specs: dict | None = None,
) -> dict:
    """Measure each workload (``towers_cfg`` / ``workload_specs`` default to ``TOWERS`` / ``WORKLOADS``)."""
    towers_cfg, workload_specs = towers_cfg or TOWERS, workload_specs or WORKLOADS
    towers: dict[str, torch.nn.Module] = {}
    result = {"device": str(device), "dtype": str(dtype), "workloads": {}}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    for name in workloads:
        if name == "3b_encode":  # 896 px pages: 1,024 visual tokens (the tiny MoCa on CPU: 112 px)
            t0, gpu = time.perf_counter(), device.type == "cuda"
            record = measure_encoder_pages(pages=encode_pages, page_side=896 if gpu else 112, batch_size=16,
                                           device=device, dtype=dtype, tiny=not gpu)  # fmt: skip
            result["workloads"][name] = record
            logger.info("%s (%.0f s): %s", name, time.perf_counter() - t0, record)
            continue
        size = "3b" if name.startswith("3b") else "small"
        if size not in towers:
            t0 = time.perf_counter()
            towers[size] = build_tower(towers_cfg[size], device, dtype)
            logger.info("built the %s tower in %.1f s", size, time.perf_counter() - t0)
        t0 = time.perf_counter()
        if name == "3b_block":
            record = measure_block(towers[size], [(1, 64, 64)], repeats=repeats, device=device, dtype=dtype)
        else:
            _, grids, strategies = workload_specs[name]
            tokens = sum(t * h * w for t, h, w in grids)
            if tokens > BLOCK_DIAGONAL_MAX_TOKENS:
                strategies = tuple(s for s in strategies if s != "block_diagonal")
            reps = 0 if (size == "3b" and device.type == "cpu") else repeats  # about a minute per forward
            record = measure_tower(towers[size], grids, strategies, repeats=reps, device=device, dtype=dtype)
        record.update(tower=size, tower_config={**towers_cfg[size], "fullatt_block_indexes": FULL_BLOCKS})
        result["workloads"][name] = record
        logger.info("%s (%.0f s): %s", name, time.perf_counter() - t0,
                    {k: (v["sdpa_calls"], v["seconds_best"]) for k, v in record["strategies"].items()})  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workloads", nargs="+", choices=[*WORKLOADS, "3b_block", "3b_encode"], default=None,
                   help=f"default: {' '.join(CPU_WORKLOADS)} on CPU, {' '.join(GPU_WORKLOADS)} on CUDA")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--encode-pages", type=int, default=128, help="pages for 3b_encode")
    p.add_argument("--dry-run", action="store_true", help="CPU, a 4-block tower and the tiny MoCa (checks the script)")
    p.add_argument("--out", type=Path, default=None, help="default: results/benchmarks/vision_attention.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device("cpu" if args.dry_run else args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    workloads = args.workloads or (GPU_WORKLOADS if device.type == "cuda" else CPU_WORKLOADS)
    towers_cfg, specs = TOWERS, WORKLOADS
    if args.dry_run:
        towers_cfg = {**TOWERS, "small": {**TOWERS["small"], "depth": 4, "hidden_size": 32}}
        specs = {**WORKLOADS, "small_1page": ("small", [(1, 18, 10), (1, 16, 16)], STRATEGIES)}
        workloads, args.repeats, args.encode_pages = ["small_1page", "3b_encode"], 1, 4
    result = run(workloads, repeats=args.repeats, device=device, dtype=dtype, encode_pages=args.encode_pages,
                 towers_cfg=towers_cfg, workload_specs=specs)  # fmt: skip
    if args.out is None:
        path = write_result("vision_attention", result)
    else:
        import json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        path = args.out
    logger.info("-> %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
