"""CPT heads and module: decoder init and bidirectionality, projection init, losses off / empty masks."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("accelerate")

from moca_model import MoCaProcessor  # noqa: E402
from moca_model.loading import load_model  # noqa: E402
from moca_model.processing_moca import IMAGE_PLACEHOLDER  # noqa: E402
from moca_train.cpt.collator import CPTCollator, MaskingSettings  # noqa: E402
from moca_train.cpt.masking import special_token_ids  # noqa: E402
from moca_train.cpt.model import CPTModule, add_mask_token  # noqa: E402
from moca_train.cpt.synthetic import render  # noqa: E402


@pytest.fixture
def encoder_and_processor(tiny_dir):
    model = load_model(tiny_dir, device=torch.device("cpu"), dtype=torch.float32, attn_implementation="sdpa")
    return model.train(), MoCaProcessor.from_pretrained(tiny_dir)


def test_mae_heads_initialisation(encoder_and_processor):
    encoder, _ = encoder_and_processor
    torch.manual_seed(0)
    module = CPTModule(encoder)
    middle = encoder.language_model.layers[len(encoder.language_model.layers) // 2]
    for (name, p), q in zip(module.mae_decoder.layer.named_parameters(), middle.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name  # a copy, not a shared tensor
    assert not module.mae_decoder.layer.self_attn.is_causal
    w = module.mae_proj.weight
    assert w.shape == (4 * 1176, encoder.config.get_text_config().hidden_size)
    assert abs(w.std().item() - 0.02) < 0.002 and torch.equal(module.mae_proj.bias, torch.zeros(4 * 1176))
    assert all(k.startswith(("mae_decoder.", "mae_proj.")) for k in module.head_state_dict())


def test_mae_decoder_is_bidirectional(encoder_and_processor):
    from moca_model.bidirectional import attention_mask_for

    encoder, _ = encoder_and_processor
    module = CPTModule(encoder).eval()
    hidden = torch.randn(1, 6, encoder.config.get_text_config().hidden_size)
    attn = torch.ones(1, 6, dtype=torch.long)
    pos = torch.arange(6).view(1, 1, 6).expand(3, 1, 6)
    mask = attention_mask_for(attn, implementation="sdpa", dtype=hidden.dtype)
    cos_sin = encoder.language_model.rotary_emb(hidden, pos)
    out = module.mae_decoder(hidden, attention_mask=mask, position_embeddings=cos_sin)
    changed = hidden.clone()
    changed[0, -1] += 1.0
    out2 = module.mae_decoder(changed, attention_mask=mask, position_embeddings=cos_sin)
    assert (out[0, 0] - out2[0, 0]).abs().max() > 1e-4  # the first position sees the last one


def _batch(processor, *, p_text, p_image, mask_id):
    settings = MaskingSettings(
        mask_token_id=mask_id, never_mask_ids=special_token_ids(processor.tokenizer), p_text=p_text, p_image=p_image
    )
    records = [
        {"text": f"{IMAGE_PLACEHOLDER}a red circle", "images": [render("red", "circle", "left", 56)]},
        {"text": "the quick brown fox jumps over the lazy dog", "images": []},
    ]
    return CPTCollator(processor, settings)(records, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("use_mlm", "use_mae"), [(True, True), (True, False), (False, True)])
def test_forward_ablations_and_empty_masks_are_finite(encoder_and_processor, use_mlm, use_mae):
    encoder, processor = encoder_and_processor
    mask_id = add_mask_token(processor.tokenizer, encoder)
    module = CPTModule(encoder, use_mlm=use_mlm, use_mae=use_mae)
    assert hasattr(module, "mae_proj") == use_mae
    for p in (0.0, 0.9):  # nothing masked, then most things masked
        batch = _batch(processor, p_text=p, p_image=p, mask_id=mask_id)
        out = module(batch["inputs"], batch["mlm_labels"], batch["mae_target"], batch["mae_mask"])
        assert all(torch.isfinite(out[k]) for k in ("loss", "mlm", "mae"))
        out["loss"].backward()
        if p == 0.0:
            assert out["loss"].item() == 0.0 and out["mlm_count"] == 0 and out["mae_count"] == 0
        else:
            assert (out["mlm"] > 0) == use_mlm and (out["mae"] > 0) == use_mae
            expected = out["mlm"] + 0.5 * out["mae"]
            assert torch.isclose(out["loss"].detach(), expected)


def test_add_mask_token_resizes_only_when_needed(encoder_and_processor):
    encoder, processor = encoder_and_processor
    rows = encoder.get_input_embeddings().weight.shape[0]
    token_id = add_mask_token(processor.tokenizer, encoder)
    assert token_id == rows and encoder.get_input_embeddings().weight.shape[0] == rows + 1
    assert add_mask_token(processor.tokenizer, encoder) == token_id  # idempotent
    assert encoder.get_input_embeddings().weight.shape[0] == rows + 1


def test_untied_checkpoint_uses_its_own_lm_head_for_mlm(tmp_path, tiny_dir, encoder_and_processor):
    import json

    from safetensors.torch import load_file, save_file

    from moca_model.tiny import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "untied")
    config = json.loads((ckpt / "config.json").read_text())
    config["tie_word_embeddings"] = False
    config.get("text_config", {})["tie_word_embeddings"] = False
    (ckpt / "config.json").write_text(json.dumps(config))
    state = load_file(str(ckpt / "model.safetensors"))
    state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"])  # 7B-style separate matrix
    save_file(state, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    encoder = load_model(ckpt, device=torch.device("cpu"), dtype=torch.float32, attn_implementation="sdpa")
    processor = MoCaProcessor.from_pretrained(ckpt)
    mask_id = add_mask_token(processor.tokenizer, encoder)
    module = CPTModule(encoder, use_mae=False, checkpoint_dir=ckpt)
    head = module.lm_head.weight
    rows = state["lm_head.weight"].shape[0]
    assert torch.equal(head[:rows], state["lm_head.weight"])
    assert torch.equal(head[mask_id], encoder.get_input_embeddings().weight[mask_id])  # new row from the embedding
    assert "lm_head.weight" in module.head_state_dict()  # an untied head is a trained weight of its own
    tied_encoder, _ = encoder_and_processor
    tied = CPTModule(tied_encoder, use_mae=False, checkpoint_dir=tiny_dir)
    assert tied.lm_head.weight is tied_encoder.get_input_embeddings().weight  # shared Parameter (3B-style)
    assert "lm_head.weight" not in tied.head_state_dict()  # not saved twice
