"""Gradient caching (GradCache, Gao et al. 2021): a contrastive batch of any size in bounded memory.

A contrastive loss couples every row of the batch, so it cannot be split into independent
micro-batches. GradCache splits the *encoder* instead:

1. embed every chunk without autograd (activations freed at once), remembering each chunk's RNG state;
2. compute the loss on the detached embeddings and back-propagate to them only: d loss / d embedding;
3. re-embed each chunk with autograd, under its remembered RNG state (same dropout), and
   back-propagate ``sum(embedding * cached_grad)``, which deposits exactly that chunk's share of the
   full-batch parameter gradient.

Peak memory is one chunk's activations plus the (N, D) embeddings, whatever N is; the cost is one extra
forward pass. Under DDP either pass ``no_sync`` (every re-forward but the last skips the all-reduce)
or, as ``moca_train.cl`` does, run the whole step inside ``no_sync`` and average the gradients once
with ``moca_train.distributed.all_reduce_gradients`` (robust to parameters a chunk does not use).
Under FSDP pass ``no_sync=None`` (each chunk reduce-scatters; no unsharded gradient is held).
Under DeepSpeed, whose engine steps at every accumulation boundary, pass a ``no_sync`` that marks the
backward passes inside it as non-boundary (``moca_train.cl.train.deepspeed_backward``): the engine then
accumulates every chunk and steps once, after the last.

Shapes: N rows of one group (e.g. all queries of this rank), D embedding dim.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

Encode = Callable[[Any], torch.Tensor]  # chunk -> (n, D) embeddings
GroupLoss = Callable[[dict[str, torch.Tensor]], "tuple[torch.Tensor, dict[str, float]]"]


class RngState:
    """CPU and (current) CUDA generator states, to replay a forward pass with identical dropout."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block under the captured state; the surrounding RNG stream is left untouched."""
        devices = [torch.cuda.current_device()] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda)
            yield


def plain_step(
    *,
    encode: Encode,
    groups: Mapping[str, Sequence[Any]],
    loss_fn: GroupLoss,
    backward: Callable = torch.Tensor.backward,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The reference path without caching: embed every chunk with autograd, one loss, one backward.

    Args:
        encode: chunk -> (n, D) embeddings (the model call).
        groups: name -> chunks, e.g. ``{"query": [...], "pos": [...], "neg": [...]}``.
        loss_fn: ``{name: (N, D)}`` -> ``(loss, logs)``.
        backward: how to back-propagate (``accelerator.backward`` in training).

    Returns:
        ``(detached loss, logs)``.
    """
    reps = {name: torch.cat([encode(chunk) for chunk in chunks]) for name, chunks in groups.items()}
    loss, logs = loss_fn(reps)
    backward(loss)
    return loss.detach(), logs


def gradcache_step(
    *,
    encode: Encode,
    groups: Mapping[str, Sequence[Any]],
    loss_fn: GroupLoss,
    backward: Callable = torch.Tensor.backward,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One GradCache forward/backward; parameter gradients equal :func:`plain_step`'s.

    Args:
        encode: chunk -> (n, D) embeddings (the model call; may be a DDP-wrapped model).
        groups: name -> chunks; every rank must pass the same number of chunks.
        loss_fn: ``{name: (N, D)}`` -> ``(loss, logs)``; may gather across ranks.
        backward: back-propagation of the per-chunk surrogates (``accelerator.backward``).
        no_sync: context-manager factory entered for every re-forward/backward but the last (DDP
            ``model.no_sync``; DeepSpeed: not an accumulation boundary); None to reduce on every chunk.

    Returns:
        ``(detached loss, logs)``.
    """
    reps: dict[str, torch.Tensor] = {}
    states: dict[str, list[RngState]] = {}
    with torch.no_grad():
        for name, chunks in groups.items():
            states[name] = []
            outs = []
            for chunk in chunks:
                states[name].append(RngState())
                outs.append(encode(chunk))
            reps[name] = torch.cat(outs)  # (N, D)
    leaves = {name: r.detach().requires_grad_(True) for name, r in reps.items()}
    loss, logs = loss_fn(leaves)
    loss.backward()  # graph over embeddings only: no parameters, nothing to synchronise
    jobs = [(name, i, chunk) for name, chunks in groups.items() for i, chunk in enumerate(chunks)]
    starts = {name: 0 for name in groups}
    for j, (name, i, chunk) in enumerate(jobs):
        grad = leaves[name].grad
        sync = no_sync is None or j == len(jobs) - 1
        with contextlib.nullcontext() if sync else no_sync(), states[name][i].replay():
            emb = encode(chunk)  # (n, D)
            n = emb.shape[0]
            cached = grad[starts[name] : starts[name] + n] if grad is not None else torch.zeros_like(emb)
            starts[name] += n
            backward(torch.sum(emb * cached.to(emb.dtype)))
    return loss.detach(), logs
