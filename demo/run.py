"""``make demo`` / ``make demo-study`` (``python demo/run.py``): MoCa's claim tested the way the paper tests it.

From a causal base model trained here (next-token pre-training on unlabelled interleaved data), the same
contrastive recipe is run from the base with causal attention and last-token pooling (a_last, the paper's
baseline) and with bidirectional attention (b), after MoCa's CPT (c: MLM + MAE), and after a compute control
(b_plus: the base's own causal objective on the CPT corpus for CPT's token budget). The study
(docs/demo-protocol.md) runs those four arms at seeds 0-9 and a_mean, a_plus, d, e at seeds 0-2, and tests
c - b, c - a_last and c - b_plus with intervals over seeds and evaluation clusters.

Usage::

    make demo                                    # seed 0, arms a_last, b, c (about 20 min on an idle 2-core machine)
    make demo-study                              # the study (about 5 h idle), written under demo_out/results/study
    python demo/run.py --preset select-lr        # the CL learning-rate rule (docs/demo-protocol.md §4)
    python demo/run.py --preset smoke            # the reduced pipeline the test suite runs
    python demo/run.py --preset study --report-only   # report the finished seeds of an unfinished study

Results go to ``demo_out/results/<preset>/`` (ignored by git); the committed ``results/demo/`` changes only
when asked for: ``--results-dir results/demo``. The work directory (default ``demo_out/``) keeps the world,
checkpoints and logs. A rerun skips stages whose outputs exist and resumes training runs from their last
checkpoint; the demo, the selection and the study share runs. Changing the world, a recipe (other than the
CL learning rate, which names the CL runs) or a step count starts the work directory over.
"""

from __future__ import annotations

import argparse
import fcntl
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

from demo import collect, outputs, selection  # noqa: E402
from demo.jobs import Job, run_jobs  # noqa: E402
from demo.plan import (  # noqa: E402
    ARMS,
    BASE,
    CL_CONFIG,
    PRIMARY_ARMS,
    SECONDARY_ARMS,
    Preset,
    SeedPaths,
    mteb_job,
    seed_jobs,
)
from demo.provenance import code_id, git_state  # noqa: E402
from demo.world import WorldConfig, build_world  # noqa: E402

logger = logging.getLogger("demo")

# The stages' own `datasets` cache. datasets keys a local dataset folder by its name and file patterns, not
# its content, so a shared cache would hand vidore-benchmark the pages of an older world of the same name.
HF_CACHE = "hf_datasets"
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
    cl_val_pairs=16,
)
PRESETS = {
    "demo": Preset(),
    "study": Preset(seeds=tuple(range(10)), arms=PRIMARY_ARMS, secondary_seeds=(0, 1, 2),
                    secondary_arms=SECONDARY_ARMS, evals=("mmeb", "vidore", "val"), base_eval_seeds=(0, 1, 2),
                    mteb=False),
    "select-lr": Preset(seeds=selection.SEEDS, arms=selection.ARMS, lrs=selection.GRID, evals=("val",),
                        base_eval_seeds=(), mteb=False),
    "smoke": Preset(world=SMOKE_WORLD, base_steps=40, cpt_steps=8, cl_steps=60, arms=("a_last", "b", "c", "b_plus"),
                    evals=("mmeb", "vidore", "val")),
}  # fmt: skip
PRETRAIN_KINDS = ("base", "cpt_")  # --stages pretrain: the jobs that do not depend on the CL learning rate


def build_graph(preset: Preset, work: Path, manifest: dict, mteb_python: Path | None) -> list[Job]:
    """Every job of every seed, in start-priority order (primary work first, seed by seed)."""
    world = work / "world"
    graph: list[Job] = []
    for seed in preset.all_seeds():
        paths = SeedPaths(work / f"s{seed}", preset)
        graph += seed_jobs(paths, seed, manifest, world)
        if preset.mteb and mteb_python is not None and seed == preset.seeds[0]:
            models = {m: paths.model(m) for m in (BASE, *preset.models_of(seed))}
            deps = tuple(f"s{seed}:cl_{m}" for m in preset.models_of(seed))
            graph.append(mteb_job(models, paths.evals, world, mteb_python, deps, f"s{seed}:"))
    return sorted(graph, key=lambda j: j.rank)


def _prepare(preset: Preset, work: Path, show_progress: bool) -> tuple[dict, float]:
    """Start over if the settings changed; build the world and each seed's initialisation (under a lock)."""
    from moca_model.tiny import write_tiny_checkpoint

    work.mkdir(parents=True, exist_ok=True)
    with (work / ".prepare.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another invocation on this work directory waits here
        plan_path = work / "plan.json"
        identity = json.loads(json.dumps(preset.identity()))
        if plan_path.is_file() and json.loads(plan_path.read_text()) != identity:
            logger.info("settings changed since the last run in %s: starting over", work)
            for sub in [p for p in work.iterdir() if p.is_dir()]:
                shutil.rmtree(sub)
            (work / "timings.json").unlink(missing_ok=True)
        plan_path.write_text(json.dumps(identity, indent=2) + "\n")
        tic = time.process_time()
        if not (work / "world" / "world.json").is_file():
            shutil.rmtree(work / HF_CACHE, ignore_errors=True)
        manifest = build_world(preset.world, work / "world", show_progress=show_progress)
        for seed in preset.all_seeds():
            init = SeedPaths(work / f"s{seed}", preset).init
            if not (init / "config.json").is_file():
                write_tiny_checkpoint(init, seed=seed, hidden=64, layers=2)
    return manifest, time.process_time() - tic


def _update_timings(path: Path, update) -> dict:
    """Read-modify-write ``timings.json`` under a lock (several invocations may share a work directory)."""
    with path.with_name(path.name + ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        timings = json.loads(path.read_text()) if path.is_file() else {}
        update(timings)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(timings, indent=1) + "\n")
        tmp.replace(path)
    return timings


def _record_timing(path: Path):
    def record(job: Job) -> None:
        entry = {"wall": round(job.seconds, 1), "cpu": round(job.cpu_seconds, 1), "finished_at": round(time.time(), 1),
                 "code": code_id(git_state())}  # fmt: skip
        _update_timings(path, lambda t: t.__setitem__(job.name, entry))

    return record


def run(preset: Preset, *, work: Path, results_dir: Path, jobs: int, show_progress: bool = True,
        mteb_python: Path | None = None, stages: str = "all", report_only: bool = False) -> dict | None:  # fmt: skip
    """Run the pipeline of ``preset`` and write its results; returns the results payload.

    Args:
        preset: sizes, seeds, arms, learning rates.
        work: work directory (world, checkpoints, logs); finished stages are skipped.
        results_dir: where the results go (``results.json`` + ``demo.png`` for one seed; ``study.*`` for
            several; ``lr_selection.*`` for the selection).
        jobs: stages run in parallel (one torch thread each).
        show_progress: progress bars.
        mteb_python: the mteb environment's interpreter; None skips the MTEB harness check.
        stages: ``all``, or ``pretrain`` (base, CPT and control only: what does not depend on the CL LR).
        report_only: run nothing; report the seeds and arms whose jobs have all finished.
    """
    started_at = time.time()
    logger.info("[1/3] world and initialisations in %s", work)
    manifest, setup_cpu = _prepare(preset, work, show_progress)
    graph = build_graph(preset, work, manifest, mteb_python)
    if stages == "pretrain":
        graph = [j for j in graph if j.name.split(":", 1)[1].startswith(PRETRAIN_KINDS)]
    for job in graph:
        job.env["HF_DATASETS_CACHE"] = str(work / HF_CACHE)
    timing_file = work / "timings.json"
    if not report_only:
        logger.info("[2/3] %d jobs, %d at a time; logs under %s", len(graph), jobs, work)
        run_jobs(graph, max_parallel=jobs, show_progress=show_progress, cwd=ROOT, on_done=_record_timing(timing_file))
    if setup_cpu > 1.0:  # the world was built now (a rerun finds it built)
        _update_timings(timing_file, lambda t: t.__setitem__("setup", {"cpu": round(setup_cpu, 1)}))
    if stages == "pretrain":
        logger.info("pre-training stages done")
        return None
    logger.info("[3/3] statistics and report")
    timings = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    done = {j.name for j in graph if j.done is None or j.done()}
    if preset.lrs is not None and len(preset.lrs) > 1:
        return write_selection(preset, work, manifest, results_dir, done)
    per_seed = {}
    for seed in preset.all_seeds():
        data = collect_seed(SeedPaths(work / f"s{seed}", preset), preset, work, seed, manifest, done)
        if data is not None:
            per_seed[seed] = data
    if not per_seed:
        raise RuntimeError(f"no seed has finished in {work}")
    graph = [j for j in graph if j.name in done]
    return outputs.write(preset, per_seed, manifest, work, results_dir, graph=graph, timings=timings, jobs=jobs,
                         started_at=started_at)  # fmt: skip


def _finished(done: set[str], seed: int, model: str, kinds) -> bool:
    return all(f"s{seed}:{k}:{model}" in done for k in kinds)


def collect_seed(paths: SeedPaths, preset: Preset, work: Path, seed: int, manifest: dict,
                 done: set[str]) -> dict | None:  # fmt: skip
    """Per-query values of every finished model of one seed (keyed by arm), its diagnostics and curves.

    Returns None when not every primary arm of the seed has finished (an unfinished study reports whole
    seeds); a secondary arm that has not finished is left out.
    """
    import yaml

    collection = work / "world" / "vidore"
    kinds = tuple(k for k in preset.evals if k != "val")
    models = {name: arm for name, (arm, _) in preset.models_of(seed).items()
              if _finished(done, seed, name, preset.evals)}  # fmt: skip
    if not set(preset.arms) <= set(models.values()):
        return None
    values = {arm: collect.model_values(paths.evals, name, collection) for name, arm in models.items()}
    if _finished(done, seed, BASE, kinds):
        values = {BASE: collect.model_values(paths.evals, BASE, collection), **values}
    diag = {"base": collect.last_losses(paths.run(BASE))}
    curves = {"base": collect.logged_curve(paths.run(BASE))}
    for stage in dict.fromkeys(ARMS[a].pre for a in models.values() if ARMS[a].pre):
        run = paths.run(f"cpt_{stage}")
        diag[f"cpt_{stage}"] = {**collect.last_losses(run), "tokens": collect.token_total(run)}
        curves[f"cpt_{stage}"] = {**collect.logged_curve(run), "tokens_total": diag[f"cpt_{stage}"]["tokens"]}
    cl = yaml.safe_load(CL_CONFIG.read_text())
    sizes = {t: spec["rows"] for t, spec in manifest["cl_tasks"].items()}
    for name, arm in models.items():
        run = paths.run(f"cl_{name}")
        d = {**collect.last_losses(run), "weight_drift": collect.weight_drift(paths.start_of(arm), paths.model(name))}
        val = collect.val_scores(paths.evals, name) if "val" in preset.evals else {}
        if val:
            d["val_mean"] = val["mean"]
        diag[f"cl_{arm}"] = d
        curves[f"cl_{arm}"] = {**collect.logged_curve(run), "weight_drift": d["weight_drift"], "val": val,
                               "task_accuracy": collect.task_accuracy_curves(
                                   run, sizes, batch=int(cl["data"]["global_batch_size"]), seed=seed)}  # fmt: skip
    folders = {**({BASE: BASE} if BASE in values else {}), **{arm: name for name, arm in models.items()}}
    vidore = {arm: collect.vidore_mean(paths.evals / "vidore" / name) for arm, name in folders.items()}
    return {"values": values, "diagnostics": diag, "vidore_reported": vidore, "curves": curves}


def write_selection(preset: Preset, work: Path, manifest: dict, results_dir: Path, done: set[str]) -> dict:
    """Apply the learning-rate rule to the finished selection runs and write ``lr_selection.{json,md}``."""
    scores, diagnostics = {}, {}
    for seed in preset.seeds:
        paths = SeedPaths(work / f"s{seed}", preset)
        for name, (arm, lr) in preset.models_of(seed).items():
            if not _finished(done, seed, name, ("val",)):
                raise RuntimeError(f"selection run {name} of seed {seed} has not finished")
            scores[(arm, lr, seed)] = collect.val_scores(paths.evals, name)
            run = paths.run(f"cl_{name}")
            drift = collect.weight_drift(paths.start_of(arm), paths.model(name))
            diagnostics[(arm, lr, seed)] = {**collect.last_losses(run), "weight_drift": drift}
    payload = selection.payload(scores, diagnostics)
    from demo.provenance import protocol_hash

    payload["protocol_sha256"] = protocol_hash()
    payload["code"] = code_id(git_state())
    from demo.report import write_json

    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(payload, results_dir / "lr_selection.json")
    text = selection.markdown(payload)
    (results_dir / "lr_selection.md").write_text("# CL learning-rate selection (docs/demo-protocol.md §4)\n\n" + text)
    sys.stdout.write("\n" + text + f"\nwrote {results_dir / 'lr_selection.json'}\n")
    return payload


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the demo, the selection or the study."""
    parser = argparse.ArgumentParser(prog="python demo/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo",
                        help="demo (seed 0, arms a_last, b, c), study (docs/demo-protocol.md), select-lr, smoke")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds of the primary arms (default: the preset's)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), help="arms run at every seed (default: the preset's)")
    parser.add_argument("--work-dir", type=Path, default=Path("demo_out"),
                        help="world, checkpoints, logs (relative paths are relative to the repository)")
    parser.add_argument("--results-dir", type=Path, help="where results go (default: <work-dir>/results/<preset>; "
                        "results/demo only when you mean to change the committed results)")
    parser.add_argument("--jobs", type=int, default=2, help="stages run in parallel (one torch thread each)")
    parser.add_argument("--stages", choices=("all", "pretrain"), default="all",
                        help="pretrain: only base, CPT and control (nothing that depends on the CL learning rate)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the finished seeds")
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
    work = args.work_dir if args.work_dir.is_absolute() else ROOT / args.work_dir
    results = args.results_dir or work / "results" / args.preset
    results = results if results.is_absolute() else Path.cwd() / results
    run(preset, work=work.resolve(), results_dir=results.resolve(), jobs=args.jobs, stages=args.stages,
        report_only=args.report_only, show_progress=not args.no_progress and sys.stderr.isatty(),
        mteb_python=mteb_python)  # fmt: skip
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
    import signal

    # SIGTERM (kill, a scheduler) ends like Ctrl-C: the running stages are terminated, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(main())
