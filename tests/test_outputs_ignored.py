"""Default output locations are git-ignored, and no committed file is (the results/ patterns are precise)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(),
                                reason="needs a git checkout")  # fmt: skip

DEFAULT_OUTPUTS = [
    "runs/cl-tiny/checkpoint-10/model.safetensors",  # moca_train (configs/*/tiny.yaml, TrainConfig's runs/default)
    "runs/default/log.jsonl",
    "runs/tiny/config.json",  # the README's tiny checkpoint, data, embeddings and BEIR folder
    "runs/my-beir/corpus/test-0123456789abcdef.parquet",
    "runs/moca-3b-st/config.json",  # the README's sentence-transformers export
    "outputs/moca_runs_tiny_metrics.json",  # vidore-benchmark's default --output-dir
    "results/tiny/mmeb.json",  # python -m moca_bench.mmeb: results/<model>/
    "results/moca-embed__MoCa-Qwen25VL-3B/mmeb_v2.md",
    "results/checkpoint-60/rows.json",
    "results/results/moca-embed__MoCa-Qwen25VL-3B/no_revision_available/STS12.json",  # mteb --output-folder results
    "mteb_mock_run_results.md",  # mteb mock-run
    "demo_out/world/manifest.json",  # make demo's work folder
]


def _ignored(paths: list[str]) -> set[str]:
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=ROOT, input="\n".join(paths),
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    return set(proc.stdout.split())


def test_every_default_output_location_is_ignored():
    assert _ignored(DEFAULT_OUTPUTS) == set(DEFAULT_OUTPUTS)


def test_no_committed_file_is_ignored():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert [p for p in tracked if p.startswith("results/")], "expected committed results"
    assert _ignored(tracked) == set()
