"""The training side of the demo world: contrastive pairs (labelled) and unlabelled interleaved corpora.

CL rows: ``qry``, ``qry_image_path``, ``pos_text``, ``pos_image_path``, ``neg_text`` (list),
``neg_image_path`` (list), with hard negatives that differ in one attribute (one-off captions and
images), other digits, other cells of the same scene, other modules' pages.

Unlabelled records: ``{"text": "... <|vision_start|><|image_pad|><|vision_end|> ...", "images": [...]}``,
images inside running text that describes them. Every image is a fresh render; digit bitmaps come from
the pool that neither CL nor evaluation uses.

No training text names a held-out shape combination (its caption is evaluation-only, docs/demo-protocol.md
§3): captions, hard-negative captions and corpus descriptions of single shapes use the 64 training
combinations only.

Validation pairs (:func:`validation_subsets`) come from the same generators on their own random stream, and
are written as MMEB-layout subsets ``Val_<task>`` for the CL learning-rate rule.
"""

from __future__ import annotations

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
    MMEB_IMAGE,
    PLACEHOLDER,
    QUESTIONS,
    T2I_PREFIX,
    VQA_PREFIX,
    ImageWriter,
    WorldConfig,
    all_shape_combos,
    candidate_text,
    digit_split,
    mmeb_query,
    object_name,
    object_names,
    one_off,
    other,
    page_queries,
    pick,
    scene_objects,
    train_combos,
)
from moca_bench.prompts import VIDORE_DOCUMENT_PROMPT

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


def _cl_digits_cls(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter, n: int) -> list[dict]:
    bitmaps, labels = render.digit_bitmaps()
    pool = digit_split(cfg)["cl"]
    rows = []
    for i in range(n):
        idx = int(pool[i % len(pool)])
        label = render.DIGIT_WORDS[labels[idx]]
        negs = [(w, "") for w in other(rng, render.DIGIT_WORDS, label, cfg.cl_negatives)]
        rows.append(_cl_row(mmeb_query(CLS_DIGIT), save(render.render_digit(rng, bitmaps[idx])), label, "", negs))
    return rows


def _cl_object_cls(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter, n: int) -> list[dict]:
    combos, names = all_shape_combos(), object_names()
    rows = []
    for _ in range(n):
        combo = pick(rng, combos)
        name = f"{combo[0]} {combo[1]}"
        negs = [(w, "") for w in other(rng, names, name, cfg.cl_negatives)]
        rows.append(_cl_row(mmeb_query(CLS_OBJECT), save(render.render_shape(rng, *combo)), name, "", negs))
    return rows


def _cl_shape_vqa(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter, n: int) -> list[dict]:
    combos = all_shape_combos()
    rows = []
    for _ in range(n):
        combo = pick(rng, combos)
        attr = pick(rng, list(QUESTIONS))
        answer = combo[list(ATTRIBUTES).index(attr)]
        negs = [(w, "") for w in other(rng, ATTRIBUTES[attr], answer, cfg.cl_negatives)]
        qry = mmeb_query(VQA_PREFIX + QUESTIONS[attr])
        rows.append(_cl_row(qry, save(render.render_shape(rng, *combo)), answer, "", negs))
    return rows


def _cl_count_vqa(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        count = int(rng.integers(1, 5))
        img = render.render_scene(rng, scene_objects(rng, count))
        answer = render.COUNT_WORDS[count - 1]
        negs = [(w, "") for w in other(rng, render.COUNT_WORDS, answer, cfg.cl_negatives)]
        rows.append(_cl_row(mmeb_query(VQA_PREFIX + COUNT_QUESTION), save(img), answer, "", negs))
    return rows


def _cl_shapes_t2i(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter, n: int) -> list[dict]:
    combos = train_combos()
    rows = []
    for _ in range(n):
        combo = pick(rng, combos)
        negs = [(candidate_text(), save(render.render_shape(rng, *one_off(rng, combo))))
                for _ in range(cfg.cl_negatives)]  # fmt: skip
        qry = T2I_PREFIX + render.shape_caption(*combo) + "\n"
        rows.append(_cl_row(qry, "", candidate_text(), save(render.render_shape(rng, *combo)), negs))
    return rows


def _cl_shapes_i2t(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter, n: int) -> list[dict]:
    combos = train_combos()
    rows = []
    for _ in range(n):
        combo = pick(rng, combos)
        negs = [(render.shape_caption(*one_off(rng, combo)), "") for _ in range(cfg.cl_negatives)]
        img = save(render.render_shape(rng, *combo))
        rows.append(_cl_row(mmeb_query(I2T_PROMPT), img, render.shape_caption(*combo), "", negs))
    return rows


def _cl_grounding(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter, n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        cells = scene_objects(rng, 4)
        scene = render.render_scene(rng, cells)
        target = int(rng.integers(4))
        others = other(rng, [c for c in range(4) if c != target], target, cfg.cl_negatives)
        negs = [(candidate_text(CROP_PROMPT), save(render.scene_cell(scene, c))) for c in others]
        qry = mmeb_query(GROUNDING_PREFIX + object_name(cells[target]))
        pos = save(render.scene_cell(scene, target))
        rows.append(_cl_row(qry, save(scene), candidate_text(CROP_PROMPT), pos, negs))
    return rows


def _cl_pages(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter, n: int) -> list[dict]:
    doc = f"{MMEB_IMAGE}{VIDORE_DOCUMENT_PROMPT}"
    rows = []
    for _ in range(n):
        module = pick(rng, render.PAGE_MODULES)
        query = page_queries(module)[int(rng.integers(cfg.page_queries_per_module))]
        wrong = other(rng, render.PAGE_MODULES, module, cfg.cl_negatives)
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
VAL_META = {  # validation subset -> the MMEB meta-task it is registered under
    "digits_cls": "Classification", "object_cls": "Classification", "shape_vqa": "VQA", "count_vqa": "VQA",
    "shapes_t2i": "Retrieval", "shapes_i2t": "Retrieval", "grounding": "Grounding", "pages": "Retrieval",
}  # fmt: skip
VAL_SUBSETS = {f"Val_{task}": meta for task, meta in VAL_META.items()}


def validation_rows(cfg: WorldConfig, rng: np.random.Generator, rows: list[dict]) -> list[dict]:
    """CL rows -> MMEB-eval rows: each row's positive first, its hard negatives, then other distinct positives.

    Candidates are ``(text, image)`` pairs; a candidate equal to the positive is never a distractor (the
    classification tasks repeat labels), and at most ``cfg.val_candidates`` are kept.
    """
    out = []
    for i, row in enumerate(rows):
        positive = (row["pos_text"], row["pos_image_path"])
        candidates = [positive]
        for neg in zip(row["neg_text"], row["neg_image_path"], strict=True):
            if neg not in candidates:
                candidates.append(neg)
        for j in rng.permutation(len(rows)):
            other_pos = (rows[j]["pos_text"], rows[j]["pos_image_path"])
            if len(candidates) >= cfg.val_candidates:
                break
            if j != i and other_pos not in candidates:
                candidates.append(other_pos)
        out.append({"qry_text": row["qry"], "qry_img_path": row["qry_image_path"],
                    "tgt_text": [t for t, _ in candidates], "tgt_img_path": [p for _, p in candidates]})  # fmt: skip
    return out


def validation_subsets(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter):
    """``(Val_<task>, MMEB rows)`` of ``cfg.cl_val_pairs`` fresh pairs per CL task (never trained on)."""
    for task, n in cfg.cl_pairs.items():
        if n > 0 and cfg.cl_val_pairs > 0:
            yield f"Val_{task}", validation_rows(cfg, rng, CL_TASKS[task](cfg, rng, save, cfg.cl_val_pairs))


# ------------------------------------------------------------------------------------- unlabelled corpora


def unlabelled_records(cfg: WorldConfig, rng: np.random.Generator, save: ImageWriter) -> list[dict]:
    """One unlabelled corpus: images inside running text that describes them (never a CL or evaluation image)."""
    records: list[dict] = []
    combos = train_combos()
    openers = ("Here is a picture.", "Look at this image.", "A figure from the notebook.", "Another drawing.")
    for _ in range(cfg.corpus_shape_records):
        n_img = int(rng.integers(1, 4))
        parts, images = [pick(rng, openers)], []
        for j in range(n_img):
            combo = pick(rng, combos)
            images.append(save(render.render_shape(rng, *combo)))
            lead = ("First" if j == 0 else "Next") if n_img > 1 else "It"
            parts.append(f"{PLACEHOLDER} {lead} shows {render.shape_caption(*combo)}.")
            if rng.random() < 0.5:
                parts.append(f"The {combo[1]} is {combo[0]} and sits at the {combo[2]}.")
        records.append({"text": " ".join(parts), "images": images})
    for _ in range(cfg.corpus_scene_records):
        count = int(rng.integers(1, 5))
        cells = scene_objects(rng, count)
        listing = ", ".join(f"a {object_name(o)} at the {render.POSITIONS[c]}" for c, o in enumerate(cells) if o)
        noun = "shape" if count == 1 else "shapes"
        text = f"{PLACEHOLDER} This scene has {render.COUNT_WORDS[count - 1]} {noun}: {listing}."
        records.append({"text": text, "images": [save(render.render_scene(rng, cells))]})
    bitmaps, labels = render.digit_bitmaps()
    pool = digit_split(cfg)["unlabelled"]
    for _ in range(cfg.corpus_digit_records):
        picks = [int(pick(rng, pool)) for _ in range(int(rng.integers(1, 4)))]
        words = [render.DIGIT_WORDS[labels[i]] for i in picks]
        if len(picks) == 1:
            text = f"{PLACEHOLDER} A handwritten {words[0]}."
        else:
            text = "The handwritten digits " + " ".join([PLACEHOLDER] * len(picks)) + f" read {', '.join(words)}."
        records.append({"text": text, "images": [save(render.render_digit(rng, bitmaps[i])) for i in picks]})
    for _ in range(cfg.corpus_page_records):
        module = pick(rng, render.PAGE_MODULES)
        summary, paragraphs = render.module_doc(module)
        page = save(render.render_page(rng, module))
        records.append({"text": f"{PLACEHOLDER} The {module} module. {summary}", "images": [page]})
        body = " ".join(paragraphs)[:400]
        records.append({"text": f"Documentation of the {module} module. {summary} {body}", "images": []})
    order = rng.permutation(len(records))
    return [records[i] for i in order]


