"""Write a run's results: one seed -> ``results.json`` + ``demo.png``; several -> ``study.json/.md/.png``.

Several seeds also get the recomputation files ``study/per_query.json.gz`` and ``study/curves.json.gz``.

Everything carries the cost of every job in CPU seconds (one torch thread per job, so CPU seconds are close to
what the job takes alone on an idle machine), the idle-machine wall time they imply for the run's job graph
(:func:`demo.jobs.simulate`), the commits the jobs ran on and the protocol's hash. No absolute path is
written: the work directory is recorded relative to the repository.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from demo import report, stats, study
from demo.collect import PAGES
from demo.jobs import Job, simulate
from demo.plan import ROOT, Preset
from demo.provenance import machine, protocol_hash, training_code_changes, trees_at
from demo.world import MMEB_SUBSETS, pool_name

logger = logging.getLogger(__name__)

KINDS = ("base", "cpt_clm", "cpt", "cl", "mmeb", "vidore", "val", "mteb")
COMMITTED_STUDY = ROOT / "results" / "demo" / "study.json"


def group_chance(manifest: dict, world: Path) -> dict[str, float]:
    """Expected score of a random ranking for each per-query group."""
    import pyarrow.parquet as pq

    out = {}
    for subset in MMEB_SUBSETS:
        rows = pq.read_table(world / "mmeb" / subset / "test-00000-of-00001.parquet", columns=["tgt_text"])
        sizes = [len(t) for t in rows.column("tgt_text").to_pylist()]
        out[subset] = sum(report.chance_hit1(n) for n in sizes) / len(sizes)
    out[PAGES] = report.chance_ndcg5(manifest["vidore"]["pages"])
    return out


def relative(path: Path) -> str:
    """``path`` relative to the repository when inside it, else its last component (never absolute)."""
    resolved = Path(path).resolve()
    return os.path.relpath(resolved, ROOT) if resolved.is_relative_to(ROOT) else resolved.name


def cost(graph: list[Job], timings: dict, jobs: int, started_at: float) -> dict:
    """CPU seconds per job kind, their total, and the idle-machine wall time they imply.

    ``started_at`` (``time.time()``) is when this invocation began; its wall time says nothing about the
    whole run, since a resumed run skips finished jobs: ``jobs_run_here`` says how many it actually ran.
    """
    by_kind: dict[str, list[float]] = {}
    for job in graph:
        if job.name in timings:
            kind = next(k for k in KINDS if job.name.split(":", 1)[1].startswith(k))
            by_kind.setdefault(kind, []).append(timings[job.name]["cpu"])
    seconds = {name: t["cpu"] for name, t in timings.items() if "wall" in t}
    setup = timings.get("setup", {}).get("cpu", 0.0)
    complete = all(j.name in seconds for j in graph)
    return {
        "jobs": jobs,
        "by_kind": {k: {"runs": len(v), "cpu_mean": sum(v) / len(v), "cpu_total": sum(v)} for k, v in by_kind.items()},
        "per_job": {j.name: timings.get(j.name) for j in graph},
        "setup_cpu": setup,
        "cpu_total": setup + sum(seconds.get(j.name, 0.0) for j in graph),
        "idle_wall_estimate": setup + simulate(graph, seconds, max_parallel=jobs) if complete else None,
        "wall_this_invocation": time.time() - started_at,
        "jobs_run_here": sum(1 for j in graph if timings.get(j.name, {}).get("finished_at", 0.0) >= started_at),
        "jobs_total": len(graph),
        "note": "cpu = user + system seconds of each job (one torch thread); idle_wall_estimate schedules the job "
        "graph with those durations on `jobs` slots, plus the world/initialisation setup; `code` = the commit "
        "each job ran on",
    }


def provenance(graph: list[Job], timings: dict) -> dict:
    """The protocol's hash, the distinct commits the graph's jobs ran on, and whether their training code agrees.

    A job records the checkout's commit when it finishes; ``same_training_code`` says whether every such commit
    has the same ``moca_model``, ``moca_train``, ``moca_bench`` and ``configs`` files as the first
    (``training_code_changes`` lists the files that differ, per commit). Commits that only changed the demo's
    reporting or docs do not change a trained model, nor does the selected learning rate written into the CL
    recipe, which every CL command overrides (:data:`demo.provenance.OVERRIDDEN_LINES`).
    """
    codes = sorted({c for c in (timings[j.name].get("code") for j in graph if j.name in timings) if c})
    trees = {c: trees_at(c) for c in codes}
    changes = {c: training_code_changes(codes[0], c) for c in codes[1:]}
    dirty = any(c.endswith("+dirty") for c in codes)
    return {"protocol_sha256": protocol_hash(), "commits": codes, "training_code_trees": trees,
            "training_code_changes": changes,
            "same_training_code": not dirty and all(v == [] for v in changes.values())}  # fmt: skip


def _mteb_check(work: Path, preset: Preset, values: dict) -> dict | None:
    """MTEB's DemoPages nDCG@5 next to ViDoRe's on the same pool (pool 0), per model."""
    path = work / f"s{preset.seeds[0]}" / "evals" / "mteb.json"
    if not path.is_file():
        return None
    mteb = json.loads(path.read_text())
    per_pool = len(values[next(iter(values))][PAGES]) // preset.world.page_pools
    names = {m: m.split("_lr")[0] for m in mteb}  # the MTEB job names CL models by their run name
    return {names[m]: {**scores, f"ViDoRe {pool_name(0)}": float(np.mean(values[names[m]][PAGES][:per_pool]))}
            for m, scores in mteb.items() if names[m] in values}  # fmt: skip


def _public(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k != "replicates"}


def write_gzip_json(payload, path: Path) -> None:
    """Compact JSON, gzip-compressed with a fixed timestamp (same content, same bytes), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=9) as f:
        f.write(json.dumps(report._finite(payload), separators=(",", ":")).encode())
    tmp.replace(path)


def _per_query(per_seed: dict, clusters: dict) -> dict:
    def column(v: np.ndarray) -> list:
        return [None if np.isnan(x) else round(float(x), 4) for x in v]

    return {"groups": list(report.groups()), "units": "MMEB subsets: hit@1 in %; pages: nDCG@5 in %",
            "clusters": {g: clusters[g] for g in report.groups()},
            "values": {str(s): {m: {g: column(v) for g, v in d["values"][m].items()} for m in d["values"]}
                       for s, d in per_seed.items()}}  # fmt: skip


def committed_differences(path: Path = COMMITTED_STUDY) -> dict | None:
    """The committed study's seed-level differences (``study.json``), or None if there is none."""
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text())
        return payload["study"]["differences"] if "provenance" in payload else None  # older layouts: none
    except (KeyError, ValueError):
        return None


def write(preset: Preset, per_seed: dict, manifest: dict, work: Path, results_dir: Path, *, graph: list[Job],
          timings: dict, jobs: int, started_at: float) -> dict:  # fmt: skip
    """Statistics, tables and charts for the run; returns the payload written."""
    chance = report.chance_scores(group_chance(manifest, work / "world"))
    clusters = json.loads((work / "world" / "clusters.json").read_text())
    weights = stats.cluster_weights([clusters[g] for g in report.groups()])
    summaries = {seed: report.seed_summary(d["values"], weights) for seed, d in per_seed.items()}
    first = preset.seeds[0]
    payload = {
        "preset": {"seeds": list(preset.seeds), "arms": list(preset.arms), "secondary_seeds":
                   list(preset.secondary_seeds), "secondary_arms": list(preset.secondary_arms),
                   "base_steps": preset.base_steps, "cpt_steps": preset.cpt_steps, "cl_steps": preset.cl_steps,
                   "cl_learning_rate": preset.learning_rates()[0]},
        "world": manifest["config"],
        "eval_sizes": {g: int(np.count_nonzero(~np.isnan(v))) for g, v in per_seed[first]["values"]["base"].items()}
        if "base" in per_seed[first]["values"] else None,
        "eval_clusters": {g: len(set(clusters[g])) for g in report.groups()},
        "chance": chance,
        "per_seed": {str(s): {**_public(summaries[s]), "diagnostics": per_seed[s]["diagnostics"],
                              "vidore_reported_ndcg5": per_seed[s]["vidore_reported"]} for s in per_seed},
        "mteb_check": _mteb_check(work, preset, per_seed[first]["values"]),
        "cost": cost(graph, timings, jobs, started_at),
        "provenance": provenance(graph, timings),
        "machine": machine(),
        "work_dir": relative(work),
    }  # fmt: skip
    results_dir.mkdir(parents=True, exist_ok=True)
    out = sys.stdout
    if len(per_seed) == 1:
        s = summaries[first]
        report.write_json(payload, results_dir / "results.json")
        title = f"MoCa demo, seed {first}: one training run per arm (95% cluster-bootstrap CI: evaluation noise only)"
        report.write_chart(s["scores"], chance, results_dir / "demo.png", title)
        out.write(f"\nMoCa demo (seed {first}): score [95% interval over evaluation clusters], in %.\n"
                  "These intervals hold EVALUATION NOISE ONLY (the same trained models, another draw of queries);\n"
                  "training randomness is larger: another seed, machine or code version moves scores by more.\n")
        out.write(report.format_table(s["scores"], chance) + "\n\nper MMEB subset (hit@1):\n")
        out.write(report.format_table(s["subsets"], chance) + "\n\npaired differences (same queries), each beside "
                  "the committed study's result over seeds (results/demo/study.json):\n")  # fmt: skip
        committed = committed_differences()
        out.write(report.format_differences(s["differences"], committed) + "\n")
        if committed is None:
            out.write("(no committed study found at results/demo/study.json)\n")
        (results_dir / "summary.md").write_text(demo_summary(payload, s, chance))
        written = ["results.json", "demo.png", "summary.md"]
    else:
        agg = study.aggregate(summaries)
        payload["study"] = agg
        diagnostics = _mean_diagnostics(per_seed)
        text = study.markdown(agg, chance, diagnostics=diagnostics, cost=payload["cost"],
                              provenance=payload["provenance"],
                              tasks=study.task_accuracy({s: d["curves"] for s, d in per_seed.items()}))  # fmt: skip
        report.write_json(payload, results_dir / "study.json")
        (results_dir / "study.md").write_text(text)
        per_seed_overall = {m: {s: summaries[s]["scores"]["MMEB overall"][m]["score"] for s in summaries
                                if m in summaries[s]["scores"]["MMEB overall"]} for m in agg["scores"]["MMEB overall"]}
        study.write_chart(agg, chance, per_seed_overall, results_dir / "study.png")
        write_gzip_json(_per_query(per_seed, clusters), results_dir / "study" / "per_query.json.gz")
        write_gzip_json({str(s): d["curves"] for s, d in per_seed.items()}, results_dir / "study" / "curves.json.gz")
        out.write("\n" + text)
        written = ["study.json", "study.md", "study.png", "study/per_query.json.gz", "study/curves.json.gz"]
    c = payload["cost"]
    out.write(f"\nwrote {', '.join(str(results_dir / w) for w in written)}; {c['wall_this_invocation']:.0f} s "
              f"here ({c['jobs_run_here']} of {c['jobs_total']} jobs run, the rest resumed), "
              f"{c['cpu_total']:.0f} CPU s" + (f", about {c['idle_wall_estimate']:.0f} s on an idle machine with "
              f"{jobs} jobs" if c["idle_wall_estimate"] else "") + "\n")  # fmt: skip
    return payload


def demo_summary(payload: dict, summary: dict, chance: dict) -> str:
    """``make demo``'s log summary: machine facts, times, scores with their (evaluation-noise) intervals."""
    c, m = payload["cost"], payload["machine"]
    lines = ["# make demo: log summary", "",
             f"- machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} ({m['torch_cpu_capability']}"
             f" kernels), one torch thread per job, Python {m['python']}, {m['os']}; load average at the end "
             f"{m['load_average']}",
             f"- code: {', '.join(payload['provenance']['commits'])}; protocol SHA-256 "
             f"{payload['provenance']['protocol_sha256']}",
             f"- this invocation: {c['wall_this_invocation']:.0f} s wall, {c['jobs_run_here']} of {c['jobs_total']} "
             f"jobs run here; {c['cpu_total']:.0f} CPU s in all"
             + (f", about {c['idle_wall_estimate']:.0f} s on an idle machine with {c['jobs']} jobs" if
                c["idle_wall_estimate"] else ""), "",
             "Scores [95% interval over evaluation clusters: evaluation noise only]:", "", "```",
             report.format_table(summary["scores"], chance), "```", "", "Paired differences (evaluation noise only), "
             "beside the committed study's seed-level result:", "", "```",
             report.format_differences(summary["differences"], committed_differences()), "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _mean_diagnostics(per_seed: dict) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {}
    for d in per_seed.values():
        for run, diag in d["diagnostics"].items():
            runs.setdefault(run, []).append(diag)
    return {run: {k: sum(d[k] for d in ds if k in d) / sum(1 for d in ds if k in d) for k in ds[0]}
            for run, ds in runs.items()}  # fmt: skip
