"""Every backbone (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) x attention x pooling on tiny checkpoints, both transformers lines.

- causal + last equals the stock base model's normalised last hidden state at the last real token, and
  causal hidden states equal the stock model's (the VLM2Vec-style baseline is the stock model);
- bidirectional: the last token reaches the first one (and never when causal), with and without padding,
  text-only and with an image (Qwen3-VL's DeepStack path);
- batch / order invariance for every attention x pooling combination.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from moca_model import MoCaEncoder, backbones
from moca_model.compat import TRANSFORMERS_MAJOR
from moca_model.processing_moca import normalize_item

from .conftest import draw_image

BACKBONES = backbones.BACKBONES
# MoCa (bidirectional, mean) and the causal last-token baseline by default; the two mixed ones in the slow run
COMBOS = [("bidirectional", "mean"), ("causal", "last"), pytest.param("bidirectional", "last", marks=pytest.mark.slow),
          pytest.param("causal", "mean", marks=pytest.mark.slow)]  # fmt: skip


@pytest.fixture(scope="module")
def encoders(tiny_backbone_dirs):
    """One memory-cache-free encoder per backbone (deep-copy before mutating)."""
    return {b: MoCaEncoder.from_pretrained(tiny_backbone_dirs(b), device="cpu", cache_memory_mb=0) for b in BACKBONES}


def _batch(proc, items):
    return proc.collate([proc.process(normalize_item(x, i), i) for i, x in enumerate(items)])


def _stock(model):
    """The stock transformers base model of the backbone, with the same weights."""
    stock = model.stock_class()._from_config(model.config, attn_implementation="sdpa").eval()
    stock.load_state_dict(model.state_dict())
    return stock


@pytest.mark.parametrize("backbone", BACKBONES)
def test_causal_last_token_equals_the_stock_model(encoders, mixed_items, backbone):
    """``attention: causal, pooling: last`` is the stock model's normalised state at the last real token."""
    model = copy.deepcopy(encoders[backbone].model)
    model.set_attention("causal")
    model.set_pooling("last")
    proc = encoders[backbone].processor
    assert type(model).__name__ == backbones.model_class(backbone).__name__
    inputs = _batch(proc, [mixed_items[i] for i in (0, 3, 8, 9, 1)])  # text, image+text, two images, padding
    extra = {"mm_token_type_ids": (inputs["input_ids"] == proc.image_token_id).int()} if TRANSFORMERS_MAJOR >= 5 else {}
    with torch.no_grad():
        ours = model(**inputs)
        ref = _stock(model)(**inputs, **extra).last_hidden_state
    mask = inputs["attention_mask"]
    last = mask.sum(1) - 1  # right padding
    want = torch.nn.functional.normalize(ref[torch.arange(len(last)), last].float(), dim=-1)
    print(f"{backbone}: causal + last vs stock, max |diff| {(ours.embeddings - want).abs().max().item():.1e}")
    torch.testing.assert_close(ours.embeddings, want, rtol=0, atol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(ours.last_hidden_state[real], ref[real], rtol=0, atol=1e-5)


def _first_token_delta(model, inputs, row_len):
    with torch.no_grad():
        a = model(**inputs).last_hidden_state
        changed = {**inputs, "input_ids": inputs["input_ids"].clone()}
        changed["input_ids"][0, row_len - 1] = (changed["input_ids"][0, row_len - 1] + 7) % 400
        b = model(**changed).last_hidden_state
    return (a[0, 0] - b[0, 0]).abs().max().item()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_bidirectional_dependence(encoders, backbone, impl):
    """The first token's state moves when the last token changes iff attention is bidirectional."""
    model = copy.deepcopy(encoders[backbone].model)
    model.set_attn_implementation(impl)
    proc = encoders[backbone].processor
    image_item = {"text": "\nRepresent the given image with a red circle", "image": draw_image(70, 50, 1)}
    cases = {
        "text": ["a red circle on the left of the page"],
        "text, padded": ["a red circle on the left of the page", "a much longer second row " * 3],
        "image, padded": [image_item, "a much longer second row " * 9],
    }
    for name, items in cases.items():
        inputs = _batch(proc, items)
        row_len = int(inputs["attention_mask"][0].sum())
        assert proc.tokenizer.decode(inputs["input_ids"][0, row_len - 1]).strip(), name  # a text token
        model.set_attention("bidirectional")
        bidirectional = _first_token_delta(model, inputs, row_len)
        model.set_attention("causal")
        causal = _first_token_delta(model, inputs, row_len)
        print(f"{backbone} {impl} {name}: first-token change {bidirectional:.3f} bidirectional, {causal} causal")
        assert bidirectional > 1e-3 and causal == 0.0, (backbone, impl, name, bidirectional, causal)


@pytest.mark.parametrize(("attention", "pooling"), COMBOS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_batch_and_order_invariance(encoders, mixed_items, backbone, attention, pooling):
    """Alone vs in a batch of 16 vs shuffled in batches of 3: the same vectors (<= 1e-5)."""
    enc = copy.copy(encoders[backbone])
    enc.model = copy.deepcopy(enc.model)
    enc.model.set_attention(attention)
    enc.model.set_pooling(pooling)
    together = enc.encode(mixed_items, batch_size=16, show_progress=False)
    alone = np.stack([enc.encode([x], show_progress=False)[0] for x in mixed_items])
    perm = np.random.default_rng(0).permutation(len(mixed_items))
    shuffled = enc.encode([mixed_items[i] for i in perm], batch_size=3, show_progress=False)
    worst = max(np.abs(together - alone).max(), np.abs(shuffled - together[perm]).max())
    print(f"{backbone} {attention} {pooling}: batch/order max |diff| {worst:.1e}")
    assert worst <= 1e-5
    assert len({tuple(np.round(r, 5)) for r in together}) == len(mixed_items)  # distinct, so the check can fail


@pytest.mark.parametrize("backbone", BACKBONES)
def test_sdpa_and_eager_agree(tiny_backbone_dirs, mixed_items, backbone):
    path = tiny_backbone_dirs(backbone)
    sdpa = MoCaEncoder.from_pretrained(path, device="cpu", attn_implementation="sdpa", cache_memory_mb=0)
    eager = MoCaEncoder.from_pretrained(path, device="cpu", attn_implementation="eager", cache_memory_mb=0)
    a = sdpa.encode(mixed_items[:8], batch_size=5, show_progress=False)
    b = eager.encode(mixed_items[:8], batch_size=5, show_progress=False)
    assert np.abs(a - b).max() <= 1e-5


def test_qwen3_has_no_unpadded_fast_path(encoders):
    """Qwen3-VL's text model always builds its mask, so the ``{layer: None}`` fast path is off there."""
    assert encoders["qwen3_vl"].model.unpadded_fast_path is False
    assert encoders["qwen2_vl"].model.unpadded_fast_path is True and encoders["qwen2_5_vl"].model.unpadded_fast_path


@pytest.mark.parametrize("attention", ["bidirectional", "causal"])
@pytest.mark.parametrize("backbone", ["qwen2_vl", "qwen3_vl"])  # Qwen2.5-VL: test_flash_standin.py
def test_flash_attention_code_path_equals_sdpa(tiny_backbone_dirs, mixed_items, backbone, attention):
    """transformers' flash-attention-2 path (plain-torch kernel stand-in, moca_model.testing_flash) equals SDPA:
    the ``is_causal`` flag alone makes flash bidirectional on every backbone and both lines."""
    from moca_model.testing_flash import flash_attn_standin

    path = tiny_backbone_dirs(backbone)
    load = {"device": "cpu", "cache_memory_mb": 0, "attention": attention, "pooling": "last"}
    sdpa = MoCaEncoder.from_pretrained(path, attn_implementation="sdpa", **load)
    with flash_attn_standin() as calls:
        flash = MoCaEncoder.from_pretrained(path, attn_implementation="flash_attention_2", **load)
        assert flash.model.attn_implementation == "flash_attention_2"
        together = flash.forward_batch(_batch(flash.processor, mixed_items[:10]))  # one padded batch: varlen
        alone = np.stack([flash.encode([x], show_progress=False)[0] for x in mixed_items[:10]])
    want = sdpa.encode(mixed_items[:10], show_progress=False)
    worst = max(np.abs(together - want).max(), np.abs(alone - want).max())
    print(f"{backbone} {attention}: flash-attention-2 stand-in vs SDPA max |diff| {worst:.1e}")
    assert worst <= 1e-5
    layers = flash.model.config.text_config.num_hidden_layers
    text = [c for c in calls if c["kernel"] == "varlen" and len(c["seqlens"]) == 10]
    assert len(text) >= layers and all(c["causal"] is (attention == "causal") for c in text)
