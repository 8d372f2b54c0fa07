"""Score one MMEB-V2 task from its unique-input embeddings: hit@1 (image, video) or linear nDCG@5 (visdoc).

Definitions follow the reference (VLM2Vec ``src/utils/eval_utils/metrics.py``, ``eval.py``): scores are dot
products of unit vectors; a prediction is a candidate *name*; hit@1 = a relevant name ranks first;
nDCG@k = sum over the top k of ``grade / log2(rank + 2)`` divided by the same sum over the label grades
sorted high to low (binary labels: ``min(#labels, k)`` ones). Exact ties follow ``tie_rule``
(:mod:`moca_bench.metrics`; columns are the row's candidate order for local tasks, the pool order for
global ones), and rows whose value depends on the rule are counted.

Graded nDCG has a latent reference bug (``RankingMetrics.evaluate``): labels are replaced by
``list(set(labels))`` while the grades keep the original order, so with two or more grades the
grade-to-page mapping can be permuted (integer ids: a fixed permutation; string ids: one that depends on
``PYTHONHASHSEED``). ``grade_order="correct"`` (default) keeps each page's own grade; ``"reference"``
reproduces the permutation in this process. Both values are reported for every graded task, with the
number of rows where they differ.

Bad inputs: a row whose query, any of its (local) candidates or any relevant (global) candidate could not
be encoded is skipped and counted; bad non-relevant candidates are left out of global pools.

Shapes: R rows, C columns (a row's candidates, or the pool), D dim.
"""

from __future__ import annotations

import numpy as np

from moca_bench.metrics import TIE_RULES, rank_credit
from moca_bench.mmeb.v2.build import TaskData

GRADE_ORDERS = ("correct", "reference")
NDCG_K = 5
_BLOCK = 512  # rows scored at once (bounds the (rows, pool) matrices)


def _grade_maps(data: TaskData, row: int) -> tuple[dict, dict]:
    names, grades = data.label_names[row], data.label_grades[row]
    return dict(zip(names, grades)), dict(zip(list(set(names)), grades))  # correct, reference (metrics.py:212-233)


def _ideal(grades: list[float], k: int) -> float:
    ranked = sorted(grades, reverse=True)[:k]
    return float(sum(g / np.log2(i + 2) for i, g in enumerate(ranked)))


def _matrices(data: TaskData, emb: np.ndarray, rows: np.ndarray, cols: np.ndarray | None) -> tuple:
    """(scores (B, C) float64 with -inf padding, column pool indices (B, C) with -1 padding)."""
    q = emb[data.queries[rows]].astype(np.float64)  # (B, D)
    if cols is not None:  # global: one shared column set
        return q @ emb[data.pool[cols]].astype(np.float64).T, np.broadcast_to(cols, (len(rows), len(cols)))
    width = max(len(data.row_cands[r]) for r in rows)
    pool_idx = np.full((len(rows), width), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        pool_idx[i, : len(data.row_cands[r])] = data.row_cands[r]
    vecs = emb[data.pool[np.maximum(pool_idx, 0)]].astype(np.float64)  # (B, C, D)
    scores = np.einsum("bd,bcd->bc", q, vecs)
    return np.where(pool_idx >= 0, scores, -np.inf), pool_idx


def _gains(data: TaskData, rows: np.ndarray, pool_idx: np.ndarray, pos: dict, which: int) -> np.ndarray:
    """(B, C) grade of each column's name (0 for names that are no label); duplicates of a label all count."""
    out = np.zeros(pool_idx.shape)
    for i, r in enumerate(rows):
        for name, grade in _grade_maps(data, r)[which].items():
            if name in pos:
                out[i, pool_idx[i] == pos[name]] = grade
    return out


def _values(scores: np.ndarray, gains: np.ndarray, ideal: np.ndarray, metric: str, rule: str) -> np.ndarray:
    """(B,) hit@1 or nDCG@5 per row under one tie rule."""
    c = scores.shape[1]
    ranks = np.arange(c)
    if metric == "hit@1":
        credit = rank_credit(scores, gains, (ranks < 1).astype(np.float64), ties=rule)
        return ((gains > 0) * credit).sum(axis=1)
    credit = rank_credit(scores, gains, np.where(ranks < NDCG_K, 1.0 / np.log2(ranks + 2.0), 0.0), ties=rule)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, (gains * credit).sum(axis=1) / ideal, 0.0)


def rows_touched(data: TaskData, flagged: np.ndarray) -> np.ndarray:
    """(R,) rows whose query, or one of whose candidates (local tasks) or relevant pages (global), is flagged."""
    row_bad = flagged[data.queries].copy()
    pos = {n: j for j, n in enumerate(data.names)}
    for r in range(data.n_rows):
        if data.row_cands is not None:
            row_bad[r] |= bool(flagged[data.pool[data.row_cands[r]]].any())
        else:
            row_bad[r] |= any(flagged[data.pool[pos[n]]] for n in data.label_names[r] if n in pos)
    return row_bad


def score_task(data: TaskData, emb: np.ndarray, bad: np.ndarray, *, tie_rule: str = "first",
               grade_order: str = "correct") -> dict:  # fmt: skip
    """Main metric (percent) of one task, with tie, bad-row and grade-order counts.

    Args:
        data: the task.
        emb: (U, D) unit vectors of its unique inputs (rows of bad inputs are ignored).
        bad: (U,) inputs that could not be encoded.
        tie_rule: rule for the headline score (first, optimistic, pessimistic, expected).
        grade_order: graded nDCG label-grade mapping, ``correct`` or ``reference`` (module docstring).

    Returns:
        ``score``, ``metric``, ``scores_by_tie_rule``, ``rows``, ``scored_rows``, ``bad_rows``,
        ``dropped_rows``, ``tied_rows``, ``top_tied_rows``; for graded tasks also ``score_reference_grade_order``,
        ``score_correct_grade_order`` and ``grade_order_rows_differ``.
    """
    if tie_rule not in TIE_RULES or grade_order not in GRADE_ORDERS:
        raise ValueError(f"tie_rule in {TIE_RULES}, grade_order in {GRADE_ORDERS}; got {tie_rule!r}, {grade_order!r}")
    metric = data.task.metric
    row_bad = rows_touched(data, bad)
    good = np.flatnonzero(~row_bad)
    out = {"metric": metric, "rows": data.n_rows + len(data.dropped), "scored_rows": len(good),
           "bad_rows": int(row_bad.sum()), "dropped_rows": len(data.dropped)}  # fmt: skip
    if len(good) == 0:
        return {**out, "score": None, "scores_by_tie_rule": {}, "tied_rows": 0, "top_tied_rows": 0}
    cols = None if data.row_cands is not None else np.flatnonzero(~bad[data.pool])
    pos = {n: j for j, n in enumerate(data.names)}
    sums = {(rule, w): 0.0 for rule in TIE_RULES for w in (0, 1)}
    tied = top_tied = differ = 0
    for s in range(0, len(good), _BLOCK):
        rows = good[s : s + _BLOCK]
        scores, pool_idx = _matrices(data, emb, rows, cols)
        ideal = np.array([_ideal(data.label_grades[r], NDCG_K) for r in rows])
        vals = {}
        for w in (0, 1) if data.graded else (0,):
            gains = _gains(data, rows, pool_idx, pos, w)
            for rule in TIE_RULES:
                vals[rule, w] = _values(scores, gains, ideal, metric, rule)
                sums[rule, w] += float(vals[rule, w].sum())
        tied += int((vals["optimistic", 0] != vals["pessimistic", 0]).sum())
        best = scores.max(axis=1, keepdims=True)
        top_tied += int(((scores == best).sum(axis=1) > 1).sum())
        if data.graded:
            differ += int((np.abs(vals[tie_rule, 0] - vals[tie_rule, 1]) > 1e-12).sum())
    which = GRADE_ORDERS.index(grade_order) if data.graded else 0
    pct = {k: 100.0 * v / len(good) for k, v in sums.items()}
    out.update(score=pct[tie_rule, which], scores_by_tie_rule={r: pct[r, which] for r in TIE_RULES},
               tied_rows=tied, top_tied_rows=top_tied)  # fmt: skip
    if data.graded:
        out.update(score_correct_grade_order=pct[tie_rule, 0], score_reference_grade_order=pct[tie_rule, 1],
                   grade_order_rows_differ=differ)  # fmt: skip
    return out
