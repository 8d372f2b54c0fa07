"""Batched vision attention (moca_model.vision_attention): exact vs the stock loop, fewer calls, one switch."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from moca_model import vision_attention
from moca_model.vision_attention import BatchedChunkAttention, build_plan, set_batched

# Patch grids (t, h, w): exact window multiples, edge windows on one or both sides, a single partial window,
# wide and tall pages, odd window counts, and videos of 2 and 4 temporal patches.
GRIDS = [(1, 16, 16), (1, 18, 10), (1, 2, 2), (1, 6, 30), (1, 30, 6), (1, 34, 22), (2, 12, 20), (4, 10, 10),
         (1, 18, 10), (1, 8, 12)]  # fmt: skip
FULL_BLOCKS = [1, 3]


def qwen25_tower(impl: str = "sdpa", depth: int = 4):
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    vision = {"depth": depth, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64, "out_hidden_size": 16,
              "fullatt_block_indexes": FULL_BLOCKS, "window_size": 112, "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2}  # fmt: skip
    cfg = Qwen2_5_VLConfig(vision_config=vision).vision_config
    torch.manual_seed(0)
    tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg, attn_implementation=impl, dtype=torch.float32)
    set_batched(tower, True)  # as MoCaModel does
    return tower


def _merged(out) -> torch.Tensor:
    if torch.is_tensor(out):
        return out
    if isinstance(out, tuple):  # 4.x Qwen3-VL: (merged, deepstack features)
        return torch.cat([out[0], *out[1]])
    deepstack = getattr(out, "deepstack_features", None) or []
    return torch.cat([out.pooler_output, *deepstack])


def _pixels(grids, row: int = 1176, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    grid = torch.tensor(grids)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(int(grid.prod(1).sum()), row, generator=gen), grid


def _both(tower, pixels, grid):
    """(stock, batched) merged outputs of one tower."""
    with torch.no_grad():
        set_batched(tower, False)
        stock = _merged(tower(pixels, grid_thw=grid))
        set_batched(tower, True)
        batched = _merged(tower(pixels, grid_thw=grid))
    return stock, batched


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "grids",
    [[g] for g in GRIDS[:8]] + [GRIDS, GRIDS[::-1]],
    ids=lambda g: "x".join(map(str, g[0])) if len(g) == 1 else f"mixed{len(g)}",
)
def test_equal_to_the_stock_loop(impl, grids):
    tower = qwen25_tower(impl).eval()
    pixels, grid = _pixels(grids)
    stock, batched = _both(tower, pixels, grid)
    assert stock.shape == batched.shape
    torch.testing.assert_close(batched, stock, rtol=0, atol=1e-6)


def test_gradients_equal_the_stock_loop():
    tower = qwen25_tower().train()
    pixels, grid = _pixels(GRIDS)
    target = torch.randn(int(grid.prod(1).sum()) // 4, 16, generator=torch.Generator().manual_seed(1))
    grads = {}
    for batched in (False, True):
        set_batched(tower, batched)
        tower.zero_grad(set_to_none=True)
        x = pixels.clone().requires_grad_(True)
        loss = ((_merged(tower(x, grid_thw=grid)) - target) ** 2).mean()
        loss.backward()
        grads[batched] = {"loss": loss.detach(), "input": x.grad, **{n: p.grad for n, p in tower.named_parameters()}}
    for name, ref in grads[False].items():
        scale = ref.abs().max().clamp_min(1e-12)
        assert (grads[True][name] - ref).abs().max() <= 1e-5 * scale, name


def _window_lengths(grids, window: int = 4) -> list[int]:
    """Token counts of every window, computed here from the geometry (8x8 patches = 4x4 merged tokens)."""
    out = []
    for t, h, w in grids:
        rows = [min(window, h // 2 - r) for r in range(0, h // 2, window)]
        cols = [min(window, w // 2 - c) for c in range(0, w // 2, window)]
        out += [r * c * 4 for _ in range(t) for r in rows for c in cols]
    return out


@pytest.mark.parametrize("grids", [[(1, 64, 48)] * 4, GRIDS, [(1, 34, 22)], [(1, 68, 44)]], ids=str)
def test_calls_do_not_grow_with_windows(grids, monkeypatch):
    from benchmarks.vision_attention import count_sdpa_calls

    depth = 8
    tower = qwen25_tower(depth=depth).eval()
    pixels, grid = _pixels(grids)
    windows = _window_lengths(grids)
    frames = [h * w for t, h, w in grids for _ in range(t)]
    n_full = len(FULL_BLOCKS)
    calls = {}
    for batched in (False, True):
        set_batched(tower, batched)
        with torch.no_grad(), count_sdpa_calls() as counter:
            tower(pixels, grid_thw=grid)
        calls[batched] = counter["calls"]
    assert calls[False] == (depth - n_full) * len(windows) + n_full * len(frames)  # one per window: the old way
    assert calls[True] == (depth - n_full) * len(set(windows)) + n_full * len(set(frames))
    assert calls[True] <= (len(set(windows)) + len(grids)) * depth  # the bound


def test_same_call_count_for_a_page_four_times_as_large():
    from benchmarks.vision_attention import count_sdpa_calls

    tower = qwen25_tower().eval()
    counts = []
    for grids in ([(1, 34, 22)], [(1, 66, 38)]):  # 5x3 and 9x5 windows, both with edge windows on two sides
        pixels, grid = _pixels(grids)
        with torch.no_grad(), count_sdpa_calls() as counter:
            tower(pixels, grid_thw=grid)
        counts.append(counter["calls"])
    assert counts[0] == counts[1] == 2 * 4 + 2 * 1


def test_the_model_batches_by_default_and_one_switch_restores_the_stock_classes(tiny_model_and_processor, mixed_items):
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    from moca_model.processing_moca import normalize_item

    model, proc = tiny_model_and_processor
    attn = [b.attn for b in model.visual.blocks]
    assert model.batched_vision_attention and all(isinstance(a, BatchedChunkAttention) for a in attn)
    assert all(isinstance(a, Qwen2_5_VLVisionAttention) for a in attn)  # still the upstream class for everyone else
    keys = set(model.state_dict())
    inputs = proc.collate([proc.process(normalize_item(x, i), i) for i, x in enumerate(mixed_items)])
    with torch.no_grad():
        on = model(**inputs).embeddings
        model.batched_vision_attention = False
        assert not model.batched_vision_attention
        assert all(type(a) is Qwen2_5_VLVisionAttention for a in attn)
        off = model(**inputs).embeddings
        model.batched_vision_attention = True
        model.batched_vision_attention = True  # idempotent
        again = model(**inputs).embeddings
    assert set(model.state_dict()) == keys
    assert all(type(a) is vision_attention.batched_class(Qwen2_5_VLVisionAttention) for a in attn)
    torch.testing.assert_close(on, off, rtol=0, atol=1e-6)
    assert torch.equal(on, again)


@pytest.mark.parametrize(
    ("value", "expected"), [("0", False), ("false", False), ("OFF", False), ("1", True), ("", True)]
)
def test_environment_variable_sets_the_default(monkeypatch, tiny_dir, value, expected):
    from moca_model.loading import load_model

    monkeypatch.setenv(vision_attention.ENV_VAR, value)
    model = load_model(tiny_dir, device=torch.device("cpu"), dtype=torch.float32, attn_implementation="sdpa")
    assert model.batched_vision_attention is expected


def test_a_bad_environment_value_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(vision_attention.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match="MOCA_BATCHED_VISION_ATTENTION='maybe'"):
        vision_attention.enabled_by_default()


def test_flash_attention_keeps_the_upstream_varlen_call():
    """flash-attention-2 (transformers' own path, on the CPU stand-in) runs upstream's forward: one varlen call per
    block with every window / frame, and the same output as the SDPA loop."""
    from moca_model.testing_flash import flash_attn_standin

    grids = [(1, 18, 10), (2, 8, 8)]
    pixels, grid = _pixels(grids)
    with torch.no_grad():
        ref = _merged(qwen25_tower("sdpa").eval()(pixels, grid_thw=grid))
        with flash_attn_standin() as calls:
            tower = qwen25_tower("flash_attention_2").eval()
            assert vision_attention.is_batched(tower) and tower.config._attn_implementation == "flash_attention_2"
            out = _merged(tower(pixels, grid_thw=grid))
    varlen = [c for c in calls if c["kernel"] == "varlen"]
    windows, frames = _window_lengths(grids), [h * w for t, h, w in grids for _ in range(t)]
    assert [c["seqlens"] for c in varlen] == [windows, frames, windows, frames]  # blocks 0-3, full in 1 and 3
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_a_registered_attention_function_runs_the_stock_loop():
    """A custom attention implementation is called once per chunk, as upstream does, never with a batch."""
    from transformers import AttentionInterface

    calls = []

    def custom(module, q, k, v, attention_mask=None, scaling=None, **kwargs):
        calls.append(q.shape)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scaling)
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register("moca_test_attention", custom)
    tower = qwen25_tower().eval()
    pixels, grid = _pixels([(1, 18, 10)])
    with torch.no_grad():
        ref = _merged(tower(pixels, grid_thw=grid))
        tower.config._attn_implementation = "moca_test_attention"
        out = _merged(tower(pixels, grid_thw=grid))
    assert {shape[0] for shape in calls} == {1} and len(calls) == 2 * 6 + 2 * 1  # 3x2 windows, 1 frame
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_outside_the_supported_versions_the_tower_stays_stock(monkeypatch):
    assert not vision_attention.supported("4.53.3")  # one 4-D mask in the tower: one call already
    assert vision_attention.supported("4.54.0") and vision_attention.supported("5.24.0")
    assert not vision_attention.supported("6.0.0")
    tower = qwen25_tower()
    set_batched(tower, False)
    monkeypatch.setattr(vision_attention, "supported", lambda version=None: False)
    assert set_batched(tower, True) == 0
    assert not vision_attention.is_batched(tower)


def test_copy_and_pickle_keep_the_batched_class():
    tower = qwen25_tower().eval()
    assert set_batched(tower, True) == 4 and set_batched(tower, True) == 4  # idempotent
    pixels, grid = _pixels([(1, 18, 10)])
    with torch.no_grad():
        ref = _merged(tower(pixels, grid_thw=grid))
        for clone in (copy.deepcopy(tower), pickle.loads(pickle.dumps(tower))):
            assert vision_attention.is_batched(clone)
            assert torch.equal(_merged(clone(pixels, grid_thw=grid)), ref)


def test_plan_groups_chunks_by_length_and_inverts():
    cu = torch.tensor([0, 64, 96, 160, 160, 184, 248, 280], dtype=torch.int32)  # lengths 64 32 64 0 24 64 32
    plan = build_plan(cu)
    assert plan.groups == ((3, 64), (2, 32), (1, 24)) and plan.tokens == 280
    x = torch.arange(280)
    assert torch.equal(x[plan.perm][plan.inverse], x)
    assert torch.equal(x[plan.perm][:64], torch.arange(64)) and torch.equal(x[plan.perm][64:128], torch.arange(96, 160))
    one = build_plan(torch.tensor([0, 16, 32, 48], dtype=torch.int32))
    assert one.groups == ((3, 16),) and one.perm is None and one.inverse is None


def test_a_mismatched_cu_seqlens_is_an_error():
    tower = qwen25_tower().eval()
    attn = tower.blocks[0].attn
    cos_sin = (torch.ones(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="covers 6 tokens"):
        attn(torch.randn(8, 32), cu_seqlens=torch.tensor([0, 6], dtype=torch.int32), position_embeddings=cos_sin)


def _qwen2_tower():
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

    cfg = Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2)
    torch.manual_seed(0)
    return Qwen2VisionTransformerPretrainedModel._from_config(cfg, attn_implementation="sdpa").eval(), 14


def _qwen3_tower():
    from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLVisionConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

    cfg = Qwen3VLVisionConfig(depth=3, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                              num_position_embeddings=16, deepstack_visual_indexes=[0, 1])  # fmt: skip
    torch.manual_seed(0)
    return Qwen3VLVisionModel._from_config(cfg, attn_implementation="sdpa").eval(), 16


@pytest.mark.parametrize("build", [_qwen2_tower, _qwen3_tower], ids=["qwen2_vl", "qwen3_vl"])
def test_the_per_frame_towers_batch_their_frames(build):
    """The hook for Qwen2-VL / Qwen3-VL: frames of one size (video slices, same-size images) are one call."""
    from benchmarks.vision_attention import count_sdpa_calls

    tower, patch = build()
    grids = [(2, 4, 6), (1, 6, 6), (3, 4, 6), (1, 2, 2)]  # 7 frames: 5 of 4x6, one of 6x6, one of 2x2
    pixels, grid = _pixels(grids, row=3 * 2 * patch * patch)
    with torch.no_grad():
        set_batched(tower, False)
        with count_sdpa_calls() as stock_calls:
            stock = _merged(tower(pixels, grid_thw=grid))
        assert set_batched(tower, True) == tower.config.depth
        with count_sdpa_calls() as calls:
            batched = _merged(tower(pixels, grid_thw=grid))
    torch.testing.assert_close(batched, stock, rtol=0, atol=1e-6)
    assert stock_calls["calls"] == 7 * tower.config.depth and calls["calls"] == 3 * tower.config.depth


def test_encoder_embeddings_do_not_depend_on_the_switch(tiny_encoder, mixed_items):
    model = tiny_encoder.model
    on = tiny_encoder.encode(mixed_items, batch_size=5, show_progress=False)
    try:
        model.batched_vision_attention = False
        off = tiny_encoder.encode(mixed_items, batch_size=5, show_progress=False)
    finally:
        model.batched_vision_attention = True
    assert np.abs(on - off).max() <= 1e-6


def test_a_wrapper_subclass_is_never_swapped_away():
    """FSDP2's fully_shard gives a module its own subclass; the switch must not undo it."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionAttention

    tower = qwen25_tower()
    first = tower.blocks[0].attn
    wrapped = type("FSDPBatchedQwen2_5_VLVisionAttention", (type(first),), {})
    first.__class__ = wrapped
    assert set_batched(tower, False) == 0
    assert type(first) is wrapped and type(tower.blocks[1].attn) is Qwen2_5_VLVisionAttention
    assert set_batched(tower, True) == 3 and type(first) is wrapped


@pytest.mark.parametrize("backbone", ["qwen2_vl", "qwen3_vl"])
def test_every_backbone_batches_its_frames_with_the_same_embeddings(tiny_backbone_dirs, mixed_items, backbone):
    """The MoCa mixin turns it on for Qwen2-VL and Qwen3-VL too (per-frame chunks): same embeddings either way."""
    from moca_model import MoCaEncoder

    enc = MoCaEncoder.from_pretrained(tiny_backbone_dirs(backbone), device="cpu", cache_memory_mb=0)
    assert enc.model.batched_vision_attention
    on = enc.encode(mixed_items, batch_size=8, show_progress=False)
    enc.model.batched_vision_attention = False
    assert not vision_attention.is_batched(enc.model.visual)
    off = enc.encode(mixed_items, batch_size=8, show_progress=False)
    assert np.abs(on - off).max() <= 1e-6
