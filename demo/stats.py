"""Confidence intervals for the demo (docs/demo-protocol.md §5).

A cluster bootstrap over the evaluation set (one model, one seed), intervals over seeds that add the
evaluation set's variance, and Holm's procedure.

Pure functions of arrays; every random draw comes from an explicit seed.

- A *score* is an unweighted mean of group means (an MMEB meta-task is the mean of its subsets' hit@1;
  MMEB overall the mean of all subsets; pages nDCG@5 one group).
- The evaluation bootstrap resamples *clusters* (queries sharing a text or a generating combination)
  with replacement within each group (stratified). :func:`cluster_weights` draws the resample once; every
  model and seed is evaluated on the same draws (:func:`replicate_means`), so differences are paired.
- Over seeds, :func:`combined_interval` is the Student-t interval of the mean per-seed difference whose
  standard error adds the training variance (seed to seed) and the evaluation variance (the bootstrap
  variance of the seed-mean difference, on the shared evaluation set).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def cluster_weights(clusters: Sequence[Sequence[str]], *, n_boot: int = N_BOOT, seed: int = 0) -> list[tuple]:
    """One cluster resample per group, shared by every model and seed.

    Args:
        clusters: per group, the cluster key of every query (queries in the order of the values).
        n_boot: number of replicates.
        seed: the resampling seed.

    Returns:
        Per group ``(codes, weights)``: ``codes`` (n,) the query's cluster index, ``weights`` (n_boot, C) how
        often each of the C clusters is drawn in each replicate (C draws with replacement).
    """
    rng = np.random.default_rng(seed)
    out = []
    for keys in clusters:
        if len(keys) == 0:
            raise ValueError("a group without queries")
        uniq, codes = np.unique(np.asarray(list(keys), dtype=object).astype(str), return_inverse=True)
        draws = rng.integers(0, len(uniq), size=(n_boot, len(uniq)))
        weights = np.zeros((n_boot, len(uniq)))
        np.add.at(weights, (np.repeat(np.arange(n_boot), len(uniq)), draws.ravel()), 1.0)
        out.append((codes, weights))
    return out


def replicate_means(values: Sequence[np.ndarray], weights: Sequence[tuple]) -> np.ndarray:
    """(n_boot, G) bootstrap replicates of every group mean under the shared cluster resample.

    A replicate's group mean is the pooled mean of the drawn clusters' queries (NaN queries dropped).

    Raises:
        ValueError: a group's values do not match its cluster keys.
    """
    cols = []
    for v, (codes, w) in zip(values, weights, strict=True):
        v = np.asarray(v, dtype=np.float64)
        if v.shape != codes.shape:
            raise ValueError(f"{v.shape[0]} values but {codes.shape[0]} cluster keys")
        ok = ~np.isnan(v)
        sums = np.bincount(codes[ok], weights=v[ok], minlength=w.shape[1])
        counts = np.bincount(codes[ok], minlength=w.shape[1]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cols.append((w @ sums) / (w @ counts))
    return np.stack(cols, axis=1)


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates (NaN replicates ignored)."""
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.nanpercentile(replicates, [tail, 100.0 - tail])
    return float(lo), float(hi)


def score_with_ci(values: Sequence[np.ndarray], replicates: np.ndarray) -> dict[str, float]:
    """A score (mean of group means) with its bootstrap standard error and 95% interval.

    Args:
        values: per-query values of each group (NaN dropped).
        replicates: (n_boot, G) replicate group means (from :func:`replicate_means`).

    Returns:
        ``{"score", "se", "lo", "hi", "n"}`` (n = queries).
    """
    means = [float(np.nanmean(v)) for v in values]
    stat = replicates.mean(axis=1)  # (n_boot,)
    lo, hi = percentile_interval(stat)
    n = int(sum(np.count_nonzero(~np.isnan(np.asarray(v, dtype=np.float64))) for v in values))
    return {"score": sum(means) / len(means), "se": float(np.nanstd(stat, ddof=1)), "lo": lo, "hi": hi, "n": n}


def paired_difference(rep_a: np.ndarray, rep_b: np.ndarray, point: float) -> dict[str, float]:
    """``a - b`` with a paired-bootstrap interval (replicates drawn with shared clusters)."""
    diff = rep_a.mean(axis=1) - rep_b.mean(axis=1)
    lo, hi = percentile_interval(diff)
    return {"diff": point, "se": float(np.nanstd(diff, ddof=1)), "lo": lo, "hi": hi}


def t_quantile(df: int, level: float = LEVEL) -> float:
    """Two-sided Student-t quantile for ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2.0, df))


def t_interval(xs: Sequence[float], level: float = LEVEL) -> dict[str, float]:
    """Mean of ``xs`` (one value per seed) with its Student-t interval; NaN bounds for a single value.

    Returns:
        ``{"mean", "sd", "lo", "hi", "n"}``.
    """
    x = np.asarray(xs, dtype=np.float64)
    n, mean = len(x), float(x.mean())
    if n < 2:
        return {"mean": mean, "sd": math.nan, "lo": math.nan, "hi": math.nan, "n": n}
    sd = float(x.std(ddof=1))
    half = t_quantile(n - 1, level) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half, "n": n}


def combined_interval(per_seed: Sequence[float], seed_mean_replicates: np.ndarray, *,
                      levels: Sequence[float] = (LEVEL,)) -> dict:  # fmt: skip
    """Mean per-seed difference with an interval over seeds *and* evaluation clusters.

    ``SE^2 = sd(per_seed)^2 / n + Var(seed_mean_replicates)``: the first term is training variance with seeds
    as the unit; the second the cluster-bootstrap variance of the mean over seeds on the shared evaluation
    set (every seed is scored on the same queries). Intervals: mean +- t(n - 1) SE; p: two-sided Student-t
    with n - 1 df on mean / SE.

    Args:
        per_seed: the n per-seed differences.
        seed_mean_replicates: (n_boot,) bootstrap replicates of the mean over seeds of the difference.
        levels: interval levels (e.g. 0.95 and the Bonferroni level).

    Returns:
        ``{"mean", "sd_seeds", "se_train", "se_eval", "se", "n", "p", "intervals": {level: [lo, hi]}}``.
    """
    from scipy.stats import t

    x = np.asarray(per_seed, dtype=np.float64)
    n, mean = len(x), float(x.mean())
    se_eval = float(np.nanstd(seed_mean_replicates, ddof=1))
    if n < 2:
        return {"mean": mean, "sd_seeds": math.nan, "se_train": math.nan, "se_eval": se_eval, "se": math.nan, "n": n,
                "p": math.nan, "intervals": {str(lv): [math.nan, math.nan] for lv in levels}}  # fmt: skip
    sd = float(x.std(ddof=1))
    se = math.sqrt(sd**2 / n + se_eval**2)
    p = float(2.0 * t.sf(abs(mean) / se, n - 1)) if se > 0 else (0.0 if mean != 0 else 1.0)
    intervals = {str(lv): [mean - t_quantile(n - 1, lv) * se, mean + t_quantile(n - 1, lv) * se] for lv in levels}
    return {"mean": mean, "sd_seeds": sd, "se_train": sd / math.sqrt(n), "se_eval": se_eval, "se": se, "n": n,
            "p": p, "intervals": intervals}  # fmt: skip


def holm(pvalues: Mapping[str, float], alpha: float = 0.05) -> dict[str, dict[str, float | bool]]:
    """Holm's step-down procedure: adjusted p-values and decisions at family-wise ``alpha``.

    Returns:
        ``{name: {"p", "p_holm", "reject"}}``; the adjusted p of the k-th smallest is the running maximum of
        ``(m - j) * p_(j)`` for j <= k, capped at 1.
    """
    names = sorted(pvalues, key=lambda k: pvalues[k])
    m, running, out = len(names), 0.0, {}
    for j, name in enumerate(names):
        running = max(running, min(1.0, (m - j) * pvalues[name]))
        out[name] = {"p": pvalues[name], "p_holm": running, "reject": running < alpha}
    return out


def sd_ratio_interval(a: Sequence[float], b: Sequence[float], *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """SD(a) / SD(b) over paired seeds with a percentile bootstrap interval over seeds (resampled together)."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(x) < 3:
        return {"ratio": math.nan, "lo": math.nan, "hi": math.nan, "n": len(x)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = x[idx].std(axis=1, ddof=1) / y[idx].std(axis=1, ddof=1)
    reps = reps[np.isfinite(reps)]
    lo, hi = percentile_interval(reps) if len(reps) else (math.nan, math.nan)
    return {"ratio": float(x.std(ddof=1) / y.std(ddof=1)), "lo": lo, "hi": hi, "n": len(x)}
