r"""``.venv-mteb/bin/python -m demo.mteb_eval``: the demo's models on two MTEB (2.x) retrieval tasks.

The tasks are built from the world's own evaluation data, as ordinary mteb ``AbsTaskRetrieval`` tasks:

- ``DemoShapesT2I`` (Any2AnyRetrieval, t2i): the 96 shape captions of the MMEB ``Shapes_t2i`` subset's
  first pool retrieve their image among the 96 images of that pool;
- ``DemoPages`` (DocumentUnderstanding, t2i): the first ViDoRe page pool (queries -> rendered pages).

Models load through ``moca_bench.mteb_models`` (the toolkit's mteb integration), so inputs are
formatted exactly as for any mteb task, and each checkpoint's recorded attention (causal base,
bidirectional arms) is honoured. Runs in the mteb environment (transformers 5.x), which also checks that
checkpoints trained under transformers 4.x load there. It is a harness check (one pool: 96 and 32
queries), not a powered comparison. Writes ``{model: {task: nDCG@5 %}}``.

Usage::

    .venv-mteb/bin/python -m demo.mteb_eval --world demo_out/world --out demo_out/evals/mteb.json \\
        --model random=demo_out/models/init --model cl_only=demo_out/runs/cl_only/checkpoint-1000
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path

logger = logging.getLogger("demo.mteb_eval")

METRIC = "ndcg_at_5"
T2I_INSTRUCTION = "Find me an everyday image that matches the given caption:"  # MSCOCO_t2i's wording
_GENERAL = {
    "reference": "https://github.com/moca-embed",  # required by mteb; the world is generated locally
    "dataset": {"path": "local/moca-demo-world", "revision": "local"},
    "eval_splits": ["test"],
    "eval_langs": ["eng-Latn"],
    "main_score": METRIC,
    "date": ("2025-01-01", "2025-01-01"),
    "domains": [],
    "task_subtypes": [],
    "license": "cc-by-4.0",
    "annotations_creators": "derived",
    "dialect": [],
    "sample_creation": "created",
    "bibtex_citation": "",
}


def _shapes_split(world: Path):
    """Queries, corpus and qrels of DemoShapesT2I from the MMEB Shapes_t2i subset."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    from PIL import Image

    from demo.world import T2I_PREFIX

    rows = pq.read_table(world / "mmeb" / "Shapes_t2i" / "test-00000-of-00001.parquet").to_pylist()
    rows = rows[: len(rows[0]["tgt_img_path"])]  # the first pool: one query per image of the pool
    images = sorted({p for r in rows for p in r["tgt_img_path"]})
    doc_id = {p: f"d{i}" for i, p in enumerate(images)}
    root = world / "mmeb" / "images"
    corpus = Dataset.from_dict({"id": [doc_id[p] for p in images],
                                "image": [Image.open(root / p).convert("RGB") for p in images]})  # fmt: skip
    captions = [r["qry_text"].removeprefix(T2I_PREFIX).strip() for r in rows]
    queries = Dataset.from_dict({"id": [f"q{i}" for i in range(len(rows))], "text": captions})
    qrels = {f"q{i}": {doc_id[r["tgt_img_path"][0]]: 1} for i, r in enumerate(rows)}
    return queries, corpus, qrels


def _pages_split(world: Path):
    """Queries, corpus and qrels of DemoPages from the ViDoRe BEIR folder."""
    import pyarrow.parquet as pq
    from datasets import Dataset
    from PIL import Image

    from demo.world import pool_name

    folder = world / "vidore" / pool_name(0)
    corpus_rows = pq.read_table(folder / "corpus" / "test-00000-of-00001.parquet").to_pylist()
    query_rows = pq.read_table(folder / "queries" / "test-00000-of-00001.parquet").to_pylist()
    qrel_rows = pq.read_table(folder / "qrels" / "test-00000-of-00001.parquet").to_pylist()
    corpus = Dataset.from_dict({
        "id": [f"d{r['corpus-id']}" for r in corpus_rows],
        "image": [Image.open(io.BytesIO(r["image"]["bytes"])).convert("RGB") for r in corpus_rows],
    })  # fmt: skip
    queries = Dataset.from_dict({"id": [f"q{r['query-id']}" for r in query_rows],
                                 "text": [r["query"] for r in query_rows]})  # fmt: skip
    qrels: dict[str, dict[str, int]] = {}
    for r in qrel_rows:
        qrels.setdefault(f"q{r['query-id']}", {})[f"d{r['corpus-id']}"] = int(r["score"])
    return queries, corpus, qrels


def build_tasks(world: Path) -> list:
    """The two demo tasks as mteb ``AbsTaskRetrieval`` instances reading ``world``."""
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    def make(name: str, task_type: str, description: str, loader, prompt: dict | None):
        metadata = TaskMetadata(name=name, type=task_type, description=description, category="t2i",
                                modalities=["text", "image"], prompt=prompt, **_GENERAL)  # fmt: skip

        def load_data(self, num_proc: int | None = None, **kwargs) -> None:
            queries, corpus, qrels = loader(world)
            split = RetrievalSplitData(queries=queries, corpus=corpus, relevant_docs=qrels, top_ranked=None)
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

        return type(name, (AbsTaskRetrieval,), {"metadata": metadata, "load_data": load_data})()

    return [
        make("DemoShapesT2I", "Any2AnyRetrieval", "Shape captions retrieve their image (demo world, pool 0).",
             _shapes_split, {"query": T2I_INSTRUCTION}),
        make("DemoPages", "DocumentUnderstanding", "Queries retrieve rendered pages (demo world, pool 0).",
             _pages_split, None),
    ]  # fmt: skip


def evaluate(models: dict[str, Path], world: Path) -> dict[str, dict[str, float]]:
    """``{model: {task: nDCG@5 in %}}`` for each checkpoint."""
    import mteb

    from moca_bench.mteb_models import moca_model_meta

    results: dict[str, dict[str, float]] = {}
    for label, ckpt in models.items():
        model = moca_model_meta(str(ckpt), name=f"moca-demo/{label}").load_model(device="cpu")
        out = mteb.evaluate(model, build_tasks(world), cache=None, show_progress_bar=False)
        results[label] = {r.task_name: 100.0 * float(r.scores["test"][0][METRIC]) for r in out.task_results}
        logger.info("%s: %s", label, results[label])
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, evaluate every ``--model`` and write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m demo.mteb_eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, required=True, help="the demo world folder")
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=DIR", help="a checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch

    torch.set_num_threads(1)
    models = dict(spec.split("=", 1) for spec in args.model)
    results = evaluate({k: Path(v) for k, v in models.items()}, args.world)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
