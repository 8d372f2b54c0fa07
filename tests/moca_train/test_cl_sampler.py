"""Same-task global batches: one task per step on every rank, rank slices, small tasks, exact resume."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moca_train.cl.sampler import TaskBatchSampler, local_rows


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_every_global_batch_is_one_task_and_an_epoch_covers_every_row():
    sizes = [10, 3, 25]
    sampler = TaskBatchSampler(sizes, global_batch_size=8, seed=1)
    assert sampler.batches_per_epoch() == 2 + 1 + 4
    batches = _take(sampler, sampler.batches_per_epoch())
    seen = {t: set() for t in range(3)}
    for task, rows in batches:
        assert rows.shape == (8, 2) and (rows[:, 0] == task).all()
        seen[task] |= set(rows[:, 1].tolist())
    assert all(seen[t] == set(range(n)) for t, n in enumerate(sizes))
    tasks = [t for t, _ in batches]
    assert tasks != sorted(tasks)  # batches of different tasks are interleaved, not laid out task by task


def test_last_partial_batch_takes_no_duplicate_when_the_task_is_large_enough():
    sampler = TaskBatchSampler([10], global_batch_size=8, seed=0)
    for _, rows in _take(sampler, 2):
        assert len(set(rows[:, 1].tolist())) == 8
    small = TaskBatchSampler([3], global_batch_size=8, seed=0)
    (_, rows), = _take(small, 1)  # fmt: skip
    assert sorted(set(rows[:, 1].tolist())) == [0, 1, 2]  # cycled: duplicates, masked by the loss


def test_ranks_take_disjoint_slices_of_the_same_global_batch():
    sampler = TaskBatchSampler([16, 16], global_batch_size=8, seed=3)
    _, rows = sampler.batch_at(5)
    parts = [local_rows(rows, rank=r, world_size=4) for r in range(4)]
    np.testing.assert_array_equal(np.concatenate(parts), rows)
    with pytest.raises(ValueError, match="does not split"):
        local_rows(rows, rank=0, world_size=3)


def test_plan_is_deterministic_changes_per_epoch_and_resumes_exactly():
    a = TaskBatchSampler([7, 9], global_batch_size=4, seed=0)
    b = TaskBatchSampler([7, 9], global_batch_size=4, seed=0)
    first = _take(a, 13)  # crosses an epoch boundary (5 batches per epoch)
    assert all(x[0] == y[0] and (x[1] == y[1]).all() for x, y in zip(first, _take(b, 13)))
    assert any((x[1] != y[1]).any() for x, y in zip(first[:5], first[5:10]))
    state = a.state_dict()
    later = _take(a, 4)
    c = TaskBatchSampler([7, 9], global_batch_size=4, seed=0)
    c.load_state_dict(state)
    assert all((x[1] == y[1]).all() for x, y in zip(later, _take(c, 4)))


def test_mixed_batches_when_same_task_is_off():
    sampler = TaskBatchSampler([20, 20], global_batch_size=10, seed=0, same_task=False)
    batches = _take(sampler, 4)
    assert all(task == -1 for task, _ in batches)
    assert any(len(set(rows[:, 0].tolist())) == 2 for _, rows in batches)
