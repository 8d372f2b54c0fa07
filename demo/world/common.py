"""What every part of the demo world shares: its sizes, its vocabulary and the small helpers that draw it."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from demo import render

PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"  # Qwen2.5-VL: unlabelled records
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
VIDORE_NAME = "demo_pages"  # pool k is the BEIR folder vidore/demo_pages_<kk>
CL_PAIRS = {  # task -> pairs; harder tasks (position, reading titles) get more batches
    "digits_cls": 256, "object_cls": 192, "shape_vqa": 256, "count_vqa": 192,
    "shapes_t2i": 320, "shapes_i2t": 320, "grounding": 256, "pages": 256,
}  # fmt: skip
CL_TASK_NAMES = tuple(CL_PAIRS)
DIGITS_TOTAL = 1797  # scikit-learn's handwritten digits
# Evaluation-only page queries (docs/demo-protocol.md §3): no training text (CL pairs, corpora) contains them.
EVAL_PAGE_TEMPLATES = (
    "Which page documents the {module} module?",
    "the {module} module's reference page",
    "Python {module} module manual",
    "look up {module} in the standard library docs",
)


@dataclass
class WorldConfig:
    """Sizes of the demo world (defaults: ``make demo`` and the study)."""

    seed: int = 0
    """Every image and row is a function of this seed."""
    cl_pairs: dict[str, int] = field(default_factory=lambda: dict(CL_PAIRS))
    """Contrastive pairs per CL task (small: the labelled set). Same-task batches are drawn in proportion to
    these sizes, so harder tasks get more rows; a task with 0 rows is not written."""
    cl_negatives: int = 2
    """Hard negatives written per CL row."""
    corpus_shape_records: int = 2400
    """Per unlabelled corpus (the base model's and CPT's are two independent draws): records about single
    shapes (1-3 fresh renders each, with descriptive text)."""
    corpus_scene_records: int = 600
    """Per unlabelled corpus: records about multi-object scenes."""
    corpus_digit_records: int = 700
    """Per unlabelled corpus: records about handwritten digits (bitmaps disjoint from CL and evaluation)."""
    corpus_page_records: int = 400
    """Per unlabelled corpus: records showing a documentation page with its text, plus as many text-only
    docstring records."""
    eval_queries: int = 320
    """Queries of each MMEB classification and VQA subset."""
    retrieval_pools: int = 12
    """MMEB Shapes_t2i / Shapes_i2t: pools of fresh renders of the 32 held-out combinations (one per caption),
    32 queries each."""
    grounding_queries: int = 640
    """Queries of MMEB ShapeGrounding (one scene each)."""
    page_pools: int = 10
    """ViDoRe page retrieval: BEIR datasets of one fresh page per module, queried with every held-out
    evaluation template (:data:`EVAL_PAGE_TEMPLATES`) of every module."""
    eval_digits: int = 320
    """Handwritten digits held out for evaluation (never in CL or an unlabelled corpus)."""
    cl_digits: int = 256
    """Digit bitmaps available to CL (the rest of scikit-learn's 1797 go to the unlabelled corpora)."""
    grounding_candidates: int = 16
    """Candidate crops per grounding query (the scene's other cells plus cells from other scenes)."""
    page_queries_per_module: int = 2
    """Training page queries per module (CL pairs): the summary sentence and/or a title query."""
    cl_val_pairs: int = 64
    """Validation pairs per CL task (training distribution, never trained on): the learning-rate rule's data."""
    val_candidates: int = 16
    """Candidates per validation query: the positive, its hard negatives, other distinct validation positives."""

    def __post_init__(self) -> None:
        if self.eval_digits + self.cl_digits >= DIGITS_TOTAL:
            raise ValueError("eval_digits + cl_digits must leave digits for the unlabelled corpora (1797 exist)")
        unknown = set(self.cl_pairs) - set(CL_TASK_NAMES)
        if unknown:
            raise ValueError(f"unknown CL tasks {sorted(unknown)}; known: {sorted(CL_TASK_NAMES)}")
        if not 1 <= self.page_queries_per_module <= 2:
            raise ValueError("page_queries_per_module must be 1 or 2")
        for name in ("eval_queries", "retrieval_pools", "grounding_queries", "page_pools", "val_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def all_shape_combos() -> list[tuple[str, str, str, str]]:
    """The 96 (colour, shape, position, size) combinations in a fixed order."""
    return list(itertools.product(render.COLOURS, render.SHAPES, render.POSITIONS, render.SIZES))


def is_held_out(combo: tuple[str, str, str, str]) -> bool:
    """True for the 32 evaluation-only combinations: attribute indices summing to 0 mod 3.

    Exactly one shape per (colour, position, size), so every colour, position and size value occurs among
    them; their captions never occur in a training text (docs/demo-protocol.md §3).
    """
    indices = [list(values).index(v) for values, v in zip(ATTRIBUTES.values(), combo, strict=True)]
    return sum(indices) % 3 == 0


def train_combos() -> list[tuple[str, str, str, str]]:
    """The 64 combinations whose captions training texts may use."""
    return [c for c in all_shape_combos() if not is_held_out(c)]


def eval_combos() -> list[tuple[str, str, str, str]]:
    """The 32 held-out combinations of the retrieval evaluation."""
    return [c for c in all_shape_combos() if is_held_out(c)]


def object_names() -> list[str]:
    """The 12 "colour shape" object names (the classification labels of ObjectCls)."""
    return [f"{c} {s}" for c in render.COLOURS for s in render.SHAPES]


def page_queries(module: str) -> list[str]:
    """Training queries that only a page of ``module`` answers: its docstring summary, then a title query."""
    return [render.module_doc(module)[0], f"documentation of the {module} module"]


def eval_page_queries(module: str) -> list[str]:
    """Evaluation-only queries for a page of ``module`` (held out from every training text)."""
    return [t.format(module=module) for t in EVAL_PAGE_TEMPLATES]


def pool_name(k: int) -> str:
    """Folder name of ViDoRe page pool ``k``."""
    return f"{VIDORE_NAME}_{k:02d}"


class ImageWriter:
    """Save PNGs under ``root`` with sequential names; returns paths relative to ``root``."""

    def __init__(self, root: Path, prefix: str):
        self.root, self.prefix, self.count = root, prefix, 0
        (root / prefix).mkdir(parents=True, exist_ok=True)

    def __call__(self, img: Image.Image) -> str:
        """Save ``img`` as the next PNG and return its relative path."""
        rel = f"{self.prefix}/{self.count:05d}.png"
        self.count += 1
        img.save(self.root / rel, optimize=False)
        return rel


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` as JSON lines, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def pick(rng: np.random.Generator, values):
    """One element of ``values``, uniformly."""
    return values[int(rng.integers(len(values)))]


def other(rng: np.random.Generator, values: tuple | list, exclude, k: int) -> list:
    """``k`` values different from ``exclude``, without repeats when enough exist."""
    pool = [v for v in values if v != exclude]
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=k > len(pool))]


def one_off(rng: np.random.Generator, combo: tuple[str, str, str, str]) -> tuple[str, str, str, str]:
    """A training combination that differs from ``combo`` in exactly one attribute (a hard negative).

    Held-out combinations are never drawn (their captions are evaluation-only); every training combination
    has training neighbours, since each attribute change shifts the index sum by a non-multiple of 3 for
    some value.
    """
    options = []
    for k, values in enumerate(ATTRIBUTES.values()):
        for v in values:
            if v != combo[k]:
                new = (*combo[:k], v, *combo[k + 1 :])
                if not is_held_out(new):
                    options.append(new)
    return options[int(rng.integers(len(options)))]


def digit_split(cfg: WorldConfig) -> dict[str, np.ndarray]:
    """Disjoint bitmap indices: ``eval``, ``cl`` and ``unlabelled`` (shared by both unlabelled corpora)."""
    order = np.random.default_rng(cfg.seed + 17).permutation(DIGITS_TOTAL)
    return {
        "eval": order[: cfg.eval_digits],
        "cl": order[cfg.eval_digits : cfg.eval_digits + cfg.cl_digits],
        "unlabelled": order[cfg.eval_digits + cfg.cl_digits :],
    }


def mmeb_query(instruction: str) -> str:
    """An MMEB-style image query: the placeholder, then the instruction."""
    return f"{MMEB_IMAGE}\n{instruction}\n"


def candidate_text(prompt: str = IMAGE_PROMPT) -> str:
    """An MMEB-style image candidate's text."""
    return f"{MMEB_IMAGE}\n{prompt}\n"


def scene_objects(rng: np.random.Generator, n_objects: int) -> list[tuple[str, str] | None]:
    """Four cells, ``n_objects`` of them holding distinct (colour, shape) objects."""
    kinds = list(itertools.product(render.COLOURS, render.SHAPES))
    chosen = [kinds[i] for i in rng.choice(len(kinds), size=n_objects, replace=False)]
    cells: list[tuple[str, str] | None] = [None] * 4
    for cell, obj in zip(rng.choice(4, size=n_objects, replace=False), chosen, strict=True):
        cells[int(cell)] = obj
    return cells


def object_name(obj: tuple[str, str]) -> str:
    """``"red circle"`` for ``("red", "circle")``."""
    return f"{obj[0]} {obj[1]}"
