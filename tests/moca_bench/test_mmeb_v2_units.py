"""MMEB-V2 pieces: task selection, text rules, scoring rules, layouts, aggregates, published numbers, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from moca_bench.mmeb.cli import build_parser, parse_config
from moca_bench.mmeb.data import MMEBDataError
from moca_bench.mmeb.v2 import tasks as t
from moca_bench.mmeb.v2.build import Input, TaskBuilder
from moca_bench.mmeb.v2.data import find_parquet
from moca_bench.mmeb.v2.report import aggregate_v2
from moca_bench.mmeb.v2.scoring import score_task
from moca_bench.mmeb.v2.text import model_text, qa_template, strip_option, visrag_file_name

REPO = Path(__file__).resolve().parents[2]


def test_task_table_has_the_78_and_their_groups():
    assert len(t.SCORED) == 78
    counts = {m: sum(t.TASKS[n].modality == m for n in t.SCORED) for m in t.MODALITIES}
    assert counts == {"image": 36, "video": 18, "visdoc": 24}
    assert {k: len(v) for k, v in t.meta_tasks("video").items()} == {"CLS": 5, "QA": 5, "RET": 5, "MRET": 3}
    assert {k: len(v) for k, v in t.meta_tasks("visdoc").items()} == {"VDRv1": 10, "VDRv2": 4, "VR": 6, "OOD": 4}
    assert t.TASKS["YouCook2"].repo == "lmms-lab/YouCook2" and t.TASKS["YouCook2"].split == "val"
    assert t.TASKS["ViDoSeek-page-fixed"].repo == "VLM2Vec/ViDoSeek-page-fixed"
    assert t.TASKS["SmthSmthV2"].first_rows == 1000 and t.TASKS["MomentSeeker"].queries == 1602
    assert t.TASKS["Visual7W-Pointing"].meta == "VG"  # not QA (VLM2Vec issue 106)


def test_task_selection():
    assert t.resolve_tasks(None) == list(t.SCORED)
    assert len(t.resolve_tasks(["video"])) == 18 and len(t.resolve_tasks(["CLS"])) == 15
    assert t.resolve_tasks(["visdoc-ood", "MMLongBench-page"]) == ["ViDoSeek-page-fixed", "ViDoSeek-doc",
                                                                  "MMLongBench-page-fixed", "MMLongBench-doc"]
    assert t.resolve_tasks(["ViDoRe_esg_reports_v2"]) == ["ViDoRe_esg_reports_v2"]  # an unscored extra, by name
    with pytest.raises(ValueError, match="video-MRET"):
        t.resolve_tasks(["Kinetics-400"])


def test_text_rules():
    assert strip_option("A. Apples.") == "Apples" and strip_option("Bcleans") == "s"  # no ". ": last character
    q, opts, ans = qa_template("Q?", ["yes", "no"], "maybe")
    assert q == "Q?\nOptions:\n(A) yes\n(B) no" and opts == ["(A) yes", "(B) no"] and ans == "(@) maybe"
    assert model_text("<|image_pad|> x <|video_pad|> y") == ("<|vision_start|><|image_pad|><|vision_end|> x "
                                                            "<|vision_start|><|video_pad|><|vision_end|> y")
    long = "n" * 60 + ".png"
    assert visrag_file_name(long).startswith("n" * 50 + "_") and visrag_file_name(long).endswith(".png")
    assert len(visrag_file_name(long)) == 50 + 1 + 8 + 4


def _data(local: bool, rows, corpus=(), graded=False):
    """rows: (query vector id, [(name, vector id)], labels, grades); vectors are rows of an identity-like table."""
    task = t.V2Task("X", "visdoc" if graded else "image", "M", "p", "r", eval_type="local" if local else "global")
    b = TaskBuilder(task)
    for q, cands, labels, grades in rows:
        b.add_row(Input(f"q{q}"), [(n, Input(f"c{v}")) for n, v in cands], labels, grades if graded else None)
    for n, v in corpus:
        b.add_corpus(n, Input(f"c{v}"))
    return b.build()


def _emb(data, table: dict[str, list[float]]):
    e = np.array([table[x.text] for x in data.pairs], dtype=np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_duplicate_ground_truth_names_and_tie_rules():
    # row 0: the ground truth name appears twice (same vector); row 1: a non-label ties with the label at the top
    data = _data(True, [(0, [("a", 0), ("b", 1), ("a", 0)], ["a"], None), (1, [("c", 2), ("d", 3)], ["d"], None)])
    table = {"q0": [1, 0, 0], "c0": [1, 0.1, 0], "c1": [1, 0.2, 0], "q1": [0, 0, 1], "c2": [0, 1, 1], "c3": [0, 1, 1]}
    out = score_task(data, _emb(data, table), np.zeros(len(data.pairs), bool), tie_rule="first")
    assert out["scores_by_tie_rule"] == {"first": 50.0, "optimistic": 100.0, "pessimistic": 50.0, "expected": 75.0}
    assert (out["tied_rows"], out["top_tied_rows"]) == (1, 2)  # row 0's duplicate tie cannot change its hit


def test_graded_ndcg_and_the_reference_grade_order():
    # labels 5 (grade 2) and 3 (grade 1), in that file order; list(set([5, 3])) == [3, 5] swaps the grades
    assert list({5, 3}) == [3, 5]
    data = _data(False, [(0, [(5, 5), (3, 3)], [5, 3], [2, 1])], corpus=[(1, 1), (3, 3)], graded=True)
    table = {"q0": [1, 0, 0], "c5": [0.2, 1, 0], "c3": [0.9, 0.1, 0], "c1": [0, 0, 1]}  # ranking: 3, 5, 1
    emb, ok = _emb(data, table), np.zeros(len(data.pairs), bool)
    idcg = 2 + 1 / math.log2(3)
    correct = score_task(data, emb, ok)
    assert correct["score"] == pytest.approx(100 * (1 + 2 / math.log2(3)) / idcg)
    reference = score_task(data, emb, ok, grade_order="reference")
    assert reference["score"] == pytest.approx(100 * (2 + 1 / math.log2(3)) / idcg) == pytest.approx(100.0)
    assert correct["grade_order_rows_differ"] == 1 and reference["score_correct_grade_order"] == correct["score"]


def test_bad_candidates_in_a_global_pool():
    data = _data(False, [(0, [("a", 0)], ["a"], None), (1, [("b", 1)], ["b"], None)], corpus=[("z", 9)])
    table = {"q0": [1, 0], "q1": [0, 1], "c0": [1, 0.1], "c1": [0.1, 1], "c9": [1, 0]}  # z would win row 0
    bad = np.array([x.text == "c9" for x in data.pairs])
    out = score_task(data, _emb(data, table), bad)
    assert (out["score"], out["bad_rows"]) == (100.0, 0)  # a bad distractor leaves the pool, rows stay
    bad = np.array([x.text == "c1" for x in data.pairs])
    out = score_task(data, _emb(data, table), bad)
    assert (out["scored_rows"], out["bad_rows"]) == (1, 1)  # a bad label makes its row bad


def test_parquet_layouts(tmp_path):
    for rel in ("r/a/MC/test-00000-of-00001.parquet", "r/b/data/test-00000-of-00002.parquet",
                "r/c/default/val-00000-of-00001.parquet", "r/d/queries/train-00000-of-00001.parquet"):
        (tmp_path / rel).parent.mkdir(parents=True)
        (tmp_path / rel).touch()
    assert find_parquet(tmp_path, "r/a", "MC", "test")[0].parent.name == "MC"
    assert find_parquet(tmp_path, "r/b", None, "test")[0].parent.name == "data"
    assert find_parquet(tmp_path, "r/c", None, "val")[0].parent.name == "default"
    assert find_parquet(tmp_path, "r/d", "queries", "train")[0].parent.name == "queries"
    with pytest.raises(MMEBDataError, match="huggingface-cli download r/e"):
        find_parquet(tmp_path, "r/e", None, "test")


def test_aggregates_are_plain_means_over_datasets():
    rng = np.random.default_rng(0)
    scores = {n: float(rng.uniform(0, 100)) for n in t.SCORED}
    agg = aggregate_v2(scores)
    image = [scores[n] for n in t.SCORED if t.TASKS[n].modality == "image"]
    assert agg["modalities"]["image"]["score"] == pytest.approx(np.mean(image))
    assert agg["overall"]["score"] == pytest.approx(np.mean(list(scores.values())))  # 36/18/24-weighted
    cls = [scores[n] for n in t.meta_tasks("image")["CLS"]]
    assert agg["meta_tasks"]["image-CLS"]["score"] == pytest.approx(np.mean(cls))
    assert all(a["complete"] for a in agg["meta_tasks"].values())
    partial = aggregate_v2({**scores, "K700": None})
    assert partial["modalities"]["video"]["n_datasets"] == 17 and not partial["overall"]["complete"]


def test_published_numbers_have_sources_and_known_keys():
    pub = json.loads((REPO / "results" / "published" / "mmeb_v2.json").read_text())
    assert {"VLM2Vec-V2-2B", "GME-2B", "Qwen3-VL-Embedding-2B", "Qwen3-VL-Embedding-8B"} <= set(pub["models"])
    for label, m in pub["models"].items():
        assert m["aggregates_source"] and set(m["datasets"]) <= set(t.SCORED), label
        assert set(m["meta_tasks"]) == set(aggregate_v2({})["meta_tasks"]) and set(m["modalities"]) == set(t.MODALITIES)
        if m["datasets"]:
            assert len(m["datasets"]) == 78 and m["datasets_source"]
            assert abs(aggregate_v2(m["datasets"])["overall"]["score"] - m["overall"]) < 0.2, label
    assert pub["models"]["Qwen3-VL-Embedding-8B"]["overall"] == 77.8
    assert pub["models"]["VLM2Vec-V2-2B"]["datasets"]["ViDoSeek-page-fixed"] == pytest.approx(80.3, abs=0.05)


def test_cli_v2_options():
    cfg, _ = parse_config(["--model", "m", "--benchmark", "v2", "--num-frames", "16", "--short-clips", "pad",
                           "--grade-order", "reference", "--media-path", "K700=/x", "--media-path", "MSVD=y",
                           "--dataset-pin", "VLM2Vec/MSVD=abc", "--frame-root", "/f", "--subsets", "video"])
    assert (cfg.benchmark, cfg.num_frames, cfg.short_clips, cfg.grade_order) == ("v2", 16, "pad", "reference")
    assert cfg.media_paths == ["K700=/x", "MSVD=y"] and cfg.dataset_pins == ["VLM2Vec/MSVD=abc"]
    assert parse_config(["--model", "m"])[0].benchmark == "v1"
    assert "--benchmark" in build_parser().format_help() and "mmeb_v2.json" in build_parser().format_help()
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_config(["--model", "m", "--media-path", "nothing"])


def test_cost_model_on_published_sizes():
    from moca_bench.mmeb.v2.cost import task_cost, v2_costs

    assert task_cost(t.TASKS["HMDB51"])["unique_inputs"] == 1000 + 51  # every video once, the 51 labels once
    msr = task_cost(t.TASKS["MSR-VTT"])
    assert (msr["unique_inputs"], msr["video_inputs"], msr["frames"]) == (2000, 1000, 8000)
    assert msr["naive_passes"] == 1000 * 1001  # each query against the whole pool
    assert task_cost(t.TASKS["ActivityNetQA"])["unique_inputs"] == 1002  # yes / no encoded once
    assert task_cost(t.TASKS["VisRAG_PlotQA"])["unique_inputs"] is None  # corpus size not published
    costs = v2_costs(num_frames=64)
    assert costs["overall"]["frames"] == 64 * costs["overall"]["video_inputs"]
    assert costs["modalities"]["image"]["unique_inputs"] == 65532  # v1's figure: the same 36 tasks and assumption
    assert costs["overall"]["tasks_with_unknown_corpus"] == 8


def test_a_frame_count_that_cannot_fit_fails_before_encoding(tiny_encoder):
    from moca_bench.mmeb.config import MMEBConfig
    from moca_bench.mmeb.v2.runner import check_video_budget

    proc = tiny_encoder.processor  # tiny: max_length 512, 4 tokens per frame at least
    check_video_budget(proc, MMEBConfig(model="m", benchmark="v2", num_frames=64), ["MSR-VTT"])
    with pytest.raises(ValueError, match="Raise --max-length"):
        check_video_budget(proc, MMEBConfig(model="m", benchmark="v2", num_frames=300), ["MSR-VTT"])
    check_video_budget(proc, MMEBConfig(model="m", benchmark="v2", num_frames=300), ["OK-VQA"])  # no video


def test_a_qrels_page_missing_from_the_corpus_is_looked_up_where_the_pages_are(tmp_path):
    """A qrel page outside the corpus is read from the task's page folder (the reference's image_root), not the
    page cache's root, where another task's page of the same id may sit."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from moca_bench.mmeb.v2.data import TableSource
    from moca_bench.mmeb.v2.parse import ParseOptions, parse_task
    from moca_bench.mmeb.v2.synthetic import write_image, write_v2_sample

    sample = write_v2_sample(tmp_path / "s")
    qrels = sample / "hub" / "vidore" / "shiftproject_test_beir" / "qrels" / "test-00000-of-00001.parquet"
    rows = pq.read_table(qrels).to_pylist()
    pq.write_table(pa.Table.from_pylist([*rows, {**rows[0], "corpus-id": 99, "score": 1}]), qrels)
    pages = tmp_path / "pages"
    write_image(pages / "ViDoRe_shiftproject" / "99.png", np.random.default_rng(0))  # e.g. from an earlier run
    write_image(pages / "99.png", np.random.default_rng(1))  # not this task's page
    task = t.TASKS["ViDoRe_shiftproject"]
    data = parse_task(task, TableSource(sample / "hub"), None, ParseOptions(page_cache=pages))
    images = {x.image for x in data.pairs}
    assert str(pages / "ViDoRe_shiftproject" / "99.png") in images and str(pages / "99.png") not in images
    shutil.rmtree(sample)
