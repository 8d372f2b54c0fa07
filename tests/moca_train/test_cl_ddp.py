"""Two gloo ranks (torchrun, CPU) train exactly like one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

from moca_train.cl import train as cl  # noqa: E402
from moca_train.cl.config import CLConfig  # noqa: E402
from moca_train.cli import parse_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_two_gloo_ranks_equal_one_process(tiny_dir, tmp_path):
    from moca_train.cl.synthetic import write_world

    world = write_world(tmp_path / "world", rows_per_task=24)
    args = [
        "--config", str(ROOT / "configs/cl/tiny.yaml"), "--model.init_from", str(tiny_dir),
        "--data.datasets.0.path", str(world / "shapes_i2t.jsonl"),
        "--data.datasets.1.path", str(world / "shapes_t2i.jsonl"),
        "--data.global_batch_size", "8", "--loss.gradcache", "true", "--loss.chunk_size", "3", "--train.max_steps", "3",
        "--train.progress_bar", "false", "--data.same_task_batches", "false",  # mixed tasks: unused vision params
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    cmd += ["-m", "moca_train.cl", *args, "--train.output_dir", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "ddp/checkpoint-3/trainer_state.json").read_text())
    assert two["world_size"] == 2
    one = cl.run(parse_config([*args, "--train.output_dir", str(tmp_path / "single")], CLConfig))
    for a, b in zip(one, two["history"], strict=True):
        for key in ("loss", "accuracy", "grad_norm", "lr"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
