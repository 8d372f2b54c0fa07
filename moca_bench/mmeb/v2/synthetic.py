"""A tiny MMEB-V2 in the real layouts (tables in hub layout, media in the MMEB-V2 tree), for tests and smoke runs.

``write_v2_sample(root)`` writes

```
root/hub/<owner>/<name>/<config or default>/<split>-00000-of-00001.parquet     (--data-dir root/hub)
root/data/image-tasks/...                                                      (--image-root root/data)
root/data/video-tasks/frames/{video_cls,video_ret,video_mret,video_qa}/...
root/data/visdoc-tasks/{images/<dir>,<dir>}/<page>
```

with at most three rows per task and the cases the reference's semantics turn on (spec §8): a label
repeated across rows, an image path with two captions (t2i: first wins; grounding: two names), VisDial's
extra newline, natural-sorted frame names (``frame_2`` < ``frame_10``), a clip with fewer frames than
sampled, ground truth not at index 0, global pools larger than the rows, MomentSeeker with two positives
and each query modality, option prefixes with and without ``". "``, two MVBench configs, graded qrels
whose set order differs from the file order, a qrel with score 0 and a duplicate, a query without a
positive qrel, string corpus ids with a long name, pages written from the corpus, a language filter.
``bad_media=True`` also removes an OK-VQA query image and an MSR-VTT frame folder.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from moca_bench.mmeb.v2.synthetic_video import write_video_tasks

SAMPLE_TASKS_IMAGE = ("ImageNet-1K", "OK-VQA", "MSCOCO_i2t", "MSCOCO_t2i", "VisDial", "WebQA", "RefCOCO-Matching",
                      "MSCOCO")  # fmt: skip
SAMPLE_TASKS_VISDOC = ("ViDoRe_esg_reports_human_labeled_v2", "ViDoRe_shiftproject", "VisRAG_PlotQA", "ViDoSeek-doc",
                       "ViDoRe_biomedical_lectures_v2_multilingual", "ViDoRe_biomedical_lectures_v2")  # fmt: skip


def write_table(root: Path, repo: str, config: str | None, split: str, rows: list[dict]) -> Path:
    """Write rows as ``root/hub/<repo>/<config or default>/<split>-00000-of-00001.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "hub" / repo / (config or "default")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def image_bytes(rng: np.random.Generator, size: tuple[int, int] = (32, 24), fmt: str = "PNG") -> bytes:
    """A small random image, encoded."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, rng: np.random.Generator, size: tuple[int, int] = (32, 24)) -> None:
    """A small random image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(rng, size, "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"))


_IMAGE_INST = {  # (query instruction, target instruction) in MMEB_Test_Instruct's form
    "ImageNet-1K": ("<|image_1|>\nRepresent the given image for classification \n", ""),
    "OK-VQA": ("<|image_1|>\nRepresent the given image with the following question: ", ""),
    "MSCOCO_i2t": ("<|image_1|>\nFind an image caption describing the given everyday image.", ""),
    "MSCOCO_t2i": ("Find me an everyday image that matches the given caption:",
                   "<|image_1|>\nRepresent the given image."),
    "VisDial": ("Represent the given dialogue about an image, which is used for image retrieval:",
                "<|image_1|>\nRepresent the given image."),
    "WebQA": ("Find a Wikipedia image-passage pair that answers this question:",
              "<|image_1|>\nRepresent the given Wikipedia image with related text information:"),
    "RefCOCO-Matching": ("<|image_1|>\nSelect the portion of the image that follows the language expressions: ",
                         "<|image_1|>\nSelect the portion of the image that follows the language expressions:"),
    "MSCOCO": ("<|image_1|>\nSelect the portion of the image that isolates the object labeled as ",
               "<|image_1|>\nRepresent the given cropped image of the object"),
}  # fmt: skip
_LABEL_ROWS = (["cat", "dog", "bird", "fish"], ["dog", "cat", "fish", "bird"], ["cat", "bird", "dog", "fish"])


def _image_rows(name: str) -> list[dict]:
    inst, tinst = _IMAGE_INST[name]
    rows = []
    for r in range(3):
        picks = [r, *[(r + k) % 5 for k in (1, 2, 3)]]  # ground truth r first; candidates from a shared pool of 5
        row = {"qry_inst": inst, "qry_text": "" if name == "ImageNet-1K" else f"query {r} \n",
               "qry_img_path": f"{name}/q{r}.jpg", "tgt_inst": tinst}  # fmt: skip
        if name == "ImageNet-1K":  # "cat" is the ground truth of rows 0 and 2
            row.update(tgt_text=_LABEL_ROWS[r], tgt_img_path=[""] * 4)
        elif name in ("OK-VQA", "MSCOCO_i2t"):
            row.update(tgt_text=[f"text {i}" for i in picks], tgt_img_path=[""] * 4)
        elif name in ("MSCOCO_t2i", "VisDial", "MSCOCO"):
            row.update(tgt_text=[""] * 4, tgt_img_path=[f"{name}/c{i}.jpg" for i in picks])
        else:  # WebQA / RefCOCO-Matching: one caption per candidate, so each image appears with several captions
            row.update(tgt_text=[f'"caption {i} of row {r}"' for i in picks],
                       tgt_img_path=[f"{name}/c{i}.jpg" for i in picks])  # fmt: skip
        if name in ("MSCOCO_t2i", "VisDial", "WebQA"):
            row["qry_img_path"] = ""
        rows.append(row)
    return rows


def _write_image_tasks(root: Path, rng) -> None:
    for name in SAMPLE_TASKS_IMAGE:
        rows = _image_rows(name)
        write_table(root, "ziyjiang/MMEB_Test_Instruct", name, "test", rows)
        for path in sorted({p for r in rows for p in [r["qry_img_path"], *r["tgt_img_path"]] if p}):
            write_image(root / "data" / "image-tasks" / path, rng)


def _visdoc(root: Path, repo: str, queries, qrels, corpus, *, split="test", images_dir=None, rng=None) -> None:
    write_table(root, repo, "queries", split, queries)
    write_table(root, repo, "qrels", split, qrels)
    write_table(root, repo, "corpus", split, [{"corpus-id": c, "image": {"bytes": b, "path": None}}
                                              for c, b in corpus])  # fmt: skip
    if images_dir is not None:
        from moca_bench.mmeb.v2.text import visrag_file_name

        for cid, data in corpus:
            name = visrag_file_name(cid) if isinstance(cid, str) else f"{cid}.png"
            (images_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (images_dir / name).write_bytes(data)


def _qrels(pairs) -> list[dict]:
    return [{"query-id": q, "corpus-id": c, "score": g} for q, c, g in pairs]


def _write_visdoc_tasks(root: Path, rng) -> None:
    pages = root / "data" / "visdoc-tasks"
    corpus = [(i, image_bytes(rng, (40, 56))) for i in range(8)]  # 8 pages, more than the 3 queries
    queries = [{"query-id": q, "query": f"question {q}"} for q in (10, 11, 12)]
    # graded: 10 -> pages 5 (2) and 3 (1), set order (3, 5) != file order; 11 -> page 1 twice (max 2) and a
    # score-0 page; 12 -> only a score-0 qrel (no positive: dropped)
    graded = _qrels([(10, 5, 2), (10, 3, 1), (11, 1, 1), (11, 1, 2), (11, 6, 0), (12, 7, 0)])
    _visdoc(root, "vidore/esg_reports_human_labeled_v2", queries, graded, corpus,
            images_dir=pages / "images" / "esg_reports_human_labeled_v2")  # fmt: skip
    binary = _qrels([(10, 2, 1), (11, 4, 1), (12, 4, 1)])
    _visdoc(root, "vidore/shiftproject_test_beir", queries, binary, corpus)  # no page folder: pages from the corpus
    long_name = "a_very_long_page_name_" + "x" * 40 + ".png"  # > 50 characters: md5-suffixed file name
    sids = ["p0.png", "p1.png", long_name, "p3.png", "p4.png"]
    plot_q = [{"query-id": f"q{q}", "query": f"plot {q}"} for q in range(3)]
    plot_rel = _qrels([("q0", long_name, 1), ("q1", "p3.png", 1), ("q2", "p0.png", 1)])
    _visdoc(root, "openbmb/VisRAG-Ret-Test-PlotQA", plot_q, plot_rel, [(c, image_bytes(rng, (48, 36))) for c in sids],
            split="train", images_dir=pages / "VisRAG_PlotQA")  # the VLM2Vec layout (no images/)
    doc_rel = _qrels([(10, 6, 3), (10, 4, 1), (10, 2, 2), (11, 7, 1), (11, 0, 2), (12, 5, 1)])
    _visdoc(root, "VLM2Vec/ViDoSeek", queries, doc_rel, corpus, images_dir=pages / "images" / "ViDoSeek-doc")
    langs = [{"query-id": q, "query": f"q {q}", "language": lang} for q, lang in ((1, "english"), (2, "french"),
                                                                                  (3, "english"))]  # fmt: skip
    _visdoc(root, "vidore/biomedical_lectures_v2", langs, _qrels([(q, q + 1, 1) for q in (1, 2, 3)]), corpus[:5],
            images_dir=pages / "images" / "biomedical_lectures_v2_multilingual")  # fmt: skip


def write_v2_sample(root: str | Path, *, seed: int = 0, bad_media: bool = False) -> Path:
    """Write the sample under ``root`` (module docstring) and return ``root``.

    Args:
        root: target folder.
        seed: contents are a function of the seed.
        bad_media: remove OK-VQA's query image 1 and MSR-VTT's frame folder of video ``v1``.

    Returns:
        ``root`` as a Path; pass ``--data-dir root/hub --image-root root/data``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    _write_image_tasks(root, rng)
    write_video_tasks(root, rng)
    _write_visdoc_tasks(root, rng)
    if bad_media:
        (root / "data" / "image-tasks" / "OK-VQA" / "q1.jpg").unlink()
        import shutil

        shutil.rmtree(root / "data" / "video-tasks" / "frames" / "video_ret" / "MSR-VTT" / "v1")
    return root
