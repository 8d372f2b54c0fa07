"""The machinery every MMEB run (v1 and v2) shares around its tasks.

Where caches live, the results folder's name, the encoder it loads, encoding one task's unique inputs
across ranks, and truncation counts.

``mmeb/runner.py`` (v1) and ``mmeb/v2/runner.py`` both build on this module; neither imports the other's
machinery (v1's ``run`` only dispatches to v2).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from moca_bench.mmeb import dist
from moca_bench.mmeb.config import MMEBConfig
from moca_bench.mmeb.data import SubsetData
from moca_bench.mmeb.encoding import OK, STATUS_NAMES, encode_shard

MAX_BAD_EXAMPLES = 5  # bad inputs listed per subset / task in the results


def default_cache_dir() -> Path:
    """``$MOCA_CACHE_DIR`` or ``~/.cache/moca_bench``, plus ``mmeb``."""
    return Path(os.environ.get("MOCA_CACHE_DIR") or Path.home() / ".cache" / "moca_bench") / "mmeb"


def model_label(cfg: MMEBConfig) -> str:
    """Results folder name: ``cfg.model_name`` or the checkpoint's folder name (hub ids: ``org__name``)."""
    if cfg.model_name:
        return cfg.model_name
    path = Path(cfg.model).expanduser()
    return path.resolve().name if path.is_dir() else cfg.model.replace("/", "__")


def load_encoder(cfg: MMEBConfig, ctx: dist.DistContext):
    """The MoCa encoder for this rank's device."""
    from moca_model import MoCaEncoder

    return MoCaEncoder.from_pretrained(
        cfg.model, device=ctx.device, dtype=cfg.dtype, attn_implementation=cfg.attn_implementation,
        attention=cfg.attention, pooling=cfg.pooling,
        min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, max_length=cfg.max_length,
        revision=cfg.revision, processor_name_or_path=cfg.processor,
        video_min_pixels=cfg.video_min_pixels, video_max_pixels=cfg.video_max_pixels,
    )  # fmt: skip


def encode_subset(encoder, subset: SubsetData, cfg: MMEBConfig, ctx: dist.DistContext, bar) -> tuple:
    """Encode across ranks; returns (embeddings (U, D), bad (U,), reasons, pairs encoded, seconds, truncated (U,))."""
    start = time.perf_counter()
    shard = dist.shard_indices(len(subset.pairs), ctx)
    res = encode_shard(encoder, subset, shard, batch_size=cfg.batch_size, chunk_size=cfg.chunk_size,
                       num_workers=cfg.num_workers, strict=cfg.strict, progress=bar)  # fmt: skip
    # Three extra float columns travel with the vectors: the pair's status code, whether it was truncated, and
    # the rank's encode count.
    extra = np.stack([res.status.astype(np.float32), res.truncated.astype(np.float32),
                      np.full(len(shard), res.encoded, dtype=np.float32)], axis=1)  # fmt: skip
    full = dist.gather_shards(ctx, np.concatenate([res.embeddings, extra], axis=1), len(subset.pairs))  # (U, D + 3)
    status = full[:, -3].astype(np.int64)
    encoded = int(full[: ctx.world_size, -1].sum())  # pair j < W comes from rank j; ranks without pairs encoded 0
    reasons = {int(j): f"{STATUS_NAMES[int(status[j])]}: {subset.describe(j)!r}" for j in np.flatnonzero(status)}
    return full[:, :-3], status != OK, reasons, encoded, time.perf_counter() - start, full[:, -2] > 0


def truncation_counts(truncated: np.ndarray, rows_touched: np.ndarray) -> dict:
    """Report fields: inputs longer than ``max_length`` (cut), and the rows whose query or ranked answer was."""
    return {"truncated_items": int(truncated.sum()), "truncated_rows": int(rows_touched.sum())}
