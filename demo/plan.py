"""What the demo trains and evaluates: presets, arms, and the job graph of one seed.

Every arm starts from the same causal base model of its seed (``configs/cpt/demo_base.yaml``: next-token
pre-training on the world's base corpus), and every CL run uses the same recipe, data and steps
(``configs/cl/demo.yaml``); only the attention, the pooling and the stage in between differ
(docs/demo-protocol.md §2; moca-method.md §6.1, §6.3):

=======  ==============================================  =============  =========
arm      between base and CL                             CL attention   pooling
=======  ==============================================  =============  =========
a_last   nothing (the paper's causal baseline)           causal         last
a_mean   nothing                                         causal         mean
b        nothing                                         bidirectional  mean
c        CPT, MLM + MAE (MoCa)                           bidirectional  mean
d        CPT, MLM only (paper: w/o MAE)                  bidirectional  mean
e        CPT, MAE only (paper: w/o MLM)                  bidirectional  mean
b_plus   control: causal LM on the CPT corpus, same      bidirectional  mean
         token budget and batches as CPT
a_plus   the same control                                causal         last
=======  ==============================================  =============  =========

CPT and the control read their own unlabelled corpus (``world/cpt``), disjoint from the base corpus, the CL
pairs and every evaluation image. Each job is a real entry point (``python -m moca_train.cpt``, ``python -m
moca_train.cl``, ``python -m demo.mmeb_eval``, ``vidore-benchmark``); :mod:`demo.jobs` runs them.

A CL model is named ``<arm>_lr<LR>`` (its run folder ``runs/cl_<arm>_lr<LR>``), so the learning-rate
selection's runs at the chosen LR are the study's own runs (docs/demo-protocol.md §4).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from demo.jobs import Job, train_progress
from demo.world import MMEB_SUBSETS, VAL_SUBSETS, WorldConfig

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "configs" / "cpt" / "demo_base.yaml"
CPT_CONFIG = ROOT / "configs" / "cpt" / "demo.yaml"
CL_CONFIG = ROOT / "configs" / "cl" / "demo.yaml"
# Stage between base and CL -> (use_mlm, use_mae, use_clm, attention). "clm" is the compute control: the
# base's own causal objective with CPT's recipe, corpus, steps, token budget and data seed.
PRE_STAGES = {
    "mlm_mae": (True, True, False, "bidirectional"),
    "mlm": (True, False, False, "bidirectional"),
    "mae": (False, True, False, "bidirectional"),
    "clm": (False, False, True, "causal"),
}
EVAL_KINDS = ("mmeb", "vidore", "val")


@dataclass(frozen=True)
class Arm:
    """One way from the base model to an embedder."""

    key: str
    """Short name (``a_last``, ``b``, ``b_plus`` ...): the run folder and the column name."""
    label: str
    """What the tables show."""
    pre: str | None
    """Stage between base and CL (a key of ``PRE_STAGES``) or None for CL straight from the base."""
    attention: str
    """Attention of the CL stage."""
    pooling: str = "mean"
    """Pooling of the CL stage, recorded in the checkpoint (``last``: the last real token)."""


ARMS = {arm.key: arm for arm in (
    Arm("a_last", "CL only, causal, last token", None, "causal", "last"),
    Arm("a_mean", "CL only, causal, mean pooling", None, "causal"),
    Arm("b", "CL only, bidirectional", None, "bidirectional"),
    Arm("c", "CPT (MLM+MAE) + CL = MoCa", "mlm_mae", "bidirectional"),
    Arm("d", "CPT w/o MAE + CL", "mlm", "bidirectional"),
    Arm("e", "CPT w/o MLM + CL", "mae", "bidirectional"),
    Arm("b_plus", "causal-LM control + CL, bidir.", "clm", "bidirectional"),
    Arm("a_plus", "causal-LM control + CL, causal, last", "clm", "causal", "last"),
)}  # fmt: skip
BASE = "base"  # the causal base model, evaluated as it is (causal, no CL)
PRIMARY_ARMS = ("a_last", "b", "c", "b_plus")
SECONDARY_ARMS = ("a_mean", "a_plus", "d", "e")


def recipe_lr() -> float:
    """The CL recipe's learning rate (``configs/cl/demo.yaml``; chosen by docs/demo-protocol.md §4)."""
    import yaml

    return float(yaml.safe_load(CL_CONFIG.read_text())["train"]["learning_rate"])


def lr_tag(lr: float) -> str:
    """``3e-04`` for 3e-4: the LR as it appears in run folders and model names."""
    return f"{lr:.0e}"


def model_name(arm: str, lr: float) -> str:
    """The CL model of ``arm`` trained at ``lr`` (run folder ``cl_<name>``, evaluation folders ``<name>``)."""
    return f"{arm}_lr{lr_tag(lr)}"


@dataclass
class Preset:
    """Sizes and scope of one run of the demo."""

    world: WorldConfig = field(default_factory=WorldConfig)
    """The generated world (fixed across seeds: the seeds vary training, not the evaluation set)."""
    base_steps: int = 1200
    """Optimizer steps of the causal base-model stage."""
    cpt_steps: int = 600
    """Optimizer steps of each CPT variant and of the causal-LM control."""
    cl_steps: int = 600
    """Optimizer steps of every CL run (all arms)."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds (initialisation, data order, masking) of the primary arms."""
    arms: tuple[str, ...] = ("a_last", "b", "c")
    """Arms trained and evaluated at every seed."""
    secondary_seeds: tuple[int, ...] = ()
    """Seeds that also run ``secondary_arms``."""
    secondary_arms: tuple[str, ...] = ()
    """Arms run only at ``secondary_seeds`` (after every primary job)."""
    lrs: tuple[float, ...] | None = None
    """CL learning rates (the selection's grid); None: the recipe's."""
    evals: tuple[str, ...] = ("mmeb", "vidore")
    """Evaluations of every CL model (``mmeb``, ``vidore``, ``val``: the CL validation split)."""
    base_eval_seeds: tuple[int, ...] | None = None
    """Seeds whose base model is evaluated (None: all); the selection evaluates none."""
    mteb: bool = True
    """Also run the MTEB harness check (arms of the first seed, in the mteb environment)."""

    def learning_rates(self) -> tuple[float, ...]:
        """The CL learning rates this preset trains."""
        return self.lrs if self.lrs is not None else (recipe_lr(),)

    def arms_of(self, seed: int) -> tuple[str, ...]:
        """Every arm trained at ``seed``."""
        return self.arms + (self.secondary_arms if seed in self.secondary_seeds else ())

    def all_seeds(self) -> tuple[int, ...]:
        """Every seed with at least one arm."""
        return tuple(dict.fromkeys((*self.seeds, *self.secondary_seeds)))

    def models_of(self, seed: int) -> dict[str, tuple[str, float]]:
        """``{model name: (arm, lr)}`` of every CL model trained at ``seed``."""
        return {model_name(a, lr): (a, lr) for a in self.arms_of(seed) for lr in self.learning_rates()}

    def identity(self) -> dict:
        """What makes two runs' checkpoints interchangeable (seeds, arms and CL learning rates are not).

        The world, the step counts and every recipe's full settings, defaults included: a changed default
        of the training code starts the work directory over, as a changed recipe does. The CL learning rate
        is left out: it is part of every CL run's folder name.
        """
        from dataclasses import asdict

        from moca_train.cl.config import CLConfig
        from moca_train.cli import parse_config
        from moca_train.cpt.config import CPTConfig

        recipes = {f"{p.parent.name}/{p.name}": asdict(parse_config(["--config", str(p)], kind))
                   for p, kind in ((BASE_CONFIG, CPTConfig), (CPT_CONFIG, CPTConfig), (CL_CONFIG, CLConfig))}
        recipes[f"{CL_CONFIG.parent.name}/{CL_CONFIG.name}"]["train"].pop("learning_rate")
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
        """Run folder of a training job (``base``, ``cpt_<stage>``, ``cl_<model>``)."""
        return self.root / "runs" / name

    def model(self, name: str) -> Path:
        """Final checkpoint of a model (``base`` or a CL model name, see :func:`model_name`)."""
        if name == BASE:
            return final_checkpoint(self.run(BASE), self.preset.base_steps)
        return final_checkpoint(self.run(f"cl_{name}"), self.preset.cl_steps)

    def pre(self, stage: str) -> Path:
        """Final checkpoint of a stage between base and CL (a key of ``PRE_STAGES``)."""
        return final_checkpoint(self.run(f"cpt_{stage}"), self.preset.cpt_steps)

    def start_of(self, arm: str) -> Path:
        """The checkpoint the CL run of ``arm`` starts from."""
        stage = ARMS[arm].pre
        return self.pre(stage) if stage else self.model(BASE)

    @property
    def evals(self) -> Path:  # noqa: D102
        return self.root / "evals"


# Start order among ready jobs: primary work before secondary, then seed by seed, then the stage.
STAGE_ORDER = ("base", "cpt_mlm_mae", "cpt_clm", "cpt_mlm", "cpt_mae", "cl_c", "cl_b_plus", "cl_a_last", "cl_b",
               "cl_a_plus", "cl_a_mean", "cl_d", "cl_e")  # fmt: skip


def _rank(tier: int, seed: int, stage: str) -> tuple[int, int, int]:
    base = stage.split("_lr")[0]
    return (tier, seed, STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER))


def _train_job(name: str, argv: list[str], run_dir: Path, steps: int, deps: tuple[str, ...], rank: tuple) -> Job:
    done = final_checkpoint(run_dir, steps) / "config.json"
    return Job(name, argv, run_dir.parent / f"{run_dir.name}.log", deps=deps, total=steps,
               progress=train_progress(run_dir), done=done.is_file, rank=rank)  # fmt: skip


def _common(config: Path, init: Path, out: Path, steps: int, seed: int) -> list[str]:
    return [_python(), "-m", f"moca_train.{'cl' if config == CL_CONFIG else 'cpt'}", "--config", str(config),
            "--model.init_from", str(init), "--train.output_dir", str(out), "--train.max_steps", str(steps),
            "--train.seed", str(seed), "--train.progress_bar", "false"]  # fmt: skip


def pre_stage_argv(p: SeedPaths, seed: int, stage: str, world: Path, manifest: dict) -> list[str]:
    """The command of a stage between base and CL: CPT (``mlm_mae``/``mlm``/``mae``) or the control (``clm``).

    Every stage reads the CPT corpus with CPT's recipe (steps, token budget, data seed ``seed + 2``), so the
    control sees exactly CPT's batches; only the objective and the attention differ.
    """
    mlm, mae, clm, attention = PRE_STAGES[stage]
    argv = _common(CPT_CONFIG, p.model(BASE), p.run(f"cpt_{stage}"), p.preset.cpt_steps, seed)
    return argv + ["--data.seed", str(seed + 2), "--data.sources.0.path", str(world / manifest["cpt"]["path"]),
                   "--model.attention", attention, "--objective.use_mlm", str(mlm).lower(),
                   "--objective.use_mae", str(mae).lower(), "--objective.use_clm", str(clm).lower()]  # fmt: skip


def cl_argv(p: SeedPaths, seed: int, arm: str, lr: float, world: Path, manifest: dict) -> list[str]:
    """The CL command of ``arm`` at learning rate ``lr`` (the recipe, the arm's attention and pooling)."""
    datasets = [{"name": t, "path": str(world / spec["path"])} for t, spec in manifest["cl_tasks"].items()]
    argv = _common(CL_CONFIG, p.start_of(arm), p.run(f"cl_{model_name(arm, lr)}"), p.preset.cl_steps, seed)
    return argv + ["--data.seed", str(seed), "--model.attention", ARMS[arm].attention,
                   "--model.pooling", ARMS[arm].pooling, "--train.learning_rate", repr(lr),
                   "--data.datasets", json.dumps(datasets)]  # fmt: skip


def training_jobs(p: SeedPaths, seed: int, manifest: dict, world: Path, tag: str) -> list[Job]:
    """Base, the stages between base and CL the arms need, and one CL run per arm and learning rate."""
    pre = p.preset
    tier = {a: int(a not in pre.arms) for a in pre.arms_of(seed)}
    base = _common(BASE_CONFIG, p.init, p.run(BASE), pre.base_steps, seed)
    base += ["--data.seed", str(seed + 1), "--data.sources.0.path", str(world / manifest["base"]["path"])]
    jobs = [_train_job(f"{tag}base", base, p.run(BASE), pre.base_steps, (), _rank(0, seed, "base"))]
    stages: dict[str, int] = {}
    for arm in pre.arms_of(seed):
        if ARMS[arm].pre:
            stages[ARMS[arm].pre] = min(stages.get(ARMS[arm].pre, 1), tier[arm])
    for stage, stage_tier in stages.items():
        argv = pre_stage_argv(p, seed, stage, world, manifest)
        jobs.append(_train_job(f"{tag}cpt_{stage}", argv, p.run(f"cpt_{stage}"), pre.cpt_steps, (f"{tag}base",),
                               _rank(stage_tier, seed, f"cpt_{stage}")))  # fmt: skip
    for name, (arm, lr) in pre.models_of(seed).items():
        dep = f"{tag}cpt_{ARMS[arm].pre}" if ARMS[arm].pre else f"{tag}base"
        argv = cl_argv(p, seed, arm, lr, world, manifest)
        jobs.append(_train_job(f"{tag}cl_{name}", argv, p.run(f"cl_{name}"), pre.cl_steps, (dep,),
                               _rank(tier[arm], seed, f"cl_{arm}")))  # fmt: skip
    return jobs


def eval_jobs(name: str, ckpt: Path, evals: Path, world: Path, dep: str, tag: str, *, kinds: tuple[str, ...],
              rank: tuple, val_subsets=VAL_SUBSETS) -> list[Job]:  # fmt: skip
    """MMEB (per-row hits), ViDoRe (all page pools, score matrices kept) and the CL validation split."""
    out = []

    def mmeb_like(kind: str, data: Path, image_root: Path, subsets) -> Job:
        folder = evals / kind
        argv = [_python(), "-m", "demo.mmeb_eval", "--model", str(ckpt), "--model-name", name,
                "--data-dir", str(data), "--image-root", str(image_root), "--subsets", *subsets,
                "--output-dir", str(folder), "--no-cache", "--batch-size", "64", "--no-progress", "--save-rows"]
        return Job(f"{tag}{kind}:{name}", argv, evals / f"{kind}-{name}.log", deps=(dep,),
                   done=(folder / name / "rows.json").is_file, rank=rank)  # fmt: skip

    if "mmeb" in kinds:
        out.append(mmeb_like("mmeb", world / "mmeb", world / "mmeb" / "images", MMEB_SUBSETS))
    if "val" in kinds:
        out.append(mmeb_like("val", world / "val", world / "val", val_subsets))
    if "vidore" in kinds:
        vidore_out = evals / "vidore" / name
        vidore = [str(Path(_python()).with_name("vidore-benchmark")), "evaluate-retriever", "--model-class", "moca",
                  "--model-name", str(ckpt), "--collection-name", str(world / "vidore"), "--dataset-format",
                  "beir", "--split", "test", "--output-dir", str(vidore_out), "--batch-query", "64",
                  "--batch-passage", "16"]  # fmt: skip
        out.append(Job(f"{tag}vidore:{name}", vidore, evals / f"vidore-{name}.log", deps=(dep,),
                       env={"MOCA_SCORES_DIR": str(vidore_out / "scores")}, rank=rank,
                       done=lambda: any(vidore_out.glob("*_metrics.json"))))  # written once every pool is scored
    return out


def seed_jobs(p: SeedPaths, seed: int, manifest: dict, world: Path) -> list[Job]:
    """Every training and evaluation job of one seed."""
    pre, tag = p.preset, f"s{seed}:"
    graph = training_jobs(p, seed, manifest, world, tag)
    if pre.base_eval_seeds is None or seed in pre.base_eval_seeds:
        kinds = tuple(k for k in pre.evals if k != "val")
        graph += eval_jobs(BASE, p.model(BASE), p.evals, world, f"{tag}base", tag, kinds=kinds,
                           rank=_rank(1, seed, "eval"))  # exploratory: after the primary work
    for name, (arm, _) in pre.models_of(seed).items():
        graph += eval_jobs(name, p.model(name), p.evals, world, f"{tag}cl_{name}", tag, kinds=pre.evals,
                           rank=_rank(int(arm not in pre.arms), seed, "eval"),
                           val_subsets=list(manifest.get("val_subsets", VAL_SUBSETS)))  # fmt: skip
    return graph


def mteb_job(models: dict[str, Path], evals: Path, world: Path, python: Path, deps: tuple[str, ...], tag: str) -> Job:
    """The MTEB harness check (pool 0 of pages and shapes) in the mteb environment."""
    out = evals / "mteb.json"
    argv = [str(python), "-m", "demo.mteb_eval", "--world", str(world), "--out", str(out)]
    argv += [arg for m, path in models.items() for arg in ("--model", f"{m}={path}")]
    return Job(f"{tag}mteb", argv, evals / "mteb.log", deps=deps, done=out.is_file, rank=(1, 0, 0))
