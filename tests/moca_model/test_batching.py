"""Bounded memory (issue 24, item 6): however many batches a call has, only a few prepared ones exist at a time."""

from __future__ import annotations

import weakref

from moca_model import MoCaEncoder
from moca_model.batching import prefetched


class _Prepared:
    """Stands for a prepared batch (decoded pixels and patch rows)."""


def test_prefetched_releases_each_batch_once_it_is_handed_over():
    refs: list[weakref.ref] = []

    def prepare(batch):
        obj = _Prepared()
        refs.append(weakref.ref(obj))
        return obj

    for workers in (1, 2):
        refs.clear()
        peak = 0
        for _, prepared in prefetched(list(range(30)), prepare, workers):
            peak = max(peak, sum(r() is not None for r in refs))
            del prepared
        assert len(refs) == 30
        assert peak <= workers + 2, f"{peak} prepared batches alive with {workers} prefetch thread(s)"


def test_closing_prefetched_early_cancels_the_rest():
    prepared = []
    gen = prefetched(list(range(30)), prepared.append, 1)
    next(gen)
    gen.close()
    assert len(prepared) <= 3


def test_encode_keeps_a_bounded_number_of_prepared_batches_alive(tiny_dir):
    from moca_model.testing import count_live_batches

    enc = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", cache_memory_mb=0)
    counts = count_live_batches(enc)
    items = [f"text {i}: " + "word " * i for i in range(30)]
    enc.encode(items, batch_size=1, num_workers=1, show_progress=False)
    assert len(counts) == 30 and enc.last_stats.batches == 30
    assert max(counts) <= 3, f"{max(counts)} of 30 prepared batches alive during a forward pass"
