"""Score one subset from its unique-pair embeddings: hit@1 with the ground truth at column 0.

Scores are computed once per (unique query, unique candidate) in float64 and then gathered per row,
so duplicate candidates (one shared embedding) get bit-identical scores and tie exactly, as in the
reference. Rows whose query or any candidate is a bad pair are skipped and counted.

Shapes: R rows, C candidates per row, U unique pairs, D dim.
"""

from __future__ import annotations

import numpy as np

from moca_bench.metrics import hit_at_k, tie_decided, top_tied
from moca_bench.mmeb.data import SubsetData

REPORTED_RULES = ("first", "pessimistic", "expected")  # "optimistic" equals "first" with the gold at column 0


def row_scores(subset: SubsetData, embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cosine scores of the selected rows' candidates.

    Args:
        subset: the subset.
        embeddings: (U, D) unit-norm vectors of its unique pairs.
        rows: (R',) row indices.

    Returns:
        (R', C) float64 scores; ``-inf`` where a ragged row has no candidate.
    """
    q, c = subset.queries[rows], subset.candidates[rows]
    valid = c >= 0
    uq, q_pos = np.unique(q, return_inverse=True)
    uc, c_pos = np.unique(c[valid], return_inverse=True)
    table = embeddings[uq].astype(np.float64) @ embeddings[uc].astype(np.float64).T  # (|uq|, |uc|)
    cols = np.zeros(c.shape, dtype=np.int64)
    cols[valid] = c_pos
    return np.where(valid, table[q_pos.reshape(-1)[:, None], cols], -np.inf)


def score_subset(subset: SubsetData, embeddings: np.ndarray, bad: np.ndarray, *, tie_rule: str = "first") -> dict:
    """hit@1 (percent) of one subset, with tie and bad-row counts.

    Args:
        subset: the subset.
        embeddings: (U, D) vectors (rows of bad pairs are ignored).
        bad: (U,) bool, pairs that could not be encoded.
        tie_rule: rule for the headline ``score`` (see :mod:`moca_bench.metrics`).

    Returns:
        ``score`` (percent, None when no row is scorable), ``scores_by_tie_rule``, ``rows``,
        ``scored_rows``, ``bad_rows``, ``tied_rows`` (outcome depends on the tie rule),
        ``top_tied_rows`` (best score shared) and ``row_hits``: each row's hit@1 under ``tie_rule``
        (0/1, a probability for ``expected``; None for a bad row), for per-query statistics.
    """
    cand = subset.candidates
    row_bad = bad[subset.queries] | ((cand >= 0) & bad[np.maximum(cand, 0)]).any(axis=1)
    good = np.flatnonzero(~row_bad)
    out = {"rows": subset.n_rows, "scored_rows": len(good), "bad_rows": int(row_bad.sum())}
    if len(good) == 0:
        return {**out, "score": None, "scores_by_tie_rule": {}, "tied_rows": 0, "top_tied_rows": 0,
                "row_hits": [None] * subset.n_rows}  # fmt: skip
    scores = row_scores(subset, embeddings, good)
    hits = {rule: hit_at_k(scores, 0, k=1, ties=rule) for rule in (*REPORTED_RULES, tie_rule)}
    row_hits: list[float | None] = [None] * subset.n_rows
    for row, hit in zip(good.tolist(), hits[tie_rule].tolist(), strict=True):
        row_hits[row] = hit
    return {
        **out,
        "score": 100.0 * float(hits[tie_rule].mean()),
        "scores_by_tie_rule": {rule: 100.0 * float(hits[rule].mean()) for rule in REPORTED_RULES},
        "tied_rows": int(tie_decided(scores, 0, k=1).sum()),
        "top_tied_rows": int(top_tied(scores).sum()),
        "row_hits": row_hits,
    }
