"""Pooling is explicit: ``mean`` (MoCa) or ``last`` (the reference's causal pooling), recorded and honoured."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLModel

from moca_model import MoCaEncoder, MoCaLoadError, moca_config
from moca_model.compat import TRANSFORMERS_MAJOR
from moca_model.processing_moca import normalize_item


def _batch(proc, items):
    return proc.collate([proc.process(normalize_item(x, i), i) for i, x in enumerate(items)])


def test_causal_last_token_equals_stock_normalised_last_state(tiny_model_and_processor, mixed_items):
    """attention causal + pooling last is the VLM2Vec-style baseline: stock states at the last real token."""
    model, proc = tiny_model_and_processor
    model.set_attention("causal")
    model.set_pooling("last")
    stock = Qwen2_5_VLModel._from_config(model.config, attn_implementation="sdpa").eval()
    stock.load_state_dict(model.state_dict())
    items = [mixed_items[i] for i in (0, 1, 3, 8, 12)]  # lengths differ a lot: right padding everywhere
    inputs = _batch(proc, items)
    assert (inputs["attention_mask"] == 0).any()
    extra = {}
    if TRANSFORMERS_MAJOR >= 5:
        extra["mm_token_type_ids"] = (inputs["input_ids"] == proc.image_token_id).int()
    with torch.no_grad():
        ours = model(**inputs).embeddings
        ref = stock(**inputs, **extra).last_hidden_state
    last = inputs["attention_mask"].sum(1) - 1  # right padding: the last real token
    expected = torch.nn.functional.normalize(ref[torch.arange(len(items)), last].float(), dim=-1)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_last_pooling_is_batch_and_order_invariant(tiny_dir, mixed_items, attention):
    enc = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", attention=attention, pooling="last")
    together = enc.encode(mixed_items, batch_size=16, show_progress=False)
    alone = np.stack([enc.encode([x], show_progress=False)[0] for x in mixed_items])
    assert np.abs(together - alone).max() <= 1e-5
    perm = np.random.default_rng(0).permutation(len(mixed_items))
    shuffled = enc.encode([mixed_items[i] for i in perm], batch_size=3, show_progress=False)
    assert np.abs(shuffled - together[perm]).max() <= 1e-5
    mean = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", attention=attention, pooling="mean")
    assert np.abs(mean.encode(mixed_items, show_progress=False) - together).max() > 1e-2  # really another pooling


def test_save_records_pooling_and_loading_honours_it(tiny_dir, tmp_path):
    assert moca_config.pooling(tiny_dir) == "mean"  # absent = mean (released checkpoints)
    enc = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", attention="causal", pooling="last")
    out = tmp_path / "last"
    enc.model.save_pretrained(out, safe_serialization=True)
    enc.processor.save_pretrained(out)
    cfg = json.loads((out / moca_config.FILE).read_text())
    assert cfg["pooling"] == "last" and cfg["attention"] == "causal"
    again = MoCaEncoder.from_pretrained(out, device="cpu")
    assert again.model.pooling == "last" and again.model.attention == "causal"
    items = ["a short query", {"text": "\nRepresent the given image.", "image": Image.new("RGB", (60, 40), "red")}]
    assert np.array_equal(again.encode(items, show_progress=False), enc.encode(items, show_progress=False))
    assert MoCaEncoder.from_pretrained(out, device="cpu", pooling="mean").model.pooling == "mean"


def test_pooling_is_part_of_the_cache_key(tiny_dir):
    from moca_model.cache import EmbeddingCache

    shared = EmbeddingCache()
    mean = MoCaEncoder.from_pretrained(tiny_dir, device="cpu")
    last = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", pooling="last")
    mean.cache = last.cache = shared
    assert mean.vector_settings()["pooling"] == "mean" and last.vector_settings()["pooling"] == "last"
    a = mean.encode(["one query"], show_progress=False)
    b = last.encode(["one query"], show_progress=False)
    assert last.last_stats.encoded == 1  # not served mean's vector
    assert np.abs(a - b).max() > 1e-2


def test_unknown_pooling_is_an_error(tiny_dir, tmp_path):
    with pytest.raises(MoCaLoadError, match="pooling"):
        MoCaEncoder.from_pretrained(tiny_dir, device="cpu", pooling="cls")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    moca_config.update(bad, pooling="max")
    with pytest.raises(MoCaLoadError, match="moca_config.json"):
        MoCaEncoder.from_pretrained(bad, device="cpu")


def test_training_config_rejects_unknown_pooling_naming_the_field():
    pytest.importorskip("accelerate")
    from moca_train.config import ModelConfig

    assert ModelConfig(init_from="x").pooling == "mean"
    with pytest.raises(ValueError, match="--model.pooling"):
        ModelConfig(init_from="x", pooling="cls")
