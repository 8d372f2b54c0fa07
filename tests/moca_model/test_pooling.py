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


def test_last_token_pool_right_left_and_masked_columns_hand_computed():
    from moca_model.pooling import last_token_pool

    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)  # row b, token t: [8b+2t, 8b+2t+1]
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(last_token_pool(hidden, right), torch.tensor([[2.0, 3.0], [14.0, 15.0]]))
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert torch.equal(last_token_pool(hidden, left), torch.tensor([[6.0, 7.0], [14.0, 15.0]]))
    dummy_columns = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])  # e.g. a masked dummy image after the text
    assert torch.equal(last_token_pool(hidden, dummy_columns), torch.tensor([[4.0, 5.0], [8.0, 9.0]]))


def test_last_token_pool_is_float32_and_keeps_gradients():
    from moca_model.pooling import last_token_pool

    hidden = torch.randn(3, 5, 4, dtype=torch.bfloat16, requires_grad=True)
    out = last_token_pool(hidden, torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1, 0, 0, 0, 0]]))
    assert out.dtype == torch.float32
    out.sum().backward()
    touched = (hidden.grad.abs().sum(-1) > 0).int()
    assert torch.equal(touched, torch.tensor([[0, 0, 1, 0, 0], [0, 0, 0, 0, 1], [1, 0, 0, 0, 0]], dtype=torch.int32))


def test_pool_rejects_unknown_mode():
    import pytest

    from moca_model.pooling import pool

    with pytest.raises(ValueError, match="pooling"):
        pool(torch.ones(1, 2, 2), torch.ones(1, 2), "cls")
