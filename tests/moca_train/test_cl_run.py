"""`python -m moca_train.cl` end to end on CPU: the tiny recipe learns, checkpoints load, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("accelerate")

from moca_train.cl import train as cl  # noqa: E402
from moca_train.cl.config import CLConfig  # noqa: E402
from moca_train.cli import parse_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs" / "cl" / "tiny.yaml")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from moca_train.cl.synthetic import write_world

    return write_world(tmp_path_factory.mktemp("cl") / "world", rows_per_task=192)


def _args(tiny_dir, world, out, *extra):
    return [
        "--config", TINY, "--model.init_from", str(tiny_dir), "--train.output_dir", str(out),
        "--data.datasets.0.path", str(world / "shapes_i2t.jsonl"),
        "--data.datasets.1.path", str(world / "shapes_t2i.jsonl"),
        "--train.progress_bar", "false", *extra,
    ]  # fmt: skip


def heldout_i2t_accuracy(model_dir, world) -> float:
    """Each held-out render ranks the 24 captions; hit@1 (chance 1/24)."""
    from moca_model import MoCaEncoder
    from moca_train.cl.synthetic import IMAGE_TEXT

    enc = MoCaEncoder.from_pretrained(model_dir, device="cpu")
    heldout = json.loads((world / "heldout.json").read_text())
    captions = sorted({h["caption"] for h in heldout})
    images = enc.encode([{"text": IMAGE_TEXT, "image": str(world / h["image"])} for h in heldout], show_progress=False)
    texts = enc.encode(captions, show_progress=False)
    gold = np.array([captions.index(h["caption"]) for h in heldout])
    return float(((images @ texts.T).argmax(1) == gold).mean())


def test_tiny_recipe_learns_heldout_retrieval(tiny_dir, world, tmp_path):
    out = tmp_path / "run"
    assert cl.main(_args(tiny_dir, world, out)) == 0
    ckpt = out / "checkpoint-60"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    losses = [h["loss"] for h in state["history"]]
    assert len(losses) == 60 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 1.0
    assert (ckpt / "run_config.yaml").is_file() and "commit" in (ckpt / "run_meta.json").read_text()
    chance = 1 / 24
    before, after = heldout_i2t_accuracy(tiny_dir, world), heldout_i2t_accuracy(ckpt, world)
    assert after >= 4 * chance and after > before + 0.15, (before, after)


def test_resume_is_exact(tiny_dir, world, tmp_path, monkeypatch):
    extra = ["--train.max_steps", "4", "--train.save_every", "2", "--data.global_batch_size", "8",
             "--loss.chunk_size", "3", "--loss.gradcache", "true", "--train.keep_last", "null"]  # fmt: skip
    full = cl.run(parse_config(_args(tiny_dir, world, tmp_path / "a", *extra), CLConfig))

    make = cl.make_step_fn

    def crashing(cfg):
        inner, calls = make(cfg), []

        def step_fn(model, batch, accelerator):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return inner(model, batch, accelerator)

        return step_fn

    monkeypatch.setattr(cl, "make_step_fn", crashing)
    with pytest.raises(KeyboardInterrupt):
        cl.run(parse_config(_args(tiny_dir, world, tmp_path / "b", *extra), CLConfig))
    monkeypatch.setattr(cl, "make_step_fn", make)
    resumed = cl.run(parse_config(_args(tiny_dir, world, tmp_path / "b", *extra), CLConfig))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5, (a, b)
    from safetensors.torch import load_file

    wa, wb = (
        load_file(tmp_path / "a/checkpoint-4/model.safetensors"),
        load_file(tmp_path / "b/checkpoint-4/model.safetensors"),
    )
    assert all((wa[k] - wb[k]).abs().max() < 1e-6 for k in wa)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "cl").glob("*.yaml")), ids=lambda p: p.name)
def test_every_cl_recipe_parses(path):
    cfg = parse_config(["--config", str(path)], CLConfig)
    assert cfg.data.datasets and cfg.loss.temperature > 0


def test_paper_defaults_in_the_3b_recipe():
    cfg = parse_config(["--config", str(ROOT / "configs/cl/qwen25vl_3b.yaml")], CLConfig)
    assert (cfg.loss.temperature, cfg.data.num_negatives, cfg.data.global_batch_size) == (0.03, 2, 2048)
    assert cfg.train.learning_rate == 1e-5 and cfg.model.max_length == 1280 and cfg.loss.gradcache
    assert cfg.train.warmup == "log"  # the reference's DeepSpeed WarmupDecayLR


def test_false_negative_masking_is_an_opt_in_addition():
    # neither the paper nor the reference masks false negatives: off by default and in the paper recipe
    from moca_train.cl.config import CLLossConfig

    assert CLLossConfig().mask_false_negatives is False
    cfg = parse_config(["--config", str(ROOT / "configs/cl/qwen25vl_3b.yaml")], CLConfig)
    assert cfg.loss.mask_false_negatives is False


def test_bad_option_returns_2(capsys):
    assert cl.main(["--config", TINY, "--loss.temprature", "0.1"]) == 2
    assert "did you mean --loss.temperature" in capsys.readouterr().err


def test_lora_run_saves_merged_weights_that_load(tiny_dir, world, tmp_path):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    from moca_model import MoCaEncoder

    out = tmp_path / "lora"
    extra = ["--model.lora.enabled", "true", "--model.lora.r", "4", "--train.max_steps", "2",
             "--data.global_batch_size", "8"]  # fmt: skip
    cl.run(parse_config(_args(tiny_dir, world, out, *extra), CLConfig))
    ckpt = out / "checkpoint-2"
    assert (ckpt / "adapter" / "adapter_config.json").is_file()
    init, merged = load_file(tiny_dir / "model.safetensors"), load_file(ckpt / "model.safetensors")
    assert not any("lora" in k for k in merged)
    q = "layers.0.self_attn.q_proj.weight"  # save_pretrained writes the released layout (model.*, visual.*)
    assert (merged["model." + q] - init["model.language_model." + q]).abs().max() > 1e-6  # adapters merged
    vision = [k for k in merged if k.startswith("visual.")]
    assert vision and all((merged[k] == init["model." + k]).all() for k in vision)  # LoRA never touches the ViT
    assert MoCaEncoder.from_pretrained(ckpt, device="cpu").encode(["a red circle"], show_progress=False).shape == (
        1,
        64,
    )


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_cl_trains_with_the_configured_attention_whatever_the_checkpoint_says(tiny_dir, world, tmp_path, monkeypatch,
                                                                              attention):  # fmt: skip
    import shutil

    import yaml

    from moca_model import MoCaEncoder, MoCaModel, moca_config

    start = tmp_path / "start"  # recorded as the opposite of what the run asks for
    shutil.copytree(tiny_dir, start)
    moca_config.update(start, attention="bidirectional" if attention == "causal" else "causal")
    modes, forward = [], MoCaModel.forward

    def spy(self, *args, **kwargs):
        modes.append(self.bidirectional)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(MoCaModel, "forward", spy)
    out = tmp_path / "run"
    extra = ["--model.attention", attention, "--train.max_steps", "2", "--data.global_batch_size", "8"]
    assert cl.main(_args(start, world, out, *extra)) == 0
    assert modes and set(modes) == {attention == "bidirectional"}
    ckpt = out / "checkpoint-2"
    assert moca_config.attention(ckpt) == attention
    assert yaml.safe_load((ckpt / "run_config.yaml").read_text())["model"]["attention"] == attention
    assert MoCaEncoder.from_pretrained(ckpt, device="cpu").model.attention == attention
