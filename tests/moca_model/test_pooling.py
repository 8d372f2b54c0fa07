import torch

from moca_model.pooling import l2_normalize, mean_pool


def test_mean_pool_ignores_padding_hand_computed():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    out = mean_pool(hidden, mask)
    assert torch.equal(out, torch.tensor([[2.0, 3.0], [7.0, 8.0]]))


def test_mean_pool_accumulates_in_float32():
    hidden = torch.full((1, 4096, 2), 1.001, dtype=torch.bfloat16)
    out = mean_pool(hidden, torch.ones(1, 4096))
    assert out.dtype == torch.float32
    assert torch.allclose(out, hidden[0, 0].float().expand(1, 2))


def test_mean_pool_all_padding_row_is_zero_not_nan():
    out = mean_pool(torch.ones(1, 3, 2), torch.zeros(1, 3))
    assert torch.equal(out, torch.zeros(1, 2))


def test_l2_normalize_unit_rows():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    assert torch.allclose(l2_normalize(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
