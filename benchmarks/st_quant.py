"""Retrieval quality kept by int8 and binary embeddings of the sentence-transformers export (demo pages).

Model: contrastive training on the demo world's page task only, with the demo's own recipe
(``configs/cl/demo.yaml``: learning rate 1e-3, batch 32, temperature 0.05) for ``--steps`` (default 200)
from the tiny random initialisation, seed 0; or ``--checkpoint`` (e.g. ``make demo``'s
``demo_out/runs/cl_only/checkpoint-1400``). It is exported with ``moca_model.export_st`` and evaluated on
the demo's ViDoRe page set (16 pages, 32 queries, one relevant page each; the same renders as ``make demo``)
through sentence-transformers: ``encode_query`` / ``encode_document``, then

- ``float32``: cosine;
- ``int8``: both sides ``quantize_embeddings(..., "int8", calibration_embeddings=page embeddings)`` (the
  same per-dimension ranges, as sentence-transformers' docs advise), integer inner product (an int8 "ip"
  index without rescoring);
- ``int8_per_call``: ``encode(..., precision="int8")`` on each side (each call derives its own ranges);
- ``int8_docs_float_query``: int8 pages (page ranges), dequantized, dot product with the float query (the
  score sentence-transformers' ``semantic_search_usearch`` rescores its candidates with);
- ``binary``: ``precision="binary"`` on both sides (1 bit per dimension), Hamming distance;
- ``binary_docs_float_query``: binary pages as 0/1 vectors, dot product with the float query (its binary
  rescoring score).

Rescoring proper (re-ranking a quantized top-k with the float query) is not scored: with 16 pages, the
default 2 x top-5 candidates are most of the corpus. The ``*_float_query`` rows show the rescoring score
alone, over all pages.

nDCG@5 with ties counted in expectation (``moca_bench.metrics``), a bootstrap 95% interval over queries, and
the paired difference to float32 with its interval.

The stages run where their packages are: world + training need matplotlib and accelerate (``.venv``),
export + evaluation need sentence-transformers 6.2 (``.venv-mteb``); run from either, this script runs the
other stage with the other environment's interpreter. Writes ``results/benchmarks/st_quant.json``.

    .venv-mteb/bin/python -m benchmarks.st_quant [--steps 200] [--checkpoint DIR] [--work DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_result

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]
PYTHONS = {"train": ROOT / ".venv" / "bin" / "python", "st": ROOT / ".venv-mteb" / "bin" / "python"}
PAGES = "vidore/demo_pages"
N_BOOT = 10_000


def _can(stage: str) -> bool:
    if stage == "train":
        return all(importlib.util.find_spec(m) for m in ("accelerate", "matplotlib", "datasets"))
    try:
        from moca_model.export_st import check_environment

        check_environment()
        return True
    except Exception:
        return False


def _child(stage: str, args: list[str]) -> None:
    """Run ``python -m benchmarks.st_quant --stage STAGE ...`` with the environment that has STAGE's packages."""
    python = PYTHONS[stage]
    if not python.is_file():
        raise SystemExit(f"stage {stage!r} needs {python} (make env)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(python), "-m", "benchmarks.st_quant", "--stage", stage, *args], cwd=ROOT, env=env, check=True)


def prepare(work: Path, steps: int, train: bool) -> None:
    """Build the page world (pages-only CL rows + the ViDoRe page set) and, if ``train``, train on it."""
    from demo.world import WorldConfig, build_world
    from moca_model.tiny import write_tiny_checkpoint

    cfg = WorldConfig(cl_pairs={"pages": 256}, corpus_shape_records=8, corpus_scene_records=4, corpus_digit_records=4,
                      corpus_page_records=4, eval_queries=8, eval_digits=20, cl_digits=16)  # fmt: skip
    build_world(cfg, work / "world", show_progress=False)
    if not train or (work / "run" / f"checkpoint-{steps}" / "config.json").is_file():
        return
    write_tiny_checkpoint(work / "init", seed=0)  # the demo's initialisation
    datasets = json.dumps([{"name": "pages", "path": str(work / "world" / "cl" / "pages.jsonl")}])
    argv = [sys.executable, "-m", "moca_train.cl", "--config", str(ROOT / "configs" / "cl" / "demo.yaml"),
            "--model.init_from", str(work / "init"), "--train.output_dir", str(work / "run"),
            "--train.max_steps", str(steps), "--train.seed", "0", "--data.seed", "0", "--data.datasets", datasets,
            "--train.progress_bar", "false"]  # fmt: skip
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(argv, cwd=ROOT, check=True)
    cost = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(_children_cpu() - c0, 1)}
    (work / "train_cost.json").write_text(json.dumps(cost))


def _children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def load_pages(world: Path) -> tuple[list[str], list, np.ndarray]:
    """(queries, page images, relevance (Q, C)) of the demo's BEIR page set."""
    import pyarrow.parquet as pq
    from PIL import Image

    def read(name):
        return pq.read_table(world / PAGES / name / "test-00000-of-00001.parquet").to_pylist()

    corpus, queries, qrels = read("corpus"), read("queries"), read("qrels")
    pages = [Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB") for row in corpus]
    column = {row["corpus-id"]: i for i, row in enumerate(corpus)}
    row_of = {row["query-id"]: i for i, row in enumerate(queries)}
    relevance = np.zeros((len(queries), len(pages)))
    for r in qrels:
        relevance[row_of[r["query-id"]], column[r["corpus-id"]]] = r["score"]
    return [row["query"] for row in queries], pages, relevance


def variant_scores(model, queries: list[str], pages: list) -> dict[str, np.ndarray]:
    """(Q, C) scores of every precision variant (higher is better); see the module docstring."""
    from sentence_transformers.util import quantize_embeddings

    q, d = model.encode_query(queries), model.encode_document(pages)
    ranges = np.stack([d.min(0), d.max(0)])  # what quantize_embeddings derives from calibration_embeddings=d
    qi, di = (quantize_embeddings(x, "int8", ranges=ranges).astype(np.int64) for x in (q, d))
    qc, dc = (e.astype(np.int64) for e in (model.encode_query(queries, precision="int8"),
                                           model.encode_document(pages, precision="int8")))  # fmt: skip
    d_dequantized = ranges[0] + (di + 128 + 0.5) * (ranges[1] - ranges[0]) / 255
    qb, db = model.encode_query(queries, precision="ubinary"), model.encode_document(pages, precision="ubinary")
    hamming = np.unpackbits(qb[:, None, :] ^ db[None, :, :], axis=-1).sum(-1)
    d_bits = np.unpackbits(db, axis=1)[:, : d.shape[1]].astype(np.float64)
    return {
        "float32": q @ d.T,
        "int8": (qi @ di.T).astype(np.float64),
        "int8_per_call": (qc @ dc.T).astype(np.float64),
        "int8_docs_float_query": q @ d_dequantized.T,
        "binary": -hamming.astype(np.float64),
        "binary_docs_float_query": q @ d_bits.T,
    }


def clipped_fraction(model, queries: list[str], pages: list) -> float:
    """Share of query values outside the page embeddings' per-dimension range (clipped by int8 page ranges)."""
    q, d = model.encode_query(queries), model.encode_document(pages)
    return float(((q < d.min(0)) | (q > d.max(0))).mean())


def _interval(values: np.ndarray, rng: np.random.Generator) -> list[float]:
    idx = rng.integers(0, len(values), size=(N_BOOT, len(values)))
    return [round(float(x), 4) for x in np.percentile(values[idx].mean(1), [2.5, 97.5])]


def evaluate(work: Path, checkpoint: Path) -> dict:
    """Export ``checkpoint``, encode the page set through sentence-transformers, score every variant."""
    from sentence_transformers import SentenceTransformer

    from moca_bench.metrics import ndcg_at_k
    from moca_model.export_st import export_checkpoint

    folder = export_checkpoint(checkpoint, work / "st", overwrite=True)
    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    queries, pages, relevance = load_pages(work / "world")
    scores = variant_scores(model, queries, pages)
    per_query = {k: ndcg_at_k(s, relevance, k=5, ties="expected") for k, s in scores.items()}
    rng = np.random.default_rng(0)
    dim = model.get_embedding_dimension()
    doc_bytes = {"float32": 4 * dim, "int8": dim, "int8_per_call": dim, "int8_docs_float_query": dim,
                 "binary": dim // 8, "binary_docs_float_query": dim // 8}  # fmt: skip
    table = {}
    for name, v in per_query.items():
        delta = v - per_query["float32"]
        table[name] = {"ndcg@5": round(float(v.mean()), 4), "ci95": _interval(v, rng),
                       "delta_vs_float32": round(float(delta.mean()), 4), "delta_ci95": _interval(delta, rng),
                       "bytes_per_page": doc_bytes[name]}  # fmt: skip
    chance = float(ndcg_at_k(np.zeros_like(relevance), relevance, k=5, ties="expected").mean())
    return {"checkpoint": str(checkpoint), "queries": len(queries), "pages": len(pages), "dim": dim,
            "chance_ndcg@5": round(chance, 4), "query_values_outside_page_ranges": round(clipped_fraction(
                model, queries, pages), 4), "variants": table}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="CL steps on the page task (ignored with --checkpoint)")
    p.add_argument("--checkpoint", type=Path, help="evaluate this MoCa checkpoint instead of training one")
    p.add_argument("--work", type=Path, help="work directory (default: a temporary one); reused if it exists")
    p.add_argument("--stage", choices=["all", "train", "st"], default="all", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = args.checkpoint or work / "run" / f"checkpoint-{args.steps}"
        passed = ["--work", str(work), "--steps", str(args.steps)]
        passed += ["--checkpoint", str(args.checkpoint)] if args.checkpoint else []
        if args.stage in ("all", "train") and _can("train"):
            prepare(work, args.steps, train=args.checkpoint is None)
        elif args.stage == "all":
            _child("train", passed)
        if args.stage == "train":
            return 0
        if not _can("st"):
            _child("st", passed)
            return 0
        result = evaluate(work, checkpoint)
        if args.checkpoint is None:
            where = "<work>" if args.work else "<temporary work dir>"
            result["checkpoint"] = f"trained here: {where}/run/checkpoint-{args.steps}"
        cost = work / "train_cost.json"
        result["training"] = ({"steps": args.steps, "recipe": "configs/cl/demo.yaml, pages task only",
                               **json.loads(cost.read_text())} if args.checkpoint is None and cost.is_file()
                              else "given checkpoint")  # fmt: skip
        path = write_result("st_quant", result)
    for name, row in result["variants"].items():
        logger.info("%-16s nDCG@5 %.3f %s  vs float32 %+.3f %s", name, row["ndcg@5"], row["ci95"],
                    row["delta_vs_float32"], row["delta_ci95"])  # fmt: skip
    logger.info("chance %.3f -> %s", result["chance_ndcg@5"], path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
