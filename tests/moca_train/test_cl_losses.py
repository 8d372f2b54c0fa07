"""info_nce against hand-computed values: in-batch, own vs other queries' negatives, false-negative masking."""

from __future__ import annotations

import math

import pytest
import torch

from moca_train.losses import contrastive_logits, false_negative_mask, info_nce

E = math.e
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
D = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
NEG = torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]])  # (M=2, K=1): row 0's negative equals d1, row 1's equals d0


@pytest.mark.parametrize(("k", "other", "columns"), [(0, True, 3), (2, False, 5), (2, True, 9)])
def test_all_zero_embeddings_give_log_of_column_count(k, other, columns):
    q, d = torch.zeros(3, 4), torch.zeros(3, 4)
    negs = torch.zeros(3, k, 4) if k else None
    loss = info_nce(q, d, temperature=0.05, negatives=negs, other_negatives=other)
    assert loss.item() == pytest.approx(math.log(columns), rel=1e-6, abs=1e-7)


def test_in_batch_only_2x2():
    # row i logits: [1, 0] (target first / second): -log(e / (e + 1))
    assert info_nce(Q, D, temperature=1.0).item() == pytest.approx(math.log(1 + 1 / E), rel=1e-6, abs=1e-7)
    # temperature divides the logits: [1/0.5, 0] -> -log(e^2 / (e^2 + 1))
    assert info_nce(Q, D, temperature=0.5).item() == pytest.approx(math.log(1 + E**-2), rel=1e-6, abs=1e-7)


def test_own_negatives_only():
    # row 0: [q0.d0=1, q0.d1=0, q0.n0=0]; row 1: [0, 1, q1.n1=0]  -> -log(e / (e + 2))
    loss = info_nce(Q, D, temperature=1.0, negatives=NEG, other_negatives=False)
    assert loss.item() == pytest.approx(-math.log(E / (E + 2)), rel=1e-6, abs=1e-7)


def test_other_queries_negatives_included():
    # row 0: [1, 0, q0.n0=0, q0.n1=1] -> -log(e / (2e + 2)); row 1 symmetric
    loss = info_nce(Q, D, temperature=1.0, negatives=NEG, other_negatives=True)
    assert loss.item() == pytest.approx(-math.log(E / (2 * E + 2)), rel=1e-6, abs=1e-7)


def test_false_negative_masking_of_identical_positives_and_negatives():
    pos_ids = torch.tensor([7, 7])  # both queries have the same positive (same class label)
    # masking the other positive leaves row i with only its target -> loss 0
    assert info_nce(Q, D, temperature=1.0, pos_ids=pos_ids).item() == pytest.approx(0.0, rel=1e-6, abs=1e-7)
    # negative of row 0 has id 7 (= the shared positive): masked for both queries; row 1's negative (id 3) stays.
    neg_ids = torch.tensor([[7], [3]])
    loss = info_nce(Q, D, temperature=1.0, negatives=NEG, pos_ids=pos_ids, neg_ids=neg_ids)
    # row 0 columns: [1, masked, masked, q0.n1=1] -> -log(e / 2e); row 1: [masked, 1, masked, q1.n1=0] -> -log(e/(e+1))
    expected = (math.log(2) + math.log(1 + 1 / E)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    mask = false_negative_mask(pos_ids, neg_ids, batch=2)
    assert mask.tolist() == [[False, True, True, False], [True, False, True, False]]


def test_offset_scores_a_slice_of_queries_against_all_rows():
    g = torch.Generator().manual_seed(0)
    q, d = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    negs = torch.randn(6, 2, 8, generator=g)
    full = torch.nn.functional.cross_entropy(
        contrastive_logits(q, d, temperature=0.1, negatives=negs)[0], torch.arange(6), reduction="none"
    )
    part = info_nce(q[2:4], d, temperature=0.1, negatives=negs, offset=2)
    assert part.item() == pytest.approx(full[2:4].mean().item(), rel=1e-6)  # loss ~ 10-100: relative
    own_full = contrastive_logits(q, d, temperature=0.1, negatives=negs, other_negatives=False)[0]
    own_part = contrastive_logits(q[2:4], d, temperature=0.1, negatives=negs, offset=2, other_negatives=False)[0]
    torch.testing.assert_close(own_part, own_full[2:4])
