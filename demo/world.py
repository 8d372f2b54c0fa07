"""The demo world: one generator that writes every training and evaluation format the toolkit reads.

``build_world(cfg, out_dir)`` renders coloured shapes, multi-object scenes, handwritten digits and
documentation pages (see :mod:`demo.render`) and writes, under ``out_dir``:

- ``cpt/train.jsonl``: interleaved CPT records ``{"text": "... <|vision_start|><|image_pad|><|vision_end|>
  ...", "images": [path, ...]}`` (paths relative to ``out_dir``). Many more records than CL pairs, with
  images that never appear in a CL pair (the paper's regime: CPT sees far more unlabelled data).
- ``cl/<task>.jsonl``: contrastive pairs, one file per task, rows ``qry``, ``qry_image_path``,
  ``pos_text``, ``pos_image_path``, ``neg_text`` (list), ``neg_image_path`` (list) with hard negatives.
- ``mmeb/<Subset>/test-00000-of-00001.parquet``: the TIGER-Lab/MMEB-eval layout (``qry_text``,
  ``qry_img_path``, ``tgt_text`` list, ``tgt_img_path`` list, ground truth at index 0) with image paths
  relative to ``mmeb/images``; four meta-tasks (classification, VQA, retrieval, grounding).
- ``vidore/demo_pages``: a ViDoRe BEIR-layout dataset (corpus/queries/qrels parquet + README configs)
  of rendered standard-library documentation pages and queries that only the page content answers.
- ``world.json``: the manifest (sizes, subsets and their meta-tasks, CL tasks, paths).

Splits never share an image: digit bitmaps are partitioned (eval / CL / CPT), and every shape, scene
and page image is a fresh render with its own jitter.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from demo import render
from moca_bench.prompts import VIDORE_DOCUMENT_PROMPT

logger = logging.getLogger(__name__)

PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"  # Qwen2.5-VL: CPT records
MMEB_IMAGE = "<|image_1|>"  # MMEB-train/-eval store the Phi-3 placeholder; loaders rewrite it

IMAGE_PROMPT = "Represent the given image."
CROP_PROMPT = "Represent the given cropped image of the object"
CLS_DIGIT = "Represent the given image for classification"
CLS_OBJECT = "Identify the object shown in the image"
VQA_PREFIX = "Represent the given image with the following question: "
T2I_PREFIX = "Find me an everyday image that matches the given caption: "
I2T_PROMPT = "Find an image caption describing the given everyday image."
GROUNDING_PREFIX = "Select the portion of the image that isolates the object labeled as "
COUNT_QUESTION = "How many shapes are in the image?"
QUESTIONS = {
    "colour": "What colour is the shape?",
    "shape": "What kind of shape is it?",
    "position": "Where is the shape?",
    "size": "How big is the shape?",
}
ATTRIBUTES = {"colour": tuple(render.COLOURS), "shape": render.SHAPES, "position": render.POSITIONS,
              "size": render.SIZES}  # fmt: skip

MMEB_SUBSETS = {  # subset -> meta-task (MMEB's four)
    "DigitsCls": "Classification",
    "ObjectCls": "Classification",
    "ShapeVQA": "VQA",
    "CountVQA": "VQA",
    "Shapes_t2i": "Retrieval",
    "Shapes_i2t": "Retrieval",
    "ShapeGrounding": "Grounding",
}
VIDORE_NAME = "demo_pages"
CL_PAIRS = {  # task -> pairs; harder tasks (position, reading titles) get more batches
    "digits_cls": 256, "object_cls": 192, "shape_vqa": 256, "count_vqa": 192,
    "shapes_t2i": 320, "shapes_i2t": 320, "grounding": 256, "pages": 256,
}  # fmt: skip


@dataclass
class WorldConfig:
    """Sizes of the demo world (defaults: the 15-minute ``make demo``)."""

    seed: int = 0
    """Every image and row is a function of this seed."""
    cl_pairs: dict[str, int] = field(default_factory=lambda: dict(CL_PAIRS))
    """Contrastive pairs per CL task (small: the labelled set). Same-task batches are drawn in proportion to
    these sizes, so harder tasks get more rows; a task with 0 rows is not written."""
    cl_negatives: int = 2
    """Hard negatives written per CL row."""
    cpt_shape_records: int = 2400
    """Interleaved CPT records about single shapes (1-3 fresh renders each, with descriptive text)."""
    cpt_scene_records: int = 600
    """CPT records about multi-object scenes."""
    cpt_digit_records: int = 700
    """CPT records about handwritten digits (bitmaps disjoint from CL and eval)."""
    cpt_page_records: int = 400
    """CPT records showing a documentation page with its text, plus as many text-only docstring records."""
    eval_queries: int = 96
    """Queries per MMEB subset (classification and VQA; retrieval uses one pool of all 96 shape captions)."""
    eval_digits: int = 300
    """Handwritten digits held out for evaluation (never in CL or CPT)."""
    cl_digits: int = 256
    """Digit bitmaps available to CL (the rest of scikit-learn's 1797 go to CPT)."""
    grounding_candidates: int = 16
    """Candidate crops per grounding query (the scene's other cells plus cells from other scenes)."""
    page_queries_per_module: int = 2
    """ViDoRe queries per documented module (the summary sentence and a title query)."""

    def __post_init__(self) -> None:
        if self.eval_digits + self.cl_digits >= 1797:
            raise ValueError("eval_digits + cl_digits must leave digits for CPT (scikit-learn has 1797)")
        unknown = set(self.cl_pairs) - set(CL_TASKS)
        if unknown:
            raise ValueError(f"unknown CL tasks {sorted(unknown)}; known: {sorted(CL_TASKS)}")
        if not 1 <= self.page_queries_per_module <= 2:
            raise ValueError("page_queries_per_module must be 1 or 2")


def all_shape_combos() -> list[tuple[str, str, str, str]]:
    """The 96 (colour, shape, position, size) combinations in a fixed order."""
    return list(itertools.product(render.COLOURS, render.SHAPES, render.POSITIONS, render.SIZES))


def object_names() -> list[str]:
    """The 12 "colour shape" object names (the classification labels of ObjectCls)."""
    return [f"{c} {s}" for c in render.COLOURS for s in render.SHAPES]


def page_queries(module: str) -> list[str]:
    """Queries that only a page of ``module`` answers: its docstring summary, then a title query."""
    return [render.module_doc(module)[0], f"documentation of the {module} module"]


class _ImageWriter:
    """Save PNGs under ``root`` with sequential names; returns paths relative to ``root``."""

    def __init__(self, root: Path, prefix: str):
        self.root, self.prefix, self.count = root, prefix, 0
        (root / prefix).mkdir(parents=True, exist_ok=True)

    def __call__(self, img: Image.Image) -> str:
        rel = f"{self.prefix}/{self.count:05d}.png"
        self.count += 1
        img.save(self.root / rel, optimize=False)
        return rel


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _pick(rng: np.random.Generator, values):
    """One element of ``values``, uniformly."""
    return values[int(rng.integers(len(values)))]


def _other(rng: np.random.Generator, values: tuple | list, exclude, k: int) -> list:
    """``k`` values different from ``exclude``, without repeats when enough exist."""
    pool = [v for v in values if v != exclude]
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=k > len(pool))]


def _one_off(rng: np.random.Generator, combo: tuple[str, str, str, str]) -> tuple[str, str, str, str]:
    """A combination that differs from ``combo`` in exactly one attribute (a hard negative)."""
    k = int(rng.integers(4))
    values = list(ATTRIBUTES.values())[k]
    new = list(combo)
    new[k] = _other(rng, values, combo[k], 1)[0]
    return tuple(new)


def _digit_split(cfg: WorldConfig) -> dict[str, np.ndarray]:
    _, labels = render.digit_bitmaps()
    order = np.random.default_rng(cfg.seed + 17).permutation(len(labels))
    return {
        "eval": order[: cfg.eval_digits],
        "cl": order[cfg.eval_digits : cfg.eval_digits + cfg.cl_digits],
        "cpt": order[cfg.eval_digits + cfg.cl_digits :],
    }


def _mmeb_query(instruction: str) -> str:
    return f"{MMEB_IMAGE}\n{instruction}\n"


def _target(prompt: str = IMAGE_PROMPT) -> str:
    return f"{MMEB_IMAGE}\n{prompt}\n"


def _scene_objects(rng: np.random.Generator, n_objects: int) -> list[tuple[str, str] | None]:
    """Four cells, ``n_objects`` of them holding distinct (colour, shape) objects."""
    kinds = list(itertools.product(render.COLOURS, render.SHAPES))
    chosen = [kinds[i] for i in rng.choice(len(kinds), size=n_objects, replace=False)]
    cells: list[tuple[str, str] | None] = [None] * 4
    for cell, obj in zip(rng.choice(4, size=n_objects, replace=False), chosen, strict=True):
        cells[int(cell)] = obj
    return cells


def _object_name(obj: tuple[str, str]) -> str:
    return f"{obj[0]} {obj[1]}"


# ------------------------------------------------------------------------------------------------ CL


def _cl_row(qry: str, qry_img: str, pos: str, pos_img: str, negs: list[tuple[str, str]]) -> dict:
    return {
        "qry": qry,
        "qry_image_path": qry_img,
        "pos_text": pos,
        "pos_image_path": pos_img,
        "neg_text": [t for t, _ in negs],
        "neg_image_path": [p for _, p in negs],
    }


def _cl_digits_cls(cfg: WorldConfig, rng: np.random.Generator, save: _ImageWriter, n: int) -> list[dict]:
    bitmaps, labels = render.digit_bitmaps()
    pool = _digit_split(cfg)["cl"]
    rows = []
    for i in range(n):
        idx = int(pool[i % len(pool)])
        label = render.DIGIT_WORDS[labels[idx]]
        negs = [(w, "") for w in _other(rng, render.DIGIT_WORDS, label, cfg.cl_negatives)]
        rows.append(_cl_row(_mmeb_query(CLS_DIGIT), save(render.render_digit(rng, bitmaps[idx])), label, "", negs))
    return rows


def _cl_object_cls(cfg: WorldConfig, rng: np.random.Generator, save: _ImageWriter, n: int) -> list[dict]:
    combos, names = all_shape_combos(), object_names()
    rows = []
    for _ in range(n):
        combo = _pick(rng, combos)
        name = f"{combo[0]} {combo[1]}"
        negs = [(w, "") for w in _other(rng, names, name, cfg.cl_negatives)]
        rows.append(_cl_row(_mmeb_query(CLS_OBJECT), save(render.render_shape(rng, *combo)), name, "", negs))
    return rows


def _cl_shape_vqa(cfg: WorldConfig, rng: np.random.Generator, save: _ImageWriter, n: int) -> list[dict]:
    combos = all_shape_combos()
    rows = []
    for _ in range(n):
        combo = _pick(rng, combos)
        attr = _pick(rng, list(QUESTIONS))
        answer = combo[list(ATTRIBUTES).index(attr)]
        negs = [(w, "") for w in _other(rng, ATTRIBUTES[attr], answer, cfg.cl_negatives)]
        qry = _mmeb_query(VQA_PREFIX + QUESTIONS[attr])
        rows.append(_cl_row(qry, save(render.render_shape(rng, *combo)), answer, "", negs))
    return rows


def _cl_count_vqa(cfg: WorldConfig, rng: np.random.Generator, save: _ImageWriter, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        count = int(rng.integers(1, 5))
        img = render.render_scene(rng, _scene_objects(rng, count))
        answer = render.COUNT_WORDS[count - 1]
        negs = [(w, "") for w in _other(rng, render.COUNT_WORDS, answer, cfg.cl_negatives)]
        rows.append(_cl_row(_mmeb_query(VQA_PREFIX + COUNT_QUESTION), save(img), answer, "", negs))
    return rows


def _cl_shapes_t2i(cfg: WorldConfig, rng: np.random.Generator, save: _ImageWriter, n: int) -> list[dict]:
    combos = all_shape_combos()
    rows = []
    for _ in range(n):
        combo = _pick(rng, combos)
        negs = [(_target(), save(render.render_shape(rng, *_one_off(rng, combo)))) for _ in range(cfg.cl_negatives)]
        qry = T2I_PREFIX + render.shape_caption(*combo) + "\n"
        rows.append(_cl_row(qry, "", _target(), save(render.render_shape(rng, *combo)), negs))
    return rows


def _cl_shapes_i2t(cfg: WorldConfig, rng: np.random.Generator, save: _ImageWriter, n: int) -> list[dict]:
    combos = all_shape_combos()
    rows = []
    for _ in range(n):
        combo = _pick(rng, combos)
        negs = [(render.shape_caption(*_one_off(rng, combo)), "") for _ in range(cfg.cl_negatives)]
        img = save(render.render_shape(rng, *combo))
        rows.append(_cl_row(_mmeb_query(I2T_PROMPT), img, render.shape_caption(*combo), "", negs))
    return rows


def _cl_grounding(cfg: WorldConfig, rng: np.random.Generator, save: _ImageWriter, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        cells = _scene_objects(rng, 4)
        scene = render.render_scene(rng, cells)
        target = int(rng.integers(4))
        others = _other(rng, [c for c in range(4) if c != target], target, cfg.cl_negatives)
        negs = [(_target(CROP_PROMPT), save(render.scene_cell(scene, c))) for c in others]
        qry = _mmeb_query(GROUNDING_PREFIX + _object_name(cells[target]))
        rows.append(_cl_row(qry, save(scene), _target(CROP_PROMPT), save(render.scene_cell(scene, target)), negs))
    return rows


def _cl_pages(cfg: WorldConfig, rng: np.random.Generator, save: _ImageWriter, n: int) -> list[dict]:
    doc = f"{MMEB_IMAGE}{VIDORE_DOCUMENT_PROMPT}"
    rows = []
    for _ in range(n):
        module = _pick(rng, render.PAGE_MODULES)
        query = page_queries(module)[int(rng.integers(cfg.page_queries_per_module))]
        wrong = _other(rng, render.PAGE_MODULES, module, cfg.cl_negatives)
        negs = [(doc, save(render.render_page(rng, m))) for m in wrong]
        rows.append(_cl_row(query, "", doc, save(render.render_page(rng, module)), negs))
    return rows


CL_TASKS = {
    "digits_cls": _cl_digits_cls,
    "object_cls": _cl_object_cls,
    "shape_vqa": _cl_shape_vqa,
    "count_vqa": _cl_count_vqa,
    "shapes_t2i": _cl_shapes_t2i,
    "shapes_i2t": _cl_shapes_i2t,
    "grounding": _cl_grounding,
    "pages": _cl_pages,
}


# ----------------------------------------------------------------------------------------------- CPT


def _cpt_records(cfg: WorldConfig, rng: np.random.Generator, save: _ImageWriter) -> list[dict]:
    """Interleaved records: images inside running text that describes them (never a CL pair)."""
    records: list[dict] = []
    combos = all_shape_combos()
    openers = ("Here is a picture.", "Look at this image.", "A figure from the notebook.", "Another drawing.")
    for _ in range(cfg.cpt_shape_records):
        n_img = int(rng.integers(1, 4))
        parts, images = [_pick(rng, openers)], []
        for j in range(n_img):
            combo = _pick(rng, combos)
            images.append(save(render.render_shape(rng, *combo)))
            lead = ("First" if j == 0 else "Next") if n_img > 1 else "It"
            parts.append(f"{PLACEHOLDER} {lead} shows {render.shape_caption(*combo)}.")
            if rng.random() < 0.5:
                parts.append(f"The {combo[1]} is {combo[0]} and sits at the {combo[2]}.")
        records.append({"text": " ".join(parts), "images": images})
    for _ in range(cfg.cpt_scene_records):
        count = int(rng.integers(1, 5))
        cells = _scene_objects(rng, count)
        listing = ", ".join(f"a {_object_name(o)} at the {render.POSITIONS[c]}" for c, o in enumerate(cells) if o)
        noun = "shape" if count == 1 else "shapes"
        text = f"{PLACEHOLDER} This scene has {render.COUNT_WORDS[count - 1]} {noun}: {listing}."
        records.append({"text": text, "images": [save(render.render_scene(rng, cells))]})
    bitmaps, labels = render.digit_bitmaps()
    pool = _digit_split(cfg)["cpt"]
    for _ in range(cfg.cpt_digit_records):
        picks = [int(_pick(rng, pool)) for _ in range(int(rng.integers(1, 4)))]
        words = [render.DIGIT_WORDS[labels[i]] for i in picks]
        if len(picks) == 1:
            text = f"{PLACEHOLDER} A handwritten {words[0]}."
        else:
            text = "The handwritten digits " + " ".join([PLACEHOLDER] * len(picks)) + f" read {', '.join(words)}."
        records.append({"text": text, "images": [save(render.render_digit(rng, bitmaps[i])) for i in picks]})
    for _ in range(cfg.cpt_page_records):
        module = _pick(rng, render.PAGE_MODULES)
        summary, paragraphs = render.module_doc(module)
        page = save(render.render_page(rng, module))
        records.append({"text": f"{PLACEHOLDER} The {module} module. {summary}", "images": [page]})
        body = " ".join(paragraphs)[:400]
        records.append({"text": f"Documentation of the {module} module. {summary} {body}", "images": []})
    order = rng.permutation(len(records))
    return [records[i] for i in order]


# ---------------------------------------------------------------------------------------------- MMEB


def _mmeb_row(qry_text: str, qry_img: str, tgt_text: list[str], tgt_img: list[str]) -> dict:
    return {"qry_text": qry_text, "qry_img_path": qry_img, "tgt_text": tgt_text, "tgt_img_path": tgt_img}


def _rotate_first(values: list, first) -> list:
    """``values`` with ``first`` moved to index 0 (MMEB stores the ground truth first)."""
    return [first] + [v for v in values if v != first]


def _mmeb_subsets(cfg: WorldConfig, rng: np.random.Generator, save: _ImageWriter) -> Iterator[tuple[str, list[dict]]]:
    n = cfg.eval_queries
    combos = all_shape_combos()
    bitmaps, labels = render.digit_bitmaps()
    eval_digits = _digit_split(cfg)["eval"]

    rows = []
    for i in range(n):
        idx = int(eval_digits[i % len(eval_digits)])
        answer = render.DIGIT_WORDS[labels[idx]]
        img = save(render.render_digit(rng, bitmaps[idx]))
        tgts = _rotate_first(list(render.DIGIT_WORDS), answer)
        rows.append(_mmeb_row(_mmeb_query(CLS_DIGIT), img, tgts, [""] * len(tgts)))
    yield "DigitsCls", rows

    names = object_names()
    rows = []
    for _ in range(n):
        combo = _pick(rng, combos)
        img = save(render.render_shape(rng, *combo))
        tgts = _rotate_first(names, f"{combo[0]} {combo[1]}")
        rows.append(_mmeb_row(_mmeb_query(CLS_OBJECT), img, tgts, [""] * len(tgts)))
    yield "ObjectCls", rows

    answers = [a for values in ATTRIBUTES.values() for a in values]
    rows = []
    for i in range(n):
        combo = _pick(rng, combos)
        attr = list(QUESTIONS)[i % len(QUESTIONS)]
        img = save(render.render_shape(rng, *combo))
        tgts = _rotate_first(answers, combo[list(ATTRIBUTES).index(attr)])
        rows.append(_mmeb_row(_mmeb_query(VQA_PREFIX + QUESTIONS[attr]), img, tgts, [""] * len(tgts)))
    yield "ShapeVQA", rows

    rows = []
    for i in range(n):
        count = i % 4 + 1
        img = save(render.render_scene(rng, _scene_objects(rng, count)))
        tgts = _rotate_first(list(render.COUNT_WORDS), render.COUNT_WORDS[count - 1])
        rows.append(_mmeb_row(_mmeb_query(VQA_PREFIX + COUNT_QUESTION), img, tgts, [""] * len(tgts)))
    yield "CountVQA", rows

    pool = {combo: save(render.render_shape(rng, *combo)) for combo in combos}  # one image per caption
    rows = []
    for combo in combos[:n]:
        tgt_img = _rotate_first(list(pool.values()), pool[combo])
        qry = T2I_PREFIX + render.shape_caption(*combo) + "\n"
        rows.append(_mmeb_row(qry, "", [_target()] * len(tgt_img), tgt_img))
    yield "Shapes_t2i", rows

    captions = [render.shape_caption(*c) for c in combos]
    pool = {combo: save(render.render_shape(rng, *combo)) for combo in combos}
    rows = []
    for combo in combos[:n]:
        tgts = _rotate_first(captions, render.shape_caption(*combo))
        rows.append(_mmeb_row(_mmeb_query(I2T_PROMPT), pool[combo], tgts, [""] * len(tgts)))
    yield "Shapes_i2t", rows

    scenes = []
    for _ in range(n):
        cells = _scene_objects(rng, 4)
        img = render.render_scene(rng, cells)
        scenes.append((cells, save(img), [save(render.scene_cell(img, c)) for c in range(4)]))
    rows = []
    for i, (cells, scene_path, crops) in enumerate(scenes):
        target = int(rng.integers(4))
        others = [c for j in rng.permutation(len(scenes)) if j != i for c in scenes[int(j)][2]]
        extra = cfg.grounding_candidates - 4
        tgt_img = [crops[target]] + [c for k, c in enumerate(crops) if k != target] + others[:extra]
        qry = _mmeb_query(GROUNDING_PREFIX + _object_name(cells[target]))
        rows.append(_mmeb_row(qry, scene_path, [_target(CROP_PROMPT)] * len(tgt_img), tgt_img))
    yield "ShapeGrounding", rows


def _write_parquet(path: Path, rows: list[dict]) -> None:
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
# demo_pages

Rendered documentation pages of Python standard-library modules (ViDoRe BEIR layout), generated by
`demo/world.py`. Each query is answered by exactly one page.
"""


def _write_vidore(cfg: WorldConfig, rng: np.random.Generator, out: Path) -> dict:
    """Write the BEIR-layout page-retrieval set; returns its sizes."""
    import datasets

    datasets.disable_progress_bars()
    out.mkdir(parents=True, exist_ok=True)
    modules = list(render.PAGE_MODULES)
    pages = [render.render_page(rng, m) for m in modules]
    corpus = datasets.Dataset.from_dict(
        {"corpus-id": list(range(len(pages))), "image": pages},
        features=datasets.Features({"corpus-id": datasets.Value("int64"), "image": datasets.Image()}),
    )
    queries, qrels = {"query-id": [], "query": []}, {"query-id": [], "corpus-id": [], "score": []}
    for doc_id, module in enumerate(modules):
        for text in page_queries(module)[: cfg.page_queries_per_module]:
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
    (out / "README.md").write_text(_BEIR_README)
    return {"pages": len(pages), "queries": len(queries["query"])}


# ---------------------------------------------------------------------------------------------- main


def build_world(cfg: WorldConfig, out_dir: str | Path, *, show_progress: bool = True) -> dict:
    """Render the world and write all formats under ``out_dir``; returns the manifest (also ``world.json``).

    Skips the work when ``out_dir/world.json`` exists with the same config (the world is a pure function
    of the config).
    """
    out = Path(out_dir)
    manifest_path = out / "world.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("config") == asdict(cfg):
            logger.info("world already built in %s", out)
            return manifest
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict = {"config": asdict(cfg), "cl_tasks": {}, "mmeb_subsets": {}, "cpt": {}}
    steps = tqdm(total=4, desc="building world", disable=not show_progress)

    rng = np.random.default_rng([cfg.seed, 1])
    save = _ImageWriter(out / "cl", "images")
    for task, n in cfg.cl_pairs.items():
        if n <= 0:
            continue
        rows = CL_TASKS[task](cfg, rng, save, n)
        _write_jsonl(out / "cl" / f"{task}.jsonl", rows)
        manifest["cl_tasks"][task] = {"path": f"cl/{task}.jsonl", "rows": len(rows)}
    manifest["cl_images"] = save.count
    steps.update()

    rng = np.random.default_rng([cfg.seed, 2])
    save = _ImageWriter(out / "cpt", "images")
    records = _cpt_records(cfg, rng, save)
    _write_jsonl(out / "cpt" / "train.jsonl", records)
    manifest["cpt"] = {"path": "cpt/train.jsonl", "records": len(records), "images": save.count}
    steps.update()

    rng = np.random.default_rng([cfg.seed, 3])
    save = _ImageWriter(out / "mmeb" / "images", "eval")
    for subset, rows in _mmeb_subsets(cfg, rng, save):
        _write_parquet(out / "mmeb" / subset / "test-00000-of-00001.parquet", rows)
        manifest["mmeb_subsets"][subset] = {"meta_task": MMEB_SUBSETS[subset], "rows": len(rows)}
    manifest["mmeb_images"] = "mmeb/images"
    steps.update()

    rng = np.random.default_rng([cfg.seed, 4])
    manifest["vidore"] = {"path": f"vidore/{VIDORE_NAME}", **_write_vidore(cfg, rng, out / "vidore" / VIDORE_NAME)}
    steps.update()
    steps.close()

    tmp = manifest_path.with_name("world.json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)
    return manifest
