"""Write a run's results: one seed -> ``results.json`` + ``demo.png``; several -> ``study.json/.md/.png``.

Both carry the cost of every job in CPU seconds (one torch thread per job, so CPU seconds are close to
what the job takes alone on an idle machine) and the idle-machine wall time they imply for the run's job
graph (:func:`demo.jobs.simulate`), besides the wall time measured here.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from demo import report, study
from demo.collect import PAGES
from demo.jobs import Job, simulate
from demo.plan import Preset
from demo.world import MMEB_SUBSETS, pool_name

logger = logging.getLogger(__name__)

KINDS = ("base", "cpt", "cl", "mmeb", "vidore", "mteb")


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
        "graph with those durations on `jobs` slots, plus the world/initialisation setup",
    }


def _mteb_check(work: Path, preset: Preset, values: dict) -> dict | None:
    """MTEB's DemoPages nDCG@5 next to ViDoRe's on the same pool (pool 0), per model."""
    path = work / f"s{preset.seeds[0]}" / "evals" / "mteb.json"
    if not path.is_file():
        return None
    mteb = json.loads(path.read_text())
    per_pool = len(values[next(iter(values))][PAGES]) // preset.world.page_pools
    return {m: {**scores, f"ViDoRe {pool_name(0)}": float(np.mean(values[m][PAGES][:per_pool]))}
            for m, scores in mteb.items()}  # fmt: skip


def write(preset: Preset, per_seed: dict, manifest: dict, work: Path, results_dir: Path, *, graph: list[Job],
          timings: dict, jobs: int, started_at: float) -> dict:  # fmt: skip
    """Statistics, tables and charts for the run; returns the payload written."""
    chance = report.chance_scores(group_chance(manifest, work / "world"))
    summaries = {seed: report.seed_summary(d["values"], seed=seed) for seed, d in per_seed.items()}
    first = preset.seeds[0]
    payload = {
        "preset": {"seeds": list(preset.seeds), "arms": list(preset.arms), "base_steps": preset.base_steps,
                   "cpt_steps": preset.cpt_steps, "cl_steps": preset.cl_steps},
        "world": manifest["config"],
        "eval_sizes": {g: int(np.count_nonzero(~np.isnan(v))) for g, v in per_seed[first]["values"]["base"].items()},
        "chance": chance,
        "per_seed": {str(s): {**summaries[s], "diagnostics": per_seed[s]["diagnostics"],
                              "vidore_reported_ndcg5": per_seed[s]["vidore_reported"]} for s in preset.seeds},
        "mteb_check": _mteb_check(work, preset, per_seed[first]["values"]),
        "cost": cost(graph, timings, jobs, started_at),
        "work_dir": str(work),
    }  # fmt: skip
    results_dir.mkdir(parents=True, exist_ok=True)
    out = sys.stdout
    if len(preset.seeds) == 1:
        s = summaries[first]
        report.write_json(payload, results_dir / "results.json")
        title = f"MoCa demo, seed {first}: arms from one causal base (95% bootstrap CI; dashed: chance)"
        report.write_chart(s["scores"], chance, results_dir / "demo.png", title)
        out.write(f"\nMoCa demo (seed {first}): score [95% bootstrap CI over queries], in %\n")
        out.write(report.format_table(s["scores"], chance) + "\n\nper MMEB subset (hit@1):\n")
        out.write(report.format_table(s["subsets"], chance) + "\n\npaired differences (same queries):\n")
        out.write(report.format_differences(s["differences"]) + "\n")
        written = ["results.json", "demo.png"]
    else:
        agg = study.aggregate(summaries)
        payload["study"] = agg
        diagnostics = _mean_diagnostics(per_seed)
        text = study.markdown(agg, chance, diagnostics=diagnostics, cost=payload["cost"])
        report.write_json(payload, results_dir / "study.json")
        (results_dir / "study.md").write_text(text)
        study.write_chart(agg, chance, results_dir / "study.png")
        out.write("\n" + text)
        written = ["study.json", "study.md", "study.png"]
    c = payload["cost"]
    out.write(f"\nwrote {', '.join(str(results_dir / w) for w in written)}; {c['wall_this_invocation']:.0f} s "
              f"here ({c['jobs_run_here']} of {c['jobs_total']} jobs run, the rest resumed), "
              f"{c['cpu_total']:.0f} CPU s" + (f", about {c['idle_wall_estimate']:.0f} s on an idle machine with "
              f"{jobs} jobs" if c["idle_wall_estimate"] else "") + "\n")  # fmt: skip
    return payload


def _mean_diagnostics(per_seed: dict) -> dict[str, dict]:
    runs: dict[str, list[dict]] = {}
    for d in per_seed.values():
        for run, diag in d["diagnostics"].items():
            runs.setdefault(run, []).append(diag)
    return {run: {k: sum(d[k] for d in ds) / len(ds) for k in ds[0]} for run, ds in runs.items()}
