"""MMEB-V2 parsers for image and visual-document tasks (video: :mod:`moca_bench.mmeb.v2.parse_video`).

Each mirrors one reference parser of TIGER-AI-Lab/VLM2Vec @ 6e1e1d4 (``src/data/eval_dataset/``): the
texts it writes, the names it gives candidates and the labels it marks, quirks included (the module
docstrings of :mod:`~moca_bench.mmeb.v2.text` and :mod:`~moca_bench.mmeb.v2.build` list them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from moca_bench.mmeb.data import MMEBDataError
from moca_bench.mmeb.v2.build import Input, TaskBuilder, TaskData
from moca_bench.mmeb.v2.data import TableSource, iter_corpus, read_rows, read_table
from moca_bench.mmeb.v2.tasks import V2Task
from moca_bench.mmeb.v2.text import (
    DOC_QUERY,
    DOC_TARGET,
    IMAGE_TOKEN,
    PHI3_IMAGE,
    input_text,
    v1_fix,
    visrag_file_name,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParseOptions:
    """Settings that change what a task's inputs are."""

    num_frames: int = 8
    """Frames sampled per video (reference: 8)."""
    short_clips: str = "as-saved"
    """Clips with fewer saved frames: as-saved (reference at 6e1e1d4) or pad (later main)."""
    max_rows: int | None = None
    """Keep only the first rows (smoke runs)."""
    page_cache: Path | None = None
    """Where document pages missing from the media folder are written (from the corpus ``image`` column)."""


def _first(rows: Iterable, n: int | None) -> list:
    rows = list(rows)
    return rows if n is None else rows[:n]


def parse_image(task: V2Task, rows: Iterable[Mapping], root: Path, opts: ParseOptions) -> TaskData:
    """``image_cls`` / ``image_qa`` / ``image_i2t`` / ``image_t2i`` / ``image_i2i_vg`` rows of ``ziyjiang/MMEB_Test_Instruct``."""  # noqa: E501
    b, p = TaskBuilder(task), task.parser
    for row in _first(rows, opts.max_rows):
        inst, qtext = row.get("qry_inst") or "", row.get("qry_text") or ""
        texts, images = list(row["tgt_text"]), list(row.get("tgt_img_path") or [])
        if p == "image_t2i":  # text query: the Phi-3 token becomes a bare pad token, no image, no v1 fix
            q = inst.replace(PHI3_IMAGE, IMAGE_TOKEN) + " " + qtext + "\n" + ("\n" if task.name == "VisDial" else "")
            query = Input(q)
        else:
            inst = inst.replace(PHI3_IMAGE, "")
            if p in ("image_qa", "image_i2i_vg"):
                inst = "\n" + inst.strip()
            query = Input(v1_fix(input_text(inst, qtext, image=True)) + "\n", image=str(root / row["qry_img_path"]))
        if p in ("image_cls", "image_qa", "image_i2t"):  # raw label / answer / caption texts, named by their text
            b.add_row(query, [(t, Input(t)) for t in texts], [texts[0]])
            continue
        tinst = (row.get("tgt_inst") or "").replace(PHI3_IMAGE, "")
        if texts and texts[0].strip():  # WebQA, EDIS, OVEN, RefCOCO-Matching: instruction + caption per candidate
            cand_texts = [v1_fix(input_text(tinst + " " + c, "", image=True)) + "\n" for c in texts]
        else:  # the instruction alone; grounding / i2i without the trailing newline (reference quirk)
            cand_texts = [v1_fix(input_text(tinst, "", image=True)) + ("\n" if p == "image_t2i" else "")] * len(images)
        if p == "image_t2i":
            names = list(images)  # the image path alone: a second caption of the same image is never encoded
        else:
            names = [path + ":" + cap.strip('"') for path, cap in zip(images, texts)]
        cands = [(n, Input(t, image=str(root / path))) for n, t, path in zip(names, cand_texts, images)]
        b.add_row(query, cands, [names[0]])
    return b.build()


def qrels_mapping(qrels: Iterable[Mapping]) -> dict:
    """``{query-id: {corpus-id: grade}}`` over qrels with score > 0, the max kept for duplicates, file order."""
    out: dict = {}
    for r in qrels:
        if r["score"] > 0:
            docs = out.setdefault(r["query-id"], {})
            docs[r["corpus-id"]] = max(docs.get(r["corpus-id"], 0), r["score"])
    return out


def page_name(task: V2Task, cid) -> str:
    """A corpus page's file name: ``<corpus-id>.png`` (ViDoRe and VLM2Vec sets) or VisRAG's hashed name."""
    return visrag_file_name(cid) if task.parser == "visrag" else f"{cid}.png"


def _page_file(task: V2Task, folder: Path | None, opts: ParseOptions, cid) -> Path:
    """Where corpus page ``cid`` is read from: the media folder's file when it exists, else the page cache's."""
    name = page_name(task, cid)
    if folder is not None and (folder / name).is_file():
        return folder / name
    return (opts.page_cache or folder) / task.name / name


def _page_paths(task: V2Task, source: TableSource, folder: Path | None, opts: ParseOptions) -> dict:
    """``{corpus-id: page file}``: the media folder's file, else one written into the page cache."""
    if folder is None and opts.page_cache is None:
        raise MMEBDataError(f"{task.name}: no page folder and no page cache to write pages into")
    paths, missing = {}, set()
    for row in iter_corpus(source, task, with_images=False):
        cid = row["corpus-id"]
        paths[cid] = _page_file(task, folder, opts, cid)
        if not paths[cid].is_file():
            missing.add(cid)
    if missing:
        cache = (opts.page_cache or folder) / task.name
        logger.info("%s: writing %d page images from the corpus into %s", task.name, len(missing), cache)
        cache.mkdir(parents=True, exist_ok=True)
        for row in iter_corpus(source, task, with_images=True):
            if row["corpus-id"] in missing and (row.get("image") or {}).get("bytes"):
                tmp = paths[row["corpus-id"]].with_suffix(".tmp")
                tmp.write_bytes(row["image"]["bytes"])  # decoded pixels equal the reference's PNG re-save
                tmp.replace(paths[row["corpus-id"]])
    return paths


def parse_visdoc(task: V2Task, source: TableSource, folder: Path | None, opts: ParseOptions) -> TaskData:
    """``vidore`` / ``visrag`` BEIR tables: queries ranked against the whole corpus, graded qrels."""
    b = TaskBuilder(task)
    queries = read_table(source, task.repo, "queries", task.split)
    if task.lang is not None:
        queries = [q for q in queries if q.get("language") == task.lang]
    mapping = qrels_mapping(read_table(source, task.repo, "qrels", task.split, ["query-id", "corpus-id", "score"]))
    pages = _page_paths(task, source, folder, opts)
    target = input_text(DOC_TARGET, image=True)

    def page(cid) -> Input:  # a qrel page missing from the corpus: looked up where corpus pages are (bad if absent)
        return Input(target, image=str(pages.get(cid) or _page_file(task, folder, opts, cid)))

    for q in _first(queries, opts.max_rows):
        rel = mapping.get(q["query-id"])
        if not rel:  # the reference raises KeyError here
            b.drop(f"query {q['query-id']!r}: no qrel with score > 0")
            continue
        b.add_row(Input(input_text(DOC_QUERY, q["query"])), [(c, page(c)) for c in rel], list(rel), list(rel.values()))
    for cid in pages:
        b.add_corpus(cid, page(cid))
    return b.build()


def parse_task(task: V2Task, source: TableSource, media: Path | None, opts: ParseOptions) -> TaskData:
    """Read and parse one task.

    Args:
        task: the task.
        source: where its tables come from.
        media: its media folder (image root, frame root, page folder; None: pages from the corpus).
        opts: parsing options.

    Returns:
        The task's data.

    Raises:
        MMEBDataError: tables that cannot be read or a parser without rows.
    """
    from moca_bench.mmeb.v2.parse_video import parse_video

    if task.modality == "visdoc":
        data = parse_visdoc(task, source, media, opts)
    else:
        rows, notes = read_rows(task, source)
        if task.first_rows is not None:
            rows = rows[: task.first_rows]
        parse = parse_image if task.modality == "image" else parse_video
        data = parse(task, rows, media, opts)
        data.notes.extend(notes)
    if data.n_rows == 0:
        raise MMEBDataError(f"{task.name}: no usable rows ({len(data.dropped)} dropped: {data.dropped[:3]})")
    return data
