"""The embedding cache: never a stale vector (another checkpoint, setting, attention mode, formatting or
weights misses), safe with concurrent writers, and a damaged entry is recomputed."""

from __future__ import annotations

import logging
import multiprocessing as mp

import numpy as np
import pytest

from moca_model import MoCaEncoder
from moca_model.cache import EmbeddingCache, decode_entry, encode_entry
from moca_model.processing_moca import item_key, normalize_item

from .conftest import draw_image

TOL = 1e-6


@pytest.fixture(scope="module")
def other_tiny_dir(tmp_path_factory):
    """Another checkpoint: same architecture, other random weights."""
    from moca_model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "other", layout="current", seed=1)


@pytest.fixture
def items():
    return ["a query about revenue", "Le rapport annuel", {"image": draw_image(64, 48, 1), "text": "\nRepresent"}]


def _encoder(path, cache_dir, **kwargs):
    return MoCaEncoder.from_pretrained(path, device="cpu", cache_dir=cache_dir, **kwargs)


def test_warm_cache_serves_every_input_and_equals_encoding(tiny_dir, tmp_path, items):
    cold = _encoder(tiny_dir, tmp_path)
    first = cold.encode(items, show_progress=False)
    assert cold.last_stats.encoded == 3 and cold.last_stats.cached == 0
    again = cold.encode(items + items[:1], show_progress=False)  # same process: memory
    assert cold.last_stats.memory_hits == 3 and cold.last_stats.encoded == 0 and cold.last_stats.batches == 0
    warm = _encoder(tiny_dir, tmp_path)  # a new process would see the same: disk
    got = warm.encode(items, show_progress=False)
    assert warm.last_stats.disk_hits == 3 and warm.last_stats.encoded == 0
    np.testing.assert_array_equal(got, first)
    np.testing.assert_array_equal(again[:3], first)


def test_another_checkpoint_or_setting_misses(tiny_dir, other_tiny_dir, tmp_path, items):
    reference = _encoder(tiny_dir, tmp_path).encode(items, show_progress=False)
    for path, kwargs in [
        (other_tiny_dir, {}),
        (tiny_dir, {"dtype": "bfloat16"}),
        (tiny_dir, {"attn_implementation": "eager"}),
        (tiny_dir, {"max_pixels": 32 * 28 * 28}),
        (tiny_dir, {"max_length": 1024}),
    ]:
        enc = _encoder(path, tmp_path, **kwargs)
        enc.encode(items, show_progress=False)
        assert enc.last_stats.cached == 0, (path.name, kwargs)
    causal = _encoder(tiny_dir, tmp_path)
    causal.model.set_bidirectional(False)  # the runtime attention mode is part of the key
    got = causal.encode(items, show_progress=False)
    assert causal.last_stats.cached == 0
    assert np.abs(got - reference).max() > 1e-3
    assert len([p for p in (tmp_path / "embeddings").iterdir() if p.is_dir()]) == 7  # one namespace each


def test_query_and_document_formatting_are_different_keys():
    query = normalize_item("Find the page that answers: what was the revenue?\n", 0)
    document = normalize_item("what was the revenue?", 0)
    assert item_key(query) != item_key(document)
    assert item_key(normalize_item("x", 0)) != item_key(normalize_item("x\n", 0))  # exact text, whitespace too


def test_truncated_or_corrupt_entry_is_recomputed(tiny_dir, tmp_path, items, caplog):
    expected = _encoder(tiny_dir, tmp_path).encode(items, show_progress=False)
    entries = sorted((tmp_path / "embeddings").rglob("*.vec"))
    assert len(entries) == 3
    entries[0].write_bytes(entries[0].read_bytes()[:-7])  # truncated
    flipped = bytearray(entries[1].read_bytes())
    flipped[20] ^= 0xFF  # one value corrupted: the digest catches it
    entries[1].write_bytes(bytes(flipped))
    enc = _encoder(tiny_dir, tmp_path)
    with caplog.at_level(logging.WARNING, logger="moca_model.cache"):
        got = enc.encode(items, show_progress=False)
    assert enc.last_stats.corrupt == 2 and enc.last_stats.encoded == 2 and enc.last_stats.disk_hits == 1
    assert "corrupt or truncated entry" in caplog.text and entries[0].name in caplog.text
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert all(decode_entry(p.read_bytes()) is not None for p in entries)  # rewritten


def test_changed_weights_never_get_old_vectors(tiny_dir, tmp_path, items):
    import torch

    enc = _encoder(tiny_dir, tmp_path)
    before = enc.encode(items, show_progress=False)
    with torch.no_grad():
        enc.model.language_model.layers[0].mlp.down_proj.weight.add_(0.05)  # e.g. a training step
    after = enc.encode(items, show_progress=False)
    assert enc.last_stats.cached == 0 and enc.last_stats.encoded == 3
    assert np.abs(after - before).max() > 1e-4
    fresh = _encoder(tiny_dir, tmp_path)  # the disk kept only the checkpoint's vectors
    np.testing.assert_array_equal(fresh.encode(items, show_progress=False), before)


def test_memory_bound_drops_least_recently_used():
    dim = 256  # 1 KiB per vector
    cache = EmbeddingCache(memory_mb=3 / 1024)  # room for 3 vectors
    cache.store("ns", ["a", "b", "c"], np.ones((3, dim), dtype=np.float32))
    cache.lookup("ns", ["a"])  # a is now the most recent
    cache.store("ns", ["d"], np.ones((1, dim), dtype=np.float32))
    found, stats = cache.lookup("ns", ["a", "b", "c", "d"])
    assert sorted(found) == [0, 2, 3] and stats.memory_hits == 3  # b was dropped


def test_a_disk_cache_needs_a_fingerprint(tmp_path):
    with pytest.raises(ValueError, match="fingerprint"):
        EmbeddingCache(directory=tmp_path)


def _writer(directory: str, seed: int, rounds: int) -> None:
    cache = EmbeddingCache(memory_mb=0, directory=directory, fingerprint="fp")
    keys = [f"{k:032x}" for k in range(64)]
    for r in range(rounds):
        vectors = np.stack([np.full(32, k + 0.25 * ((seed + r) % 2), dtype=np.float32) for k in range(64)])
        cache.store("ns", keys, vectors)


def test_two_processes_writing_the_same_cache_end_with_a_valid_cache(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), seed, 8)) for seed in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    files = sorted(tmp_path.rglob("*.vec"))
    assert len(files) == 64 and not list(tmp_path.rglob("*.tmp"))
    cache = EmbeddingCache(memory_mb=0, directory=tmp_path, fingerprint="fp")
    found, stats = cache.lookup("ns", [f"{k:032x}" for k in range(64)])
    assert stats.disk_hits == 64 and stats.corrupt == 0
    for k, vec in found.items():  # one complete version of each entry, never a mix
        assert vec[0] in (k, k + 0.25) and np.all(vec == vec[0])


def test_entry_format_round_trips_and_rejects_damage():
    vec = np.linspace(-1, 1, 9, dtype=np.float32)
    data = encode_entry(vec)
    np.testing.assert_array_equal(decode_entry(data), vec)
    assert decode_entry(data[:-1]) is None and decode_entry(data + b"\0") is None and decode_entry(b"") is None
