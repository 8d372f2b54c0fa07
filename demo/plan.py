"""What the demo trains and evaluates: presets, arms, and the job graph of one seed.

Every arm starts from the same causal base model of its seed (``configs/cpt/demo_base.yaml``: next-token
pre-training on the world's base corpus), and every CL run uses the same recipe, data and steps
(``configs/cl/demo.yaml``); only the attention and the stage in between differ (moca-method.md §6.1, §6.3):

====  =====================================  ========================  ===============
arm   between base and CL                    CL attention              CL pairs
====  =====================================  ========================  ===============
a     nothing                                causal                    all
b     nothing                                bidirectional             all
c     CPT, MLM + MAE (MoCa)                  bidirectional             all
d     CPT, MLM only (paper: w/o MAE)         bidirectional             all
e     CPT, MAE only (paper: w/o MLM)         bidirectional             all
b_25  nothing                                bidirectional             1/4 of each task
b_50  nothing                                bidirectional             1/2 of each task
c_25  CPT, MLM + MAE                         bidirectional             1/4 of each task
c_50  CPT, MLM + MAE                         bidirectional             1/2 of each task
====  =====================================  ========================  ===============

CPT reads its own unlabelled corpus (``world/cpt``), disjoint from the base corpus, the CL pairs and every
evaluation image. Each job is a real entry point (``python -m moca_train.cpt``, ``python -m moca_train.cl``,
``python -m demo.mmeb_eval``, ``vidore-benchmark``); :mod:`demo.jobs` runs them, two at a time.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from demo.jobs import Job, train_progress
from demo.world import MMEB_SUBSETS, WorldConfig

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "cpt" / "demo_base.yaml"
CPT_CONFIG = ROOT / "configs" / "cpt" / "demo.yaml"
CL_CONFIG = ROOT / "configs" / "cl" / "demo.yaml"
CPT_VARIANTS = {"mlm_mae": (True, True), "mlm": (True, False), "mae": (False, True)}  # (use_mlm, use_mae)


@dataclass(frozen=True)
class Arm:
    """One way from the base model to an embedder."""

    key: str
    """Short name (``a`` .. ``e``, ``b_25`` ...): the run folder and the column name."""
    label: str
    """What the table shows."""
    cpt: str | None
    """CPT variant in between (a key of ``CPT_VARIANTS``) or None for CL straight from the base."""
    attention: str
    """Attention of the CL stage."""
    fraction: float = 1.0
    """Share of each CL task's pairs (a random subset with the CL data seed)."""


ARMS = {arm.key: arm for arm in (
    Arm("a", "CL only, causal", None, "causal"),
    Arm("b", "CL only, bidirectional", None, "bidirectional"),
    Arm("c", "CPT (MLM+MAE) + CL = MoCa", "mlm_mae", "bidirectional"),
    Arm("d", "CPT w/o MAE + CL", "mlm", "bidirectional"),
    Arm("e", "CPT w/o MLM + CL", "mae", "bidirectional"),
    Arm("b_25", "CL only, bidir., 1/4 pairs", None, "bidirectional", 0.25),
    Arm("b_50", "CL only, bidir., 1/2 pairs", None, "bidirectional", 0.5),
    Arm("c_25", "MoCa, 1/4 pairs", "mlm_mae", "bidirectional", 0.25),
    Arm("c_50", "MoCa, 1/2 pairs", "mlm_mae", "bidirectional", 0.5),
)}  # fmt: skip
BASE = "base"  # the causal base model, evaluated as it is (causal, no CL)


@dataclass
class Preset:
    """Sizes and scope of one run of the demo."""

    world: WorldConfig = field(default_factory=WorldConfig)
    """The generated world (fixed across seeds: the seeds vary training, not the evaluation set)."""
    base_steps: int = 1200
    """Optimizer steps of the causal base-model stage."""
    cpt_steps: int = 600
    """Optimizer steps of each CPT variant."""
    cl_steps: int = 1000
    """Optimizer steps of every CL run (all arms)."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds (initialisation, data order, masking)."""
    arms: tuple[str, ...] = ("a", "b", "c")
    """Arms to train and evaluate."""
    mteb: bool = True
    """Also run the MTEB harness check (arms of the first seed, in the mteb environment)."""

    def identity(self) -> dict:
        """What makes two runs' checkpoints interchangeable (seeds and arms are not part of it).

        The world, the step counts and every recipe's full settings, defaults included: a changed default
        of the training code starts the work directory over, as a changed recipe does.
        """
        from dataclasses import asdict

        from moca_train.cl.config import CLConfig
        from moca_train.cli import parse_config
        from moca_train.cpt.config import CPTConfig

        recipes = {f"{p.parent.name}/{p.name}": asdict(parse_config(["--config", str(p)], kind))
                   for p, kind in ((BASE_CONFIG, CPTConfig), (CPT_CONFIG, CPTConfig), (CL_CONFIG, CLConfig))}
        return {"world": asdict(self.world), "steps": [self.base_steps, self.cpt_steps, self.cl_steps],
                "recipes": recipes}  # fmt: skip


def _python() -> str:
    return sys.executable


def final_checkpoint(run_dir: Path, steps: int) -> Path:
    """The checkpoint a training job leaves at its last step."""
    return run_dir / f"checkpoint-{steps}"


@dataclass
class SeedPaths:
    """Where one seed's models and evaluations live."""

    root: Path
    preset: Preset

    @property
    def init(self) -> Path:  # noqa: D102
        return self.root / "init"

    def run(self, name: str) -> Path:
        """Run folder of a training job (``base``, ``cpt_<variant>``, ``cl_<arm>``)."""
        return self.root / "runs" / name

    def model(self, name: str) -> Path:
        """Final checkpoint of a model (``base`` or an arm key)."""
        if name == BASE:
            return final_checkpoint(self.run(BASE), self.preset.base_steps)
        return final_checkpoint(self.run(f"cl_{name}"), self.preset.cl_steps)

    def cpt(self, variant: str) -> Path:
        """Final checkpoint of a CPT variant."""
        return final_checkpoint(self.run(f"cpt_{variant}"), self.preset.cpt_steps)

    @property
    def evals(self) -> Path:  # noqa: D102
        return self.root / "evals"


def _train_job(name: str, argv: list[str], run_dir: Path, steps: int, deps: tuple[str, ...]) -> Job:
    done = final_checkpoint(run_dir, steps) / "config.json"
    return Job(name, argv, run_dir.parent / f"{run_dir.name}.log", deps=deps, total=steps,
               progress=train_progress(run_dir), done=done.is_file)  # fmt: skip


def _common(config: Path, init: Path, out: Path, steps: int, seed: int) -> list[str]:
    return [_python(), "-m", f"moca_train.{'cl' if config == CL_CONFIG else 'cpt'}", "--config", str(config),
            "--model.init_from", str(init), "--train.output_dir", str(out), "--train.max_steps", str(steps),
            "--train.seed", str(seed), "--train.progress_bar", "false"]  # fmt: skip


def training_jobs(p: SeedPaths, seed: int, manifest: dict, world: Path, tag: str) -> list[Job]:
    """Base, the CPT variants the arms need, and one CL run per arm."""
    pre = p.preset
    base = _common(BASE_CONFIG, p.init, p.run(BASE), pre.base_steps, seed)
    base += ["--data.seed", str(seed + 1), "--data.sources.0.path", str(world / manifest["base"]["path"])]
    jobs = [_train_job(f"{tag}base", base, p.run(BASE), pre.base_steps, ())]
    for variant in dict.fromkeys(ARMS[k].cpt for k in pre.arms if ARMS[k].cpt):
        mlm, mae = CPT_VARIANTS[variant]
        argv = _common(CPT_CONFIG, p.model(BASE), p.run(f"cpt_{variant}"), pre.cpt_steps, seed)
        argv += ["--data.seed", str(seed + 2), "--data.sources.0.path", str(world / manifest["cpt"]["path"]),
                 "--model.attention", "bidirectional",
                 "--objective.use_mlm", str(mlm).lower(), "--objective.use_mae", str(mae).lower()]  # fmt: skip
        jobs.append(_train_job(f"{tag}cpt_{variant}", argv, p.run(f"cpt_{variant}"), pre.cpt_steps, (f"{tag}base",)))
    for key in pre.arms:
        arm = ARMS[key]
        start, dep = (p.cpt(arm.cpt), f"{tag}cpt_{arm.cpt}") if arm.cpt else (p.model(BASE), f"{tag}base")
        datasets = [{"name": t, "path": str(world / spec["path"]),
                     "max_rows": None if arm.fraction >= 1 else math.ceil(spec["rows"] * arm.fraction)}
                    for t, spec in manifest["cl_tasks"].items()]  # fmt: skip
        argv = _common(CL_CONFIG, start, p.run(f"cl_{key}"), pre.cl_steps, seed)
        argv += ["--data.seed", str(seed), "--model.attention", arm.attention, "--data.datasets", json.dumps(datasets)]
        jobs.append(_train_job(f"{tag}cl_{key}", argv, p.run(f"cl_{key}"), pre.cl_steps, (dep,)))
    return jobs


def eval_jobs(name: str, ckpt: Path, evals: Path, world: Path, dep: str, tag: str) -> list[Job]:
    """MMEB (with per-row hits) and ViDoRe (all page pools, score matrices kept) for one model."""
    mmeb_out = evals / "mmeb"
    mmeb = [_python(), "-m", "demo.mmeb_eval", "--model", str(ckpt), "--model-name", name,
            "--data-dir", str(world / "mmeb"), "--image-root", str(world / "mmeb" / "images"),
            "--subsets", *MMEB_SUBSETS, "--output-dir", str(mmeb_out), "--no-cache", "--batch-size", "64",
            "--no-progress", "--save-rows"]  # fmt: skip
    vidore_out = evals / "vidore" / name
    vidore = [str(Path(_python()).with_name("vidore-benchmark")), "evaluate-retriever", "--model-class", "moca",
              "--model-name", str(ckpt), "--collection-name", str(world / "vidore"), "--dataset-format", "beir",
              "--split", "test", "--output-dir", str(vidore_out), "--batch-query", "64", "--batch-passage", "16"]
    scores = vidore_out / "scores"
    return [
        Job(f"{tag}mmeb:{name}", mmeb, evals / f"mmeb-{name}.log", deps=(dep,),
            done=(mmeb_out / name / "rows.json").is_file),
        Job(f"{tag}vidore:{name}", vidore, evals / f"vidore-{name}.log", deps=(dep,),
            env={"MOCA_SCORES_DIR": str(scores)},
            done=lambda: any(vidore_out.glob("*_metrics.json"))),  # written once every pool is scored
    ]  # fmt: skip


def mteb_job(models: dict[str, Path], evals: Path, world: Path, python: Path, deps: tuple[str, ...], tag: str) -> Job:
    """The MTEB harness check (pool 0 of pages and shapes) in the mteb environment."""
    out = evals / "mteb.json"
    argv = [str(python), "-m", "demo.mteb_eval", "--world", str(world), "--out", str(out)]
    argv += [arg for m, path in models.items() for arg in ("--model", f"{m}={path}")]
    return Job(f"{tag}mteb", argv, evals / "mteb.log", deps=deps, done=out.is_file)


PRIORITY = ("base", "cpt_mlm_mae", "cl_a", "cpt_mlm", "cpt_mae", "cl_c", "cl_b", "cl_d", "cl_e", "cl_c_25",
            "cl_b_25", "cl_c_50", "cl_b_50")  # fmt: skip


def priority(job: Job) -> tuple:
    """Start order among ready jobs: long training chains first, evaluations fill the free slot."""
    seed, _, name = job.name.partition(":")
    return (PRIORITY.index(name) if name in PRIORITY else len(PRIORITY), seed)
