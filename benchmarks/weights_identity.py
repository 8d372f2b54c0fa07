"""Per-call cost of the weights fingerprint every ``encode`` call takes (issue 24, items 1-2).

:func:`moca_model.identity.weights_fingerprint` reads every parameter and buffer (whole up to 4,096 values,
else 256 sampled values) and hashes them with their shapes, dtypes, storage addresses and version counters.
Its cost depends on the number of tensors and on reading scattered values from memory, not on the
tensors' sizes. The 3B architecture (its 862 parameters and buffers, 3.75 B values) is measured with every
tensor a view of the right shape and dtype into one resident buffer as large as the largest tensor (the
embedding, 311 M values), so each sampled read is a real memory access across a gigabyte, as in a loaded
model, without holding 7.5 GB on a shared machine; the tiny model is measured as loaded. CPU, one torch
thread, median of ``--repeats`` calls; CPU time (``process_time``) is the figure to read on a shared machine,
where wall time includes waiting for a core.

    python -m benchmarks.weights_identity [--repeats 20]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

logger = logging.getLogger(__name__)

QWEN25VL_3B = {"hidden": 2048, "layers": 36, "heads": 16, "kv_heads": 2, "intermediate": 11008,
               "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16},
               "vocab_size": 151936}  # fmt: skip


def model_3b(dtype: torch.dtype) -> torch.nn.Module:
    """The Qwen2.5-VL-3B architecture's parameters and buffers (names, shapes, ``dtype``), as views into one
    resident buffer (module docstring)."""  # noqa: D205
    from moca_model.modeling_moca import MoCaModel
    from moca_model.testing import random_config, tiny_tokenizer

    with torch.device("meta"):
        meta = MoCaModel(random_config(tiny_tokenizer(), **QWEN25VL_3B))
    shapes = [(n, t.shape) for n, t in [*meta.named_parameters(), *meta.named_buffers()]]
    largest = max(s.numel() for _, s in shapes)
    pool = torch.empty(largest + 4096, dtype=dtype).uniform_(-1, 1)  # every page written: resident
    gen = torch.Generator().manual_seed(0)
    module = torch.nn.Module()
    for i, (_, shape) in enumerate(shapes):
        offset = int(torch.randint(0, pool.numel() - shape.numel() + 1, (1,), generator=gen))
        view = pool.as_strided(shape, torch.empty(shape, device="meta").stride(), offset)
        module.register_parameter(f"p{i}", torch.nn.Parameter(view, requires_grad=False))
    return module


def time_fingerprint(model, repeats: int) -> dict:
    """Median and spread of :func:`weights_fingerprint` over ``repeats`` calls, and what it reads."""
    from moca_model.identity import SAMPLES_PER_TENSOR, WHOLE_TENSOR, weights_fingerprint

    tensors = [t for _, t in [*model.named_parameters(), *model.named_buffers()]]
    weights_fingerprint(model)  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        weights_fingerprint(model)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    read = sum(t.numel() if t.numel() <= WHOLE_TENSOR else SAMPLES_PER_TENSOR for t in tensors)
    return {"tensors": len(tensors), "values": sum(t.numel() for t in tensors), "values_read": read,
            "dtype": str(tensors[0].dtype), "median_cpu_ms": round(1000 * statistics.median(cpu), 2),
            "median_ms": round(1000 * statistics.median(times), 2), "min_ms": round(1000 * min(times), 2),
            "max_ms": round(1000 * max(times), 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import tempfile
    from pathlib import Path

    from benchmarks.common import peak_rss_mb, write_result
    from moca_model import MoCaEncoder
    from moca_model.tiny import write_tiny_checkpoint

    torch.set_num_threads(1)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = MoCaEncoder.from_pretrained(write_tiny_checkpoint(Path(tmp) / "tiny"), device="cpu")
        results["tiny"] = time_fingerprint(tiny.model, args.repeats)
    for dtype in (torch.bfloat16, torch.float32):
        model = model_3b(dtype)
        results[f"3b_{str(dtype).removeprefix('torch.')}"] = time_fingerprint(model, args.repeats)
        del model
    for name, r in results.items():
        logger.info("%s: %d tensors, %.3g values, %d read: %.1f ms CPU, %.1f ms wall per call (medians)", name,
                    r["tensors"], r["values"], r["values_read"], r["median_cpu_ms"], r["median_ms"])  # fmt: skip
    payload = {"what": "weights fingerprint per encode call, CPU, one torch thread", "results": results,
               "peak_rss_mb": round(peak_rss_mb(), 1)}  # fmt: skip
    logger.info("wrote %s", write_result("weights_identity", payload))


if __name__ == "__main__":
    main()
