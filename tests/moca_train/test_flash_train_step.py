"""One CPT step and one CL step on transformers' flash-attention-2 code path equal SDPA's (losses, gradients).

The kernel is ``moca_model.testing_flash``'s plain-torch stand-in (see tests/moca_model/test_flash_standin.py);
everything else is transformers' flash path (unpadding, varlen, the vision tower's ``cu_seqlens``) in training
mode, with the MAE decoder's own bidirectional layer. Runs in both environments (no accelerate needed).
"""

from __future__ import annotations

import contextlib
import copy
from types import SimpleNamespace

import pytest
import torch

from moca_model.compat import TRANSFORMERS_MAJOR
from moca_model.testing_flash import flash_attn_standin

from .conftest import ROOT, ZERO_GRADIENT

GRAD_RTOL = 1e-4  # relative to the largest gradient entry of the same tensor


@pytest.fixture(scope="module")
def models(tiny_dir):
    """The tiny checkpoint loaded twice in train mode: SDPA and flash_attention_2 (stand-in kernels)."""
    from moca_model.loading import load_model

    sdpa = load_model(tiny_dir, device=torch.device("cpu"), dtype=torch.float32, attn_implementation="sdpa")
    with flash_attn_standin():
        flash = load_model(tiny_dir, device=torch.device("cpu"), dtype=torch.float32,
                           attn_implementation="flash_attention_2")  # fmt: skip
    return sdpa.train(), flash.train()


def _compare_grads(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Every gradient of ``b`` within GRAD_RTOL of ``a``'s; returns the worst relative difference."""
    ga = {n: p.grad for n, p in a.named_parameters() if p.grad is not None}
    gb = {n: p.grad for n, p in b.named_parameters() if p.grad is not None}
    assert ga.keys() == gb.keys() and any(n.startswith("visual.") or ".visual." in n for n in ga)
    scale = max(g.abs().max().item() for g in ga.values())
    worst = 0.0
    for name, g in ga.items():
        diff = (gb[name] - g).abs().max().item()
        if ZERO_GRADIENT.search(name):  # zero in exact arithmetic: compare on the model's gradient scale
            assert diff <= GRAD_RTOL * scale, (name, diff)
            continue
        rel = diff / max(g.abs().max().item(), 1e-12)
        assert rel <= GRAD_RTOL, (name, rel)
        worst = max(worst, rel)
    return worst


def _padded_with_images(batch) -> bool:
    attn = batch["inputs"]["attention_mask"]
    return attn.shape[0] > 2 and not bool(attn.all()) and batch["mae_target"].shape[0] > 0


@pytest.mark.skipif(
    TRANSFORMERS_MAJOR >= 5,
    reason="CPT runs in .venv (transformers 4.x): add_mask_token uses the "
    "4.x tokenizer API (replace_additional_special_tokens), which 5.x removed",
)
def test_cpt_step_on_flash_equals_sdpa(models, tiny_dir, tmp_path):
    from moca_model.processing_moca import MoCaProcessor
    from moca_train.cli import parse_config
    from moca_train.cpt import train as cpt
    from moca_train.cpt.config import CPTConfig
    from moca_train.cpt.model import CPTModule, add_mask_token
    from moca_train.cpt.synthetic import write_corpus

    corpus = write_corpus(tmp_path / "corpus", rows=40, seed=0)
    cfg = parse_config(["--config", str(ROOT / "configs/cpt/tiny.yaml"), "--model.init_from", str(tiny_dir),
                        "--data.sources", f"[{{path: {corpus}}}]", "--data.cache_dir", str(tmp_path / "cache"),
                        "--data.token_budget", "1024"], CPTConfig)  # fmt: skip
    processor = MoCaProcessor.from_pretrained(tiny_dir)
    encoders = [copy.deepcopy(m) for m in models]
    for encoder in encoders:  # the tiny embedding grows by one row, randomly initialised: the same row in both
        torch.manual_seed(0)
        mask_id = add_mask_token(processor.tokenizer, encoder, cfg.objective.mask_token)
    rank = SimpleNamespace(num_processes=1, process_index=0, main_process_first=contextlib.nullcontext)
    batch = next(b for b in cpt.build_batches(cfg, processor, mask_id, accelerator=rank) if _padded_with_images(b))
    attn = batch["inputs"]["attention_mask"]
    losses, modules = [], []
    for encoder, use_flash in zip(encoders, (False, True)):
        torch.manual_seed(0)  # the MAE projection's init
        module = CPTModule(encoder, mae_weight=cfg.objective.mae_weight, checkpoint_dir=tiny_dir)
        with flash_attn_standin() if use_flash else contextlib.nullcontext() as calls:
            out = module(batch["inputs"], batch["mlm_labels"], batch["mae_target"], batch["mae_mask"])
            out["loss"].backward()
        if use_flash:  # encoder layers + the MAE decoder's layer, all varlen and bidirectional
            text = [c for c in calls if c["kernel"] == "varlen" and len(c["seqlens"]) == attn.shape[0]]
            assert len(text) == encoder.config.text_config.num_hidden_layers + 1
            assert not any(c["causal"] for c in calls)
        losses.append({k: out[k].item() for k in ("loss", "mlm", "mae")})
        modules.append(module)
    for key in losses[0]:
        assert losses[1][key] == pytest.approx(losses[0][key], rel=1e-5), (key, losses)
    worst = _compare_grads(*modules)
    print(f"CPT step, flash stand-in vs SDPA: losses {losses}, worst relative gradient difference {worst:.1e}")


@pytest.mark.parametrize("gradcache", [False, True], ids=["plain", "gradcache"])
def test_cl_step_on_flash_equals_sdpa(models, tiny_dir, tmp_path, gradcache):
    from moca_model.processing_moca import MoCaProcessor
    from moca_train.cl.batches import CLBatches
    from moca_train.cl.config import CLDataConfig, CLDatasetConfig, CLLossConfig
    from moca_train.cl.data import load_cl_data
    from moca_train.cl.sampler import TaskBatchSampler
    from moca_train.cl.synthetic import write_world
    from moca_train.cl.train import make_step_fn

    world = write_world(tmp_path / "w", rows_per_task=24)
    processor = MoCaProcessor.from_pretrained(tiny_dir)
    data = load_cl_data(CLDataConfig(datasets=[CLDatasetConfig(name="i2t", path=str(world / "shapes_i2t.jsonl"))],
                                     num_negatives=2))  # fmt: skip
    sampler = TaskBatchSampler(data.sizes(), global_batch_size=8)
    batch = CLBatches(data, processor, sampler, chunk_size=3 if gradcache else 64).build(0)
    accelerator = SimpleNamespace(device=torch.device("cpu"), backward=torch.Tensor.backward,
                                  distributed_type=SimpleNamespace(value="NO"))  # fmt: skip
    step = make_step_fn(CLLossConfig(temperature=0.03, gradcache=gradcache))
    logs, copies = [], []
    for model, use_flash in zip(models, (False, True)):
        model = copy.deepcopy(model)
        torch.manual_seed(0)
        with flash_attn_standin() if use_flash else contextlib.nullcontext():
            logs.append(step(model, batch, accelerator))
        copies.append(model)
    assert logs[1]["loss"] == pytest.approx(logs[0]["loss"], rel=1e-5)
    assert logs[1]["accuracy"] == logs[0]["accuracy"]
    worst = _compare_grads(*copies)
    print(f"CL step ({'gradcache' if gradcache else 'plain'}), flash stand-in vs SDPA: loss {logs[0]['loss']:.6f} "
          f"vs {logs[1]['loss']:.6f}, worst relative gradient difference {worst:.1e}")  # fmt: skip
