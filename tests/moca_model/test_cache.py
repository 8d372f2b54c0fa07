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


def test_an_encoder_without_a_checkpoint_fingerprint_keeps_memory_only(tiny_dir, tmp_path, items):
    loaded = _encoder(tiny_dir, tmp_path / "loaded")
    enc = MoCaEncoder(loaded.model, loaded.processor, cache=EmbeddingCache(directory=tmp_path / "bare"))
    enc.encode(items, show_progress=False)
    enc.encode(items, show_progress=False)
    assert enc.last_stats.memory_hits == 3 and not (tmp_path / "bare").exists()


def _writer(directory: str, seed: int, rounds: int) -> None:
    cache = EmbeddingCache(memory_mb=0, directory=directory)
    keys = [f"{k:032x}" for k in range(64)]
    for r in range(rounds):
        vectors = np.stack([np.full(32, k + 0.25 * ((seed + r) % 2), dtype=np.float32) for k in range(64)])
        cache.store("ns", keys, vectors, disk_namespace="ns")


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
    cache = EmbeddingCache(memory_mb=0, directory=tmp_path)
    found, stats = cache.lookup("ns", [f"{k:032x}" for k in range(64)], disk_namespace="ns")
    assert stats.disk_hits == 64 and stats.corrupt == 0
    for k, vec in found.items():  # one complete version of each entry, never a mix
        assert vec[0] in (k, k + 0.25) and np.all(vec == vec[0])


def test_entry_format_round_trips_and_rejects_damage():
    vec = np.linspace(-1, 1, 9, dtype=np.float32)
    data = encode_entry(vec)
    np.testing.assert_array_equal(decode_entry(data), vec)
    assert decode_entry(data[:-1]) is None and decode_entry(data + b"\0") is None and decode_entry(b"") is None


# --- issue 24: cache identity, per-batch storing, failed writes, empty calls -----------------------------------


def _change_weights(model, how: str, other) -> None:
    """Change ``model``'s weights in ways that leave its parameters' version counters alone."""
    import torch

    if how == "data_write":  # e.g. copying another checkpoint's weights in through .data
        for p, q in zip(model.parameters(), other.parameters(), strict=True):
            p.data.copy_(q.data)
    elif how == "load_state_dict_assign":
        model.load_state_dict(other.state_dict(), assign=True)
    else:  # "new_parameter": one weight replaced by a new Parameter object
        mlp = model.language_model.layers[0].mlp
        mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight.detach() + 0.05)


@pytest.mark.parametrize("how", ["data_write", "load_state_dict_assign", "new_parameter"])
def test_changed_weights_are_noticed_without_version_counters(tiny_dir, other_tiny_dir, tmp_path, items, how):
    other = MoCaEncoder.from_pretrained(other_tiny_dir, device="cpu", cache_memory_mb=0).model
    enc = _encoder(tiny_dir, tmp_path)
    before = enc.encode(items, show_progress=False)
    _change_weights(enc.model, how, other)
    truth = MoCaEncoder(enc.model, enc.processor, cache=False).encode(items, show_progress=False)
    after = enc.encode(items, show_progress=False)
    stale = float(np.abs(after - truth).max())
    assert stale <= TOL and enc.last_stats.cached == 0, f"served the old model's vectors (off by {stale:.3f})"
    assert np.abs(truth - before).max() > 1e-3
    # new inputs after the change: kept in memory, never written under the checkpoint's disk namespace
    more = ["a new query after the change", {"image": draw_image(40, 70, 9), "text": "\nRepresent"}]
    enc.encode(more, show_progress=False)
    fresh = _encoder(tiny_dir, tmp_path)  # the unmodified checkpoint, same cache folder
    got = fresh.encode(items + more, show_progress=False)
    clean = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", cache_memory_mb=0).encode(items + more,
                                                                                         show_progress=False)
    poisoned = float(np.abs(got - clean).max())
    assert poisoned <= TOL, f"the disk cache served a modified model's vector (off by {poisoned:.3f})"
    assert fresh.last_stats.disk_hits == 3 and fresh.last_stats.encoded == 2


def test_weights_changed_before_the_first_call_never_reach_the_disk(tiny_dir, other_tiny_dir, tmp_path, items):
    other = MoCaEncoder.from_pretrained(other_tiny_dir, device="cpu", cache_memory_mb=0).model
    enc = _encoder(tiny_dir, tmp_path)
    _change_weights(enc.model, "data_write", other)
    enc.encode(items, show_progress=False)
    fresh = _encoder(tiny_dir, tmp_path)
    got = fresh.encode(items, show_progress=False)
    clean = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", cache_memory_mb=0).encode(items, show_progress=False)
    poisoned = float(np.abs(got - clean).max())
    assert poisoned <= TOL, f"the disk cache served a modified model's vector (off by {poisoned:.3f})"
    assert fresh.last_stats.disk_hits == 0 and not list((tmp_path / "embeddings").rglob("*.vec"))[3:]


def test_a_shared_memory_cache_never_mixes_two_models(tiny_dir, other_tiny_dir, items):
    a = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", cache_memory_mb=0)
    b = MoCaEncoder.from_pretrained(other_tiny_dir, device="cpu", cache_memory_mb=0)
    shared = EmbeddingCache()
    MoCaEncoder(a.model, a.processor, cache=shared).encode(items, show_progress=False)
    enc_b = MoCaEncoder(b.model, b.processor, cache=shared)
    got = enc_b.encode(items, show_progress=False)
    mixed = float(np.abs(got - b.encode(items, show_progress=False)).max())
    assert mixed <= TOL and enc_b.last_stats.cached == 0, f"model B got model A's vectors (off by {mixed:.3f})"
    again = MoCaEncoder(a.model, a.processor, cache=shared)  # the same model in memory may share its entries
    again.encode(items, show_progress=False)
    assert again.last_stats.memory_hits == 3


def test_a_crash_keeps_the_batches_that_finished(tiny_dir, tmp_path):
    texts = [f"item {i}: " + "word " * (3 * i + 1) for i in range(6)]  # six lengths: six batches of one
    enc = _encoder(tiny_dir, tmp_path)
    real, done = enc.forward_batch, []

    def crashing(inputs):
        if len(done) == 4:
            raise RuntimeError("simulated crash in the fifth batch")
        done.append(1)
        return real(inputs)

    enc.forward_batch = crashing
    with pytest.raises(RuntimeError, match="simulated crash"):
        enc.encode(texts, batch_size=1, show_progress=False)
    fresh = _encoder(tiny_dir, tmp_path)
    fresh.encode(texts, batch_size=1, show_progress=False)
    assert (fresh.last_stats.disk_hits, fresh.last_stats.encoded) == (4, 2)


def test_a_failed_cache_write_is_logged_once_and_the_vectors_are_returned(tiny_dir, tmp_path, items, caplog,
                                                                          monkeypatch):
    import errno

    import moca_model.cache as cache_mod

    want = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", cache_memory_mb=0).encode(items, show_progress=False)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")  # <cache_dir>/embeddings/... cannot be created: a bad path
    enc = _encoder(tiny_dir, blocker)
    with caplog.at_level(logging.WARNING, logger="moca_model.cache"):
        got = enc.encode(items, batch_size=1, show_progress=False)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert enc.last_stats.write_errors == 3 and caplog.text.count("cannot write") == 1
    caplog.clear()

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "atomic_write", full_disk)
    enc = _encoder(tiny_dir, tmp_path / "full")
    with caplog.at_level(logging.WARNING, logger="moca_model.cache"):
        got = enc.encode(items, batch_size=1, show_progress=False)
        enc.encode(["one more"], show_progress=False)
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    assert caplog.text.count("No space left") == 1 and enc.last_stats.write_errors == 1


def test_an_empty_call_resets_last_stats(tiny_dir, items):
    enc = MoCaEncoder.from_pretrained(tiny_dir, device="cpu")
    enc.encode(items, show_progress=False)
    assert enc.last_stats.inputs == 3 and enc.last_stats.encoded == 3
    out = enc.encode([], show_progress=False)
    assert out.shape == (0, enc.dim)
    s = enc.last_stats
    assert (s.inputs, s.unique, s.encoded, s.batches, s.cached) == (0, 0, 0, 0, 0)
    assert enc.total_stats.inputs == 3


def test_weights_fingerprint_follows_content_and_place(tiny_dir, other_tiny_dir):
    from moca_model.identity import weights_fingerprint

    a1 = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", cache_memory_mb=0)
    a2 = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", cache_memory_mb=0)
    b = MoCaEncoder.from_pretrained(other_tiny_dir, device="cpu", cache_memory_mb=0)
    f1, f2, fb = (weights_fingerprint(e.model) for e in (a1, a2, b))
    assert f1.content == f2.content and f1.state != f2.state  # same weights, other tensors in memory
    assert fb.content != f1.content
    assert a1.identity() == a2.identity() != b.identity()
