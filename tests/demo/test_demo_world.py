"""Held-out evaluation texts (docs/demo-protocol.md §3): no training text contains an evaluation page query or
retrieval caption; clusters and the CL validation split are laid out as the study reads them."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")  # the page font
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo import render  # noqa: E402
from demo import world as demo_world  # noqa: E402

WORLD = demo_world.WorldConfig(
    cl_pairs={task: 40 for task in demo_world.CL_TASKS}, corpus_shape_records=120, corpus_scene_records=10,
    corpus_digit_records=6, corpus_page_records=32, eval_queries=8, retrieval_pools=2, grounding_queries=10,
    page_pools=2, eval_digits=20, cl_digits=20, grounding_candidates=8, cl_val_pairs=12,
)  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return out, demo_world.build_world(WORLD, out, show_progress=False)


def _training_texts(out: Path, manifest: dict) -> list[str]:
    """Every text a training stage reads: CL pairs (queries, positives, negatives), the CL validation split,
    and both unlabelled corpora."""
    import pyarrow.parquet as pq

    texts = []
    for spec in manifest["cl_tasks"].values():
        for line in (out / spec["path"]).read_text().splitlines():
            row = json.loads(line)
            texts += [row["qry"], row["pos_text"], *row["neg_text"]]
    for subset in manifest["val_subsets"]:
        for row in pq.read_table(out / "val" / subset).to_pylist():
            texts += [row["qry_text"], *row["tgt_text"]]
    for corpus in ("base", "cpt"):
        texts += [json.loads(line)["text"] for line in (out / manifest[corpus]["path"]).read_text().splitlines()]
    return texts


def _evaluation_strings(out: Path) -> set[str]:
    """The page queries and the retrieval captions of the evaluation sets, read from the written files."""
    import pyarrow.parquet as pq

    strings = set()
    for pool in (out / "vidore").iterdir():
        strings |= set(pq.read_table(pool / "queries").column("query").to_pylist())
    t2i = pq.read_table(out / "mmeb" / "Shapes_t2i").column("qry_text").to_pylist()
    strings |= {q.removeprefix(demo_world.T2I_PREFIX).strip() for q in t2i}
    for targets in pq.read_table(out / "mmeb" / "Shapes_i2t").column("tgt_text").to_pylist():
        strings |= set(targets)
    return strings


def test_evaluation_strings_occur_in_no_training_text(built):
    out, manifest = built
    evaluation = _evaluation_strings(out)
    assert len(evaluation) == 16 * len(demo_world.eval_page_queries("json")) + 32  # 64 page queries, 32 captions
    training = _training_texts(out, manifest)
    assert len(training) > 500
    haystack = "\n".join(training)
    found = sorted(s for s in evaluation if s in haystack)
    assert not found, f"evaluation strings inside training texts: {found[:5]}"
    folded = haystack.lower()
    assert not [s for s in evaluation if s.lower() in folded]  # not even up to case
    # the check can fail: the training captions and page queries do occur there
    train_caption = render.shape_caption(*demo_world.train_combos()[0])
    assert train_caption in haystack and demo_world.page_queries("json")[1] in haystack


def test_held_out_combinations_cover_every_attribute_value():
    held = demo_world.eval_combos()
    assert len(held) == 32 and len(demo_world.train_combos()) == 64
    for k, values in enumerate((render.COLOURS, render.SHAPES, render.POSITIONS, render.SIZES)):
        counts = Counter(c[k] for c in held)
        assert set(counts) == set(values)  # every attribute value is evaluated
        assert max(counts.values()) - min(counts.values()) <= 1  # and about equally often
    assert not set(held) & set(demo_world.train_combos())


def test_hard_negatives_never_name_a_held_out_combination():
    import numpy as np

    from demo.world.common import one_off

    rng = np.random.default_rng(0)
    for combo in demo_world.train_combos():
        for _ in range(20):
            neg = one_off(rng, combo)
            assert not demo_world.is_held_out(neg) and sum(a != b for a, b in zip(neg, combo)) == 1


def test_clusters_match_the_evaluation_rows(built):
    out, manifest = built
    clusters = json.loads((out / "clusters.json").read_text())
    for subset, spec in manifest["mmeb_subsets"].items():
        assert len(clusters[subset]) == spec["rows"]
    assert len(clusters["pages"]) == manifest["vidore"]["queries"] == WORLD.page_pools * 64
    assert len(set(clusters["pages"])) == 64  # a page query string is one cluster across pools
    assert len(set(clusters["Shapes_t2i"])) == len(set(clusters["Shapes_i2t"])) == 32
    assert len(set(clusters["CountVQA"])) == manifest["mmeb_subsets"]["CountVQA"]["rows"]


def test_validation_split_reads_in_the_mmeb_runner(built):
    from moca_bench.mmeb.data import build_subset, read_local_rows

    out, manifest = built
    assert set(manifest["val_subsets"]) == set(demo_world.VAL_SUBSETS)
    for subset, spec in manifest["val_subsets"].items():
        rows = read_local_rows(out / "val", subset)
        assert len(rows) == spec["rows"] == WORLD.cl_val_pairs
        data = build_subset(subset, rows, image_root=out / "val")
        assert (data.candidates[:, 0] >= 0).all()
        for r in rows:
            pairs = list(zip(r["tgt_text"], r["tgt_img_path"], strict=True))
            assert len(pairs) == len(set(pairs)) <= WORLD.val_candidates  # the positive is never a distractor
            assert all((out / "val" / p).is_file() for p in r["tgt_img_path"] + [r["qry_img_path"]] if p)
