"""End-to-end MMEB runs on a generated local sample with the tiny checkpoint (acceptance tests of issue 5)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from moca_bench.mmeb import run
from moca_bench.mmeb.config import MMEBConfig
from moca_bench.mmeb.data import MMEBDataError
from moca_bench.mmeb.synthetic import SAMPLE_SUBSETS, write_sample
from moca_bench.mmeb.tasks import IND, META_TASKS


class CountingEncoder:
    """Wraps a MoCaEncoder; counts the items it is asked to encode; can simulate a kill."""

    def __init__(self, inner, *, kill_on_call: int | None = None):
        self.inner, self.kill_on_call, self.calls = inner, kill_on_call, []
        self.processor, self.model, self.device, self.dim = inner.processor, inner.model, inner.device, inner.dim

    def encode(self, items, **kwargs):
        self.calls.append(len(items))
        if self.kill_on_call == len(self.calls):
            raise KeyboardInterrupt("simulated kill")
        return self.inner.encode(items, **kwargs)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_sample(tmp_path_factory.mktemp("mmeb") / "data", tie_row=True)


def _cfg(model, data, tmp, **kw) -> MMEBConfig:
    kw = {"cache_dir": str(tmp / "cache"), "subsets": list(SAMPLE_SUBSETS), "output_dir": str(tmp / "out"), **kw}
    return MMEBConfig(model=str(model), data_dir=str(data), device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def reference(tiny_dir, tiny_encoder, sample, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    enc = CountingEncoder(tiny_encoder)
    report = run(_cfg(tiny_dir, sample, tmp, model_name="tiny"), encoder=enc)
    return report, enc, tmp


def _raw_rows(data, name):
    return pq.read_table(data / name / "test-00000-of-00001.parquet").to_pylist()


def _key(text, image):
    return text, image or ""


def test_scores_equal_an_independent_computation(reference, sample):
    from safetensors.numpy import load_file

    from moca_bench.mmeb.data import build_subset, read_local_rows

    report, _, tmp = reference
    cache_dir = tmp / "cache" / report["model"]["cache_key"]
    expected = {}
    for name in SAMPLE_SUBSETS:
        pairs = build_subset(name, read_local_rows(sample, name)).pairs
        vecs = load_file(str(cache_dir / f"{name}.safetensors"))["embeddings"]
        table = {(p.text, p.image): v for p, v in zip(pairs, vecs)}
        hits = []
        for row in _raw_rows(sample, name):  # per row, plain Python: argmax over the row's candidates
            q = table[_key(row["qry_text"], row["qry_img_path"])]
            sims = [float(np.dot(q, table[_key(t, i)])) for t, i in zip(row["tgt_text"], row["tgt_img_path"])]
            hits.append(int(np.argmax(sims)) == 0)
        expected[name] = 100.0 * sum(hits) / len(hits)
        assert report["datasets"][name]["score"] == pytest.approx(expected[name], abs=1e-9), name
    metas = {m: [expected[n] for n in names if n in expected] for m, names in META_TASKS.items()}
    for m, vals in metas.items():
        assert report["aggregates"]["meta_tasks"][m]["score"] == pytest.approx(sum(vals) / len(vals))
    ind = [v for n, v in expected.items() if n in IND]
    assert report["aggregates"]["IND"]["score"] == pytest.approx(sum(ind) / len(ind))
    assert report["aggregates"]["overall"]["score"] == pytest.approx(sum(expected.values()) / len(expected))
    assert report["aggregates"]["overall"]["complete"] is False


def test_cached_vectors_are_the_encoders(reference, sample, tiny_encoder):
    from safetensors.numpy import load_file

    from moca_bench.mmeb.data import build_subset, read_local_rows

    report, _, tmp = reference
    subset = build_subset("OK-VQA", read_local_rows(sample, "OK-VQA"), image_root=sample / "eval_images")
    cached = load_file(str(tmp / "cache" / report["model"]["cache_key"] / "OK-VQA.safetensors"))["embeddings"]
    direct = tiny_encoder.encode([subset.item(i) for i in range(len(subset.pairs))], show_progress=False)
    np.testing.assert_allclose(cached, direct, atol=1e-5)


def test_unique_encode_count_is_reported(reference, sample):
    report, enc, _ = reference
    for name in SAMPLE_SUBSETS:
        rows = _raw_rows(sample, name)
        unique = {_key(r["qry_text"], r["qry_img_path"]) for r in rows}
        unique |= {_key(t, i) for r in rows for t, i in zip(r["tgt_text"], r["tgt_img_path"])}
        d = report["datasets"][name]
        assert d["unique_items"] == d["encoded_items"] == len(unique)
        assert d["naive_forward_passes"] == sum(1 + len(r["tgt_text"]) for r in rows) > len(unique)
    assert sum(enc.calls) == report["totals"]["encoded_items"] == report["totals"]["unique_items"]
    on_disk = json.loads((reference[2] / "out" / "tiny" / "mmeb.json").read_text())
    assert on_disk["totals"] == report["totals"]
    assert "MoCa-3B (paper)" in (reference[2] / "out" / "tiny" / "mmeb.md").read_text()


def test_ties_are_explicit(reference):
    d = reference[0]["datasets"]["N24News"]  # its last row lists the ground truth as every candidate
    assert d["tied_rows"] >= 1
    by_rule = d["scores_by_tie_rule"]
    assert by_rule["first"] - by_rule["pessimistic"] == pytest.approx(100.0 * d["tied_rows"] / d["scored_rows"])
    assert by_rule["pessimistic"] <= by_rule["expected"] <= by_rule["first"] == d["score"]


def test_rerun_after_kill_encodes_only_unfinished_subsets(tiny_dir, tiny_encoder, sample, reference, tmp_path):
    killed = CountingEncoder(tiny_encoder, kill_on_call=3)  # one encoder call per subset: dies in the third
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_dir, sample, tmp_path, model_name="tiny"), encoder=killed)
    cache_dir = next((tmp_path / "cache").iterdir())
    assert sorted(p.name for p in cache_dir.glob("*.safetensors")) == ["N24News.safetensors", "OK-VQA.safetensors"]
    assert not list(cache_dir.glob("*.tmp*"))
    again = CountingEncoder(tiny_encoder)
    report = run(_cfg(tiny_dir, sample, tmp_path, model_name="tiny"), encoder=again)
    done, rest = SAMPLE_SUBSETS[:2], SAMPLE_SUBSETS[2:]
    assert all(report["datasets"][n]["encoded_items"] == 0 and report["datasets"][n]["cache_hit"] for n in done)
    assert sum(again.calls) == sum(report["datasets"][n]["unique_items"] for n in rest)
    ref = reference[0]["datasets"]
    assert {n: d["score"] for n, d in report["datasets"].items()} == {n: ref[n]["score"] for n in SAMPLE_SUBSETS}
    third = CountingEncoder(tiny_encoder)
    run(_cfg(tiny_dir, sample, tmp_path, model_name="tiny"), encoder=third)
    assert third.calls == []


def test_another_checkpoint_never_reuses_the_cache(tiny_dir, sample, reference, tmp_path):
    from moca_model import MoCaEncoder
    from moca_model.tiny import write_tiny_checkpoint

    _, _, ref_tmp = reference
    before = set((ref_tmp / "cache").iterdir())
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    first = run(_cfg(model, sample, tmp_path, cache_dir=str(ref_tmp / "cache")), encoder=CountingEncoder(
        MoCaEncoder.from_pretrained(model, device="cpu")))  # fmt: skip
    assert first["totals"]["encoded_items"] == 0  # an exact copy (same bytes and mtimes) is the same model
    assert first["model"]["cache_key"] == reference[0]["model"]["cache_key"]
    write_tiny_checkpoint(model, seed=1)  # same files, same sizes, other weights, in place
    enc = CountingEncoder(MoCaEncoder.from_pretrained(model, device="cpu"))
    second = run(_cfg(model, sample, tmp_path, cache_dir=str(ref_tmp / "cache")), encoder=enc)
    assert sum(enc.calls) == second["totals"]["unique_items"] == second["totals"]["encoded_items"]
    assert second["model"]["cache_key"] != first["model"]["cache_key"]
    assert set((ref_tmp / "cache").iterdir()) - before == {ref_tmp / "cache" / second["model"]["cache_key"]}
    from safetensors.numpy import load_file

    vecs = [load_file(str(ref_tmp / "cache" / r["model"]["cache_key"] / "OK-VQA.safetensors"))["embeddings"]
            for r in (first, second)]  # fmt: skip
    assert not np.allclose(vecs[0], vecs[1], atol=1e-3)


def test_settings_change_the_cache_key(tiny_dir, sample, reference):
    report, _, tmp = reference
    from moca_model import MoCaEncoder

    enc = CountingEncoder(MoCaEncoder.from_pretrained(tiny_dir, device="cpu", max_pixels=32 * 28 * 28))
    other = run(_cfg(tiny_dir, sample, tmp, subsets=["N24News"], output_dir=str(tmp / "other")), encoder=enc)
    assert other["model"]["cache_key"] != report["model"]["cache_key"]
    assert sum(enc.calls) == other["totals"]["unique_items"]


def test_bad_images_are_counted_and_skipped_or_fatal(tiny_dir, tiny_encoder, tmp_path):
    data = write_sample(tmp_path / "data", bad_images=True)
    report = run(_cfg(tiny_dir, data, tmp_path, no_cache=True), encoder=tiny_encoder)
    d = report["datasets"]
    assert (d["OK-VQA"]["bad_items"], d["OK-VQA"]["bad_rows"]) == (1, 1)  # a missing query image: its row only
    assert d["OK-VQA"]["bad_examples"] == ["missing image: 'OK-VQA/query_1.png'"]
    for name, image in (("RefCOCO", "RefCOCO/cand_2.png"), ("MSCOCO_t2i", "MSCOCO_t2i/cand_3.png")):
        rows_using = sum(image in r["tgt_img_path"] for r in _raw_rows(data, name))
        assert (d[name]["bad_items"], d[name]["bad_rows"]) == (1, rows_using), name
        assert d[name]["scored_rows"] == d[name]["rows"] - rows_using
    assert d["MSCOCO_t2i"]["bad_examples"][0].startswith("unreadable image")  # truncated: fails only when decoded
    assert d["N24News"]["bad_rows"] == 0
    assert report["totals"]["bad_rows"] == sum(x["bad_rows"] for x in d.values())
    with pytest.raises(MMEBDataError, match="strict"):
        run(_cfg(tiny_dir, data, tmp_path, no_cache=True, strict=True), encoder=tiny_encoder)
