"""Distributed helpers for training: rank/world queries, gathering with gradients, rank-0 logging.

Everything works without an initialised process group (one process: rank 0 of 1), so the same
code runs on a laptop CPU, under ``torchrun`` with DDP/FSDP, and under DeepSpeed (all of which
initialise ``torch.distributed`` through accelerate).

Shapes: B rows per rank, W ranks (world size), D embedding dim.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from collections.abc import Iterable


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group with more than one rank is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on global rank 0 (and in single-process runs)."""
    return get_rank() == 0


def rank_offset(local_batch: int) -> int:
    """Index of this rank's first row in a gathered batch of ``local_batch`` rows per rank."""
    return get_rank() * local_batch


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0, keeping the autograd graph through this rank's own slice.

    ``all_gather`` returns detached copies; the local copy is replaced by ``x`` itself, so a loss over
    the gathered tensor back-propagates into the local rows only. Summed over ranks (DDP averages, so
    scale the loss by the world size), these partial gradients equal the full-batch gradient.

    Args:
        x: (B, ...) local rows; every rank must pass the same shape.

    Returns:
        (W * B, ...) rows of all ranks in rank order; ``x`` itself when not distributed.
    """
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts, dim=0)


def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 without gradients (ids, labels). (B, ...) -> (W * B, ...)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], *, bucket_numel: int = 1 << 25) -> None:
    """Average ``.grad`` of trainable parameters over ranks (sum, then divide by the world size).

    Used instead of DDP's reducer when one optimizer step runs several forward/backward passes
    (GradCache) in which some parameters may be unused (the vision tower on a text-only chunk):
    DDP's reducer would wait for them or need ``find_unused_parameters``. A missing gradient counts
    as zeros, so every rank joins every collective. Gradients are flattened into buckets of at most
    ``bucket_numel`` elements per dtype and device to keep the number of collectives small.
    """
    if not is_distributed():
        return
    world = dist.get_world_size()
    grads = []
    for p in params:
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
    buckets: list[list[torch.Tensor]] = []
    for g in grads:
        last = buckets[-1] if buckets else None
        if (
            last
            and last[0].dtype == g.dtype
            and last[0].device == g.device
            and (sum(t.numel() for t in last) + g.numel() <= bucket_numel)
        ):
            last.append(g)
        else:
            buckets.append([g])
    for bucket in buckets:
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in bucket:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def log0(logger: logging.Logger, msg: str, *args: Any, level: int = logging.INFO) -> None:
    """Log on the main process only (nanochat's ``print0``)."""
    if is_main_process():
        logger.log(level, msg, *args)
