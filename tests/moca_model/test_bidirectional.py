import pytest
import torch

from moca_model.bidirectional import attention_mask_for, set_causal


def _first_token_delta(model, ids, mask):
    with torch.no_grad():
        a = model(ids, mask).last_hidden_state
        changed = ids.clone()
        last = int(mask[0].sum()) - 1
        changed[0, last] = (changed[0, last] + 7) % 400
        b = model(changed, mask).last_hidden_state
    return (a[0, 0] - b[0, 0]).abs().max().item()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("padded", [False, True])
def test_last_token_reaches_first_only_when_bidirectional(tiny_model_and_processor, impl, padded):
    model, proc = tiny_model_and_processor
    model.set_attn_implementation(impl)
    assert model.attn_implementation == impl
    ids = torch.tensor([proc.tokenizer("a red circle on the left of the page")["input_ids"]])
    mask = torch.ones_like(ids)
    if padded:  # a second, longer row forces padding on row 0
        ids = torch.cat([torch.cat([ids, torch.full((1, 5), proc.pad_id)], 1), torch.arange(ids.shape[1] + 5)[None]])
        mask = torch.cat([torch.cat([mask, torch.zeros(1, 5, dtype=mask.dtype)], 1), torch.ones(1, ids.shape[1])])
    model.set_bidirectional(True)
    assert _first_token_delta(model, ids, mask) > 1e-3
    model.set_bidirectional(False)
    assert _first_token_delta(model, ids, mask) == 0.0


def test_set_causal_is_idempotent(tiny_model_and_processor):
    model, _ = tiny_model_and_processor
    for _ in range(2):
        set_causal(model.language_model, causal=False)
    assert all(layer.self_attn.is_causal is False for layer in model.language_model.layers)
    model.set_bidirectional(False)
    model.set_bidirectional(False)
    assert all(layer.self_attn.is_causal is True for layer in model.language_model.layers)


def test_mask_shapes_per_backend():
    m = torch.tensor([[1, 1, 0]])
    assert attention_mask_for(m, implementation="flash_attention_2", dtype=torch.float32) is m
    sdpa = attention_mask_for(m, implementation="sdpa", dtype=torch.float32)
    assert sdpa.shape == (1, 1, 3, 3) and sdpa.dtype == torch.bool
    assert sdpa[0, 0].tolist() == [[True, True, False]] * 3  # no causal triangle, only padding
    eager = attention_mask_for(m, implementation="eager", dtype=torch.float32)
    assert eager[0, 0, 0].tolist() == [0.0, 0.0, torch.finfo(torch.float32).min]


def test_unsupported_transformers_version_raises():
    from moca_model import compat

    with pytest.raises(ImportError, match=r"transformers>=4.52,<6 \(found 4.51.3\)"):
        compat.check_transformers_version("4.51.3")
    with pytest.raises(ImportError, match="found 6.0.0"):
        compat.check_transformers_version("6.0.0")
    compat.check_transformers_version("4.57.6")
    compat.check_transformers_version("5.24.0")
    compat.check_transformers_version()  # the installed one is supported


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_unpadded_batches_pass_no_mask_and_keep_their_embeddings(tiny_model_and_processor, impl, monkeypatch):
    """The fast path: no padding -> no 4-D mask reaches attention, SDPA sees is_causal=False, same vectors."""
    from moca_model.bidirectional import decoder_mask

    model, proc = tiny_model_and_processor
    model.set_attn_implementation(impl)
    rows = [proc.tokenizer(t)["input_ids"] for t in ("a red circle on the page", "the blue square at the top")]
    n = min(map(len, rows))
    ids = torch.tensor([r[:n] for r in rows])
    mask = torch.ones_like(ids)
    assert decoder_mask(mask, implementation=impl, dtype=torch.float32) == {
        "full_attention": None,
        "sliding_attention": None,
    }
    assert decoder_mask(mask, implementation="flash_attention_2", dtype=torch.float32) is mask
    assert decoder_mask(mask, implementation=impl, dtype=torch.float32, fast=False).dim() == 4
    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *args, **kwargs):
        if q.shape[-2] == n:  # text-decoder calls (the vision tower has its own shapes)
            seen.append((attn_mask, kwargs.get("is_causal")))
        return sdpa(q, k, v, attn_mask, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        fast = model(ids, mask).embeddings
        model.unpadded_fast_path = False
        masked = model(ids, mask).embeddings
    torch.testing.assert_close(fast, masked, atol=1e-6, rtol=0)
    if impl == "sdpa":
        layers = len(model.language_model.layers)
        assert [m is None and c is False for m, c in seen[:layers]] == [True] * layers
        assert all(m is not None and m.dim() == 4 for m, _ in seen[layers:])
