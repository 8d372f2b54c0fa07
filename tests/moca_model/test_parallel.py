"""Data-parallel encoding on 2 CPU worker processes: equal to one process, errors reach the caller, and a
worker that dies raises naming its device (never a partial result)."""

from __future__ import annotations

import io
import os

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


def test_a_killed_worker_raises_naming_its_device_and_returns_nothing(pooled, tmp_path, mixed_items):
    """Runs last in this module: it breaks the shared pool on purpose."""
    page = tmp_path / "page.png"
    draw_image(80, 60).save(page)
    items = [*mixed_items, {"image": _ExitWhenUnpickled(str(page)), "text": "\nRepresent"}]
    result = None
    with pytest.raises(MoCaWorkerError, match=r"worker \d on cpu died \(exit code 3\).*no partial results"):
        result = pooled.encode(items, batch_size=2, show_progress=False)
    assert result is None
    with pytest.raises(MoCaWorkerError, match="closed"):
        pooled.encode(["after"], show_progress=False)


def test_a_single_device_runs_in_process(tiny_dir):
    enc = MoCaEncoder.from_pretrained(tiny_dir, devices="cpu", cache_memory_mb=0)
    assert enc.pool is None and enc.model is not None and enc.device.type == "cpu"
