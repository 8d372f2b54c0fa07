"""CL rows: list parsing without eval, few negatives, missing/unreadable images, seeded subsets, formats."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from moca_train.cl.config import CLDataConfig, CLDatasetConfig
from moca_train.cl.data import load_cl_data, parse_list, subsample


def _img(path, colour=(255, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (56, 56), colour).save(path)
    return path.name


def _write(tmp_path, rows, name="t.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(path, **kw):
    return CLDataConfig(datasets=[CLDatasetConfig(name="t", path=str(path))], global_batch_size=4, **kw)


def test_parse_list_is_safe():
    assert parse_list(["a", "b"]) == ["a", "b"]
    assert parse_list('["a", "b"]') == ["a", "b"]
    assert parse_list("['a', 'b']") == ["a", "b"]  # Python literal: ast.literal_eval
    assert parse_list(None) == [] and parse_list("") == [] and parse_list("x.png") == ["x.png"]
    with pytest.raises(ValueError, match="cannot parse"):
        parse_list("[__import__('os').system('touch /tmp/pwned')]")


def test_few_negatives_repeat_or_drop_and_missing_images_are_counted(tmp_path):
    _img(tmp_path / "q.png")
    rows = [
        {"qry": "q0", "pos_text": "p0", "neg_text": "['n1', 'n2', 'n3']"},  # stringified list, 3 >= 2
        {"qry": "q1", "pos_text": "p1", "neg_text": ["n1"]},  # too few
        {"qry": "q2", "pos_text": "p2", "neg_text": []},  # none
        {"qry": "q3", "qry_image_path": "missing.png", "pos_text": "p3", "neg_text": ["a", "b"]},
        {
            "qry": "q4",
            "qry_image_path": "q.png",
            "pos_text": "",
            "pos_image_path": "",
            "neg_text": ["a", "b", "c"],
            "neg_image_path": ["", "gone.png", ""],
        },  # empty positive
        {
            "qry": "q5",
            "qry_image_path": "q.png",
            "pos_text": "p5",
            "neg_text": ["a", "", "c"],
            "neg_image_path": ["gone.png", "", ""],
        },  # fmt: skip
    ]
    path = _write(tmp_path, rows)
    rep = load_cl_data(_cfg(path, num_negatives=2, few_negatives="repeat"))
    ex = {e.query[0]: e for e in rep.tasks[0].examples}
    assert sorted(ex) == ["q0", "q1", "q5"]
    assert [n[0] for n in ex["q0"].negs] == ["n1", "n2"]
    assert [n[0] for n in ex["q1"].negs] == ["n1", "n1"]
    assert [n[0] for n in ex["q5"].negs] == ["c", "c"]  # 'a' had a missing image, '' had nothing
    assert ex["q5"].query[1] == str(tmp_path / "q.png")
    assert rep.stats == Counter(rows=6, dropped_few_negatives=1, dropped_missing_image=1, dropped_empty=1,
                                repeated_negatives=2, negatives_missing_image=1)  # fmt: skip
    drop = load_cl_data(_cfg(path, num_negatives=2, few_negatives="drop"))
    assert sorted(e.query[0] for e in drop.tasks[0].examples) == ["q0"]
    zero = load_cl_data(_cfg(path, num_negatives=0))
    assert len(zero.tasks[0].examples) == 4 and all(e.negs == () for e in zero.tasks[0].examples)


def test_image_negative_with_empty_text_takes_the_positive_text_and_ids_mark_duplicates(tmp_path):
    _img(tmp_path / "imgs" / "a.png"), _img(tmp_path / "imgs" / "b.png")
    rows = [
        {"qry": "x", "pos_text": "<|image_1|>Represent", "pos_image_path": "a.png", "neg_text": [""],
         "neg_image_path": ["b.png"]},
        {"qry": "y", "pos_text": "<|image_1|>Represent", "pos_image_path": "a.png", "neg_text": ["", ""],
         "neg_image_path": ["a.png", "b.png"]},
    ]  # fmt: skip
    path = _write(tmp_path, rows)
    cfg = CLDataConfig(datasets=[CLDatasetConfig(path=str(path), image_dir=str(tmp_path / "imgs"))], num_negatives=1)
    a, b = load_cl_data(cfg).tasks[0].examples
    assert a.negs == (("<|image_1|>Represent", str(tmp_path / "imgs" / "b.png")),)
    assert a.pos_id == b.pos_id and b.neg_ids == (b.pos_id,)  # identical content, identical id


def test_empty_negative_texts_follow_the_reference_rule(tmp_path):
    # reference src/dataset.py:118-123: an empty negative text becomes the positive's text only when all
    # negative texts of the row are identical (all empty); otherwise a random non-empty negative text of the row
    for name in ("p.png", "n0.png", "n1.png", "n2.png"):
        _img(tmp_path / name)
    mixed = {
        "qry": "q",
        "pos_text": "<|image_1|>Represent the given image.",
        "pos_image_path": "p.png",
        "neg_text": ["", "a red square", "", "a blue circle"],
        "neg_image_path": ["n0.png", "", "n2.png", ""],
    }
    empty = {**mixed, "neg_text": ["", ""], "neg_image_path": ["n0.png", "n1.png"]}
    path = _write(tmp_path, [{**mixed, "qry": f"q{i}"} for i in range(20)] + [{**empty, "qry": "all-empty"}])

    def load(seed):
        return {e.query[0]: e for e in load_cl_data(_cfg(path, num_negatives=4, seed=seed)).tasks[0].examples}

    ex = load(0)
    texts = {"a red square", "a blue circle"}
    for i in range(20):
        negs = ex[f"q{i}"].negs
        assert [n[1] for n in negs] == [str(tmp_path / "n0.png"), None, str(tmp_path / "n2.png"), None]
        assert negs[1][0] == "a red square" and negs[3][0] == "a blue circle"
        assert negs[0][0] in texts and negs[2][0] in texts  # never the positive's own caption
    drawn = [ex[f"q{i}"].negs[k][0] for i in range(20) for k in (0, 2)]
    assert set(drawn) == texts  # a real draw, not a fixed pick
    assert [n[0] for n in ex["all-empty"].negs] == [mixed["pos_text"]] * 4  # all identical: the positive's text
    assert ex == load(0)  # seeded: every run and rank agrees
    assert drawn != [load(1)[f"q{i}"].negs[k][0] for i in range(20) for k in (0, 2)]


def test_too_few_negatives_repeat_the_last_one_as_the_reference(tmp_path):
    path = _write(tmp_path, [{"qry": "q", "pos_text": "p", "neg_text": ["n1", "n2"]}])
    (ex,) = load_cl_data(_cfg(path, num_negatives=4)).tasks[0].examples
    assert [n[0] for n in ex.negs] == ["n1", "n2", "n2", "n2"]  # reference src/dataset.py:182-183


def test_subsample_is_seeded_and_random_not_first_n():
    a = subsample(1000, 50, seed=0, name="x")
    assert len(set(a.tolist())) == 50 and a.max() > 100
    assert (a == subsample(1000, 50, seed=0, name="x")).all()
    assert not (a == subsample(1000, 50, seed=1, name="x")).all()
    assert not (a == subsample(1000, 50, seed=0, name="y")).all()  # per-dataset stream
    assert (subsample(10, None, seed=0, name="x") == list(range(10))).all()


def test_parquet_and_save_to_disk_sources(tmp_path):
    pytest.importorskip("datasets")
    import datasets

    rows = [{"qry": f"q{i}", "qry_image_path": "", "pos_text": f"p{i}", "pos_image_path": "",
             "neg_text": [f"n{i}"], "neg_image_path": [""]} for i in range(6)]  # fmt: skip
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(tmp_path / "t.parquet"))
    ds.save_to_disk(str(tmp_path / "disk"))
    for path in (tmp_path / "t.parquet", tmp_path / "disk"):
        cfg = CLDataConfig(datasets=[CLDatasetConfig(path=str(path), max_rows=4)], num_negatives=1)
        examples = load_cl_data(cfg).tasks[0].examples
        assert len(examples) == 4 and all(e.negs[0][0] == "n" + e.query[0][1:] for e in examples)


def test_unreadable_image_is_replaced_by_another_row_of_the_task(tiny_encoder, tmp_path):
    from moca_train.cl.batches import CLBatches
    from moca_train.cl.sampler import TaskBatchSampler

    (tmp_path / "bad.png").write_bytes(b"not an image")
    _img(tmp_path / "ok.png")
    rows = [{"qry": "q0", "qry_image_path": "bad.png", "pos_text": "p0", "neg_text": ["n"]}]
    rows += [{"qry": f"q{i}", "qry_image_path": "ok.png", "pos_text": f"p{i}", "neg_text": ["n"]} for i in (1, 2, 3)]
    data = load_cl_data(_cfg(_write(tmp_path, rows), num_negatives=1))
    sampler = TaskBatchSampler(data.sizes(), global_batch_size=4, seed=0)
    step = CLBatches(data, tiny_encoder.processor, sampler, chunk_size=4).build(0)
    assert step["replaced"] == 1
    assert step["query"][0]["input_ids"].shape[0] == 4 and step["neg_ids"].shape == (4, 1)


def test_worker_processes_build_the_same_steps_and_track_the_position(tiny_encoder, tmp_path):
    import itertools

    from moca_train.cl.batches import CLBatches
    from moca_train.cl.sampler import TaskBatchSampler

    rows = [{"qry": f"q{i}", "pos_text": f"p{i}", "neg_text": [f"n{i}"]} for i in range(12)]
    data = load_cl_data(_cfg(_write(tmp_path, rows), num_negatives=1))

    def first_two(workers):
        source = CLBatches(data, tiny_encoder.processor, TaskBatchSampler(data.sizes(), global_batch_size=4),
                           chunk_size=2, num_workers=workers)  # fmt: skip
        steps = list(itertools.islice(iter(source), 2))
        return steps, source.state_dict()

    (a, state_a), (b, state_b) = first_two(0), first_two(1)
    assert state_a == state_b == {"position": 2}
    for x, y in zip(a, b):
        assert x["task"] == y["task"] and (x["pos_ids"] == y["pos_ids"]).all()
        assert all((cx["input_ids"] == cy["input_ids"]).all() for cx, cy in zip(x["query"], y["query"]))
