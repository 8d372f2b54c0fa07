import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLModel

from moca_model import MoCaEncoder
from moca_model.compat import TRANSFORMERS_MAJOR
from moca_model.processing_moca import normalize_item


def _batch(proc, items):
    return proc.collate([proc.process(normalize_item(x, i), i) for i, x in enumerate(items)])


def test_causal_mode_matches_stock_qwen(tiny_model_and_processor, mixed_items):
    model, proc = tiny_model_and_processor
    model.set_bidirectional(False)
    stock = Qwen2_5_VLModel._from_config(model.config, attn_implementation="sdpa").eval()
    stock.load_state_dict(model.state_dict())
    inputs = _batch(proc, [mixed_items[0], mixed_items[3], mixed_items[8]])
    extra = {}
    if TRANSFORMERS_MAJOR >= 5:  # 5.x needs token types to compute 3-D mRoPE positions itself
        extra["mm_token_type_ids"] = (inputs["input_ids"] == proc.image_token_id).int()
    with torch.no_grad():
        ours = model(**inputs).last_hidden_state
        ref = stock(**inputs, **extra).last_hidden_state
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours[real], ref[real], rtol=0, atol=1e-6)


def test_sdpa_and_eager_agree(tiny_dir, mixed_items):
    sdpa = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", attn_implementation="sdpa")
    eager = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", attn_implementation="eager")
    assert eager.model.attn_implementation == "eager"
    a = sdpa.encode(mixed_items, batch_size=5, show_progress=False)
    b = eager.encode(mixed_items, batch_size=5, show_progress=False)
    assert np.abs(a - b).max() <= 1e-5


def test_batch_invariance_alone_vs_batch_of_16(tiny_encoder, mixed_items):
    together = tiny_encoder.encode(mixed_items, batch_size=16, show_progress=False)
    alone = np.stack([tiny_encoder.encode([x], show_progress=False)[0] for x in mixed_items])
    diff = np.abs(together - alone).max()
    assert diff <= 1e-5, diff


def test_order_and_batch_size_invariance(tiny_encoder, mixed_items):
    base = tiny_encoder.encode(mixed_items, batch_size=4, show_progress=False)
    perm = np.random.default_rng(0).permutation(len(mixed_items))
    shuffled = tiny_encoder.encode([mixed_items[i] for i in perm], batch_size=3, show_progress=False)
    assert np.abs(shuffled - base[perm]).max() <= 1e-5


def test_output_is_unit_norm_float32_and_distinct(tiny_encoder, mixed_items):
    out = tiny_encoder.encode(mixed_items, show_progress=False)
    assert out.dtype == np.float32 and out.shape == (16, tiny_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert len({tuple(np.round(r, 5)) for r in out}) == 16


def test_identical_items_encoded_once(tiny_encoder, mixed_items, monkeypatch):
    calls = []
    original = tiny_encoder.processor.process
    monkeypatch.setattr(tiny_encoder.processor, "process", lambda item, i: calls.append(i) or original(item, i))
    items = [mixed_items[0], mixed_items[3], mixed_items[0], mixed_items[3], "new"]
    out = tiny_encoder.encode(items, show_progress=False)
    assert sorted(calls) == [0, 1, 4]
    assert np.array_equal(out[0], out[2]) and np.array_equal(out[1], out[3])


def test_model_has_no_lm_head(tiny_encoder):
    names = [n for n, _ in tiny_encoder.model.named_parameters()]
    assert not any(n.startswith("lm_head") for n in names)


def test_gradients_flow_for_training(tiny_model_and_processor, mixed_items):
    model, proc = tiny_model_and_processor
    model.train()
    out = model(**_batch(proc, mixed_items[:4]))
    out.embeddings.sum().backward()
    assert model.visual.patch_embed.proj.weight.grad is not None
    assert model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_bf16_cpu_forward_is_finite(tiny_dir, mixed_items, dtype):
    enc = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", dtype=dtype)
    out = enc.encode(mixed_items[:6], show_progress=False)
    assert out.dtype == np.float32 and np.isfinite(out).all()
