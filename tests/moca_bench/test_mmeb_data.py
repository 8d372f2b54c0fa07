"""MMEB pieces without a model: rows -> pairs, task groups, published numbers, cache keys, cost model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moca_bench.mmeb import tasks
from moca_bench.mmeb.cache import EmbeddingCache, content_hash
from moca_bench.mmeb.data import MMEBDataError, build_subset, find_image_root, read_hub_rows, read_local_rows
from moca_bench.mmeb.report import aggregate, markdown_table
from moca_bench.mmeb.synthetic import forward_passes, mmeb_structure, synthetic_rows, write_sample

PUBLISHED = Path(__file__).resolve().parents[2] / "results" / "published" / "mmeb.json"
ROWS = [
    {"qry_text": "<|image_1|>\nq0\n", "qry_img_path": "a.png", "tgt_text": ["x", "y", "x"],
     "tgt_img_path": ["", "", ""]},
    {"qry_text": "<|image_1|>\nq1\n", "qry_img_path": "b.png", "tgt_text": ["y", "z"], "tgt_img_path": None},
    {"qry_text": "<|image_1|>\nq0\n", "qry_img_path": "a.png", "tgt_text": ["<|image_1|>\nimg\n"],
     "tgt_img_path": ["a.png"]},
]  # fmt: skip


def test_build_subset_dedups_pairs_queries_first_and_pads():
    s = build_subset("VQA", ROWS)
    assert [(p.text, p.image) for p in s.pairs] == [
        ("<|image_1|>\nq0\n", "a.png"), ("<|image_1|>\nq1\n", "b.png"),
        ("x", ""), ("y", ""), ("z", ""), ("<|image_1|>\nimg\n", "a.png")]  # fmt: skip
    assert s.queries.tolist() == [0, 1, 0]
    assert s.candidates.tolist() == [[2, 3, 2], [3, 4, -1], [5, -1, -1]]
    assert build_subset("VQA", ROWS, max_rows=1).n_rows == 1


def test_items_follow_the_reference_placeholder_rules(tmp_path):
    s = build_subset("VQA", [{"qry_text": "<|image_1|>\nno image\n", "qry_img_path": "", "tgt_text": ["t"]}, *ROWS],
                     image_root=tmp_path)  # fmt: skip
    assert s.item(0) == {"text": "\nno image\n"}  # placeholder dropped when there is no image
    assert s.item(1) == {"text": "<|image_1|>\nq0\n", "image": str(tmp_path / "a.png")}


def test_mismatched_candidate_lists_are_an_error():
    with pytest.raises(MMEBDataError, match="row 0"):
        build_subset("X", [{"qry_text": "q", "qry_img_path": "", "tgt_text": ["a", "b"], "tgt_img_path": ["i"]}])


def test_local_layout_and_image_root(tmp_path):
    data = write_sample(tmp_path, subsets=("MSCOCO_t2i",), rows=3, candidates=2)
    rows = read_local_rows(data, "MSCOCO_t2i")
    assert len(rows) == 3 and set(rows[0]) == {"qry_text", "qry_img_path", "tgt_text", "tgt_img_path"}
    s = build_subset("MSCOCO_t2i", rows)
    assert find_image_root(data, [p.image for p in s.pairs]) == data / "eval_images"
    with pytest.raises(MMEBDataError, match="--image-root"):
        find_image_root(data, ["nowhere/x.png"])
    with pytest.raises(MMEBDataError, match="parquet"):
        read_local_rows(data, "CIRR")


def test_hub_loading_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MMEBDataError, match="--data-dir"):
        read_hub_rows("CIRR")


def test_task_groups_match_the_paper():
    assert len(tasks.SUBSETS) == len(set(tasks.SUBSETS)) == 36
    assert {m: len(v) for m, v in tasks.META_TASKS.items()} == {"Classification": 10, "VQA": 10, "Retrieval": 12,
                                                                 "Grounding": 4}  # fmt: skip
    assert (len(tasks.IND), len(tasks.OOD)) == (20, 16) and set(tasks.IND) <= set(tasks.SUBSETS)
    assert tasks.resolve_subsets(["grounding", "CIRR", "RefCOCO"]) == ["CIRR", "MSCOCO", "RefCOCO", "RefCOCO-Matching",
                                                                     "Visual7W-Pointing"]  # fmt: skip
    assert tasks.resolve_subsets(["OOD"]) == list(tasks.OOD)
    with pytest.raises(ValueError, match="unknown MMEB subset"):
        tasks.resolve_subsets(["ImageNet"])


@pytest.mark.parametrize("model", ["MoCa-3B", "MoCa-7B"])
def test_published_numbers_are_consistent(model):
    pub = json.loads(PUBLISHED.read_text())["models"][model]
    assert set(pub["datasets"]) == set(tasks.SUBSETS)
    agg = aggregate(pub["datasets"])  # recomputed from the per-dataset table: within the paper's rounding
    for meta, value in pub["meta_tasks"].items():
        assert agg["meta_tasks"][meta]["score"] == pytest.approx(value, abs=0.051)
    for key in ("IND", "OOD", "overall"):
        assert agg[key]["score"] == pytest.approx(pub[key], abs=0.051) and agg[key]["complete"]


def test_markdown_marks_partial_aggregates():
    report = {"model": {"name": "x"}, "tie_rule": "first",
              "datasets": {"CIRR": {"meta_task": "Retrieval", "group": "IND", "score": 50.0}},
              "aggregates": aggregate({"CIRR": 50.0}),
              "totals": {"rows": 2, "bad_rows": 0, "tied_rows": 0, "unique_items": 3, "encoded_items": 3,
                         "naive_forward_passes": 4}}  # fmt: skip
    md = markdown_table(report, json.loads(PUBLISHED.read_text())["models"])
    assert "| CIRR | Retrieval | IND | 50.0 | 55.7 | 53.4 |" in md
    assert "| **Retrieval** |  |  | **50.0 (1/12)** | 70.6 | 75.0 |" in md
    assert "| **VQA** |  |  | **–** | 62.9 | 64.7 |" in md


def _tiny_model_dir(tmp_path: Path, payload: bytes) -> Path:
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(payload)
    return d


def test_checkpoint_fingerprint_tracks_the_files(tmp_path, monkeypatch):
    import moca_model.cache as cache_mod  # the checkpoint-file digest of the one identity rule (model_key)

    fingerprint = cache_mod.checkpoint_fingerprint
    d = _tiny_model_dir(tmp_path, b"\x00" * 4096)
    key = fingerprint(d)
    assert set(cache_mod.checkpoint_files(d)) == {"config.json", "model.safetensors"}
    st = (d / "model.safetensors").stat()
    (d / "model.safetensors").write_bytes(b"\x01" * 4096)  # same size, same mtime: the content decides
    import os

    os.utime(d / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fingerprint(d) != key
    monkeypatch.setattr(cache_mod, "_FULL_HASH_LIMIT", 1024)  # large-file path: header + sampled blocks
    monkeypatch.setattr(cache_mod, "_SAMPLE_SIZE", 64)
    big = bytearray((8).to_bytes(8, "little") + b'{"a": 1}' + bytes(4096))
    d = _tiny_model_dir(tmp_path, bytes(big))
    k1 = fingerprint(d)
    big[-1] = 7  # the last sampled block
    (d / "model.safetensors").write_bytes(bytes(big))
    assert fingerprint(d) != k1


def test_cache_round_trip_and_damaged_files(tmp_path):
    s = build_subset("CIRR", ROWS, image_root=tmp_path)
    chash = content_hash(s)
    cache = EmbeddingCache(tmp_path / "c", "k1", {"x": 1})
    emb = np.arange(12, dtype=np.float32).reshape(6, 2)
    bad = np.array([0, 1, 0, 0, 0, 0], dtype=bool)
    emb[1] = np.nan
    cut = np.array([0, 0, 1, 0, 0, 0], dtype=bool)
    cache.save("CIRR", chash, emb, bad, {1: "missing image: 'b.png'"}, cut)
    assert cache.contains("CIRR", chash) and not cache.contains("CIRR", "other")
    got, got_bad, reasons, got_cut = cache.load("CIRR", chash)
    np.testing.assert_array_equal(got, emb)
    assert got_bad.tolist() == bad.tolist() and reasons == {1: "missing image: 'b.png'"}
    assert got_cut.tolist() == cut.tolist()
    assert EmbeddingCache(tmp_path / "c", "k2", {}).load("CIRR", chash) is None  # another model key
    assert sorted(p.name for p in (tmp_path / "c" / "k1").iterdir()) == ["CIRR.safetensors", "fingerprint.json"]
    cache.path("CIRR").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")  # e.g. a foreign or damaged file
    assert not cache.contains("CIRR", chash) and cache.load("CIRR", chash) is None
    (tmp_path / "a.png").write_bytes(b"12")  # an image appearing changes the content hash
    assert content_hash(s) != chash


def test_cost_model_of_the_published_structure():
    shapes = mmeb_structure()
    assert len(shapes) == 36 and all(s.queries == 1000 for s in shapes)
    assert sum(s.candidates for s in shapes if s.meta_task == "Classification") == 3532
    totals = forward_passes(shapes)
    assert totals["without_dedup"] == 10 * 1000 + 1000 * 3532 + 26 * 1000 * 1001
    assert totals["with_dedup"] == 10 * 1000 + 3532 + 26 * 2000
    assert totals["ratio"] > 400


def test_synthetic_rows_realise_the_shape():
    from moca_bench.mmeb.synthetic import SubsetShape

    shape = SubsetShape("OK-VQA", "VQA", queries=40, candidates=10, unique_queries=40, unique_candidates=40)
    s = build_subset(shape.name, synthetic_rows(shape))
    assert len(s.pairs) == shape.with_dedup
    assert s.n_rows + int((s.candidates >= 0).sum()) == shape.without_dedup


def test_hub_path_with_a_stubbed_hub(tmp_path, monkeypatch):
    import shutil

    import datasets
    import huggingface_hub

    from moca_bench.mmeb.data import hub_image_root

    data = write_sample(tmp_path / "src", subsets=("MSCOCO_i2t",), rows=3, candidates=2)
    archive = shutil.make_archive(str(tmp_path / "images"), "zip", root_dir=data, base_dir="eval_images")
    calls = []

    def fake_load_dataset(name, subset, split, revision=None):
        calls.append((name, subset, split, revision))
        return datasets.Dataset.from_list(read_local_rows(data, subset))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: archive)
    rows = list(read_hub_rows("MSCOCO_i2t", revision="abc"))
    assert calls == [("TIGER-Lab/MMEB-eval", "MSCOCO_i2t", "test", "abc")] and len(rows) == 3
    root = hub_image_root(tmp_path / "cache", revision="abc")
    assert (root / ".complete").is_file()
    s = build_subset("MSCOCO_i2t", rows)
    assert find_image_root(root, [p.image for p in s.pairs]) == root / "eval_images"
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("downloaded twice"))
    assert hub_image_root(tmp_path / "cache", revision="abc") == root


def test_sample_is_a_function_of_the_seed(tmp_path):
    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a = files(write_sample(tmp_path / "a", subsets=("RefCOCO",), rows=3))
    assert a == files(write_sample(tmp_path / "b", subsets=("RefCOCO",), rows=3))
    assert a != files(write_sample(tmp_path / "c", subsets=("RefCOCO",), rows=3, seed=1))
