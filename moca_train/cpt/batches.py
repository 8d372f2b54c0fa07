"""Cost-bucketed CPT micro-batches: every rank gets its own share of the same global batch; exact resume.

Epoch plan (moca-method.md §3.2, with the §7 item 12 fix): rows go to the first bucket threshold >=
their cost (thresholds ``32 * floor(1.3**i)``); a bucket's micro-batch holds ``token_budget //
threshold`` rows per rank; rows are shuffled within buckets, cut into global batches of
``rows_per_rank * world_size`` rows, and the global batches are shuffled (seed, epoch). Micro-step k
of the epoch is global batch k on EVERY rank, rank r taking the strided slice ``[r::world_size]``, so
all ranks process rows of the same cost in the same step (the reference's trainer sampler broke this).

Resume is exact because everything is a pure function of (seed, epoch, step, rank): the plan, the row
slice and the masking generator's seed. The state is just ``{"epoch", "step"}``, counting micro-batches
handed out; rows are loaded and collated in ``DataLoader`` workers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from moca_train.cpt.data import CPTCorpus

logger = logging.getLogger(__name__)

BUCKET_BASE, BUCKET_GROWTH, BUCKET_COUNT = 32, 1.3, 100  # reference dataloader.py:182-185


def bucket_thresholds() -> np.ndarray:
    """Sorted unique bucket upper bounds ``32 * floor(1.3**i)``, i < 100."""
    return np.unique([BUCKET_BASE * math.floor(BUCKET_GROWTH**i) for i in range(BUCKET_COUNT)])


def plan_epoch(
    costs: np.ndarray, *, token_budget: int, world_size: int, seed: int, epoch: int, drop_last: bool = False
) -> list[np.ndarray]:
    """Global batches of one epoch, as arrays of row indices.

    Args:
        costs: (R,) per-row cost in equivalent tokens.
        token_budget: equivalent tokens per rank per micro-batch (reference: 12,800).
        world_size: number of ranks sharing each global batch.
        seed: plan seed.
        epoch: epoch number (a different shuffle per epoch).
        drop_last: drop each bucket's incomplete last global batch (reference); otherwise keep it when it
            has at least ``world_size`` rows.

    Returns:
        The epoch's global batches in training order.
    """
    thresholds = bucket_thresholds()
    buckets = np.searchsorted(thresholds, costs, side="left")  # (R,) index of first threshold >= cost
    rng = np.random.default_rng([seed, epoch])
    batches: list[np.ndarray] = []
    for b in np.unique(buckets):
        rows = rng.permutation(np.flatnonzero(buckets == b))
        per_global = max(1, token_budget // int(thresholds[b])) * world_size
        for start in range(0, len(rows), per_global):
            chunk = rows[start : start + per_global]
            if len(chunk) == per_global or (not drop_last and len(chunk) >= world_size):
                batches.append(chunk)
    return [batches[i] for i in rng.permutation(len(batches))]


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """Seed of the masking generator of one micro-batch on one rank."""
    return int(np.random.SeedSequence([seed, epoch, step, rank]).generate_state(1, dtype=np.uint64)[0] >> 1)


class _MicroBatches(Dataset):
    """Index ``(epoch, step, rows)`` -> collated micro-batch (runs in DataLoader workers)."""

    def __init__(self, corpus: CPTCorpus, collate: Callable, *, seed: int, rank: int):
        self.corpus, self.collate, self.seed, self.rank = corpus, collate, seed, rank

    def __len__(self) -> int:  # unused: indices come from the plan
        return len(self.corpus)

    def __getitem__(self, key: tuple[int, int, np.ndarray]) -> dict:
        epoch, step, rows = key
        records = [self.corpus.record(int(i)) for i in rows]
        generator = torch.Generator().manual_seed(step_seed(self.seed, epoch, step, self.rank))
        return self.collate(records, generator=generator)


class CPTBatches:
    """Stateful, resumable stream of this rank's collated CPT micro-batches (cycles over epochs).

    Args:
        corpus: rows and costs.
        collate: ``collate(records, generator=...) -> batch`` (a :class:`moca_train.cpt.collator.CPTCollator`).
        token_budget: equivalent tokens per rank per micro-batch.
        world_size: number of ranks.
        rank: this rank.
        seed: plan and masking seed.
        drop_last: see :func:`plan_epoch`.
        num_workers: DataLoader workers that load images and collate (0: in process).
    """

    def __init__(
        self,
        corpus: CPTCorpus,
        collate: Callable,
        *,
        token_budget: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int = 0,
    ):
        self.corpus, self.token_budget, self.world_size, self.rank = corpus, token_budget, world_size, rank
        self.seed, self.drop_last, self.num_workers = seed, drop_last, num_workers
        self.items = _MicroBatches(corpus, collate, seed=seed, rank=rank)
        self.epoch, self.step = 0, 0
        if not self.plan(0):
            raise ValueError(f"corpus of {len(corpus)} rows gives no global batch for world_size={world_size}")

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The global batches of ``epoch``."""
        return plan_epoch(
            self.corpus.costs,
            token_budget=self.token_budget,
            world_size=self.world_size,
            seed=self.seed,
            epoch=epoch,
            drop_last=self.drop_last,
        )

    def steps_per_epoch(self) -> int:
        """Micro-batches per epoch (identical on every rank and every epoch: bucket sizes do not change)."""
        return len(self.plan(0))

    def state_dict(self) -> dict[str, int]:
        """Position: the next micro-batch is ``step`` of ``epoch``."""
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a position saved by :meth:`state_dict`."""
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def __iter__(self) -> Iterator[dict]:
        while True:
            plan = self.plan(self.epoch)
            keys = [(self.epoch, s, plan[s][self.rank :: self.world_size]) for s in range(self.step, len(plan))]
            loader = DataLoader(
                self.items,
                sampler=keys,
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=_identity,
                persistent_workers=False,
            )
            for batch in loader:
                self.step += 1  # counts batches handed out, so a checkpoint taken now resumes after it
                yield batch
            self.epoch, self.step = self.epoch + 1, 0


def _identity(batch):
    return batch
