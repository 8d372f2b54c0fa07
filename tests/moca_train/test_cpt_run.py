"""End-to-end CPT on CPU: the tiny recipe learns, resume is exact, checkpoints load, recipes parse, gloo works."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("accelerate")

import moca_train.cpt.train as cpt  # noqa: E402
from moca_train.cli import parse_config  # noqa: E402
from moca_train.cpt.config import CPTConfig  # noqa: E402
from moca_train.cpt.synthetic import write_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs" / "cpt").glob("*.yaml"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("cpt_corpus"), rows=120, seed=0)


def _args(tiny_dir, corpus, out, *extra):
    return [
        "--config",
        str(ROOT / "configs/cpt/tiny.yaml"),
        "--model.init_from",
        str(tiny_dir),
        "--data.sources",
        f"[{{path: {corpus}}}]",
        "--data.cache_dir",
        str(corpus.parent / "cache"),
        "--train.output_dir",
        str(out),
        "--train.progress_bar",
        "false",
        *extra,
    ]


def _cfg(tiny_dir, corpus, out, *extra):
    return parse_config(_args(tiny_dir, corpus, out, *extra), CPTConfig)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_parses(recipe):
    cfg = parse_config(["--config", str(recipe)], CPTConfig)
    assert cfg.data.sources and 0 < cfg.objective.p_text <= 1 and 0 < cfg.objective.p_image <= 1
    if recipe.stem.startswith("qwen25vl"):
        size = recipe.stem.split("_")[1]
        expected = {"3b": (0.4, 0.5), "7b": (0.6, 0.6)}[size]  # paper Sec. 3.1.1
        assert (cfg.objective.p_text, cfg.objective.p_image) == expected
        assert cfg.objective.mae_weight == 0.5 and cfg.train.learning_rate == 2e-6 and cfg.model.max_length == 2048


def test_missing_sources_and_both_objectives_off_are_rejected(tiny_dir, corpus, tmp_path):
    with pytest.raises(ValueError, match="data.sources"):
        parse_config(["--model.init_from", str(tiny_dir)], CPTConfig)
    with pytest.raises(ValueError, match="use_mlm"):
        _cfg(tiny_dir, corpus, tmp_path, "--objective.use_mlm", "false", "--objective.use_mae", "false")


@pytest.fixture(scope="module")
def tiny_run(tiny_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("cpt_run")
    history = cpt.run(_cfg(tiny_dir, corpus, out, "--train.max_steps", "50"))
    return out, history


def test_tiny_recipe_lowers_both_losses(tiny_run):
    _, history = tiny_run
    assert len(history) == 50

    def mean(key, rows):
        return sum(r[key] for r in rows) / len(rows)

    first, last = history[:5], history[-10:]
    assert mean("mlm", last) < 0.8 * mean("mlm", first), (mean("mlm", first), mean("mlm", last))
    assert mean("mae", last) < 0.8 * mean("mae", first), (mean("mae", first), mean("mae", last))
    assert all(r["mlm_tokens"] > 0 for r in history)
    assert sum(r["mae_patches"] > 0 for r in history) > 25  # text-only micro-batches have no patch to score


def test_checkpoint_loads_with_moca_encoder_and_encodes(tiny_run, corpus):
    from safetensors import safe_open

    from moca_model import MoCaEncoder

    out, _ = tiny_run
    ckpt = out / "checkpoint-50"
    encoder = MoCaEncoder.from_pretrained(ckpt, device="cpu")
    image = next((corpus.parent / "images").glob("*.png"))
    emb = encoder.encode(["a red circle on the left", {"text": "a shape", "image": str(image)}], show_progress=False)
    assert emb.shape == (2, encoder.dim) and abs(float((emb**2).sum(1).mean()) - 1.0) < 1e-4
    assert encoder.processor.tokenizer.convert_tokens_to_ids("<|mask|>") is not None
    with safe_open(str(ckpt / cpt.HEADS_FILE), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("mae_decoder.") for k in keys) and "mae_proj.weight" in keys
    assert (ckpt / "run_config.yaml").is_file()


def test_ablation_runs(tiny_dir, corpus, tmp_path):
    for flag in ("use_mae", "use_mlm"):
        history = cpt.run(
            _cfg(tiny_dir, corpus, tmp_path / flag, f"--objective.{flag}", "false", "--train.max_steps", "2")
        )
        off = "mae" if flag == "use_mae" else "mlm"
        assert all(r[off] == 0.0 and r["loss"] > 0 for r in history)


def test_interrupted_run_resumes_to_the_same_loss_curve(tiny_dir, corpus, tmp_path, monkeypatch):
    extra = ("--train.max_steps", "4", "--train.save_every", "2", "--train.grad_accum_steps", "2")
    full = cpt.run(_cfg(tiny_dir, corpus, tmp_path / "full", *extra))

    real_loss, calls = cpt.cpt_loss, {"n": 0}

    def crashing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] > 2 * 2 + 1:  # dies inside step 3, after checkpoint-2 was written
            raise KeyboardInterrupt
        return real_loss(model, batch)

    monkeypatch.setattr(cpt, "cpt_loss", crashing_loss)
    with pytest.raises(KeyboardInterrupt):
        cpt.run(_cfg(tiny_dir, corpus, tmp_path / "resumed", *extra))
    monkeypatch.setattr(cpt, "cpt_loss", real_loss)
    resumed = cpt.run(_cfg(tiny_dir, corpus, tmp_path / "resumed", *extra))
    state = json.loads((tmp_path / "resumed/checkpoint-4/trainer_state.json").read_text())
    assert state["batches"] == {"epoch": 0, "step": 8}
    assert len(resumed) == len(full) == 4
    for a, b in zip(full, resumed):
        for key in ("loss", "mlm", "mae", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-6, (a["step"], key, a[key], b[key])


@pytest.mark.slow
def test_two_process_gloo_run(tiny_dir, corpus, tmp_path):
    out = tmp_path / "gloo"
    with socket.socket() as sock:  # a free port, so parallel test runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    cmd += ["-m", "moca_train.cpt", *_args(tiny_dir, corpus, out, "--train.max_steps", "3")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "checkpoint-3/trainer_state.json").read_text())
    assert state["world_size"] == 2 and len(state["history"]) == 3
    assert all(r["mlm"] > 0 and r["mae"] > 0 for r in state["history"])


def test_several_ranks_need_the_dummy_image(tiny_dir, corpus, tmp_path, monkeypatch):
    import types

    import moca_train.engine

    monkeypatch.setattr(moca_train.engine, "build_accelerator", lambda cfg: types.SimpleNamespace(num_processes=2))
    with pytest.raises(ValueError, match="--data.dummy_image"):
        cpt.run(_cfg(tiny_dir, corpus, tmp_path, "--data.dummy_image", "false"))


CLM = ("--objective.use_clm", "true", "--objective.use_mlm", "false", "--objective.use_mae", "false")


def test_causal_lm_needs_causal_attention_and_replaces_moca_objectives(tiny_dir, corpus, tmp_path):
    with pytest.raises(ValueError, match="model.attention: next-token prediction needs causal"):
        _cfg(tiny_dir, corpus, tmp_path, *CLM)
    with pytest.raises(ValueError, match="use_clm: the causal LM replaces"):
        _cfg(tiny_dir, corpus, tmp_path, "--objective.use_clm", "true", "--model.attention", "causal")
    with pytest.raises(ValueError, match="model.attention: MLM and MAE"):
        _cfg(tiny_dir, corpus, tmp_path, "--model.attention", "causal")
    with pytest.raises(ValueError, match="model.attention: expected one of"):
        _cfg(tiny_dir, corpus, tmp_path, "--model.attention", "sideways")


def test_base_stage_trains_causally_and_records_it(tiny_dir, corpus, tmp_path, monkeypatch):
    from moca_model import MoCaEncoder, moca_config
    from moca_train.cpt.model import CPTModule

    modes, forward = [], CPTModule.forward

    def spy(self, *args, **kwargs):
        modes.append(self.encoder.bidirectional)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(CPTModule, "forward", spy)
    out = tmp_path / "base"
    history = cpt.run(_cfg(tiny_dir, corpus, out, *CLM, "--model.attention", "causal", "--train.max_steps", "30"))
    assert modes and not any(modes)  # every training forward was causal
    assert "clm" in history[0] and "mlm" not in history[0] and all(r["mae"] == 0.0 for r in history)
    first, last = history[:5], history[-5:]
    assert sum(r["clm"] for r in last) < 0.8 * sum(r["clm"] for r in first)
    ckpt = out / "checkpoint-30"
    assert moca_config.attention(ckpt) == "causal"
    enc = MoCaEncoder.from_pretrained(ckpt, device="cpu")
    assert enc.model.bidirectional is False
    assert "<|mask|>" not in enc.processor.tokenizer.get_vocab()  # the causal LM adds no mask token
    ids = torch.tensor([enc.processor.tokenizer("a red circle at the top left of the page")["input_ids"]])
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 5) % 300
    with torch.no_grad():
        a = enc.model(ids).last_hidden_state
        b = enc.model(changed).last_hidden_state
    assert torch.equal(a[0, :-1], b[0, :-1])  # a token's state does not depend on later tokens
    assert not torch.equal(a[0, -1], b[0, -1])
