"""Synthetic MMEB: the benchmark's published structure (for cost models) and tiny on-disk samples (for tests).

- :func:`mmeb_structure` gives the 36 subsets with 1,000 queries each and the published candidate counts,
  and :func:`forward_passes` the encoder calls with and without de-duplication. Assumption, stated
  because MMEB-eval does not publish it: the distractors of a subset are drawn from one shared pool of
  ``max(queries, candidates)`` inputs (e.g. the other rows' ground truths), and queries are distinct.
- :func:`write_sample` writes a small local folder in the ``TIGER-Lab/MMEB-eval`` layout (parquet + PNG
  images) with subsets of every meta-task kind, optionally with missing, corrupt and truncated images
  and with a row whose candidates all tie.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moca_bench.mmeb import tasks


@dataclass(frozen=True)
class SubsetShape:
    """Size of one subset: rows, candidates per row, and the unique inputs they reduce to."""

    name: str
    meta_task: str
    queries: int
    candidates: int
    unique_queries: int
    unique_candidates: int

    @property
    def with_dedup(self) -> int:
        """Forward passes when each unique (text, image) pair is encoded once."""
        return self.unique_queries + self.unique_candidates

    @property
    def without_dedup(self) -> int:
        """Forward passes when every row encodes its query and all its candidates."""
        return self.queries * (1 + self.candidates)


def mmeb_structure(queries: int = tasks.QUERIES_PER_SUBSET) -> list[SubsetShape]:
    """The 36 subsets with the published candidate counts (see the module docstring for the pool assumption)."""
    out = []
    for name in tasks.SUBSETS:
        n_cand = tasks.published_candidates(name)
        pool = n_cand if tasks.meta_task(name) == "Classification" else max(queries, n_cand)
        out.append(SubsetShape(name, tasks.meta_task(name), queries, n_cand, queries, pool))
    return out


def forward_passes(shapes: list[SubsetShape]) -> dict:
    """Totals of :class:`SubsetShape` forward passes, overall and per meta-task."""
    per_meta: dict[str, dict[str, int]] = {}
    for s in shapes:
        m = per_meta.setdefault(s.meta_task, {"with_dedup": 0, "without_dedup": 0})
        m["with_dedup"] += s.with_dedup
        m["without_dedup"] += s.without_dedup
    with_d, without_d = sum(s.with_dedup for s in shapes), sum(s.without_dedup for s in shapes)
    return {"with_dedup": with_d, "without_dedup": without_d, "ratio": without_d / with_d, "per_meta_task": per_meta}


def synthetic_rows(shape: SubsetShape, *, seed: int = 0) -> list[dict]:
    """MMEB-format rows (fake image paths) realising ``shape`` under the shared-pool assumption."""
    rng = np.random.default_rng(seed)
    classification = shape.meta_task == "Classification"
    pool = [f"label {i}" if classification else f"candidate {i}" for i in range(shape.unique_candidates)]
    rows = []
    for r in range(shape.queries):
        gold = r % len(pool)
        others = rng.choice(np.delete(np.arange(len(pool)), gold), size=shape.candidates - 1, replace=False)
        cands = [pool[gold], *(pool[i] for i in others)]
        rows.append({"qry_text": f"<|image_1|>\nquery {r}\n", "qry_img_path": f"{shape.name}/q{r}.jpg",
                     "tgt_text": cands, "tgt_img_path": [""] * len(cands)})  # fmt: skip
    return rows


_SAMPLE_KINDS = {  # subset -> (query template, query has image, candidate kind)
    "N24News": ("<|image_1|>\nRepresent the given news image with the following caption for domain "
                "classification: caption {r}\n", True, "label"),
    "OK-VQA": ("<|image_1|>\nRepresent the given image with the following question: question {r}?\n", True, "answer"),
    "MSCOCO_t2i": ("Find me an everyday image that matches the given caption: caption {r}.\n", False, "image"),
    "MSCOCO_i2t": ("<|image_1|>\nFind an image caption describing the given everyday image.\n", True, "caption"),
    "RefCOCO": ("<|image_1|>\nSelect the portion of the image that follows the language expressions: thing {r}\n",
                True, "crop"),
}  # fmt: skip
_CANDIDATE_TEXT = {"label": "label {i}", "answer": "answer {i}", "caption": "a caption number {i}",
                   "image": "<|image_1|>\nRepresent the given image.\n",
                   "crop": "<|image_1|>\nRepresent the given cropped image of the object\n"}  # fmt: skip
SAMPLE_SUBSETS = tuple(_SAMPLE_KINDS)


def _write_png(path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in rng.integers(20, 72, size=2))
    Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)


def write_sample(
    out_dir: str | Path,
    *,
    subsets: tuple[str, ...] = SAMPLE_SUBSETS,
    rows: int = 6,
    candidates: int = 4,
    seed: int = 0,
    bad_images: bool = False,
    tie_row: bool = False,
) -> Path:
    """Write a tiny MMEB-eval folder: ``<out>/<Subset>/test-00000-of-00001.parquet`` + ``<out>/eval_images/``.

    Args:
        out_dir: target folder.
        subsets: names from :data:`SAMPLE_SUBSETS` (one per meta-task kind, t2i and i2t retrieval).
        rows: queries per subset.
        candidates: candidates per row (ground truth first; distractors from a shared pool, so pairs repeat).
        seed: content is a function of the seed.
        bad_images: OK-VQA's row 1 query image is missing, RefCOCO's crop 2 is not an image and
            MSCOCO_t2i's image 3 is truncated (readable header, undecodable data).
        tie_row: N24News's last row lists the ground-truth label as every candidate (an exact tie).

    Returns:
        ``out_dir`` as a Path.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    for name in subsets:
        template, query_image, kind = _SAMPLE_KINDS[name]
        pool = rows + candidates  # shared candidate pool: rows reuse each other's candidates
        cand_img = [f"{name}/cand_{i}.png" if kind in ("image", "crop") else "" for i in range(pool)]
        table = {"qry_text": [], "qry_img_path": [], "tgt_text": [], "tgt_img_path": []}
        for r in range(rows):
            picks = [r, *rng.choice([i for i in range(pool) if i != r], size=candidates - 1, replace=False).tolist()]
            texts = [_CANDIDATE_TEXT[kind].format(i=i) for i in picks]
            if tie_row and name == "N24News" and r == rows - 1:
                picks, texts = [r] * candidates, [texts[0]] * candidates
            table["qry_text"].append(template.format(r=r))
            table["qry_img_path"].append(f"{name}/query_{r}.png" if query_image else "")
            table["tgt_text"].append(texts)
            table["tgt_img_path"].append([cand_img[i] for i in picks])
        for rel in sorted({p for p in table["qry_img_path"] if p} | {p for p in cand_img if p}):
            _write_png(out / "eval_images" / rel, rng)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(table), folder / "test-00000-of-00001.parquet")
    if bad_images:
        _break_images(out / "eval_images", subsets)
    return out


def _break_images(root: Path, subsets: tuple[str, ...]) -> None:
    if "OK-VQA" in subsets:
        (root / "OK-VQA" / "query_1.png").unlink()
    if "RefCOCO" in subsets:
        (root / "RefCOCO" / "cand_2.png").write_bytes(b"not an image")
    if "MSCOCO_t2i" in subsets:
        path = root / "MSCOCO_t2i" / "cand_3.png"
        path.write_bytes(path.read_bytes()[:80])  # header intact, pixel data cut
