"""GradCache gives the full-batch gradients (fp32): a toy encoder with dropout and the tiny MoCa model."""

from __future__ import annotations

import functools

import pytest
import torch

from moca_train.cl.config import CLLossConfig
from moca_train.cl.train import contrastive_loss
from moca_train.gradcache import gradcache_step, plain_step


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a, b, atol=1e-5):
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


def _run(step, model, encode, groups, loss_fn, seed=0):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, logs = step(encode=encode, groups=groups, loss_fn=loss_fn)
    return loss.item(), _grads(model)


def test_toy_encoder_with_dropout_matches_full_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    data = {"query": torch.randn(12, 6), "pos": torch.randn(12, 6), "neg": torch.randn(24, 6)}
    ids = {"pos": torch.arange(12) % 5, "neg": torch.arange(24).reshape(12, 2) % 7}  # some duplicates to mask

    def encode(x):
        return torch.nn.functional.normalize(model(x), dim=-1)

    cfg = CLLossConfig(temperature=0.05)
    loss_fn = functools.partial(contrastive_loss, pos_ids=ids["pos"], neg_ids=ids["neg"], cfg=cfg)
    full = {k: [v] for k, v in data.items()}
    chunked = {k: list(v.split(5)) for k, v in data.items()}
    loss_a, grads_a = _run(plain_step, model, encode, full, loss_fn)
    loss_b, grads_b = _run(gradcache_step, model, encode, chunked, loss_fn)
    assert loss_a == pytest.approx(loss_b, rel=1e-6)
    _assert_same_grads(grads_a, grads_b)
    # and the dropout masks really are replayed: without replay the gradients would differ
    loss_c, grads_c = _run(plain_step, model, encode, chunked, loss_fn, seed=1)
    assert any(not torch.allclose(grads_a[n], grads_c[n], atol=1e-5) for n in grads_a)


def test_tiny_moca_model_gradcache_equals_full_batch(tiny_dir, tmp_path):
    from moca_train.cl.batches import CLBatches
    from moca_train.cl.config import CLDataConfig, CLDatasetConfig
    from moca_train.cl.data import load_cl_data
    from moca_train.cl.sampler import TaskBatchSampler
    from moca_train.cl.synthetic import write_world
    from moca_train.config import ModelConfig
    from moca_train.modeling import build_model

    world = write_world(tmp_path / "w", rows_per_task=24)
    model, processor = build_model(ModelConfig(init_from=str(tiny_dir)))
    data_cfg = CLDataConfig(
        datasets=[CLDatasetConfig(name="i2t", path=str(world / "shapes_i2t.jsonl"))], num_negatives=2,
        global_batch_size=8,
    )  # fmt: skip
    data = load_cl_data(data_cfg)
    sampler = TaskBatchSampler(data.sizes(), global_batch_size=8)
    big = CLBatches(data, processor, sampler, chunk_size=64).build(0)
    small = CLBatches(data, processor, sampler, chunk_size=3).build(0)
    assert [len(small[k]) for k in ("query", "pos", "neg")] == [3, 3, 6]

    def encode(chunk):
        return model(**chunk).embeddings

    def groups(batch):
        return {k: batch[k] for k in ("query", "pos", "neg")}

    cfg = CLLossConfig(temperature=0.03)
    loss_fn = functools.partial(contrastive_loss, pos_ids=big["pos_ids"], neg_ids=big["neg_ids"], cfg=cfg)
    loss_a, grads_a = _run(plain_step, model, encode, groups(big), loss_fn)
    loss_b, grads_b = _run(gradcache_step, model, encode, groups(small), loss_fn)
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert any(n.startswith("visual.") for n in grads_a) and any(n.startswith("language_model.") for n in grads_a)
    _assert_same_grads(grads_a, grads_b)
