"""Data-parallel encoding on 2 CPU worker processes: equal to one process, errors reach the caller, a
worker that dies raises naming its device (never a partial result, but what finished is cached), two
threads share a pool, a bounded number of batches is in flight, and progress moves batch by batch."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest

from moca_model import MoCaEncoder, MoCaInputError, MoCaWorkerError
from moca_model.parallel import parse_devices

from .conftest import draw_image

TOL = 1e-6


@pytest.fixture(scope="module")
def pooled(tiny_dir):
    """Two CPU workers with one torch thread each, no cache (so every call really encodes)."""
    enc = MoCaEncoder.from_pretrained(tiny_dir, devices=["cpu", "cpu"], worker_threads=1, cache_memory_mb=0)
    yield enc
    enc.close()


def test_two_workers_equal_one_process(pooled, tiny_encoder, mixed_items):
    assert pooled.model is None and pooled.dim == tiny_encoder.dim
    assert pooled.vector_settings() == tiny_encoder.vector_settings()
    for batch_size in (1, 3, 16):
        got = pooled.encode(mixed_items, batch_size=batch_size, show_progress=False)
        want = tiny_encoder.encode(mixed_items, batch_size=batch_size, show_progress=False)
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert pooled.last_stats.encoded == len(mixed_items) and pooled.last_stats.batches > 1


def test_item_errors_in_a_worker_reach_the_caller_and_the_pool_survives(pooled, mixed_items):
    buf = io.BytesIO()
    draw_image(300, 200).save(buf, format="JPEG")
    truncated = buf.getvalue()[: len(buf.getvalue()) // 2]  # the header reads; decoding fails in the worker
    with pytest.raises(MoCaInputError, match="item 2.*(corrupt|truncated)"):
        pooled.encode(["ok", "ok too", {"image": truncated}], show_progress=False)
    assert pooled.encode(mixed_items[:4], show_progress=False).shape == (4, pooled.dim)


class _ExitWhenUnpickled(str):
    """A real image path that ends whichever process unpickles it (only a worker does)."""

    def __reduce__(self):
        return (os._exit, (3,))


def test_parse_devices():
    assert parse_devices(None) is None and parse_devices("") is None and parse_devices([]) is None
    assert parse_devices("cpu, cpu") == ["cpu", "cpu"]
    assert parse_devices(["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1"]
    assert parse_devices("all") in (["cpu"], [f"cuda:{i}" for i in range(8)][: len(parse_devices("all"))])


class _Spy:
    """Wraps a multiprocessing queue and logs what goes through ``put`` and ``get``."""

    def __init__(self, inner, log: list):
        self.inner, self.log = inner, log

    def put(self, obj, *args, **kwargs):
        self.log.append("task")
        return self.inner.put(obj, *args, **kwargs)

    def get(self, *args, **kwargs):
        msg = self.inner.get(*args, **kwargs)
        self.log.append("result")
        return msg

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _texts(n: int, tag: str = "") -> list[str]:
    return [f"{tag}text {i}: " + "word " * i for i in range(n)]  # n lengths: n batches of one


def test_batches_in_flight_are_bounded_and_progress_moves_as_they_finish(pooled, monkeypatch):
    import moca_model.encode as encode_mod

    log: list[str] = []

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def update(self, n):
            log.append("update")

        def close(self):
            pass

    monkeypatch.setattr(encode_mod, "tqdm", Bar)
    pool = pooled.pool
    tasks, results = pool._tasks, pool._results
    pool._tasks, pool._results = _Spy(tasks, log), _Spy(results, log)
    try:
        pooled.encode(_texts(40, "bounded "), batch_size=1, show_progress=True)
    finally:
        pool._tasks, pool._results = tasks, results
    in_flight, peak = 0, 0
    for event in log:
        in_flight += {"task": 1, "result": -1}.get(event, 0)
        peak = max(peak, in_flight)
    assert log.count("task") == log.count("update") == 40
    assert peak <= 3 * len(pool.devices), f"{peak} of 40 batches handed out at once"
    first_update, last_result = log.index("update"), len(log) - 1 - log[::-1].index("result")
    assert first_update < last_result, "the progress bar moved only after the last batch came back"


def test_two_threads_can_share_one_pooled_encoder(pooled, tiny_encoder):
    inputs = {"a": _texts(12, "thread a "), "b": _texts(12, "thread b ")}
    got: dict[str, np.ndarray] = {}
    threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, pooled.encode(inputs[k], batch_size=1,
                                show_progress=False)), daemon=True) for k in inputs]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "two threads calling encode on one pool deadlocked"
    for k, texts in inputs.items():
        np.testing.assert_allclose(got[k], tiny_encoder.encode(texts, show_progress=False), atol=TOL, rtol=0)


def test_a_killed_worker_raises_naming_its_device_and_returns_nothing(pooled, tiny_dir, tmp_path):
    """Runs last in this module: it breaks the shared pool on purpose.

    Ten long texts come first, so at least five batches are done before the killing batch is even queued;
    300 small images come after it. A process takes up to a second to end on a loaded machine (its zombie
    appears only then) while the other worker keeps encoding (~20 ms a batch), so "at once" is asserted as
    "at least 100 batches never ran" (the old pool noticed only after the other worker had drained the queue).
    """
    page = tmp_path / "page.png"
    draw_image(112, 112).save(page)
    long_texts = [f"long text {i}: " + "word " * (40 + i) for i in range(10)]
    killer = {"image": _ExitWhenUnpickled(str(page)), "text": "\nRepresent"}  # ~21 tokens: batch 10
    small = [{"image": draw_image(28 + i % 28, 28 + i // 28, i), "text": "."} for i in range(300)]  # ~6 tokens
    items = [*long_texts, killer, *small]
    fresh = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", cache_dir=tmp_path, cache_memory_mb=0)
    pooled.cache = fresh.cache  # same checkpoint and settings: the pool and one process share the disk namespace
    result = None
    with pytest.raises(MoCaWorkerError, match=r"worker \d on cpu died \(exit code 3\).*no partial results") as err:
        result = pooled.encode(items, batch_size=1, show_progress=False)
    assert result is None
    with pytest.raises(MoCaWorkerError, match="closed"):
        pooled.encode(["after"], show_progress=False)
    fresh.encode([x for x in items if x is not killer], batch_size=1, show_progress=False)
    kept = fresh.last_stats.disk_hits
    assert 5 <= kept <= len(items) - 100, f"{kept} of {len(items)} batches were kept when the death was noticed"
    assert f"the {kept} batches that finished were handed over" in str(err.value)


def test_a_single_device_runs_in_process(tiny_dir):
    enc = MoCaEncoder.from_pretrained(tiny_dir, devices="cpu", cache_memory_mb=0)
    assert enc.pool is None and enc.model is not None and enc.device.type == "cpu"
