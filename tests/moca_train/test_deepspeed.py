"""DeepSpeed ZeRO-3 for real, on CPU: two gloo ranks under ``configs/accelerate/deepspeed_zero3.yaml`` train like one
process (CL with GradCache on and off, CPT), its LR schedule is ``train.warmup: log`` step by step, a sharded
checkpoint resumes bit-identically and converts to a plain checkpoint that MoCaEncoder loads.

accelerate 1.x would run a DeepSpeed launch on a CUDA-less machine as DDP; ``moca_train.launcher`` switches it to a
real ``DeepSpeedEngine`` on DeepSpeed's CPU accelerator (``DS_ACCELERATOR=cpu``, gloo), and each run asserts that it
did. The optimizer is the training config's torch AdamW, which DeepSpeed wraps in its ZeRO-3 optimizer (no compiled
extension). DeepSpeed is part of the training environment (``.venv``); the suite skips elsewhere.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("accelerate")
pytest.importorskip("deepspeed")

import torch  # noqa: E402

from moca_train.cl.config import CLConfig  # noqa: E402
from moca_train.cli import parse_config  # noqa: E402
from moca_train.cpt.config import CPTConfig  # noqa: E402
from moca_train.optim import lr_factor  # noqa: E402

from .conftest import ROOT, assert_same_weights, checkpoint_weights, launch, write_modality_tasks  # noqa: E402
from .test_cl_ddp import STEPS, cl_args, compare_with_one_process, step_modalities  # noqa: E402
from .test_fsdp import CPT_STEPS, _cpt_as_one_process  # noqa: E402

pytestmark = pytest.mark.slow
ZERO3 = "DeepSpeed ZeRO-3 on 2 CPU ranks (gloo)"
WARMUP = ["--train.warmup", "log", "--train.warmup_ratio", "0.75"]  # 3 warmup steps of 4


@pytest.mark.parametrize("gradcache", [True, False], ids=["gradcache", "plain"])
def test_cl_zero3_two_ranks_equal_one_process(tiny_dir, tmp_path, gradcache):
    from moca_train.cl.synthetic import write_world

    assert (True, False) in step_modalities()  # a step where rank 1 has no image while rank 0 has
    tasks = write_modality_tasks(write_world(tmp_path / "world", rows_per_task=24))
    args = [*cl_args(tiny_dir, tasks), *WARMUP, "--loss.gradcache", str(gradcache).lower()]
    proc = launch("deepspeed", "moca_train.cl", [*args, "--train.output_dir", str(tmp_path / "ds")])
    assert ZERO3 in proc.stderr and "DeepSpeed Model and Optimizer saved" in proc.stderr
    compare_with_one_process(tiny_dir, tmp_path, tmp_path / "ds", args)
    # the LR DeepSpeed's optimizer held at each step is train.warmup: log (DeepSpeed WarmupDecayLR's shape)
    history = json.loads((tmp_path / "ds" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())["history"]
    cfg = parse_config(args, CLConfig).train
    assert cfg.warmup == "log" and cfg.warmup_steps() == 3
    want = [cfg.learning_rate * lr_factor(k, warmup_steps=3, total_steps=STEPS, warmup="log") for k in range(STEPS)]
    assert [r["lr"] for r in history] == pytest.approx(want, rel=1e-12, abs=0)
    assert want[0] == 0.0 < want[1] < want[2]  # log warmup: 0, log 2 / log 3, 1


def test_cpt_zero3_equals_one_process_resumes_bit_identically_and_converts(tiny_dir, tmp_path):
    from safetensors.torch import load_file

    from moca_model import MoCaEncoder
    from moca_train.cpt.synthetic import write_corpus
    from moca_train.zero_checkpoint import convert

    corpus = write_corpus(tmp_path / "corpus", rows=120, seed=0)
    args = [
        "--config", str(ROOT / "configs/cpt/tiny.yaml"), "--model.init_from", str(tiny_dir),
        "--data.sources", f"[{{path: {corpus}}}]", "--data.cache_dir", str(tmp_path / "cache"),
        "--data.token_budget", "64", "--train.max_steps", str(CPT_STEPS), "--train.progress_bar", "false",
        *WARMUP,
    ]  # fmt: skip
    ds = tmp_path / "ds"
    proc = launch("deepspeed", "moca_train.cpt", [*args, "--train.output_dir", str(ds), "--train.save_every", "2"])
    assert ZERO3 in proc.stderr
    # 1. two ZeRO-3 ranks == one process fed both ranks' micro-batches (steps where only rank 0 has images included)
    one_args = [*args, "--train.output_dir", str(tmp_path / "single"), "--train.grad_accum_steps", "2"]
    history, images = _cpt_as_one_process(parse_config(one_args, CPTConfig), world_size=2)
    assert any(a and not b for a, b in zip(*images)), images
    final = checkpoint_weights(ds, CPT_STEPS)
    # one element of the ~400k moves with an eps-level gradient (tests/moca_train/conftest.py, EPS_LEVEL_ATOL)
    worst = assert_same_weights(checkpoint_weights(tmp_path / "single", CPT_STEPS), final, eps_outliers=2)
    two = json.loads((ds / f"checkpoint-{CPT_STEPS}" / "trainer_state.json").read_text())["history"]
    for a, b in zip(history, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5) and b["lr"] == pytest.approx(a["lr"], rel=1e-12)
    print(f"CPT, DeepSpeed ZeRO-3 2 ranks vs 1 process: max |weight difference| {worst:.2e}")  # -rP

    # 2. the sharded checkpoint of step 2 resumes to exactly the uninterrupted run's step 4
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(ds / "checkpoint-2", resumed / "checkpoint-2")
    proc = launch("deepspeed", "moca_train.cpt", [*args, "--train.output_dir", str(resumed), "--train.resume", "auto"])
    assert "resumed from" in proc.stderr and "DeepSpeed Model and Optimizer loaded" in proc.stderr
    again = checkpoint_weights(resumed, CPT_STEPS)
    assert all(torch.equal(again[k], final[k]) for k in final)  # bit-identical
    heads = load_file(str(ds / f"checkpoint-{CPT_STEPS}" / "cpt_heads.safetensors"))
    heads_again = load_file(str(resumed / f"checkpoint-{CPT_STEPS}" / "cpt_heads.safetensors"))
    assert heads.keys() == heads_again.keys() and all(torch.equal(heads[k], heads_again[k]) for k in heads)
    assert json.loads((resumed / f"checkpoint-{CPT_STEPS}" / "trainer_state.json").read_text())["history"] == two

    # 3. the shards alone give a plain checkpoint with the same weights, which MoCaEncoder loads
    plain = convert(ds / f"checkpoint-{CPT_STEPS}", tmp_path / "plain")
    assert not (plain / "train_state").exists()
    a = MoCaEncoder.from_pretrained(plain, device="cpu", cache_memory_mb=0)
    b = MoCaEncoder.from_pretrained(ds / f"checkpoint-{CPT_STEPS}", device="cpu", cache_memory_mb=0)
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)  # fp32 run: masters == gathered
    converted_heads = load_file(str(plain / "cpt_heads.safetensors"))
    assert converted_heads.keys() == heads.keys() and all(torch.equal(converted_heads[k], heads[k]) for k in heads)
