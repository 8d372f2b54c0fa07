"""Same-task global batches, planned identically on every rank (moca-method.md §2.3, §4.4, §7 item 15).

The released code's task-aware batching is undone by HF's RandomSampler, and even sequential
sampling would not align tasks across ranks while negatives are gathered globally. Here the plan is a
pure function of ``(task sizes, global batch size, seed, epoch)``: each step's global batch comes from
one task, and rank r takes rows ``[r*L, (r+1)*L)`` of it. The plan does not depend on the number of
ranks, so one process and N processes see the same global batches.

A task with fewer rows than a global batch still forms full batches: its rows are cycled (the
duplicates become false negatives that the loss masks). A task's last partial batch is filled with
rows of its own earlier batches. With ``same_task=False`` all rows are shuffled together.

State is one integer, the number of global batches handed out, so resume is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

Batch = tuple[int, np.ndarray]  # (task index or -1 for mixed, (G, 2) rows of (task, row))


class TaskBatchSampler:
    """Endless stream of global batches ``(task, rows)``; stateful for exact resume."""

    def __init__(self, task_sizes: Sequence[int], *, global_batch_size: int, seed: int = 0, same_task: bool = True):
        if not task_sizes or min(task_sizes) <= 0:
            raise ValueError(f"every task needs rows, got sizes {list(task_sizes)}")
        self.sizes = list(task_sizes)
        self.global_batch_size, self.seed, self.same_task = global_batch_size, seed, same_task
        self.position = 0  # global batches handed out so far
        self._cache: tuple[int, list[Batch]] | None = None

    def batches_per_epoch(self) -> int:
        """Global batches in one pass over the data."""
        g = self.global_batch_size
        if self.same_task:
            return sum(math.ceil(n / g) for n in self.sizes)
        return math.ceil(sum(self.sizes) / g)

    def epoch_plan(self, epoch: int) -> list[Batch]:
        """Every global batch of ``epoch`` in order; a pure function of the sampler settings and ``epoch``."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed, epoch])
        g, plan = self.global_batch_size, []
        if self.same_task:
            for task, n in enumerate(self.sizes):
                order = rng.permutation(n)
                order = np.resize(order, math.ceil(n / g) * g)  # cycle: pads from the task's own rows
                rows = np.stack([np.full_like(order, task), order], axis=1)  # (n_batches * G, 2)
                plan += [(task, rows[i : i + g]) for i in range(0, len(rows), g)]
            plan = [plan[i] for i in rng.permutation(len(plan))]
        else:
            every = np.concatenate([np.stack([np.full(n, t), np.arange(n)], axis=1) for t, n in enumerate(self.sizes)])
            every = every[rng.permutation(len(every))]
            every = np.resize(every, (self.batches_per_epoch() * g, 2))
            plan = [(-1, every[i : i + g]) for i in range(0, len(every), g)]
        self._cache = (epoch, plan)
        return plan

    def batch_at(self, position: int) -> Batch:
        """The global batch handed out at stream position ``position``."""
        epoch, index = divmod(position, self.batches_per_epoch())
        return self.epoch_plan(epoch)[index]

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self.batch_at(self.position)
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        """JSON-ready position."""
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position."""
        self.position = int(state["position"])


def local_rows(rows: np.ndarray, *, rank: int, world_size: int) -> np.ndarray:
    """This rank's slice of a global batch: (G, ...) -> (G / world_size, ...).

    Raises:
        ValueError: the global batch does not split evenly.
    """
    if len(rows) % world_size:
        raise ValueError(f"global batch of {len(rows)} does not split over {world_size} ranks")
    size = len(rows) // world_size
    return rows[rank * size : (rank + 1) * size]
