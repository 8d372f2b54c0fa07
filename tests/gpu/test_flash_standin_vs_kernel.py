"""GPU only (``pytest -m gpu``): the CPU tests' flash_attn stand-in computes what the real kernels compute.

Everything the CPU suite proves about transformers' flash-attention-2 path (tests/moca_model/test_flash_standin.py,
tests/moca_train/test_flash_train_step.py) rests on ``moca_model.testing_flash`` following flash-attn's contract;
here the real ``flash_attn_func`` / ``flash_attn_varlen_func`` and ``bert_padding`` are compared with it on the same
bf16 inputs: causal and not, more keys than queries (bottom-right alignment), GQA, ragged ``cu_seqlens``, windows.
"""

import pytest
import torch

pytestmark = pytest.mark.gpu
ATOL = 2e-2  # bf16 outputs of O(1) values: the kernels differ in accumulation order and rounding points


@pytest.fixture(scope="module")
def kernels():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    flash = pytest.importorskip("flash_attn")
    from flash_attn.bert_padding import pad_input, unpad_input

    return flash, pad_input, unpad_input


def _qkv(shape_q, shape_k, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    make = lambda s: torch.randn(*s, generator=g, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    return make(shape_q), make(shape_k), make(shape_k)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("sq,sk", [(37, 37), (5, 29)])
def test_dense_kernel(kernels, causal, sq, sk):
    from moca_model import testing_flash

    flash, _, _ = kernels
    q, k, v = _qkv((2, sq, 8, 64), (2, sk, 2, 64), seed=sq + sk)  # GQA 8 query heads on 2 kv heads
    want = flash.flash_attn_func(q, k, v, causal=causal)
    got = testing_flash.flash_attn_func(q, k, v, causal=causal)
    assert (got.float() - want.float()).abs().max().item() <= ATOL


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window", [(-1, -1), (8, 3)])
def test_varlen_kernel(kernels, causal, window):
    from moca_model import testing_flash

    flash, _, _ = kernels
    lens = [17, 1, 64, 30]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q, k, v = _qkv((sum(lens), 8, 64), (sum(lens), 2, 64), seed=len(lens))
    kwargs = {"causal": causal, "window_size": window, "softmax_scale": 0.1}
    want = flash.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), **kwargs)
    got = testing_flash.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), **kwargs)
    assert (got.float() - want.float()).abs().max().item() <= ATOL


def test_padding_helpers(kernels):
    from moca_model import testing_flash

    _, pad_input, unpad_input = kernels
    hidden = torch.randn(3, 10, 4, device="cuda")
    mask = torch.tensor([[1] * 10, [1] * 4 + [0] * 6, [1] * 7 + [0] * 3], device="cuda")
    want, got = unpad_input(hidden, mask), testing_flash.unpad_input(hidden, mask)
    for a, b in zip(want[:3], got[:3]):
        assert torch.equal(a, b)
    assert int(want[3]) == got[3]
    assert torch.equal(pad_input(want[0], want[1], 3, 10), testing_flash.pad_input(got[0], got[1], 3, 10))
