"""vidore-benchmark rerun with a warm persistent cache: the stock CLI, twice, on the same local collection.

Both runs are ``vidore-benchmark --log info evaluate-retriever --model-class moca`` in fresh processes
with ``MOCA_CACHE_DIR`` pointing at one folder: the first run (cold) encodes and stores every query and
page, the second (warm) should run no page through the model. A third run without the variable is the
reference. Page forward passes are read from the retriever's log lines; wall time includes the CLI's
start-up (about 8 s of imports). Runs in the main environment; writes ``results/benchmarks/cache_vidore.json``.

    python -m benchmarks.cache_vidore [--pages 32] [--queries 16] [--size mid]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

logger = logging.getLogger(__name__)
SIZES = {"tiny": {"hidden": 64, "layers": 2}, "mid": {"hidden": 256, "layers": 4}}
STATS = re.compile(r"(pages|queries): (\d+) inputs, \d+ unique, (\d+) from cache .*?, (\d+) encoded")


def write_collection(root: Path, n_pages: int, n_queries: int) -> Path:
    """A BEIR-layout dataset (corpus, queries, qrels parquet + README configs) of rendered pages."""
    import datasets

    from benchmarks.encode import make_corpus

    pages = [x["image"] for x in make_corpus(0, n_pages)]
    qids = list(range(n_queries))
    tables = {
        "corpus": datasets.Dataset.from_dict(
            {"corpus-id": list(range(n_pages)), "image": pages},
            features=datasets.Features({"corpus-id": datasets.Value("int64"), "image": datasets.Image()}),
        ),
        "queries": datasets.Dataset.from_dict(
            {"query-id": qids, "query": [f"question {k} about page {k % n_pages}" for k in qids]}
        ),
        "qrels": datasets.Dataset.from_dict(
            {"query-id": qids, "corpus-id": [k % n_pages for k in qids], "score": [1] * n_queries}
        ),
    }  # fmt: skip
    readme = ["---", "configs:"]
    for name, table in tables.items():
        (root / name).mkdir(parents=True)
        table.to_parquet(str(root / name / "test-00000-of-00001.parquet"))
        readme += [f"- config_name: {name}", "  data_files:", "  - split: test", f"    path: {name}/test-*"]
    (root / "README.md").write_text("\n".join([*readme, "---", ""]))
    return root


def run_cli(checkpoint: Path, data: Path, out: Path, work: Path, cache_dir: Path | None) -> dict:
    """One stock-CLI evaluation; returns wall seconds, forward passes by side and nDCG@5."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCA_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_DATASETS_CACHE=str(work / "hf"))
    env.update({"MOCA_CACHE_DIR": str(cache_dir)} if cache_dir else {})
    cli = Path(sys.executable).with_name("vidore-benchmark")
    args = [str(cli), "--log", "info", "evaluate-retriever", "--model-class", "moca", "--model-name", str(checkpoint),
            "--dataset-name", str(data), "--dataset-format", "beir", "--split", "test",
            "--batch-query", "8", "--batch-passage", "8", "--output-dir", str(out)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, cwd=work, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"vidore-benchmark failed:\n{log[-3000:]}")
    passes = {"pages": 0, "queries": 0, "pages_from_cache": 0}
    for side, _, cached, encoded in STATS.findall(log):
        passes[side] += int(encoded)
        if side == "pages":
            passes["pages_from_cache"] += int(cached)
    (metrics_file,) = out.glob("*_metrics.json")
    ndcg = json.loads(metrics_file.read_text())["metrics"][str(data)]["ndcg_at_5"]
    return {"seconds": round(seconds, 2), "page_forward_passes": passes["pages"], "ndcg_at_5": ndcg,
            "pages_from_cache": passes["pages_from_cache"], "query_forward_passes": passes["queries"]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, default=32)
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--size", choices=sorted(SIZES), default="mid")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from moca_model.processing_moca import DEFAULT_MAX_LENGTH, DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
    from moca_model.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = write_tiny_checkpoint(tmp / "model", seed=0, **SIZES[args.size])
        paper = {"min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": DEFAULT_MAX_PIXELS, "max_length": DEFAULT_MAX_LENGTH}
        (Path(ckpt) / "moca_config.json").write_text(json.dumps(paper))  # MoCa's page resolution
        data = write_collection(tmp / "collection", args.pages, args.queries)
        result = {"size": args.size, "n_pages": args.pages, "n_queries": args.queries}
        for name, cache in (("no_cache", None), ("cold", tmp / "cache"), ("warm", tmp / "cache")):
            result[name] = run_cli(ckpt, data, tmp / f"out-{name}", tmp, cache)
            logger.info("%s: %s", name, result[name])
    result["warm_runs_no_page"] = result["warm"]["page_forward_passes"] == 0
    result["same_ndcg"] = result["warm"]["ndcg_at_5"] == result["cold"]["ndcg_at_5"] == result["no_cache"]["ndcg_at_5"]
    result["wall_time_ratio_cold_vs_warm"] = round(result["cold"]["seconds"] / result["warm"]["seconds"], 2)
    path = write_result("cache_vidore", result)
    logger.info("warm rerun: %d page forward passes; %.2fx faster -> %s", result["warm"]["page_forward_passes"],
                result["wall_time_ratio_cold_vs_warm"], path)  # fmt: skip
    return 0 if result["warm_runs_no_page"] and result["same_ndcg"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
