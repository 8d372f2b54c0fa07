"""MoCa's training on every backbone: CPT (MLM + MAE in the backbone's patch geometry) and CL, on tiny models.

Per backbone: both CPT losses fall and CL lifts held-out retrieval on the suite's data; a run killed with
SIGKILL mid-run resumes to bit-identical weights; 2 gloo ranks train exactly like one process. The figures
(losses first -> last, accuracy before -> after, weight differences) are printed (``pytest -rP``) for
docs/backbones.md. Slow: each test trains several tiny models.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("accelerate")

import moca_train.cpt.train as cpt  # noqa: E402
from moca_model import backbones  # noqa: E402
from moca_train.cl import train as cl  # noqa: E402
from moca_train.cl.config import CLConfig  # noqa: E402
from moca_train.cli import parse_config  # noqa: E402
from moca_train.cpt.config import CPTConfig  # noqa: E402

from .conftest import ROOT, assert_same_weights, checkpoint_weights, launch, write_modality_tasks  # noqa: E402

pytestmark = pytest.mark.slow
BACKBONES = backbones.BACKBONES


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from moca_train.cpt.synthetic import write_corpus

    return write_corpus(tmp_path_factory.mktemp("cpt_corpus"), rows=120, seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from moca_train.cl.synthetic import write_world

    return write_world(tmp_path_factory.mktemp("cl") / "world", rows_per_task=192)


def cpt_args(ckpt, corpus, out, *extra) -> list[str]:
    return ["--config", str(ROOT / "configs/cpt/tiny.yaml"), "--model.init_from", str(ckpt),
            "--data.sources", f"[{{path: {corpus}}}]", "--data.cache_dir", str(out.parent / f"{out.name}-cache"),
            "--train.output_dir", str(out), "--train.progress_bar", "false", *extra]  # fmt: skip


def cl_args(ckpt, world, out, *extra) -> list[str]:
    return ["--config", str(ROOT / "configs/cl/tiny.yaml"), "--model.init_from", str(ckpt),
            "--train.output_dir", str(out), "--data.datasets.0.path", str(world / "shapes_i2t.jsonl"),
            "--data.datasets.1.path", str(world / "shapes_t2i.jsonl"), "--train.progress_bar", "false",
            *extra]  # fmt: skip


def _mean(rows, key):
    return float(np.mean([r[key] for r in rows]))


NEW = ["qwen2_vl", "qwen3_vl"]  # Qwen2.5-VL: test_cpt_run.py / test_cl_run.py (default suite) check the same


@pytest.mark.parametrize("backbone", NEW)
def test_cpt_lowers_both_losses_with_the_backbones_patch_geometry(tiny_backbone_dirs, corpus, tmp_path, backbone):
    spec = backbones.get(backbone)
    cfg = parse_config(cpt_args(tiny_backbone_dirs(backbone), corpus, tmp_path / "run", "--model.backbone", backbone),
                       CPTConfig)  # fmt: skip
    history = cpt.run(cfg)
    first, last = history[:5], history[-10:]
    mlm, mae = (_mean(first, "mlm"), _mean(last, "mlm")), (_mean(first, "mae"), _mean(last, "mae"))
    print(f"{backbone} CPT: MLM {mlm[0]:.3f} -> {mlm[1]:.3f}, MAE {mae[0]:.3f} -> {mae[1]:.3f}")
    assert mlm[1] < 0.8 * mlm[0] and mae[1] < 0.8 * mae[0], (mlm, mae)
    from safetensors.torch import load_file

    heads = load_file(str(tmp_path / "run" / "checkpoint-50" / cpt.HEADS_FILE))
    # the MAE target is the merged token's 2 x 2 patch rows in the backbone's geometry: 4 x 3 x 2 x p x p
    assert heads["mae_proj.weight"].shape[0] == 4 * spec.row_size  # 4,704, or 6,144 with Qwen3-VL's 16-px patches
    assert json.loads((tmp_path / "run" / "checkpoint-50" / "moca_config.json").read_text())["backbone"] == backbone


@pytest.mark.parametrize("backbone", NEW)
def test_cl_lifts_heldout_retrieval(tiny_backbone_dirs, world, tmp_path, backbone):
    from .test_cl_run import heldout_i2t_accuracy

    ckpt = tiny_backbone_dirs(backbone)
    history = cl.run(parse_config(cl_args(ckpt, world, tmp_path / "run"), CLConfig))
    before, after = heldout_i2t_accuracy(ckpt, world), heldout_i2t_accuracy(tmp_path / "run" / "checkpoint-60", world)
    loss = (_mean(history[:10], "loss"), _mean(history[-10:], "loss"))
    print(f"{backbone} CL: loss {loss[0]:.3f} -> {loss[1]:.3f}, held-out i2t hit@1 {before:.3f} -> {after:.3f}")
    assert loss[1] < loss[0] - 1.0 and after >= 4 / 24 and after > before + 0.15, (loss, before, after)


def _kill_after_first_checkpoint(module: str, args: list[str], out) -> None:
    """Start ``python -m module args``; SIGKILL it as soon as checkpoint-2 is complete (long before the end)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not (out / "checkpoint-2" / "trainer_state.json").is_file():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "checkpoint-12").exists(), "the run ended before it was killed"


@pytest.mark.parametrize("stage", ["cpt", "cl"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_sigkill_mid_run_resumes_bit_identically(tiny_backbone_dirs, corpus, world, tmp_path, backbone, stage):
    ckpt = tiny_backbone_dirs(backbone)
    extra = ["--train.max_steps", "12", "--train.save_every", "2", "--train.keep_last", "null"]
    if stage == "cpt":
        make, config, module = (lambda out: cpt_args(ckpt, corpus, out, *extra)), CPTConfig, cpt
    else:
        extra += ["--data.global_batch_size", "8", "--loss.gradcache", "true", "--loss.chunk_size", "3"]
        make, config, module = (lambda out: cl_args(ckpt, world, out, *extra)), CLConfig, cl
    full = module.run(parse_config(make(tmp_path / "full"), config))
    _kill_after_first_checkpoint(f"moca_train.{stage}", make(tmp_path / "killed"), tmp_path / "killed")
    states = (tmp_path / "killed").glob("checkpoint-*/trainer_state.json")
    saved = sorted(int(p.parent.name.split("-")[1]) for p in states)
    stamp = (tmp_path / "killed" / f"checkpoint-{saved[-1]}" / "trainer_state.json").stat().st_mtime_ns
    resumed = module.run(parse_config(make(tmp_path / "killed"), config))  # resume: auto
    assert (tmp_path / "killed" / f"checkpoint-{saved[-1]}" / "trainer_state.json").stat().st_mtime_ns == stamp
    assert [r["step"] for r in resumed] == list(range(1, 13))  # the restored history, then the rest
    for a, b in zip(full, resumed, strict=True):
        assert (a["loss"], a["grad_norm"]) == (b["loss"], b["grad_norm"]), (a, b)
    a, b = checkpoint_weights(tmp_path / "full", 12), checkpoint_weights(tmp_path / "killed", 12)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    print(f"{backbone} {stage}: SIGKILL after checkpoint-{saved[-1]}, resumed; max |weight difference| {worst}")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("backbone", NEW)  # Qwen2.5-VL: test_cl_ddp.py, test_fsdp.py
def test_two_gloo_ranks_equal_one_process(tiny_backbone_dirs, tmp_path, backbone):
    """CL under DDP (torchrun) and CPT under FSDP2 (accelerate), 2 CPU ranks, against one process."""
    from moca_train.cl.synthetic import write_world
    from moca_train.cpt.synthetic import write_corpus

    from .test_cl_ddp import cl_args as ddp_args
    from .test_cl_ddp import compare_with_one_process
    from .test_fsdp import CPT_STEPS, _cpt_as_one_process

    ckpt = tiny_backbone_dirs(backbone)
    tasks = write_modality_tasks(write_world(tmp_path / "world", rows_per_task=24))
    args = ddp_args(ckpt, tasks)
    launch("ddp", "moca_train.cl", [*args, "--train.output_dir", str(tmp_path / "ddp")])
    compare_with_one_process(ckpt, tmp_path, tmp_path / "ddp", args)
    corpus = write_corpus(tmp_path / "corpus", rows=120, seed=0)
    cargs = ["--config", str(ROOT / "configs/cpt/tiny.yaml"), "--model.init_from", str(ckpt),
             "--data.sources", f"[{{path: {corpus}}}]", "--data.cache_dir", str(tmp_path / "cache"),
             "--data.token_budget", "64", "--train.max_steps", str(CPT_STEPS),
             "--train.progress_bar", "false"]  # fmt: skip
    launch("fsdp", "moca_train.cpt", [*cargs, "--train.output_dir", str(tmp_path / "fsdp")])
    one = [*cargs, "--train.output_dir", str(tmp_path / "cpt-single"), "--train.grad_accum_steps", "2"]
    history, _ = _cpt_as_one_process(parse_config(one, CPTConfig), world_size=2)
    assert len(history) == CPT_STEPS
    worst = assert_same_weights(checkpoint_weights(tmp_path / "cpt-single", CPT_STEPS),
                                checkpoint_weights(tmp_path / "fsdp", CPT_STEPS))  # fmt: skip
    print(f"{backbone}: CL DDP and CPT FSDP2, 2 ranks vs 1 process: CPT max |weight difference| {worst:.2e}")
