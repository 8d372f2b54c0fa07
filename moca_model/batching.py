"""Batching: items of similar length together (little padding), and batches prepared ahead of the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
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


def prefetched(batches: Sequence, prepare: Callable[..., T], workers: int) -> Iterable[tuple[int, T]]:
    """``(k, prepare(batches[k]))`` in order, with up to ``workers + 1`` batches prepared ahead in threads.

    ``workers <= 0`` prepares each batch inline when it is needed.
    """
    if workers <= 0:
        for k, batch in enumerate(batches):
            yield k, prepare(batch)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(prepare, b) for b in batches[: workers + 1]]
        for k in range(len(batches)):
            if k + workers + 1 < len(batches):
                futures.append(pool.submit(prepare, batches[k + workers + 1]))
            yield k, futures[k].result()
