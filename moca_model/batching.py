"""Batching: items of similar length together (little padding), and batches prepared ahead of the model."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

PAD_TOLERANCE = 0.1  # a batch closes early rather than pad an item by more than 10% of the batch length
PAD_SLACK = 16  # ... unless the padding is at most this many tokens (short texts)


def length_batches(order: list[int], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Cut items sorted by decreasing length into batches of at most ``batch_size`` similar lengths.

    A batch also closes when the next item is shorter than its longest by more than
    ``max(PAD_TOLERANCE * longest, PAD_SLACK)`` tokens, which bounds padding on corpora with few items
    of very different lengths (where fixed-size batches would pad a lot).

    Args:
        order: item ids sorted by decreasing length.
        lengths: token count of each item id.
        batch_size: maximum items per batch.

    Returns:
        The batches, as lists of item ids.
    """
    batches: list[list[int]] = []
    for u in order:
        if batches and len(batches[-1]) < batch_size:
            longest = lengths[batches[-1][0]]
            if longest - lengths[u] <= max(PAD_TOLERANCE * longest, PAD_SLACK):
                batches[-1].append(u)
                continue
        batches.append([u])
    return batches


def prefetched(batches: Sequence, prepare: Callable[..., T], workers: int) -> Iterator[tuple[int, T]]:
    """``(k, prepare(batches[k]))`` in order, with up to ``workers + 1`` batches prepared ahead in threads.

    Memory stays bounded however many batches there are: a prepared batch is released as soon as it has
    been handed over, so at most ``workers + 2`` exist at a time (the ones being prepared or waiting, and
    the one the caller holds). ``workers <= 0`` prepares each batch inline when it is needed. Closing the
    generator early cancels the batches not started yet.
    """
    if workers <= 0:
        for k, batch in enumerate(batches):
            yield k, prepare(batch)
        return
    ahead: deque[Future] = deque()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        submitted = 0
        for k in range(len(batches)):
            while submitted < len(batches) and len(ahead) < workers + 1:
                ahead.append(pool.submit(prepare, batches[submitted]))
                submitted += 1
            result = ahead.popleft().result()
            yield k, result
            del result  # the caller holds it now; this frame must not keep it alive
    finally:
        for future in ahead:
            future.cancel()
        pool.shutdown(wait=True)
