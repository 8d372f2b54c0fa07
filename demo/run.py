"""``make demo`` (``python demo/run.py``): the offline end-to-end MoCa pipeline on a generated world.

Stages, each through the toolkit's real command-line entry points (subprocesses):

1. build the world (:mod:`demo.world`): CPT records, CL pairs, an MMEB-eval folder, a ViDoRe BEIR folder;
2. write a tiny random initialisation (``moca_model.tiny``: text hidden 64, 2 layers);
3. train ``python -m moca_train.cpt`` (``configs/cpt/demo.yaml``) and, in parallel, a CL-only model
   ``python -m moca_train.cl`` (``configs/cl/demo.yaml``) from the same initialisation; then CL from the
   CPT checkpoint (same CL recipe and steps);
4. evaluate the three models (random init, CL only, CPT + CL) with ``python -m moca_bench.mmeb`` and
   ``vidore-benchmark evaluate-retriever --model-class moca``;
5. print one table and write ``results/demo/results.json`` and ``results/demo/demo.png``.

Usage::

    make demo                                  # the full demo (8.5 min on an idle 2-core CPU machine)
    python demo/run.py --preset smoke          # a reduced pipeline (about 1.5 min; what the test runs)
    python demo/run.py --seed 1 --jobs 1       # another seed, one stage at a time

Everything is a function of ``--seed``; the work directory (default ``demo_out/``) keeps the world,
checkpoints and logs, and a rerun skips stages whose outputs exist.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the ``demo`` package importable
    sys.path.insert(0, str(ROOT))

for _var, _value in (("OMP_NUM_THREADS", "1"), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                     ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):  # fmt: skip
    os.environ.setdefault(_var, _value)

from demo import report  # noqa: E402
from demo.jobs import Job, run_jobs, train_progress  # noqa: E402
from demo.world import MMEB_SUBSETS, VIDORE_NAME, WorldConfig, all_shape_combos, build_world  # noqa: E402

logger = logging.getLogger("demo")

MODELS = ("random", "cl_only", "cpt_cl")
# The stages' own `datasets` cache. datasets keys a local dataset folder by its name and file patterns, not
# its content, so a shared cache would hand vidore-benchmark the pages of an older world of the same name.
HF_CACHE = "hf_datasets"
CL_CONFIG = ROOT / "configs" / "cl" / "demo.yaml"
CPT_CONFIG = ROOT / "configs" / "cpt" / "demo.yaml"


@dataclass
class Preset:
    """Sizes of one demo run."""

    world: WorldConfig = field(default_factory=WorldConfig)
    """The generated world."""
    cpt_steps: int = 300
    """CPT optimizer steps."""
    cl_steps: int = 1400
    """CL optimizer steps (the same for CL only and CPT + CL)."""


PRESETS = {
    "full": Preset(),
    "smoke": Preset(
        world=WorldConfig(
            cl_pairs={"digits_cls": 128, "shapes_i2t": 32},
            cpt_shape_records=64,
            cpt_scene_records=16,
            cpt_digit_records=32,
            cpt_page_records=16,
            eval_queries=48,
            eval_digits=100,
            cl_digits=64,
        ),
        cpt_steps=8,
        cl_steps=80,
    ),
}


def _python() -> str:
    return sys.executable


def _final_checkpoint(run_dir: Path, steps: int) -> Path:
    return run_dir / f"checkpoint-{steps}"


def _cl_job(name: str, init: Path, run_dir: Path, preset: Preset, manifest: dict, world: Path, seed: int,
            deps: tuple[str, ...]) -> Job:  # fmt: skip
    argv = [_python(), "-m", "moca_train.cl", "--config", str(CL_CONFIG),
            "--model.init_from", str(init), "--train.output_dir", str(run_dir),
            "--train.max_steps", str(preset.cl_steps), "--train.seed", str(seed), "--data.seed", str(seed),
            "--train.progress_bar", "false"]  # fmt: skip
    datasets = [{"name": t, "path": str(world / spec["path"])} for t, spec in manifest["cl_tasks"].items()]
    argv += ["--data.datasets", json.dumps(datasets)]
    return Job(name, argv, run_dir.parent / f"{name}.log", deps=deps, total=preset.cl_steps,
               progress=train_progress(run_dir),
               done=lambda: (_final_checkpoint(run_dir, preset.cl_steps) / "config.json").is_file())  # fmt: skip


def _cpt_job(init: Path, run_dir: Path, preset: Preset, manifest: dict, world: Path, seed: int) -> Job:
    argv = [_python(), "-m", "moca_train.cpt", "--config", str(CPT_CONFIG),
            "--model.init_from", str(init), "--train.output_dir", str(run_dir),
            "--train.max_steps", str(preset.cpt_steps), "--train.seed", str(seed), "--data.seed", str(seed + 1),
            "--data.sources.0.path", str(world / manifest["cpt"]["path"]),
            "--train.progress_bar", "false"]  # fmt: skip
    return Job("cpt", argv, run_dir.parent / "cpt.log", total=preset.cpt_steps, progress=train_progress(run_dir),
               done=lambda: (_final_checkpoint(run_dir, preset.cpt_steps) / "config.json").is_file())  # fmt: skip


def _eval_jobs(model: str, ckpt: Path, evals: Path, world: Path, deps: tuple[str, ...]) -> list[Job]:
    mmeb_out = evals / "mmeb"
    mmeb = [_python(), "-m", "demo.mmeb_eval", "--model", str(ckpt), "--model-name", model,
            "--data-dir", str(world / "mmeb"), "--image-root", str(world / "mmeb" / "images"),
            "--subsets", *MMEB_SUBSETS, "--output-dir", str(mmeb_out), "--no-cache", "--batch-size", "64",
            "--no-progress"]  # fmt: skip
    vidore_out = evals / "vidore" / model
    vidore = [str(Path(_python()).with_name("vidore-benchmark")), "evaluate-retriever", "--model-class", "moca",
              "--model-name", str(ckpt), "--dataset-name", str(world / "vidore" / VIDORE_NAME),
              "--dataset-format", "beir", "--split", "test", "--output-dir", str(vidore_out),
              "--batch-query", "32", "--batch-passage", "16"]  # fmt: skip
    return [
        Job(f"mmeb:{model}", mmeb, evals / f"mmeb-{model}.log", deps=deps,
            done=lambda: (mmeb_out / model / "mmeb.json").is_file()),
        Job(f"vidore:{model}", vidore, evals / f"vidore-{model}.log", deps=deps,
            done=lambda: any(vidore_out.glob("*_metrics.json"))),
    ]  # fmt: skip


def _mteb_job(ckpts: dict[str, Path], evals: Path, world: Path, python: Path) -> Job:
    out = evals / "mteb.json"
    argv = [str(python), "-m", "demo.mteb_eval", "--world", str(world), "--out", str(out)]
    argv += [arg for m, p in ckpts.items() for arg in ("--model", f"{m}={p}")]
    return Job("mteb", argv, evals / "mteb.log", deps=("cl_only", "cpt_cl"), done=out.is_file)


def _timing(job: Job) -> dict | str:
    if job.skipped:
        return "skipped (outputs existed)"
    return {"wall": round(job.seconds, 1), "cpu": round(job.cpu_seconds, 1)}


def _read_mmeb(path: Path) -> dict[str, float]:
    datasets = json.loads(path.read_text())["datasets"]
    return {subset: float(datasets[subset]["score"]) for subset in MMEB_SUBSETS}


def _read_vidore(folder: Path) -> dict[str, float]:
    path = sorted(folder.glob("*_metrics.json"))[0]
    metrics = next(iter(json.loads(path.read_text())["metrics"].values()))
    return {k: 100.0 * float(metrics[k]) for k in ("ndcg_at_1", "ndcg_at_5", "recall_at_5")}


def _chance(manifest: dict, world: Path) -> dict[str, float]:
    """Expected score of a random ranking for each table row."""
    import pyarrow.parquet as pq

    per_subset = {}
    for subset in MMEB_SUBSETS:
        rows = pq.read_table(world / "mmeb" / subset / "test-00000-of-00001.parquet", columns=["tgt_text"])
        sizes = [len(t) for t in rows.column("tgt_text").to_pylist()]
        per_subset[subset] = sum(report.chance_hit1(n) for n in sizes) / len(sizes)
    chance = {f"MMEB {m}": 0.0 for m in report.META_ORDER}
    for meta in report.META_ORDER:
        subsets = [s for s, m in MMEB_SUBSETS.items() if m == meta]
        chance[f"MMEB {meta}"] = sum(per_subset[s] for s in subsets) / len(subsets)
    chance["MMEB overall"] = sum(per_subset.values()) / len(per_subset)
    chance["ViDoRe pages nDCG@5"] = report.chance_ndcg5(manifest["vidore"]["pages"])
    chance["MTEB DemoPages nDCG@5"] = chance["ViDoRe pages nDCG@5"]
    chance["MTEB DemoShapesT2I nDCG@5"] = report.chance_ndcg5(len(all_shape_combos()))
    return {**chance, **{f"subset {s}": v for s, v in per_subset.items()}}


def run(
    preset: Preset,
    *,
    work: Path,
    results_dir: Path,
    seed: int,
    jobs: int,
    show_progress: bool = True,
    mteb_python: Path | None = None,
) -> dict:
    """Run the whole demo and return the results payload (also written to ``results_dir``).

    Args:
        preset: sizes.
        work: work directory (world, checkpoints, logs); stages whose outputs exist are skipped.
        results_dir: where ``results.json`` and ``demo.png`` go.
        seed: the seed of everything.
        jobs: stages run in parallel.
        show_progress: progress bars.
        mteb_python: the mteb environment's interpreter; None skips the MTEB stage.
    """
    from moca_model.tiny import write_tiny_checkpoint

    tic = time.perf_counter()
    preset = replace(preset, world=replace(preset.world, seed=seed))
    plan = {"preset": asdict(preset), "seed": seed,
            "recipes": {"cpt": CPT_CONFIG.read_text(), "cl": CL_CONFIG.read_text()}}  # fmt: skip
    plan_path = work / "plan.json"
    if plan_path.is_file() and json.loads(plan_path.read_text()) != json.loads(json.dumps(plan)):
        logger.info("settings changed since the last run in %s: starting over", work)
        for sub in ("world", "models", "runs", "evals", HF_CACHE):
            shutil.rmtree(work / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan, indent=2) + "\n")

    logger.info("[1/4] building the world in %s", work / "world")
    world = work / "world"
    if not (world / "world.json").is_file():
        shutil.rmtree(work / HF_CACHE, ignore_errors=True)
    manifest = build_world(preset.world, world, show_progress=show_progress)
    init = work / "models" / "init"
    if not (init / "config.json").is_file():
        write_tiny_checkpoint(init, seed=seed, hidden=64, layers=2)
    runs, evals = work / "runs", work / "evals"
    ckpts = {
        "random": init,
        "cl_only": _final_checkpoint(runs / "cl_only", preset.cl_steps),
        "cpt_cl": _final_checkpoint(runs / "cpt_cl", preset.cl_steps),
    }
    cpt_ckpt = _final_checkpoint(runs / "cpt", preset.cpt_steps)
    graph = [
        _cpt_job(init, runs / "cpt", preset, manifest, world, seed),
        _cl_job("cl_only", init, runs / "cl_only", preset, manifest, world, seed, ()),
        _cl_job("cpt_cl", cpt_ckpt, runs / "cpt_cl", preset, manifest, world, seed, ("cpt",)),
    ]
    graph += _eval_jobs("random", ckpts["random"], evals, world, ())
    graph += _eval_jobs("cl_only", ckpts["cl_only"], evals, world, ("cl_only",))
    graph += _eval_jobs("cpt_cl", ckpts["cpt_cl"], evals, world, ("cpt_cl",))
    if mteb_python is not None:
        graph.append(_mteb_job(ckpts, evals, world, mteb_python))
    # Order = start priority: the long training chain first, evaluations fill the free slot.
    order = ["cpt", "cl_only", "mmeb:random", "vidore:random", "cpt_cl", "mmeb:cl_only", "vidore:cl_only",
             "mmeb:cpt_cl", "vidore:cpt_cl", "mteb"]  # fmt: skip
    graph.sort(key=lambda j: order.index(j.name))
    logger.info("[2/4] training (CPT, CL only, CPT + CL) and [3/4] evaluating (MMEB, ViDoRe); logs in %s", work)
    for job in graph:
        job.env["HF_DATASETS_CACHE"] = str(work / HF_CACHE)
    run_jobs(graph, max_parallel=jobs, show_progress=show_progress, cwd=ROOT)

    logger.info("[4/4] report")
    models = {
        m: {"mmeb": _read_mmeb(evals / "mmeb" / m / "mmeb.json"), "vidore": _read_vidore(evals / "vidore" / m)}
        for m in MODELS
    }
    if mteb_python is not None:
        mteb = json.loads((evals / "mteb.json").read_text())
        for m in MODELS:
            models[m]["mteb"] = mteb[m]
    rows = report.summarize(models, MMEB_SUBSETS)
    chance = _chance(manifest, world)
    payload = {
        "seed": seed,
        "preset": asdict(preset),
        "table": rows,
        "chance": chance,
        "models": models,
        "work_dir": str(work),
        "checkpoints": {m: str(p.relative_to(work)) for m, p in ckpts.items()},
        "stage_seconds": {j.name: _timing(j) for j in graph},
        "total_seconds": round(time.perf_counter() - tic, 1),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    report.write_results(payload, results_dir)
    report.write_chart(rows, chance, results_dir / "demo.png")
    out = sys.stdout
    out.write("\nMoCa demo: tiny random-init model on the generated world (scores in %)\n")
    out.write(report.format_table(rows, chance) + "\n")
    out.write("\nper MMEB subset (hit@1):\n")
    per_subset = {f"subset {s}": {m: models[m]["mmeb"][s] for m in MODELS} for s in MMEB_SUBSETS}
    out.write(report.format_table(per_subset, chance) + "\n")
    out.write(f"\nwrote {results_dir / 'results.json'} and {results_dir / 'demo.png'} "
              f"in {payload['total_seconds']:.0f} s\n")  # fmt: skip
    return payload


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


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the demo."""
    parser = argparse.ArgumentParser(prog="python demo/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full", help="sizes (smoke: ~2 min)")
    parser.add_argument("--seed", type=int, default=0, help="everything is a function of the seed")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "demo_out", help="world, checkpoints, logs")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "results" / "demo", help="JSON and PNG")
    parser.add_argument("--jobs", type=int, default=2, help="stages run in parallel (one torch thread each)")
    parser.add_argument(
        "--mteb-python",
        type=Path,
        default=ROOT / ".venv-mteb" / "bin" / "python",
        help="interpreter of the mteb 2.x environment for the MTEB stage",
    )
    parser.add_argument("--no-mteb", action="store_true", help="skip the MTEB stage")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (default when not a terminal)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    missing = _missing_stages()
    if missing:
        logger.error("entry points missing from this environment: %s (make env installs them)", ", ".join(missing))
        return 1
    import torch

    torch.set_num_threads(1)
    mteb_python = None if args.no_mteb else args.mteb_python
    if mteb_python is not None and not mteb_python.is_file():
        logger.warning("no mteb environment at %s (make env builds it): skipping the MTEB stage", mteb_python)
        mteb_python = None
    run(PRESETS[args.preset], work=args.work_dir.resolve(), results_dir=args.results_dir.resolve(),
        seed=args.seed, jobs=args.jobs, show_progress=not args.no_progress and sys.stderr.isatty(),
        mteb_python=mteb_python)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
