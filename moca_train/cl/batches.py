"""The CL batch source: global same-task batches -> this rank's tokenised, chunked model inputs.

Each step yields a nested dict (shapes: L rows on this rank, K negatives, chunks of <= ``chunk_size``
rows, each a ``MoCaProcessor.collate`` dict of ``input_ids`` (n, T), ``attention_mask`` (n, T) and,
when images are present, ``pixel_values`` (P, 1176) and ``image_grid_thw`` (I, 3))::

    {"task": str,
     "query": [chunk, ...], "pos": [chunk, ...], "neg": [chunk, ...],   # neg rows: row-major (L*K)
     "pos_ids": (L,) int64, "neg_ids": (L, K) int64,                      # content ids (false negatives)
     "replaced": int}                                                     # rows swapped for unreadable images

A chunk without any image gets a masked-out dummy image (:mod:`moca_train.dummy_image`), so every
rank runs the vision tower in every forward pass (FSDP and ZeRO-3 gather its weights collectively, and
ranks whose chunks differ in modality would otherwise wait for each other); embeddings are unchanged.

A row whose image cannot be read is replaced by the next readable row of the same task (counted in
``replaced`` and logged), so a corrupt file never stops a run and every rank keeps L rows. The source
is stateful (``state_dict``/``load_state_dict``: the sampler position), and with ``num_workers > 0``
the steps are built ahead in DataLoader workers; only consumed steps advance the position.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

import torch

from moca_model.images import MoCaInputError
from moca_model.processing_moca import normalize_item
from moca_train.cl.sampler import local_rows
from moca_train.dummy_image import add_dummy_image

if TYPE_CHECKING:
    from collections.abc import Iterator

    from moca_model import MoCaProcessor
    from moca_model.processing_moca import Encoded
    from moca_train.cl.data import CLData, CLExample, Side
    from moca_train.cl.sampler import TaskBatchSampler

logger = logging.getLogger(__name__)


def side_item(side: Side) -> Any:
    """A (text, image path) pair as a MoCa input item."""
    text, image = side
    return text if image is None else {"text": text, "image": image}


class CLBatches:
    """Resumable, endless source of this rank's contrastive steps (see module docstring)."""

    def __init__(
        self,
        data: CLData,
        processor: MoCaProcessor,
        sampler: TaskBatchSampler,
        *,
        rank: int = 0,
        world_size: int = 1,
        chunk_size: int,
        num_workers: int = 0,
    ):
        self.data, self.processor, self.sampler = data, processor, sampler
        self.rank, self.world_size, self.chunk_size, self.num_workers = rank, world_size, chunk_size, num_workers

    def _encode(self, ex: CLExample, index: int) -> list[Encoded]:
        sides = [ex.query, ex.pos, *ex.negs]
        return [self.processor.process(normalize_item(side_item(s), index), index) for s in sides]

    def _readable_row(self, task: int, row: int) -> tuple[CLExample, list[Encoded], int]:
        """The example at ``row`` or, if an image fails to load, the next loadable one of its task."""
        examples = self.data.tasks[task].examples
        for shift in range(len(examples)):
            ex = examples[(row + shift) % len(examples)]
            try:
                return ex, self._encode(ex, row), shift
            except MoCaInputError as exc:
                logger.warning("task %s row %d skipped: %s", self.data.tasks[task].name, row + shift, exc)
        raise RuntimeError(f"task {self.data.tasks[task].name}: no row could be loaded")

    def _chunks(self, encoded: list[Encoded]) -> list[dict[str, torch.Tensor]]:
        size = self.chunk_size
        chunks = [self.processor.collate(encoded[i : i + size]) for i in range(0, len(encoded), size)]
        return [c if "pixel_values" in c else add_dummy_image(c, self.processor) for c in chunks]

    def build(self, position: int) -> dict[str, Any]:
        """This rank's inputs for the global batch at stream ``position`` (pure function of it)."""
        task, rows = self.sampler.batch_at(position)
        rows = local_rows(rows, rank=self.rank, world_size=self.world_size)  # (L, 2) of (task, row)
        queries, positives, negatives, pos_ids, neg_ids, replaced = [], [], [], [], [], 0
        for t, r in rows.tolist():
            ex, enc, shift = self._readable_row(t, r)
            replaced += shift > 0
            queries.append(enc[0])
            positives.append(enc[1])
            negatives.extend(enc[2:])
            pos_ids.append(ex.pos_id)
            neg_ids.append(list(ex.neg_ids))
        k = len(neg_ids[0])
        return {
            "task": self.data.tasks[task].name if task >= 0 else "mixed",
            "query": self._chunks(queries),
            "pos": self._chunks(positives),
            "neg": self._chunks(negatives) if k else [],
            "pos_ids": torch.tensor(pos_ids, dtype=torch.long),  # (L,)
            "neg_ids": torch.tensor(neg_ids, dtype=torch.long).reshape(len(pos_ids), k),  # (L, K)
            "replaced": replaced,
        }

    def __getitem__(self, position: int) -> dict[str, Any]:
        return self.build(position)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.num_workers == 0:
            while True:
                step = self.build(self.sampler.position)
                self.sampler.position += 1
                yield step
        loader = torch.utils.data.DataLoader(
            self, batch_size=None, sampler=itertools.count(self.sampler.position), num_workers=self.num_workers
        )
        for step in loader:
            self.sampler.position += 1
            yield step

    def state_dict(self) -> dict:
        """The sampler position (global batches consumed)."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position."""
        self.sampler.load_state_dict(state)
