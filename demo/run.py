"""``make demo`` / ``make demo-study`` (``python demo/run.py``): MoCa's claim tested the way the paper tests it.

From a causal base model trained here (next-token pre-training on unlabelled interleaved data), the same
contrastive recipe is run three ways: (a) causal, (b) bidirectional, (c) after MoCa's CPT (MLM + MAE); the
study adds CPT without MAE (d) and without MLM (e), three seeds and a label-efficiency sweep (b and c at
1/4 and 1/2 of the pairs). Every stage is a real entry point; every score gets a 95% bootstrap interval
over queries, and the study reports means and t-intervals over seeds and paired differences.

Usage::

    make demo                                    # one seed, arms a-c (about 10 min on an idle 2-core machine)
    make demo-study                              # the study: 3 seeds, arms a-e, label efficiency (about 1 h)
    python demo/run.py --preset smoke            # the reduced pipeline the test suite runs
    python demo/run.py --seeds 1 --jobs 1        # another seed, one stage at a time

The work directory (default ``demo_out/``) keeps the world, checkpoints and logs. A rerun skips stages whose
outputs exist and resumes training runs from their last checkpoint; the demo and the study share the seed-0
runs. Changing the world, a recipe or a step count starts the work directory over.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the ``demo`` package importable
    sys.path.insert(0, str(ROOT))

for _var, _value in (("OMP_NUM_THREADS", "1"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                     ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):  # fmt: skip
    os.environ.setdefault(_var, _value)

from demo import collect, outputs  # noqa: E402
from demo.jobs import Job, run_jobs  # noqa: E402
from demo.plan import ARMS, BASE, Preset, SeedPaths, eval_jobs, mteb_job, priority, training_jobs  # noqa: E402
from demo.world import WorldConfig, build_world  # noqa: E402

logger = logging.getLogger("demo")

# The stages' own `datasets` cache. datasets keys a local dataset folder by its name and file patterns, not
# its content, so a shared cache would hand vidore-benchmark the pages of an older world of the same name.
HF_CACHE = "hf_datasets"
STUDY_ARMS = ("a", "b", "c", "d", "e", "b_25", "b_50", "c_25", "c_50")
SMOKE_WORLD = WorldConfig(
    cl_pairs={"digits_cls": 128, "shapes_i2t": 32},
    corpus_shape_records=64,
    corpus_scene_records=16,
    corpus_digit_records=48,
    corpus_page_records=16,
    eval_queries=48,
    retrieval_pools=1,
    grounding_queries=48,
    page_pools=2,
    eval_digits=100,
    cl_digits=64,
)
PRESETS = {
    "demo": Preset(),
    "study": Preset(seeds=(0, 1, 2), arms=STUDY_ARMS, mteb=False),
    "smoke": Preset(world=SMOKE_WORLD, base_steps=40, cpt_steps=8, cl_steps=60),
}


def build_graph(preset: Preset, work: Path, manifest: dict, mteb_python: Path | None) -> list[Job]:
    """Every job of every seed, in start-priority order."""
    world = work / "world"
    graph: list[Job] = []
    for seed in preset.seeds:
        paths, tag = SeedPaths(work / f"s{seed}", preset), f"s{seed}:"
        graph += training_jobs(paths, seed, manifest, world, tag)
        for model in (BASE, *preset.arms):
            dep = f"{tag}base" if model == BASE else f"{tag}cl_{model}"
            graph += eval_jobs(model, paths.model(model), paths.evals, world, dep, tag)
        if preset.mteb and mteb_python is not None and seed == preset.seeds[0]:
            models = {m: paths.model(m) for m in (BASE, *preset.arms)}
            deps = tuple(f"{tag}cl_{m}" for m in preset.arms)
            graph.append(mteb_job(models, paths.evals, world, mteb_python, deps, tag))
    return sorted(graph, key=priority)


def _prepare(preset: Preset, work: Path, show_progress: bool) -> tuple[dict, float]:
    """Start over if the settings changed; build the world and each seed's initialisation."""
    from moca_model.tiny import write_tiny_checkpoint

    plan_path = work / "plan.json"
    identity = json.loads(json.dumps(preset.identity()))
    if plan_path.is_file() and json.loads(plan_path.read_text()) != identity:
        logger.info("settings changed since the last run in %s: starting over", work)
        for sub in [p for p in work.iterdir() if p.is_dir()]:
            shutil.rmtree(sub)
    work.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(identity, indent=2) + "\n")
    tic = time.process_time()
    if not (work / "world" / "world.json").is_file():
        shutil.rmtree(work / HF_CACHE, ignore_errors=True)
    manifest = build_world(preset.world, work / "world", show_progress=show_progress)
    for seed in preset.seeds:
        init = SeedPaths(work / f"s{seed}", preset).init
        if not (init / "config.json").is_file():
            write_tiny_checkpoint(init, seed=seed, hidden=64, layers=2)
    return manifest, time.process_time() - tic


def _record_timing(path: Path):
    def record(job: Job) -> None:
        timings = json.loads(path.read_text()) if path.is_file() else {}
        timings[job.name] = {"wall": round(job.seconds, 1), "cpu": round(job.cpu_seconds, 1),
                             "finished_at": round(time.time(), 1)}  # fmt: skip
        path.write_text(json.dumps(timings, indent=1) + "\n")

    return record


def run(preset: Preset, *, work: Path, results_dir: Path, jobs: int, show_progress: bool = True,
        mteb_python: Path | None = None) -> dict:  # fmt: skip
    """Run the pipeline of ``preset`` and write its results; returns the results payload.

    Args:
        preset: sizes, seeds and arms.
        work: work directory (world, checkpoints, logs); finished stages are skipped.
        results_dir: where the results go (``results.json`` + ``demo.png`` for one seed; ``study.json``,
            ``study.md`` and ``study.png`` for several).
        jobs: stages run in parallel (one torch thread each).
        show_progress: progress bars.
        mteb_python: the mteb environment's interpreter; None skips the MTEB harness check.
    """
    started_at = time.time()
    logger.info("[1/3] world and initialisations in %s", work)
    manifest, setup_cpu = _prepare(preset, work, show_progress)
    graph = build_graph(preset, work, manifest, mteb_python)
    for job in graph:
        job.env["HF_DATASETS_CACHE"] = str(work / HF_CACHE)
    logger.info("[2/3] %d jobs (base, CPT, CL, MMEB, ViDoRe%s), %d at a time; logs under %s", len(graph),
                ", MTEB" if any(j.name.endswith("mteb") for j in graph) else "", jobs, work)  # fmt: skip
    timing_file = work / "timings.json"
    run_jobs(graph, max_parallel=jobs, show_progress=show_progress, cwd=ROOT, on_done=_record_timing(timing_file))
    logger.info("[3/3] statistics and report")
    timings = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    if setup_cpu > 1.0 or "setup" not in timings:  # the world was built now (a rerun finds it built)
        timings["setup"] = {"cpu": round(setup_cpu, 1)}
        timing_file.write_text(json.dumps(timings, indent=1) + "\n")
    per_seed = {seed: collect_seed(SeedPaths(work / f"s{seed}", preset), preset, work) for seed in preset.seeds}
    return outputs.write(preset, per_seed, manifest, work, results_dir, graph=graph, timings=timings, jobs=jobs,
                         started_at=started_at)  # fmt: skip


def collect_seed(paths: SeedPaths, preset: Preset, work: Path) -> dict:
    """Per-query values of every model of one seed, plus its training diagnostics."""
    collection = work / "world" / "vidore"
    models = (BASE, *preset.arms)
    values = {m: collect.model_values(paths.evals, m, collection) for m in models}
    diag = {"base": collect.last_losses(paths.run(BASE))}
    for variant in dict.fromkeys(ARMS[k].cpt for k in preset.arms if ARMS[k].cpt):
        diag[f"cpt_{variant}"] = collect.last_losses(paths.run(f"cpt_{variant}"))
    for key in preset.arms:
        start = paths.cpt(ARMS[key].cpt) if ARMS[key].cpt else paths.model(BASE)
        diag[f"cl_{key}"] = {**collect.last_losses(paths.run(f"cl_{key}")),
                             "weight_drift": collect.weight_drift(start, paths.model(key))}  # fmt: skip
    vidore = {m: collect.vidore_mean(paths.evals / "vidore" / m) for m in models}
    return {"values": values, "diagnostics": diag, "vidore_reported": vidore}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the demo or the study."""
    parser = argparse.ArgumentParser(prog="python demo/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="demo (one seed, arms a-c), study (3 seeds, arms a-e + label efficiency) or smoke")
    parser.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: the preset's)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="arms (default: the preset's)")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "demo_out", help="world, checkpoints, logs")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results" / "demo", help="JSON, Markdown, PNG")
    parser.add_argument("--jobs", type=int, default=2, help="stages run in parallel (one torch thread each)")
    parser.add_argument("--mteb-python", type=Path, default=ROOT / ".venv-mteb" / "bin" / "python",
                        help="interpreter of the mteb 2.x environment for the MTEB harness check")
    parser.add_argument("--no-mteb", action="store_true", help="skip the MTEB harness check")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default when not a terminal)")
    args = parser.parse_args(argv)  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    missing = _missing_stages()
    if missing:
        logger.error("entry points missing from this environment: %s (make env installs them)", ", ".join(missing))
        return 1
    import torch

    torch.set_num_threads(1)
    preset = PRESETS[args.preset]
    if args.seeds:
        preset = replace(preset, seeds=tuple(args.seeds))
    if args.arms:
        preset = replace(preset, arms=tuple(args.arms))
    mteb_python = None if args.no_mteb or not preset.mteb else args.mteb_python
    if mteb_python is not None and not mteb_python.is_file():
        logger.warning("no mteb environment at %s (make env builds it): skipping the MTEB check", mteb_python)
        mteb_python = None
    run(preset, work=args.work_dir.resolve(), results_dir=args.results_dir.resolve(), jobs=args.jobs,
        show_progress=not args.no_progress and sys.stderr.isatty(), mteb_python=mteb_python)  # fmt: skip
    return 0


REQUIRED_MODULES = ("moca_train.cpt", "moca_train.cl", "moca_bench.mmeb.cli", "moca_bench.vidore")


def _missing_stages() -> list[str]:
    import importlib.util

    missing = []
    for name in REQUIRED_MODULES:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except ImportError:
            missing.append(name)
    return missing


if __name__ == "__main__":
    raise SystemExit(main())
