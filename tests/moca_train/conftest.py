"""Helpers for the multi-process training tests: modality-mixed CL tasks, launchers, weight comparison."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FSDP_CONFIG = ROOT / "configs/accelerate/fsdp.yaml"
DEEPSPEED_CONFIG = ROOT / "configs/accelerate/deepspeed_zero3.yaml"


def write_modality_tasks(world: Path) -> dict[str, Path]:
    """Three CL tasks from the synthetic world: ``img`` (image queries), ``txt`` (text only) and ``mix``
    (even rows = ``img`` rows, odd rows = ``txt`` rows), 24 rows each."""
    img = world / "shapes_i2t.jsonl"
    rows = [json.loads(line) for line in img.read_text().splitlines()]
    text = [{"qry": "Name the shape: " + r["pos_text"], "pos_text": r["pos_text"], "neg_text": r["neg_text"]}
            for r in rows]  # fmt: skip
    mix = [rows[i] if i % 2 == 0 else text[i] for i in range(len(rows))]
    paths = {"img": img, "txt": world / "txt.jsonl", "mix": world / "mix.jsonl"}
    for name, data in (("txt", text), ("mix", mix)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in data))
    return paths


def rank_has_image(task: int, row: int) -> bool:
    """Whether row ``row`` of task ``task`` (0 img, 1 txt, 2 mix) has an image."""
    return task == 0 or (task == 2 and row % 2 == 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, module: str, args: list[str], *, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` on 2 gloo ranks: ``ddp`` (torchrun), ``fsdp`` (accelerate launch + fsdp.yaml) or
    ``deepspeed`` (accelerate launch + deepspeed_zero3.yaml on DeepSpeed's CPU accelerator)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0",
           "DS_ACCELERATOR": "cpu"}  # fmt: skip
    if kind == "ddp":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    else:
        config = {"fsdp": FSDP_CONFIG, "deepspeed": DEEPSPEED_CONFIG}[kind]
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port())]  # fmt: skip
    proc = subprocess.run([*cmd, "-m", module, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def checkpoint_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """The saved model weights of ``run_dir/checkpoint-<step>``."""
    from safetensors.torch import load_file

    return load_file(str(run_dir / f"checkpoint-{step}" / "model.safetensors"))


# A bias added to every key shifts all of a query's attention logits equally, and softmax ignores that: these
# biases have a zero gradient in exact arithmetic, so AdamW turns float rounding (~1e-9) into steps of up to
# the LR whose sign depends on the summation order of each engine. They are compared, but not to 1e-5.
ZERO_GRADIENT = re.compile(r"self_attn\.k_proj\.bias$")


# AdamW's update is lr * m / (sqrt(v) + eps): an element whose gradient is at the level of eps (1e-8) in some step,
# i.e. pure float cancellation, moves by a fraction of the LR that depends on that noise. Measured (CPT, DeepSpeed
# ZeRO-3 vs one process): one element of visual.merger.mlp.0.weight had gradient 0 then -1.7e-8 in the first two
# steps and ends 1.26e-5 apart (1% of that step's LR), while +-1 ulp noise on every gradient moves no weight by more
# than 3e-7. Such elements may exceed ``atol`` up to EPS_LEVEL_ATOL, if there are at most ``eps_outliers`` of them.
EPS_LEVEL_ATOL = 1e-4


def assert_same_weights(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, atol: float = 1e-5, eps_outliers: int = 0
) -> float:
    """Every tensor within ``atol`` (those named by ``ZERO_GRADIENT`` within 1e-3; at most ``eps_outliers`` elements
    in all within EPS_LEVEL_ATOL); returns the largest difference among the strictly compared ones."""
    assert a.keys() == b.keys()
    worst, outliers = 0.0, 0
    for name in a:
        delta = (a[name].float() - b[name].float()).abs()
        diff = delta.max().item()
        if ZERO_GRADIENT.search(name):
            assert diff <= 1e-3, (name, diff)
            continue
        if diff > atol and eps_outliers:
            assert diff <= EPS_LEVEL_ATOL, (name, diff)
            outliers += int((delta > atol).sum())
            assert outliers <= eps_outliers, (name, diff, outliers)
            diff = delta[delta <= atol].max().item()
        assert diff <= atol, (name, diff)
        worst = max(worst, diff)
    return worst
