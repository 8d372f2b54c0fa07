"""Hand-computed hit@k / recall@k / nDCG@k on small score matrices, every tie rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moca_bench.metrics import hit_at_k, ndcg_at_k, recall_at_k, tie_decided, top_tied

SCORES = np.array(
    [
        [0.9, 0.1, 0.5],  # gold best
        [0.2, 0.8, 0.1],  # gold second
        [0.7, 0.7, 0.7],  # three-way tie
        [0.4, 0.9, 0.4],  # gold tied with col 2, both behind col 1
    ]
)


def test_hit_at_1_first_rule_is_argmax():
    assert hit_at_k(SCORES).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert hit_at_k(SCORES).tolist() == (SCORES.argmax(axis=1) == 0).astype(float).tolist()


@pytest.mark.parametrize(
    ("ties", "expected"),
    [
        ("first", [1, 0, 1, 0]),
        ("optimistic", [1, 0, 1, 0]),
        ("pessimistic", [1, 0, 0, 0]),
        ("expected", [1, 0, 1 / 3, 0]),
    ],
)
def test_hit_at_1_tie_rules(ties, expected):
    assert hit_at_k(SCORES, ties=ties) == pytest.approx(expected)


def test_hit_at_2_with_gold_column_and_ties():
    # gold at column 2: row 3 -> col 2 ties with col 0 for rank 1..2 behind col 1
    assert hit_at_k(SCORES, 2, k=2, ties="first").tolist() == [1.0, 0.0, 0.0, 0.0]
    assert hit_at_k(SCORES, 2, k=2, ties="optimistic").tolist() == [1.0, 0.0, 1.0, 1.0]
    assert hit_at_k(SCORES, 2, k=2, ties="expected") == pytest.approx([1.0, 0.0, 2 / 3, 0.5])


def test_tie_decided_and_top_tied():
    assert tie_decided(SCORES).tolist() == [False, False, True, False]
    assert tie_decided(SCORES, 2, k=2).tolist() == [False, False, True, True]
    assert top_tied(SCORES).tolist() == [False, False, True, False]


def test_padding_with_minus_inf_never_wins():
    scores = np.array([[0.1, -np.inf, -np.inf], [-0.5, -0.2, -np.inf]])
    assert hit_at_k(scores, ties="pessimistic").tolist() == [1.0, 0.0]
    assert hit_at_k(scores, ties="expected").tolist() == [1.0, 0.0]


def test_recall_at_k_hand_computed():
    rel = np.array([[1, 0, 1], [1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=bool)
    r = recall_at_k(SCORES, rel, k=1)
    assert r[:3].tolist() == [0.5, 0.5, 0.0]
    assert math.isnan(r[3])
    assert recall_at_k(SCORES, rel, k=1, ties="expected")[2] == pytest.approx(1 / 3)
    assert recall_at_k(SCORES, rel, k=2)[:3].tolist() == [1.0, 1.0, 0.0]


def test_ndcg_hand_computed():
    scores = np.array([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
    rel = np.array([[0, 2, 1], [0, 2, 1]])
    d2 = 1 / math.log2(3)
    ideal = 2 + 1 * d2
    got = ndcg_at_k(scores, rel, k=2)
    assert got[0] == pytest.approx((0 + 2 * d2) / ideal)
    assert got[1] == pytest.approx((1 + 2 * d2) / ideal)
    assert ndcg_at_k(scores, rel, k=3)[1] == pytest.approx((1 + 2 * d2 + 0) / (ideal + 0))


def test_ndcg_expected_averages_the_discounts_of_a_tie_group():
    scores = np.array([[0.5, 0.5, 0.1]])
    rel = np.array([[1, 0, 0]])
    d2 = 1 / math.log2(3)
    assert ndcg_at_k(scores, rel, k=3, ties="expected")[0] == pytest.approx((1 + d2) / 2)
    assert ndcg_at_k(scores, rel, k=3, ties="pessimistic")[0] == pytest.approx(d2)
    assert ndcg_at_k(scores, rel, k=1, ties="expected")[0] == pytest.approx(0.5)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        hit_at_k(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="ties"):
        hit_at_k(SCORES, ties="random")
    with pytest.raises(ValueError, match="gold"):
        hit_at_k(SCORES, 3)
