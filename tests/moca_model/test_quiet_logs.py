"""Quiet by default: a model load logs our line only; -v shows what transformers said and why lm_head is skipped."""

from __future__ import annotations

import json
import subprocess
import sys


def _embed(tiny_dir, tmp_path, *flags) -> list[str]:
    (tmp_path / "items.jsonl").write_text(json.dumps("a query") + "\n")
    proc = subprocess.run([sys.executable, "-m", "moca_model.embed", "--model", str(tiny_dir), "--input", "items.jsonl",
                           "--output", "v.npy", "--no-progress", *flags], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.replace("\r", "\n").splitlines()
    return [x for x in lines if x.strip() and not x.startswith("Loading weights")]  # transformers 5's load bar


def test_a_model_load_logs_our_lines_only(tiny_dir, tmp_path):
    assert _embed(tiny_dir, tmp_path) == [
        f"INFO moca_model.encode: loaded {tiny_dir} (sdpa, torch.float32, bidirectional attention) on cpu",
        "INFO __main__: 1 inputs, 1 unique, 0 from cache (0 memory, 0 disk), 1 encoded in 1 batches",
        "INFO __main__: wrote v.npy with shape (1, 64)",
    ]  # no LOAD REPORT (lm_head.weight UNEXPECTED), no rope_scaling FutureWarning (transformers 5)


def test_verbose_shows_the_explanations(tiny_dir, tmp_path):
    import transformers

    lines = _embed(tiny_dir, tmp_path, "-v")
    assert ("DEBUG moca_model.loading: not loaded, by design (MoCa pools hidden states; no LM head or CPT head): "
            "['lm_head.weight']") in lines  # fmt: skip
    if int(transformers.__version__.split(".")[0]) >= 5:  # what transformers 5 says about a Qwen2.5-VL config
        assert any(x.startswith("DEBUG moca_model.loading: transformers: ") and "rope" in x for x in lines)
    assert not any("LOAD REPORT" in x for x in lines)
