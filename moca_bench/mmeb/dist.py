"""Process-group plumbing for ``torchrun -m moca_bench.mmeb``: ranks, devices, sharding and gathering.

Unique pairs are sharded round-robin (pair ``j`` goes to rank ``j % W``), encoded locally, then gathered
with ``all_gather`` of equally sized, padded float32 tensors (gloo on CPU, NCCL on GPU). Nothing is
pickled: ``all_gather_object`` would pickle, so it is not used. Only rank 0 reads and writes the
cache and the results; it broadcasts which subsets are already cached, so every rank takes part in the
same collectives even when the cache folder is not shared between nodes.

Shapes: U unique pairs of a subset, W world size, S = ceil(U / W) rows per shard, D embedding dim.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process stands: rank, world size and the device it encodes on."""

    rank: int = 0
    world_size: int = 1
    device: str | None = None
    """Device for the encoder (None: the encoder's default)."""
    owns_group: bool = False
    """True when :func:`init_distributed` created the process group (and must destroy it)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reads/writes the cache and writes results."""
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Device collective tensors must live on (CUDA for NCCL, CPU for gloo)."""
        if dist.is_initialized() and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), else return a single-process context.

    Args:
        device: requested device type; ``cuda`` (or None with CUDA available) selects NCCL and
            ``cuda:LOCAL_RANK``, anything else gloo.

    Returns:
        The context.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError(
            f"a process group (rank {dist.get_rank()} of {dist.get_world_size()}) already exists but the environment "
            f"says rank {rank} of {world}"
        )
    logger.info("rank %d/%d on %s (%s)", rank, world, device or "cpu", dist.get_backend())
    return DistContext(rank=rank, world_size=world, device=device, owns_group=owns)


def close_distributed(ctx: DistContext) -> None:
    """Destroy the process group if this context created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for all ranks (no-op in a single process)."""
    if ctx.world_size > 1:
        dist.barrier()


def broadcast_flags(ctx: DistContext, flags: list[bool]) -> list[bool]:
    """Rank 0's ``flags`` on every rank."""
    if ctx.world_size == 1:
        return list(flags)
    t = torch.tensor([int(f) for f in flags], dtype=torch.uint8, device=ctx.comm_device)
    dist.broadcast(t, src=0)
    return [bool(v) for v in t.tolist()]


def shard_indices(n: int, ctx: DistContext) -> np.ndarray:
    """Indices of the pairs this rank encodes: ``rank, rank + W, ...`` (length-mixed, hence balanced)."""
    return np.arange(ctx.rank, n, ctx.world_size, dtype=np.int64)


def gather_shards(ctx: DistContext, local: np.ndarray, n: int) -> np.ndarray:
    """Reassemble round-robin shards on every rank.

    Args:
        ctx: context.
        local: (len(shard_indices(n)), K) float32 rows of this rank's pairs.
        n: total rows U.

    Returns:
        (U, K) float32, row ``j`` from rank ``j % W``.
    """
    if ctx.world_size == 1:
        return local
    w = ctx.world_size
    per_rank = -(-n // w)  # S
    padded = torch.zeros((per_rank, local.shape[1]), dtype=torch.float32, device=ctx.comm_device)
    padded[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32))
    out = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(out, padded)
    stacked = torch.stack(out, dim=1).cpu().numpy()  # (S, W, K): row s*W + r is pair j
    return stacked.reshape(per_rank * w, -1)[:n]
