"""CPT masking: ratios, never-masked ids, determinism, label alignment, patch noise modes."""

from __future__ import annotations

import pytest
import torch

from moca_train.cpt.masking import (
    IGNORE_INDEX,
    causal_lm_labels,
    mask_image_patches,
    mask_text_tokens,
    patch_targets,
    special_token_ids,
)

SPECIAL = [0, 1, 2, 3]  # stand-ins for pad, vision start/end, image pad
MASK_ID = 99


def _text_batch(b=8, t=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 90, (b, t), generator=g)
    ids[:, ::7] = torch.randint(0, 4, (1,), generator=g)  # sprinkle special ids
    ids[:, 100:140] = 3  # an image-pad run
    attn = torch.ones_like(ids)
    attn[1::2, -100:] = 0  # right padding on every other row
    ids[attn == 0] = 0
    return ids, attn


def _mask(ids, attn, *, seed=0, p=0.4, shift=True):
    return mask_text_tokens(
        ids,
        attn,
        mask_token_id=MASK_ID,
        never_mask_ids=SPECIAL,
        probability=p,
        generator=torch.Generator().manual_seed(seed),
        shift_labels=shift,
    )


@pytest.mark.parametrize("p", [0.15, 0.4, 0.6])
def test_text_ratio_within_tolerance(p):
    ids, attn = _text_batch()
    out = _mask(ids, attn, p=p)
    maskable = attn.bool() & ~torch.isin(ids, torch.tensor(SPECIAL))
    ratio = out.mask[maskable].float().mean().item()
    n = int(maskable.sum())
    assert abs(ratio - p) < 4 * (p * (1 - p) / n) ** 0.5  # 4 sigma of a binomial
    assert (out.input_ids[out.mask] == MASK_ID).all()
    assert torch.equal(out.input_ids[~out.mask], ids[~out.mask])


def test_special_vision_and_padding_never_masked():
    ids, attn = _text_batch()
    out = _mask(ids, attn, p=1.0)
    assert not out.mask[torch.isin(ids, torch.tensor(SPECIAL))].any()
    assert not out.mask[attn == 0].any()
    assert out.mask[attn.bool() & ~torch.isin(ids, torch.tensor(SPECIAL))].all()  # p=1 masks all others


def test_same_seed_same_mask_other_seed_differs():
    ids, attn = _text_batch()
    a, b, c = _mask(ids, attn, seed=3), _mask(ids, attn, seed=3), _mask(ids, attn, seed=4)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.mask, c.mask)


def test_label_alignment_shifted_and_unshifted():
    ids = torch.tensor([[10, 11, 12, 13, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 0, 0]])
    unshifted = _mask(ids, attn, p=1.0, shift=False)
    assert unshifted.labels.tolist() == [[10, 11, 12, 13, IGNORE_INDEX, IGNORE_INDEX]]
    shifted = _mask(ids, attn, p=1.0, shift=True)  # token i predicted at position i-1; token 0 has no predictor
    assert shifted.labels.tolist() == [[11, 12, 13, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    assert shifted.input_ids.tolist() == [[MASK_ID] * 4 + [0, 0]]


def test_special_token_ids_of_tiny_tokenizer():
    from moca_model.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    ids = special_token_ids(tok)
    for name in ("<|endoftext|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|im_start|>"):
        assert tok.convert_tokens_to_ids(name) in ids
    assert tok.convert_tokens_to_ids("the") not in ids


def _pixels(n_tokens=400, k=4, c=1176, seed=0):
    return torch.randn((n_tokens * k, c), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("p", [0.25, 0.5, 0.6])
def test_patch_ratio_and_rows_grouped_by_merged_token(p):
    pix = _pixels()
    out = mask_image_patches(pix, merge_size=2, probability=p, generator=torch.Generator().manual_seed(1))
    n = out.mask.numel()
    assert n == 400 and out.target.shape == (400, 4 * 1176)
    assert abs(out.mask.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5
    rows = out.mask.repeat_interleave(4)
    assert torch.equal(out.pixel_values[~rows], pix[~rows])  # unmasked rows untouched
    assert not torch.isclose(out.pixel_values[rows], pix[rows]).all(dim=1).any()  # masked rows replaced
    assert torch.equal(out.target, pix.reshape(400, -1))  # targets are the original pixels


def test_patch_noise_modes_and_determinism():
    pix = _pixels(50)
    kw = {"merge_size": 2, "probability": 0.5}
    shared = mask_image_patches(pix, generator=torch.Generator().manual_seed(0), noise="shared", **kw)
    rows = shared.pixel_values[shared.mask.repeat_interleave(4)]
    assert torch.equal(rows, rows[:1].expand_as(rows))  # one vector everywhere (reference code)
    per = mask_image_patches(pix, generator=torch.Generator().manual_seed(0), noise="per_patch", **kw)
    rows = per.pixel_values[per.mask.repeat_interleave(4)]
    assert not torch.equal(rows[0], rows[1])  # independent draws (paper)
    assert abs(rows.std().item() - 1.0) < 0.05 and abs(rows.mean().item()) < 0.05
    again = mask_image_patches(pix, generator=torch.Generator().manual_seed(0), noise="per_patch", **kw)
    assert torch.equal(per.pixel_values, again.pixel_values) and torch.equal(per.mask, again.mask)


def test_patch_targets_normalized_and_bad_row_count():
    pix = _pixels(3) * 5 + 2
    t = patch_targets(pix, merge_size=2, normalize=True)
    assert torch.allclose(t.mean(-1), torch.zeros(3), atol=1e-5)
    assert torch.allclose(t.std(-1), torch.ones(3), atol=1e-3)
    with pytest.raises(ValueError, match="multiple"):
        patch_targets(pix[:5], merge_size=2)
    with pytest.raises(ValueError, match="probability"):
        mask_image_patches(pix, merge_size=2, probability=1.5, generator=torch.Generator())


def test_causal_lm_labels_are_the_next_text_token():
    ids = torch.tensor([[5, 1, 3, 3, 2, 6, 7, 0, 0], [8, 9, 10, 11, 12, 13, 14, 15, 16]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0], [1] * 9])
    labels = causal_lm_labels(ids, attn, never_predict_ids=SPECIAL)
    x = IGNORE_INDEX
    # row 0: text 5, vision start, two image pads, vision end, text 6 7, padding
    assert labels[0].tolist() == [x, x, x, x, 6, 7, x, x, x]  # only text targets; vision end predicts 6
    assert labels[1].tolist() == [9, 10, 11, 12, 13, 14, 15, 16, x]  # the last position predicts nothing
    ids2, attn2 = _text_batch()
    full = mask_text_tokens(ids2, attn2, mask_token_id=MASK_ID, never_mask_ids=SPECIAL, probability=1.0,
                            generator=torch.Generator().manual_seed(0), shift_labels=True)  # fmt: skip
    # = MLM's labels at p=1, on uncorrupted input
    assert torch.equal(causal_lm_labels(ids2, attn2, never_predict_ids=SPECIAL), full.labels)
