import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_check import ARCH_3B, forward_flops, main

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_writes_a_result(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--dry-run", "--queries", "4", "--pages", "2", "--page-side", "112", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["sections"] == ["encode", "pages"]
    encode = result["encode"]
    sdpa = encode["backends"]["sdpa"]
    assert sdpa["items_per_s"] > 0 and sdpa["tokens"] > 0 and encode["n_params"] > 0 and sdpa["pages_per_s"] > 0
    assert "mfu" in sdpa and sdpa["achieved_tflops"] > 0 and encode["flops_per_pass"] > 0
    pages = result["pages"]
    assert pages["sdpa_4d_mask"]["pages_per_s"] > 0 and pages["sdpa_fast_path"]["pages_per_s"] > 0
    assert pages["devices"]["list"] == ["cpu", "cpu"] and pages["devices"]["pool"]["pages_per_s"] > 0


def test_flops_estimate_is_about_twice_the_parameters_per_token_on_the_3b_architecture():
    """A 1,024-token page (4,096 patches) through Qwen2.5-VL-3B: 2 FLOPs per weight and token in the text decoder
    (2.78 B matmul weights without the embedding, plus attention), and the 0.67 B-parameter vision tower on 4x as
    many patches costs about as much again."""
    flops = forward_flops(ARCH_3B, [1040], [4096])
    text_only = forward_flops(ARCH_3B, [1040], [])
    assert 2 * 2.78e9 * 1040 < text_only < 2 * 3.0e9 * 1040
    assert 0.4 < (flops - text_only) / flops < 0.55


@pytest.mark.slow
def test_gpu_check_script_dry_run_runs_every_section_and_reports(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: the shell driver, the GPU tests' command (they skip without CUDA) and the CL
    step under DeepSpeed ZeRO-3 (DeepSpeed's CPU accelerator, tiny architecture); encode is covered above."""
    pytest.importorskip("deepspeed")
    env = {**os.environ, "OUT": str(tmp_path), "SECTIONS": "env parity cl_step", "PY": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "cl_step.log").read_text()[-3000:]
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["env", "parity", "cl_step"]
    assert all(": ok (" in line for line in summary)
    assert "deepspeed 0.19.8" in (tmp_path / "env.txt").read_text()
    assert (tmp_path / "parity_junit.xml").is_file()
    step = json.loads((tmp_path / "cl_step.json").read_text())
    assert step["zero_stage"] == 3 and step["offload_optimizer"] == "cpu" and step["finite"] and len(step["steps"]) == 2
