"""Embedding cache on an mteb task shaped like ViDoRe v3: one page corpus, queries in 6 languages.

mteb evaluates a multilingual retrieval task one language subset at a time, and ViDoRe v3 gives every
subset the same page corpus, so without a cache the corpus is encoded once per language. Here the same
task runs twice through ``mteb.evaluate`` on a small random model, side by side in one process: with
the encoder's cache off (``encoder.cache = None``) and on (the default, in memory). Reports document
forward passes (pages run through the model), wall time, and that the scores are identical. Runs in
the mteb environment; writes ``results/benchmarks/cache_mteb.json``.

    .venv-mteb/bin/python -m benchmarks.cache_mteb [--pages 32] [--queries 8] [--size mid]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_result

logger = logging.getLogger(__name__)
LANGUAGES = {  # ViDoRe v3's six query languages
    "english": "eng-Latn",
    "french": "fra-Latn",
    "spanish": "spa-Latn",
    "german": "deu-Latn",
    "italian": "ita-Latn",
    "portuguese": "por-Latn",
}
SIZES = {"tiny": {"hidden": 64, "layers": 2}, "mid": {"hidden": 256, "layers": 4}}


def page_images(n: int, seed: int = 0) -> list:
    """``n`` rendered pages of 256..1024 visual tokens at MoCa's pixel bounds."""
    from benchmarks.encode import make_corpus

    pages = [x["image"] for x in make_corpus(0, n, seed=seed)]
    return pages


def make_task(pages: list, n_queries: int):
    """A t2it page-retrieval task (pages + OCR text, as ViDoRe v3) whose six language subsets share ``pages``."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    metadata = TaskMetadata(
        name="ViDoReV3ShapedRetrieval", description="One page corpus, queries in six languages (benchmark).",
        reference="https://example.org/local", dataset={"path": "local", "revision": "local"},
        type="DocumentUnderstanding", category="t2it", modalities=["text", "image"], eval_splits=["test"],
        eval_langs={lang: [code] for lang, code in LANGUAGES.items()}, main_score="ndcg_at_5",
        date=("2025-01-01", "2025-01-02"), domains=[], task_subtypes=[], license="mit",
        annotations_creators="derived", dialect=[], sample_creation="created", bibtex_citation="",
    )  # fmt: skip

    def load_data(self, num_proc=None, **kwargs):
        ids = [f"d{i}" for i in range(len(pages))]
        corpus = Dataset.from_dict({"id": ids, "image": pages, "text": [f"# page {i}" for i in range(len(pages))]})
        self.dataset = {}
        for lang in LANGUAGES:
            texts = [f"{lang} question {k} about page {k % len(pages)}" for k in range(n_queries)]
            queries = Dataset.from_dict({"id": [f"q{k}" for k in range(n_queries)], "text": texts})
            qrels = {f"q{k}": {ids[k % len(pages)]: 1} for k in range(n_queries)}
            split = RetrievalSplitData(corpus=corpus, queries=queries, relevant_docs=qrels, top_ranked=None)
            self.dataset[lang] = {"test": split}
        self.data_loaded = True

    return type("ViDoReV3ShapedRetrieval", (AbsTaskRetrieval,), {"metadata": metadata, "load_data": load_data})()


def count_documents(model) -> list:
    """Wrap ``model.encode`` to record ``(side, inputs, encoded)`` per call; returns the record list."""
    calls: list = []
    inner = model.encode

    def recording(inputs, *, prompt_type=None, **kwargs):
        out = inner(inputs, prompt_type=prompt_type, **kwargs)
        stats = model.encoder.last_stats
        calls.append((prompt_type.value if prompt_type else None, stats.inputs, stats.encoded, stats.batches))
        return out

    model.encode = recording
    return calls


def evaluate(model, task) -> tuple[dict, float, list]:
    """Scores per language, wall seconds and the per-call record of one ``mteb.evaluate`` run."""
    import mteb

    calls = count_documents(model)
    t0 = time.perf_counter()
    result = mteb.evaluate(model, [task], cache=None, show_progress_bar=False, encode_kwargs={"batch_size": 8})
    seconds = time.perf_counter() - t0
    scores = {s["hf_subset"]: s["ndcg_at_5"] for s in result.task_results[0].scores["test"]}
    return scores, seconds, calls


def run(checkpoint: Path, n_pages: int, n_queries: int) -> dict:
    """Both runs side by side; returns the result record."""
    from moca_bench.mteb_models import MoCaMTEBEncoder
    from moca_model.processing_moca import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    pages = page_images(n_pages)
    out: dict = {"n_pages": n_pages, "n_languages": len(LANGUAGES), "queries_per_language": n_queries}
    runs = {}
    for name, cached in (("without_cache", False), ("with_cache", True)):
        bounds = {"min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": DEFAULT_MAX_PIXELS, "max_length": DEFAULT_MAX_LENGTH}
        model = MoCaMTEBEncoder(str(checkpoint), device="cpu", num_workers=0, **bounds)
        if not cached:
            model.encoder.cache = None  # the encoder then keeps nothing between calls
        scores, seconds, calls = evaluate(model, make_task(pages, n_queries))
        docs = [c for c in calls if c[0] == "document"]
        runs[name] = scores
        out[name] = {
            "seconds": round(seconds, 2),
            "document_calls": len(docs),
            "document_inputs": sum(c[1] for c in docs),
            "document_forward_passes": sum(c[2] for c in docs),  # pages run through the model
            "document_batches": sum(c[3] for c in docs),
            "forward_passes_per_corpus": round(sum(c[2] for c in docs) / n_pages, 2),
        }
    out["same_scores"] = bool(np.allclose(list(runs["with_cache"].values()), list(runs["without_cache"].values())))
    out["wall_time_ratio"] = round(out["without_cache"]["seconds"] / out["with_cache"]["seconds"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, default=32)
    p.add_argument("--queries", type=int, default=8, help="queries per language")
    p.add_argument("--size", choices=sorted(SIZES), default="mid")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from moca_model.tiny import write_tiny_checkpoint

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_checkpoint(tmp, seed=0, **SIZES[args.size])
        result = run(Path(tmp), args.pages, args.queries)
    result["size"] = args.size
    path = write_result("cache_mteb", result)
    logger.info("without cache: %s", result["without_cache"])
    logger.info("with cache   : %s", result["with_cache"])
    logger.info("wall-time ratio %.2fx, same scores: %s -> %s", result["wall_time_ratio"], result["same_scores"], path)
    return 0 if result["same_scores"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
