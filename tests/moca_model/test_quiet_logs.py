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
    loaded, *rest = _embed(tiny_dir, tmp_path)
    assert loaded.startswith(f"INFO moca_model.encode: loaded {tiny_dir} (sdpa, torch.float32, ") and loaded.endswith(
        " on cpu")  # fmt: skip
    assert rest == [
        "INFO __main__: 1 inputs, 1 unique, 0 from cache (0 memory, 0 disk), 1 encoded in 1 batches",
        "INFO __main__: wrote v.npy with shape (1, 64)",
    ]  # no LOAD REPORT (lm_head.weight UNEXPECTED), no rope_scaling FutureWarning (transformers 5)


def _as_written_by_transformers_4(tiny_dir, tmp_path):
    """A copy of the tiny checkpoint whose config.json names rope settings as transformers 4.x (and the released
    MoCa checkpoints) write them: ``rope_scaling`` + ``rope_theta``, which transformers 5 comments on."""  # noqa: D205, D209
    import shutil

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, folder)
    cfg = json.loads((folder / "config.json").read_text())
    rope = cfg.pop("rope_parameters", None) or cfg.get("text_config", {}).pop("rope_parameters", None)
    if rope:  # transformers 4 writes them in text_config and at the top level
        for section in (cfg, cfg["text_config"]):
            section["rope_scaling"] = {"mrope_section": rope["mrope_section"], "type": "default"}
            section["rope_scaling"]["rope_type"] = "default"
            section["rope_theta"] = rope.get("rope_theta", 1e6)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_verbose_shows_the_explanations(tiny_dir, tmp_path):
    import transformers

    ckpt = _as_written_by_transformers_4(tiny_dir, tmp_path)
    quiet = _embed(ckpt, tmp_path)
    assert not any("rope" in x or "LOAD REPORT" in x or "Warning" in x for x in quiet), quiet
    lines = _embed(ckpt, tmp_path, "-v")
    assert ("DEBUG moca_model.loading: not loaded, by design (MoCa pools hidden states; no LM head or CPT head): "
            "['lm_head.weight']") in lines  # fmt: skip
    if int(transformers.__version__.split(".")[0]) >= 5:  # what transformers 5 says about such a config
        assert any(x.startswith("DEBUG moca_model.loading: transformers: ") and "rope" in x for x in lines), lines
    assert not any("LOAD REPORT" in x for x in lines)
