"""Blocked fp32 scoring and exact top-k (moca_bench.scoring) against plain NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from moca_bench import scoring
from moca_bench.scoring import score_matrix, topk_scores


def vectors(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def reference_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Score descending, then passage index ascending (lexsort's last key is the primary one)."""
    order = np.stack([np.lexsort((np.arange(row.size), -row))[:k] for row in scores])
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("form", ["tensor", "rows", "numpy", "numpy_rows"])
@pytest.mark.parametrize(("block_mb", "query_chunk"), [(64.0, None), (0.02, 3), (0.001, 1)])
def test_score_matrix_equals_numpy_for_every_input_form_and_block_size(form, block_mb, query_chunk):
    q, p = vectors(11, 32, 0), vectors(257, 32, 1)
    as_form = {
        "tensor": lambda x: x,
        "rows": lambda x: list(torch.unbind(x)),  # what vidore's evaluators pass
        "numpy": lambda x: x.numpy(),
        "numpy_rows": lambda x: list(x.numpy()),
    }[form]
    out = score_matrix(as_form(q), as_form(p), block_mb=block_mb, query_chunk=query_chunk)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (11, 257)
    np.testing.assert_allclose(out.numpy(), q.double().numpy() @ p.double().numpy().T, atol=1e-6)


def test_low_precision_inputs_are_scored_in_fp32():
    q, p = vectors(4, 64, 2).to(torch.bfloat16), vectors(9, 64, 3).to(torch.bfloat16)
    out = score_matrix(list(q), p)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), (q.double() @ p.double().T).numpy(), atol=1e-6)


def test_a_list_of_rows_is_never_stacked_whole(monkeypatch):
    q, p = vectors(8, 16, 4), vectors(5000, 16, 5)
    stacked = []
    real_stack = torch.stack

    def spy(rows, *a, **kw):
        stacked.append(len(rows))
        return real_stack(rows, *a, **kw)

    monkeypatch.setattr(scoring.torch, "stack", spy)
    out = score_matrix(list(q), list(p), block_mb=0.05)
    qc, pc = scoring._plan(scoring._Rows(q, "q"), scoring._Rows(p, "p"), 0.05, None, 4)
    assert max(stacked) == max(qc, pc) < 5000 and sum(stacked) == 8 + 5000  # each row copied once
    assert 4 * (qc * 16 + pc * 16 + qc * pc) <= 0.05 * 2**20  # one block fits the budget
    np.testing.assert_allclose(out.numpy(), (q @ p.T).numpy(), atol=1e-6)


def test_empty_inputs_and_invalid_shapes():
    assert score_matrix([], vectors(3, 8, 0)).shape == (0, 3)
    assert score_matrix(vectors(2, 8, 0), np.zeros((0, 8), np.float32)).shape == (2, 0)
    with pytest.raises(ValueError, match="query dim 8 != passage dim 4"):
        score_matrix(vectors(2, 8, 0), vectors(2, 4, 0))
    with pytest.raises(ValueError, match="single-vector"):
        score_matrix([torch.ones(3, 8)], vectors(2, 8, 0))  # multi-vector (ColPali-style) rows
    with pytest.raises(ValueError, match="single-vector"):
        score_matrix([torch.ones(8), torch.ones(7)], vectors(2, 8, 0))
    with pytest.raises(ValueError, match="2-D"):
        score_matrix(torch.ones(8), vectors(2, 8, 0))


@pytest.mark.parametrize("block_mb", [64.0, 0.01, 0.002])
def test_topk_equals_a_full_sort_with_index_tie_break(block_mb):
    g = torch.Generator().manual_seed(7)
    # small integer vectors: many exactly equal scores, positive, zero and negative
    q = torch.randint(-2, 3, (13, 6), generator=g).float()
    p = torch.randint(-2, 3, (700, 6), generator=g).float()
    values, indices = topk_scores(list(q), p, 25, block_mb=block_mb, query_chunk=5)
    want_v, want_i = reference_topk((q @ p.T).numpy(), 25)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64 and values.shape == (13, 25)
    assert np.array_equal(indices.numpy(), want_i) and np.array_equal(values.numpy(), want_v)


def test_topk_on_unit_vectors_matches_the_score_matrix():
    q, p = vectors(9, 48, 8), vectors(3000, 48, 9)
    values, indices = topk_scores(q, p, 10, block_mb=0.05)
    full = score_matrix(q, p).numpy()
    want_v, want_i = reference_topk(full, 10)
    assert np.array_equal(indices.numpy(), want_i)
    np.testing.assert_allclose(values.numpy(), want_v, atol=1e-6)


def test_topk_k_is_clipped_and_validated():
    values, indices = topk_scores(vectors(2, 8, 0), vectors(3, 8, 1), 10)
    assert values.shape == indices.shape == (2, 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        topk_scores(vectors(2, 8, 0), vectors(3, 8, 1), 0)


def test_sort_keys_round_trip_special_floats():
    s = torch.tensor([[0.5, -0.0, 0.0, -1.0, -2.0, float("inf"), -float("inf"), 1e-38, -1e-38, 3.0e38]])
    values, idx = scoring._decode_keys(scoring._sort_keys(s, 40))
    assert torch.equal(values, s) and idx.tolist() == [list(range(40, 50))]
    order = scoring._sort_keys(s, 0).argsort(descending=True).tolist()[0]
    assert [s[0, i].item() for i in order] == sorted(s[0].tolist(), reverse=True)


@pytest.mark.gpu
def test_cuda_scores_are_ieee_fp32_and_precision_is_restored():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    q, p = vectors(300, 2048, 10), vectors(5000, 2048, 11)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # TF32 on, as many training scripts leave it
    try:
        out = score_matrix(list(q), list(p), device="cuda", block_mb=8)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    assert out.device.type == "cpu" and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), (q.double() @ p.double().T).numpy(), atol=2e-6)  # TF32 would be ~1e-3
    values, indices = topk_scores(q, p, 50, device="cuda", block_mb=8)
    cpu_values, cpu_indices = topk_scores(q, p, 50)
    np.testing.assert_allclose(values.numpy(), cpu_values.numpy(), atol=2e-6)
    assert (indices == cpu_indices).float().mean() > 0.99  # only near-ties may swap between devices
