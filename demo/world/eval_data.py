"""The evaluation side of the demo world: MMEB-eval subsets and ViDoRe BEIR page pools.

Sizes are set for statistical power (``WorldConfig``): every MMEB meta-task has at least 640 queries and
the pages have 640. Retrieval and pages come in *pools*: each pool is a fresh render of every candidate
(the 32 held-out shape combinations, 16 pages), so a query has one right answer among near-identical
distractors. Their texts are held out (docs/demo-protocol.md §3): retrieval captions are those of the
held-out combinations, page queries are the evaluation-only templates; no training text contains them.

Every subset also gets a *cluster key* per query (:func:`mmeb_subsets` yields them, ``clusters.json``
stores them): queries sharing a text or a generating combination are one cluster, the unit the
evaluation bootstrap resamples.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from demo import render
from demo.world.common import (
    ATTRIBUTES,
    CLS_DIGIT,
    CLS_OBJECT,
    COUNT_QUESTION,
    CROP_PROMPT,
    GROUNDING_PREFIX,
    I2T_PROMPT,
    QUESTIONS,
    T2I_PREFIX,
    VQA_PREFIX,
    ImageWriter,
    WorldConfig,
    all_shape_combos,
    candidate_text,
    digit_split,
    eval_combos,
    eval_page_queries,
    mmeb_query,
    object_name,
    object_names,
    pick,
    pool_name,
    scene_objects,
)

Clusters = list[str]  # one key per query row

# ---------------------------------------------------------------------------------------------- MMEB


def _row(qry_text: str, qry_img: str, tgt_text: list[str], tgt_img: list[str]) -> dict:
    return {"qry_text": qry_text, "qry_img_path": qry_img, "tgt_text": tgt_text, "tgt_img_path": tgt_img}


def _rotate_first(values: list, first) -> list:
    """``values`` with ``first`` moved to index 0 (MMEB stores the ground truth first)."""
    return [first] + [v for v in values if v != first]


def _combo_key(combo: tuple[str, ...]) -> str:
    return "|".join(combo)


def _classification(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter) -> Iterator[tuple]:
    bitmaps, labels = render.digit_bitmaps()
    eval_digits = digit_split(cfg)["eval"]
    rows, keys = [], []
    for i in range(cfg.eval_queries):
        idx = int(eval_digits[i % len(eval_digits)])
        img = save(render.render_digit(rng, bitmaps[idx]))
        tgts = _rotate_first(list(render.DIGIT_WORDS), render.DIGIT_WORDS[labels[idx]])
        rows.append(_row(mmeb_query(CLS_DIGIT), img, tgts, [""] * len(tgts)))
        keys.append(f"bitmap {idx}")
    yield "DigitsCls", rows, keys

    combos, names = all_shape_combos(), object_names()
    rows, keys = [], []
    for _ in range(cfg.eval_queries):
        combo = pick(rng, combos)
        img = save(render.render_shape(rng, *combo))
        tgts = _rotate_first(names, f"{combo[0]} {combo[1]}")
        rows.append(_row(mmeb_query(CLS_OBJECT), img, tgts, [""] * len(tgts)))
        keys.append(_combo_key(combo))
    yield "ObjectCls", rows, keys


def _vqa(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter) -> Iterator[tuple]:
    combos = all_shape_combos()
    answers = [a for values in ATTRIBUTES.values() for a in values]
    rows, keys = [], []
    for i in range(cfg.eval_queries):
        combo = pick(rng, combos)
        attr = list(QUESTIONS)[i % len(QUESTIONS)]
        img = save(render.render_shape(rng, *combo))
        tgts = _rotate_first(answers, combo[list(ATTRIBUTES).index(attr)])
        rows.append(_row(mmeb_query(VQA_PREFIX + QUESTIONS[attr]), img, tgts, [""] * len(tgts)))
        keys.append(f"{_combo_key(combo)}|{attr}")
    yield "ShapeVQA", rows, keys

    rows = []
    for i in range(cfg.eval_queries):
        count = i % 4 + 1
        img = save(render.render_scene(rng, scene_objects(rng, count)))
        tgts = _rotate_first(list(render.COUNT_WORDS), render.COUNT_WORDS[count - 1])
        rows.append(_row(mmeb_query(VQA_PREFIX + COUNT_QUESTION), img, tgts, [""] * len(tgts)))
    yield "CountVQA", rows, [f"row {i}" for i in range(len(rows))]  # every scene is drawn once


def _retrieval(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter) -> Iterator[tuple]:
    """Pools of the held-out combinations only: their captions are evaluation-only texts."""
    combos = eval_combos()
    captions = [render.shape_caption(*c) for c in combos]
    t2i, i2t = [], []
    for _ in range(cfg.retrieval_pools):
        pool = {combo: save(render.render_shape(rng, *combo)) for combo in combos}  # one image per caption
        for combo in combos:
            tgt_img = _rotate_first(list(pool.values()), pool[combo])
            t2i.append(_row(T2I_PREFIX + render.shape_caption(*combo) + "\n", "", [candidate_text()] * len(tgt_img),
                            tgt_img))  # fmt: skip
        pool = {combo: save(render.render_shape(rng, *combo)) for combo in combos}
        for combo in combos:
            tgts = _rotate_first(captions, render.shape_caption(*combo))
            i2t.append(_row(mmeb_query(I2T_PROMPT), pool[combo], tgts, [""] * len(tgts)))
    keys = [render.shape_caption(*c) for _ in range(cfg.retrieval_pools) for c in combos]  # the caption
    yield "Shapes_t2i", t2i, keys
    yield "Shapes_i2t", i2t, keys


def _grounding(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter) -> Iterator[tuple]:
    scenes = []
    for _ in range(cfg.grounding_queries):
        cells = scene_objects(rng, 4)
        img = render.render_scene(rng, cells)
        scenes.append((cells, save(img), [save(render.scene_cell(img, c)) for c in range(4)]))
    extra = cfg.grounding_candidates - 4
    rows = []
    for i, (cells, scene_path, crops) in enumerate(scenes):
        target = int(rng.integers(4))
        picks = [int(j) for j in rng.choice(len(scenes) - 1, size=min(extra, len(scenes) - 1), replace=False)]
        others = [scenes[j + (j >= i)][2][int(rng.integers(4))] for j in picks]  # one cell each of other scenes
        tgt_img = [crops[target]] + [c for k, c in enumerate(crops) if k != target] + others
        qry = mmeb_query(GROUNDING_PREFIX + object_name(cells[target]))
        rows.append(_row(qry, scene_path, [candidate_text(CROP_PROMPT)] * len(tgt_img), tgt_img))
    yield "ShapeGrounding", rows, [f"row {i}" for i in range(len(rows))]


def mmeb_subsets(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter) -> Iterator[tuple[str, list, Clusters]]:
    """``(subset, rows, cluster keys)`` in the TIGER-Lab/MMEB-eval layout, ground truth at candidate 0."""
    yield from _classification(cfg, rng, save)
    yield from _vqa(cfg, rng, save)
    yield from _retrieval(cfg, rng, save)
    yield from _grounding(cfg, rng, save)


def write_parquet(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as a parquet table, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)


# -------------------------------------------------------------------------------------------- ViDoRe

_BEIR_README = """---
configs:
- config_name: corpus
  data_files:
  - split: test
    path: corpus/test-*
- config_name: queries
  data_files:
  - split: test
    path: queries/test-*
- config_name: qrels
  data_files:
  - split: test
    path: qrels/test-*
---
# {name}

Rendered documentation pages of Python standard-library modules (ViDoRe BEIR layout), generated by
`demo/world`: one pool of fresh renders. Each query is answered by exactly one page.
"""


def _write_pool(rng: np.random.Generator, out: Path) -> list[str]:
    """One BEIR-layout pool: a fresh page per module and its evaluation queries; returns the query texts."""
    import datasets

    out.mkdir(parents=True, exist_ok=True)
    modules = list(render.PAGE_MODULES)
    pages = [render.render_page(rng, m) for m in modules]
    corpus = datasets.Dataset.from_dict(
        {"corpus-id": list(range(len(pages))), "image": pages},
        features=datasets.Features({"corpus-id": datasets.Value("int64"), "image": datasets.Image()}),
    )
    queries, qrels = {"query-id": [], "query": []}, {"query-id": [], "corpus-id": [], "score": []}
    for doc_id, module in enumerate(modules):
        for text in eval_page_queries(module):
            qid = len(queries["query-id"])
            queries["query-id"].append(qid)
            queries["query"].append(text)
            qrels["query-id"].append(qid)
            qrels["corpus-id"].append(doc_id)
            qrels["score"].append(1)
    for name, ds in (("corpus", corpus), ("queries", datasets.Dataset.from_dict(queries)),
                     ("qrels", datasets.Dataset.from_dict(qrels))):  # fmt: skip
        (out / name).mkdir(exist_ok=True)
        ds.to_parquet(str(out / name / "test-00000-of-00001.parquet"))
    (out / "README.md").write_text(_BEIR_README.format(name=out.name))
    return queries["query"]


def write_vidore(cfg: WorldConfig, rng: np.random.Generator, out: Path) -> tuple[dict, Clusters]:
    """Write ``cfg.page_pools`` BEIR pools under ``out`` (a local vidore-benchmark collection).

    Returns:
        The sizes, and the cluster key (the query text) of every query, pools in name order, queries in
        file order (the order :func:`demo.collect.page_ndcg` concatenates them).
    """
    import datasets

    datasets.disable_progress_bars()
    queries = [_write_pool(rng, out / pool_name(k)) for k in range(cfg.page_pools)]
    sizes = {"pools": cfg.page_pools, "pages": len(render.PAGE_MODULES), "queries": sum(map(len, queries))}
    return sizes, [q for pool in queries for q in pool]
