"""transformers' flash-attention-2 code path on CPU, through a plain-torch ``flash_attn`` stand-in.

``moca_model.testing_flash`` makes transformers (4.57 in ``.venv``, 5.x in ``.venv-mteb``) load
``attn_implementation="flash_attention_2"`` and run its own unpadding, varlen dispatch and position-id
handling; only the kernel is the stand-in. MoCaEncoder on it must equal SDPA (<= 1e-5) on padded batches
mixing texts of very different lengths, images of different sizes, interleaved images and videos. The
sabotage tests prove the comparison can fail: a kernel that ignores ``causal=False`` or ``cu_seqlens``
moves the embeddings by orders of magnitude more than the tolerance. The real kernel: ``tests/gpu/``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from moca_model.testing_flash import flash_attn_func, flash_attn_standin, flash_attn_varlen_func

from .conftest import draw_image

FLASH_ATOL = 1e-5  # fp32 on both sides; the kernels differ only in summation order
SABOTAGE_MIN = 1e-2  # a broken kernel must move some embedding by at least this (1000x the tolerance)


def _frames(folder, n, size, seed):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    return str(folder)


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("flash_clips")
    long_text = " ".join(f"word{i}" for i in range(90))
    return [
        "x",
        long_text,
        "what is the revenue in 2021?",
        draw_image(60, 40, 1),
        {"text": "\nRepresent the given document image.", "image": draw_image(200, 280, 2)},
        draw_image(30, 300, 3),
        {
            "text": "compare <|vision_start|><|image_pad|><|vision_end|> with "
            "<|vision_start|><|image_pad|><|vision_end|> please",
            "images": [draw_image(56, 56, 5), draw_image(90, 50, 6)],
        },
        {"text": " Understand the content of the provided video.", "video": _frames(root / "a", 8, (80, 60), 1)},
        {"text": "short clip", "video": _frames(root / "b", 3, (50, 90), 2)},
        {"text": " both", "video": _frames(root / "c", 2, (64, 64), 3), "image": draw_image(64, 64, 4)},
    ]


@pytest.fixture(scope="module")
def encoders(tiny_dir):
    from moca_model import MoCaEncoder

    sdpa = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", attn_implementation="sdpa", cache_memory_mb=0)
    with flash_attn_standin():
        flash = MoCaEncoder.from_pretrained(
            tiny_dir, device="cpu", attn_implementation="flash_attention_2", cache_memory_mb=0
        )
    assert flash.model.attn_implementation == "flash_attention_2"
    assert flash.model.visual.config._attn_implementation == "flash_attention_2"
    return sdpa, flash


def _one_batch(encoder, items) -> np.ndarray:
    """All items in ONE padded batch (MoCaEncoder.encode would sort them into batches of similar length)."""
    return encoder.forward_batch(_batch(encoder, items))


def _batch(encoder, items) -> dict:
    from moca_model.processing_moca import normalize_item

    return encoder.prepare_batch([(i, normalize_item(x, i)) for i, x in enumerate(items)])


def test_flash_code_path_equals_sdpa_on_one_padded_mixed_batch(encoders, items):
    sdpa, flash = encoders
    want = _one_batch(sdpa, items)
    with flash_attn_standin() as calls:
        got = _one_batch(flash, items)
    diff = float(np.abs(got - want).max())
    print(f"flash stand-in vs SDPA, one padded batch of {len(items)}: max |diff| {diff:.2e}")  # -rP
    assert diff <= FLASH_ATOL
    # transformers really took its flash path: the text decoder unpadded the batch into one varlen call per
    # layer (one sequence per item, causal=False); the vision tower ran varlen over its windows / images
    layers = flash.model.config.text_config.num_hidden_layers
    text = [c for c in calls if c["kernel"] == "varlen" and len(c["seqlens"]) == len(items)]
    assert len(text) == layers and not any(c["causal"] for c in calls)
    assert len({tuple(c["seqlens"]) for c in text}) == 1 and len(set(text[0]["seqlens"])) > 3  # ragged lengths
    assert sum(c["kernel"] == "varlen" for c in calls) > layers  # + the vision tower's cu_seqlens


def test_flash_code_path_equals_sdpa_through_encode(encoders, items):
    sdpa, flash = encoders
    want = sdpa.encode(items, batch_size=4, show_progress=False)
    with flash_attn_standin():
        got = flash.encode(items, batch_size=4, show_progress=False)
        alone = np.concatenate([_one_batch(flash, [x]) for x in items])  # batches of one: no mask, dense kernel
    assert float(np.abs(got - want).max()) <= FLASH_ATOL
    assert float(np.abs(alone - want).max()) <= FLASH_ATOL


def test_image_batch_of_one_is_not_read_as_packed_sequences(encoders):
    """A batch of one unpadded image item: transformers gets no mask and M-RoPE positions whose temporal row is
    not 0, 1, 2, ... (packed-sequence detection would split the item). Qwen2.5-VL hands the 3-D positions to
    the rotary embedding only, so the decoder runs the dense kernel over the whole item."""
    sdpa, flash = encoders
    item = [{"text": "\nRepresent the given document image.", "image": draw_image(120, 90, 7)}]
    batch = _batch(sdpa, item)
    from moca_model.compat import rope_index

    model = sdpa.model
    temporal = rope_index(model, batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"],
                          model.config.image_token_id)[0, 0]  # fmt: skip
    assert not torch.equal(temporal, torch.arange(temporal.numel()))  # what transformers would call "packed"
    with flash_attn_standin() as calls:
        got = _one_batch(flash, item)
    assert float(np.abs(got - _one_batch(sdpa, item)).max()) <= FLASH_ATOL
    text_len = int(batch["attention_mask"].sum())
    decoder = [c for c in calls if c["seqlens"] == [text_len]]
    assert len(decoder) == flash.model.config.text_config.num_hidden_layers
    assert all(c["kernel"] == "dense" and not c["causal"] for c in decoder)


@pytest.mark.parametrize("mode", ["force_causal", "ignore_cu_seqlens"])
def test_sabotaged_kernel_is_caught(encoders, items, mode):
    """The parity check can fail: a kernel that forces causal attention, or attends across the samples of a
    varlen batch, moves embeddings far beyond FLASH_ATOL."""
    sdpa, flash = encoders
    want = _one_batch(sdpa, items)
    with flash_attn_standin(mode):
        got = _one_batch(flash, items)
    diff = float(np.abs(got - want).max())
    print(f"sabotaged stand-in ({mode}) vs SDPA: max |diff| {diff:.2e}")  # -rP
    assert diff >= SABOTAGE_MIN


def test_standin_restores_transformers(encoders):
    import sys

    import transformers.modeling_flash_attention_utils as fa_utils
    from transformers.utils import import_utils

    with flash_attn_standin():
        assert "flash_attn" in sys.modules and fa_utils.is_flash_attn_2_available()
    assert "flash_attn" not in sys.modules and not import_utils.is_flash_attn_2_available()
    assert not fa_utils.is_flash_attn_2_available()


# --- the stand-in kernels themselves, against attention written out by hand ---------------------------


def _naive(q, k, v, allowed):
    """q (Sq, H, D), k/v (Sk, H, D), allowed (Sq, Sk) bool -> (Sq, H, D)."""
    s = torch.einsum("qhd,khd->hqk", q, k) * q.shape[-1] ** -0.5
    s = s.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, -1).nan_to_num(0.0), v)


def test_causal_is_bottom_right_aligned_and_gqa_shares_heads():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, h, 8, generator=g) for n, h in ((3, 4), (5, 2), (5, 2)))
    out = flash_attn_func(q, k, v, causal=True)
    # flash-attn >= 2.1: query i sees keys j <= i + Sk - Sq (bottom-right), not j <= i (top-left, SDPA)
    allowed = torch.arange(5)[None, :] <= torch.arange(3)[:, None] + 2
    kk, vv = (t[0].repeat_interleave(2, dim=1) for t in (k, v))  # query heads 0,1 -> kv head 0; 2,3 -> 1
    torch.testing.assert_close(out[0], _naive(q[0], kk, vv, allowed))
    full = flash_attn_func(q, k, v, causal=False)
    torch.testing.assert_close(full[0], _naive(q[0], kk, vv, torch.ones(3, 5, dtype=torch.bool)))
    # more queries than keys: the first Sq - Sk rows see nothing and are 0, as in the kernel
    rows = flash_attn_func(k, q[:, :3, :2], q[:, :3, :2], causal=True)
    assert rows[0, :2].abs().max() == 0 and rows[0, 2:].abs().max() > 0


def test_varlen_honours_cu_seqlens_window_and_softcap():
    g = torch.Generator().manual_seed(1)
    lens = [4, 1, 6]
    q, k, v = (torch.randn(sum(lens), 2, 8, generator=g) for _ in range(3))
    cu = torch.tensor([0, 4, 5, 11], dtype=torch.int32)
    out = flash_attn_varlen_func(q, k, v, cu, cu, 6, 6, causal=False, window_size=(1, 2))
    for a, b in zip(cu.tolist(), cu.tolist()[1:]):
        i, j = torch.arange(b - a)[:, None], torch.arange(b - a)[None, :]
        torch.testing.assert_close(out[a:b], _naive(q[a:b], k[a:b], v[a:b], (j >= i - 1) & (j <= i + 2)))
    capped = flash_attn_varlen_func(q, k, v, cu, cu, 6, 6, softcap=0.5)
    assert not torch.allclose(capped, flash_attn_varlen_func(q, k, v, cu, cu, 6, 6))
    with pytest.raises(TypeError, match="int32"):
        flash_attn_varlen_func(q, k, v, cu.long(), cu, 6, 6)
    with pytest.raises(ValueError, match="max_seqlen_q"):
        flash_attn_varlen_func(q, k, v, cu, cu, 5, 6)
    with pytest.raises(NotImplementedError, match="dropout"):
        flash_attn_varlen_func(q, k, v, cu, cu, 6, 6, dropout_p=0.1)


def test_bf16_inputs_give_bf16_outputs_computed_in_fp32():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 7, 2, 8, generator=g) for _ in range(3))
    out = flash_attn_func(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = flash_attn_func(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float())
    assert (out.float() - ref).abs().max() <= 2**-7  # one bf16 rounding of an fp32 result
