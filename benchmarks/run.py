"""``make bench``: run every CPU benchmark (about 30 minutes on 2 cores) and write a Markdown summary.

Each benchmark is its own module (``python -m benchmarks.<name>``) writing ``results/benchmarks/<name>.json``;
this script runs them in sequence with sizes that fit the budget, then renders
``results/benchmarks/SUMMARY.md`` from whatever JSON files exist. ``--only NAME ...`` runs a subset,
``--summary-only`` just re-renders the summary. The GPU check is separate (``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS

logger = logging.getLogger(__name__)
MTEB_PYTHON = Path(__file__).resolve().parents[1] / ".venv-mteb" / "bin" / "python"

JOBS = {
    "encode_tiny": ["benchmarks.encode", "--size", "tiny", "--queries", "96", "--pages", "48", "--profile"],
    "encode_mid": ["benchmarks.encode", "--size", "mid", "--queries", "64", "--pages", "32", "--repeats", "1"],
    "vision_attention": ["benchmarks.vision_attention", "--repeats", "2"],
    "scoring": ["benchmarks.scoring", "--repeats", "1", "--startup-runs", "60"],
    "topk": ["benchmarks.topk"],
    "mmeb_cost": ["benchmarks.mmeb_cost"],
    "train_cpt": ["benchmarks.train_cpt", "--steps", "40"],
    "train_cl": ["benchmarks.train_cl", "--steps", "30"],
    "st_encode_mid": ["benchmarks.st_encode", "--size", "mid", "--queries", "64", "--pages", "32", "--repeats", "2"],
    "st_quant": ["benchmarks.st_quant", "--steps", "200"],  # trains here (.venv), evaluates with .venv-mteb
    "cache_mteb": ["benchmarks.cache_mteb", "--pages", "32", "--queries", "8"],
    "cache_vidore": ["benchmarks.cache_vidore", "--pages", "32", "--queries", "16"],
    "devices": ["benchmarks.devices", "--queries", "48", "--pages", "24"],
    "encode_memory": ["benchmarks.encode_memory", "--pages", "1000", "--tokens", "256", "--full-pages", "200"],
    "weights_identity": ["benchmarks.weights_identity", "--repeats", "20"],
}
# sentence-transformers 6.2 and mteb 2.x live in .venv-mteb
PYTHON_FOR = {"st_encode_mid": MTEB_PYTHON, "cache_mteb": MTEB_PYTHON}


def _fmt(x) -> str:
    return f"{x:,.3g}" if isinstance(x, float) else str(x)


def summary() -> str:
    """Markdown summary of the result files present (ratios first: they are what a single run supports)."""
    lines = ["# Benchmark summary (CPU; ratios are measured side by side in one run)", ""]

    def load(name):
        path = RESULTS / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    for size in ("tiny", "mid"):
        r = load(f"encode_{size}")
        if r:
            title = f"{size} random model, {r['n_items']} items: {r['n_queries']} queries + {r['n_pages']} pages"
            rows = [("ours", "ours"), ("ours, inline (no prefetch thread)", "ours_inline"),
                    ("ours on the stock vision loop", "ours_stock_vision"),
                    ("naive (fixed order, pad to 32, stock vision loop)", "naive")]  # fmt: skip
            lines += [
                f"## Encode ({title})",
                "| | items/s | real tokens/s | padded fraction | peak RSS MB |",
                "|---|---|---|---|---|",
                *(
                    f"| {label} | {r[k]['items_per_s']} | {r[k]['real_tokens_per_s']} | "
                    f"{r[k]['padded_token_fraction']} | {r[k]['peak_rss_mb']} |"
                    for label, k in rows
                    if k in r
                ),
                f"\nThroughput ratio: **{r['throughput_ratio']}x** with the default prefetch thread, "
                f"**{r.get('throughput_ratio_inline', '-')}x** inline (batching alone), "
                f"{r.get('throughput_ratio_stock_vision', '-')}x with ours on the stock vision loop; "
                f"max |diff| {r['max_abs_diff_vs_naive']:.1e}.",
                "",
            ]
    lines += _vision_attention_section(load("vision_attention"))
    r = load("scoring")
    if r:
        cfg, sc = r["config"], r["scoring"]
        lines += [
            f"## Scoring: {cfg['queries']} queries x {cfg['passages']:,} passages, dim {cfg['dim']} (CPU)",
            "| variant | seconds | extra peak MB | time vs plain | memory vs plain | max abs diff |",
            "|---|---|---|---|---|---|",
        ]
        for name, v in sc.items():
            lines.append(
                f"| {name} | {v['median_seconds']:.2f} | {v['median_extra_peak_mb']:.0f} | "
                f"{v['time_vs_plain']} | {v['extra_memory_vs_plain']} | {v['check']['max_abs_diff']} |"
            )
        hook = r.get("hook_startup", {}).get("as_configured")
        if hook:
            lines.append(
                f"\nStart-up hook: +{hook['overhead_median_ms']} ms median per interpreter start "
                f"(hook import {hook['hook_import_cumulative_median_ms']} ms)."
            )
        lines.append("")
    r = load("topk")
    if r:
        lines += [
            f"## Top-k: {r['queries']} queries x {r['passages']:,} passages, dim {r['dim']}, k {r['k']}",
            "| | seconds | peak RSS MB |",
            "|---|---|---|",
            f"| streamed top-k | {r['streamed']['seconds']} | {r['streamed']['peak_rss_mb']} |",
            f"| full matrix | {r['full']['seconds']} | {r['full']['peak_rss_mb']} |",
            f"\nTime ratio {r['time_ratio_streamed_vs_full']}, memory ratio {r['memory_ratio_streamed_vs_full']}, "
            f"same indices: {r['same_indices']}.",
            "",
        ]
    r = load("mmeb_v2_cost")
    if r:
        lines += ["## MMEB-V2 cost model (forward passes after de-duplication; estimates, see docs/mmeb.md)",
                  "| group | queries | unique inputs | naive passes | video inputs | frames | unknown corpora |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, g in [*r["modalities"].items(), *r["meta_tasks"].items(), ("overall", r["overall"])]:
            lines.append(f"| {label} | {g['queries']} | {g['unique_inputs']} | {g['naive_passes']} | "
                         f"{g['video_inputs']} | {g['frames']} | {g['tasks_with_unknown_corpus']} |")
        lines.append("")
    lines += _st_summary(load)
    lines += _throughput_sections(load)
    lines += _scale_sections(load)
    for name in ("mmeb_cost", "train_cpt", "train_cl"):
        r = load(name)
        if r:
            body = {k: v for k, v in r.items() if k != "environment"}
            lines += [f"## {name}", "```", json.dumps(body, indent=1, default=_fmt)[:3000], "```", ""]
    return "\n".join(lines) + "\n"


def _vision_attention_section(r: dict | None) -> list[str]:
    """SDPA calls and time per vision forward: stock per-window loop vs grouped vs block-diagonal (issue 25)."""
    if not r:
        return []
    lines = [
        f"## Vision attention per vision forward ({r['device']}, {r['dtype']}; random-weight towers)",
        "| workload | tokens | strategy | SDPA calls | wall s | CPU s | window-block attention s* | "
        "full-block attention s* | max abs diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, w in r["workloads"].items():
        for strategy, v in w["strategies"].items():
            cells = (name, w["tokens"], strategy, v["sdpa_calls"], v["seconds_best"], v.get("cpu_seconds_of_best", "-"),
                     v.get("window_attention_s", "-"), v.get("full_attention_s", "-"),
                     f"{v['max_abs_diff_vs_stock']:.1e}")  # fmt: skip
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append("\n\\* inside the attention modules, by hooks: CPU seconds on CPU, wall seconds on CUDA.\n")
    lines += [
        f"- {name}: grouped {w['speedup_grouped_vs_stock']}x stock wall time ({w['cpu_speedup_grouped_vs_stock']}x CPU "
        f"time), window-block attention {w['window_attention_speedup']}x"
        for name, w in r["workloads"].items()
        if "speedup_grouped_vs_stock" in w
    ]
    return [*lines, ""]


def _throughput_sections(load) -> list[str]:
    """The embedding-cache and multi-device results (issue: evaluation throughput at benchmark scale)."""
    lines = []
    r = load("cache_mteb")
    if r:
        w, c = r["without_cache"], r["with_cache"]
        lines += [
            f"## Embedding cache on a ViDoRe-v3-shaped mteb task ({r['n_pages']} pages, {r['n_languages']} languages)",
            "| | document forward passes | per corpus | seconds |",
            "|---|---|---|---|",
            f"| without cache | {w['document_forward_passes']} | {w['forward_passes_per_corpus']} | {w['seconds']} |",
            f"| with cache | {c['document_forward_passes']} | {c['forward_passes_per_corpus']} | {c['seconds']} |",
            f"\nWall-time ratio **{r['wall_time_ratio']}x**; identical scores: {r['same_scores']}.",
            "",
        ]
    r = load("cache_vidore")
    if r:
        lines += [
            f"## vidore-benchmark rerun with a warm cache ({r['n_pages']} pages, {r['n_queries']} queries, stock CLI)",
            "| run | page forward passes | pages from cache | seconds (incl. CLI start-up) | nDCG@5 |",
            "|---|---|---|---|---|",
        ]
        for name in ("no_cache", "cold", "warm"):
            v = r[name]
            cells = (name, v["page_forward_passes"], v["pages_from_cache"], v["seconds"], v["ndcg_at_5"])
            lines.append("| " + " | ".join(map(str, cells)) + " |")
        lines += ["", f"Same nDCG@5: {r['same_ndcg']}; cold/warm wall time {r['wall_time_ratio_cold_vs_warm']}x.", ""]
    r = load("devices")
    if r:
        one, two = r["one_process"], r["two_workers"]
        lines += [
            f"## Data-parallel encoding on CPU ({r['n_items']} items, {r['size']} random model)",
            "| | items/s | seconds | CPU seconds |",
            "|---|---|---|---|",
            *(
                f"| {label} | {v['items_per_s']} | {v['seconds_best']} | {v['cpu_seconds_all']} |"
                for label, v in (("1 process, 1 thread", one), ("2 worker processes, 1 thread each", two))
            ),
            f"\nRatio **{r['throughput_ratio']}x** (pool start-up {r['pool_start_seconds']} s, once); "
            f"max |diff| {r['max_abs_diff']:.1e}; CPU cores two busy processes got during the run: "
            f"{r.get('parallel_cores', '-')} (2.0 on an idle 2-core machine).",
            "",
        ]
    return lines


def _scale_sections(load) -> list[str]:
    """Bounded memory of one large encode call, and the per-call cost of the cache identity (issue 24)."""
    lines = []
    r = load("encode_memory")
    if r:
        lines += [
            f"## Peak host memory of one encode call over {r['runs'][0]['pages']} page images (1240 x 1754, CPU)",
            "| prefetcher | visual tokens per page | pages | peak RSS MB | growth during the call MB | "
            "prepared batches alive (max) | seconds |",
            "|---|---|---|---|---|---|---|",
            *[f"| {v['variant']} | {v['tokens_per_page']} | {v['pages']} | {v['peak_rss_mb']} | {v['growth_mb']} | "
              f"{v['max_live_prepared_batches']} of {v['batches']} | {v['seconds']} |" for v in r["runs"]],
            f"\nGrowth before / after: **{r['growth_ratio_before_over_after']}x**; same vectors: {r['same_vectors']}; "
            f"the old prefetcher at MoCa's 1,024 tokens per page would hold ~{r['before_projected_at_1024_tokens_gb']} "
            "GB of prepared batches for these pages.",
            "",
        ]  # fmt: skip
    r = load("weights_identity")
    if r:
        lines += ["## Weights fingerprint per encode call (cache identity; CPU, one thread)",
                  "| model | tensors | values | values read | CPU ms (median) | wall ms (median) |",
                  "|---|---|---|---|---|---|",
                  *[f"| {n} | {v['tensors']} | {v['values']:.3g} | {v['values_read']} | {v['median_cpu_ms']} | "
                    f"{v['median_ms']} |" for n, v in r["results"].items()], ""]  # fmt: skip
    return lines


def _st_summary(load) -> list[str]:
    """The sentence-transformers export: encode cost vs MoCaEncoder, and what int8 / binary embeddings keep."""
    lines = []
    r = load("st_encode_mid")
    if r:
        lines += [
            f"## sentence-transformers export vs MoCaEncoder (mid random model, {r['n_items']} mixed items)",
            "| | wall s | CPU s | items/s | peak RSS MB |",
            "|---|---|---|---|---|",
            *[f"| {n} | {r[k]['wall_s_best']} | {r[k]['cpu_s_of_best']} | {r[k]['items_per_s']} | "
              f"{r[k]['peak_rss_mb']} |" for n, k in (("MoCaEncoder", "moca"), ("MoCaEncoder inline", "moca_inline"),
                                                     ("sentence-transformers", "st"))],
            f"\nsentence-transformers takes **{r['wall_ratio_moca_vs_st']}x** MoCaEncoder's wall time "
            f"({r['wall_ratio_moca_inline_vs_st']}x vs inline) and {r['cpu_ratio_moca_vs_st']}x its CPU time; "
            f"max |diff| {r['max_abs_diff_st_vs_moca']:.1e}.",
            "",
        ]  # fmt: skip
    r = load("st_quant")
    if r:
        lines += [
            f"## Quantized embeddings on the demo pages ({r['queries']} queries, {r['pages']} pages, dim {r['dim']}; "
            f"chance {r['chance_ndcg@5']})",
            "| variant | bytes/page | nDCG@5 [95% CI] | vs float32 [95% CI] |",
            "|---|---|---|---|",
            *[f"| {n} | {v['bytes_per_page']} | {v['ndcg@5']} {v['ci95']} | {v['delta_vs_float32']:+} "
              f"{v['delta_ci95']} |" for n, v in r["variants"].items()],
            "",
        ]  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=sorted(JOBS), help="run these benchmarks only")
    p.add_argument("--summary-only", action="store_true", help="only re-render SUMMARY.md")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    failed = []
    for name in [] if args.summary_only else (args.only or list(JOBS)):
        t0 = time.perf_counter()
        logger.info("== %s", name)
        python = PYTHON_FOR.get(name, Path(sys.executable))
        if not python.is_file():
            logger.error("== %s needs %s (make env)", name, python)
            failed.append(name)
            continue
        rc = subprocess.run([str(python), "-m", *JOBS[name]], env=env).returncode
        logger.info("== %s: rc %d in %.0f s", name, rc, time.perf_counter() - t0)
        if rc:
            failed.append(name)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "SUMMARY.md").write_text(summary())
    logger.info("summary: %s", RESULTS / "SUMMARY.md")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
