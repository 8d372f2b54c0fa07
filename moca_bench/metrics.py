"""Pure retrieval metrics over a score matrix, with explicit tie handling.

Shapes: Q queries (rows), C candidates (columns). ``scores`` is (Q, C) float (``-inf`` marks padding of
ragged candidate lists; NaN is rejected); ``relevance`` is (Q, C) graded (>= 0) or bool; ``gold`` is (Q,)
int, the column of the single relevant candidate (MMEB puts it at column 0).

Exact score ties are common in MMEB because duplicate candidate strings share one embedding, so the
tie rule is an explicit argument, never an accident of ``argmax``:

- ``"first"``: ties are broken by column index, lower first. This is ``np.argmax`` and the MMEB
  reference (``eval.py``); with the ground truth at column 0 it always favours the ground truth.
- ``"optimistic"``: among equal scores, more relevant candidates rank first.
- ``"pessimistic"``: among equal scores, more relevant candidates rank last.
- ``"expected"``: the mean over all orders of tied candidates (random tie-breaking, in expectation).

Every metric is "gain of each candidate x weight of the rank it lands at", summed over a row; for
``"expected"`` a candidate in a tie group gets the mean weight of the ranks the group spans, which is
exact for any such additive metric (hit@k with one relevant candidate, recall@k, DCG@k).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

TieRule = Literal["first", "optimistic", "pessimistic", "expected"]
TIE_RULES: tuple[str, ...] = ("first", "optimistic", "pessimistic", "expected")


def _check(scores: np.ndarray, ties: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (Q, C), got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    return scores


def rank_credit(scores: np.ndarray, gains: np.ndarray, weights: np.ndarray, *, ties: TieRule = "first") -> np.ndarray:
    """Weight each candidate receives from the rank it lands at.

    Args:
        scores: (Q, C) similarity, higher is better.
        gains: (Q, C) relevance; only used to order tied candidates (``optimistic`` / ``pessimistic``).
        weights: (C,) weight of each rank (0-based), e.g. 1 for ranks < k, else 0.
        ties: tie rule (module docstring).

    Returns:
        (Q, C) float64: ``weights[rank]`` of each candidate, or for ``"expected"`` the mean weight over
        the ranks spanned by its tie group.
    """
    scores = _check(scores, ties)
    q, c = scores.shape
    weights = np.asarray(weights, dtype=np.float64)
    cols = np.broadcast_to(np.arange(c), (q, c))
    gains = np.asarray(gains, dtype=np.float64)
    if ties == "expected":
        order = np.argsort(-scores, axis=1, kind="stable")
        ranked = np.take_along_axis(scores, order, axis=1)
        new_group = np.ones((q, c), dtype=bool)
        new_group[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
        last_of_group = np.ones((q, c), dtype=bool)
        last_of_group[:, :-1] = new_group[:, 1:]
        start = np.maximum.accumulate(np.where(new_group, cols, 0), axis=1)
        end = np.minimum.accumulate(np.where(last_of_group, cols + 1, c)[:, ::-1], axis=1)[:, ::-1]
        cum = np.concatenate([[0.0], np.cumsum(weights)])
        credit = np.empty((q, c))
        np.put_along_axis(credit, order, (cum[end] - cum[start]) / (end - start), axis=1)
        return credit
    secondary = {"first": np.zeros((q, c)), "optimistic": -gains, "pessimistic": gains}[ties]
    order = np.lexsort((cols, secondary, -scores), axis=-1)  # last key is primary
    ranks = np.empty((q, c), dtype=np.int64)
    np.put_along_axis(ranks, order, cols, axis=1)
    return weights[ranks]


def _one_hot(scores: np.ndarray, gold: np.ndarray | int | None) -> np.ndarray:
    q, c = scores.shape
    gold = np.zeros(q, dtype=np.int64) if gold is None else np.broadcast_to(np.asarray(gold, dtype=np.int64), (q,))
    if ((gold < 0) | (gold >= c)).any():
        raise ValueError(f"gold indices must be in [0, {c})")
    gains = np.zeros((q, c))
    gains[np.arange(q), gold] = 1.0
    return gains


def hit_at_k(
    scores: np.ndarray, gold: np.ndarray | int | None = None, *, k: int = 1, ties: TieRule = "first"
) -> np.ndarray:
    """Per-query hit@k (precision@1 when k=1) for a single relevant candidate per query.

    Args:
        scores: (Q, C) similarity.
        gold: (Q,) column of the relevant candidate, a scalar for all rows, or None for column 0.
        k: cut-off.
        ties: tie rule (module docstring).

    Returns:
        (Q,) float64 in {0, 1}, or a probability for ``ties="expected"``.
    """
    scores = _check(scores, ties)
    gains = _one_hot(scores, gold)
    credit = rank_credit(scores, gains, (np.arange(scores.shape[1]) < k).astype(np.float64), ties=ties)
    return (gains * credit).sum(axis=1)


def recall_at_k(scores: np.ndarray, relevance: np.ndarray, *, k: int, ties: TieRule = "first") -> np.ndarray:
    """Per-query recall@k: the share of relevant candidates ranked in the top k.

    Args:
        scores: (Q, C) similarity.
        relevance: (Q, C) bool or graded; a candidate is relevant when > 0.
        k: cut-off.
        ties: tie rule (module docstring).

    Returns:
        (Q,) float64; NaN for a query without relevant candidates.
    """
    scores = _check(scores, ties)
    rel = (np.asarray(relevance) > 0).astype(np.float64)
    credit = rank_credit(scores, rel, (np.arange(scores.shape[1]) < k).astype(np.float64), ties=ties)
    n_rel = rel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, (rel * credit).sum(axis=1) / n_rel, np.nan)


def ndcg_at_k(scores: np.ndarray, relevance: np.ndarray, *, k: int, ties: TieRule = "first") -> np.ndarray:
    """Per-query nDCG@k with linear gains and ``1 / log2(rank + 2)`` discounts (trec_eval / pytrec_eval).

    Args:
        scores: (Q, C) similarity.
        relevance: (Q, C) graded relevance (>= 0).
        k: cut-off.
        ties: tie rule (module docstring).

    Returns:
        (Q,) float64 in [0, 1]; NaN for a query without relevant candidates.
    """
    scores = _check(scores, ties)
    gains = np.asarray(relevance, dtype=np.float64)
    if (gains < 0).any():
        raise ValueError("relevance must be >= 0")
    ranks = np.arange(scores.shape[1])
    discounts = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    dcg = (gains * rank_credit(scores, gains, discounts, ties=ties)).sum(axis=1)
    ideal = (-np.sort(-gains, axis=1) * discounts).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / ideal, np.nan)


def tie_decided(scores: np.ndarray, gold: np.ndarray | int | None = None, *, k: int = 1) -> np.ndarray:
    """Rows whose hit@k depends on the tie rule (optimistic and pessimistic disagree).

    Args:
        scores: (Q, C) similarity.
        gold: as in :func:`hit_at_k`.
        k: cut-off.

    Returns:
        (Q,) bool.
    """
    return hit_at_k(scores, gold, k=k, ties="optimistic") != hit_at_k(scores, gold, k=k, ties="pessimistic")


def top_tied(scores: np.ndarray) -> np.ndarray:
    """Rows whose best score is shared by two or more candidates.

    Args:
        scores: (Q, C) similarity.

    Returns:
        (Q,) bool.
    """
    scores = _check(scores, "first")
    return (scores == scores.max(axis=1, keepdims=True)).sum(axis=1) > 1


__all__ = ["TIE_RULES", "TieRule", "hit_at_k", "ndcg_at_k", "rank_credit", "recall_at_k", "tie_decided", "top_tied"]
