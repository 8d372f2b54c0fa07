"""Confidence intervals for the demo: bootstrap over queries (one model, one seed) and t-intervals over seeds.

Pure functions of arrays; every random draw comes from an explicit seed.

- A *score* is an unweighted mean of group means (an MMEB meta-task is the mean of its subsets' hit@1;
  MMEB overall the mean of all subsets; pages nDCG@5 one group). Its bootstrap resamples the queries of
  each group independently (stratified), as the evaluation set would vary if it were drawn again.
- :func:`group_replicates` draws the same query indices for every model, so a difference of two models'
  replicates is a *paired* bootstrap (both models answer the same queries).
- Over seeds, :func:`t_interval` gives the mean and its 95% Student-t interval; applied to per-seed
  differences of two arms it is the paired comparison over the same seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


def group_replicates(
    values: Mapping[str, Sequence[np.ndarray]], *, n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of every group mean, with the same resampled indices for every model.

    Args:
        values: ``{model: [per-query values of group 0, group 1, ...]}``; every model has the same group
            sizes (the same queries). NaN marks a query without a value (dropped for every model).
        n_boot: number of replicates.
        seed: the resampling seed.

    Returns:
        ``{model: (n_boot, G) replicate means}``.

    Raises:
        ValueError: models with different groups or group sizes, or an empty group.
    """
    models = list(values)
    sizes = {m: [len(v) for v in values[m]] for m in models}
    if len({tuple(s) for s in sizes.values()}) > 1:
        raise ValueError(f"models must share their query groups, got sizes {sizes}")
    rng = np.random.default_rng(seed)
    out = {m: np.empty((n_boot, len(sizes[models[0]]))) for m in models}
    for g in range(len(sizes[models[0]])):
        stacked = np.stack([np.asarray(values[m][g], dtype=np.float64) for m in models])  # (M, n)
        stacked = stacked[:, ~np.isnan(stacked).any(axis=0)]
        n = stacked.shape[1]
        if n == 0:
            raise ValueError(f"group {g} has no query with a value for every model")
        idx = rng.integers(0, n, size=(n_boot, n))  # (n_boot, n), shared by all models
        for k, m in enumerate(models):
            out[m][:, g] = stacked[k][idx].mean(axis=1)
    return out


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap replicates."""
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
    return float(lo), float(hi)


def score_with_ci(values: Sequence[np.ndarray], replicates: np.ndarray) -> dict[str, float]:
    """A score (mean of group means) with its bootstrap standard error and 95% interval.

    Args:
        values: per-query values of each group (NaN dropped).
        replicates: (n_boot, G) replicate group means (from :func:`group_replicates`).

    Returns:
        ``{"score", "se", "lo", "hi", "n"}`` (n = queries).
    """
    means = [float(np.nanmean(v)) for v in values]
    stat = replicates.mean(axis=1)  # (n_boot,)
    lo, hi = percentile_interval(stat)
    n = int(sum(np.count_nonzero(~np.isnan(np.asarray(v, dtype=np.float64))) for v in values))
    return {"score": sum(means) / len(means), "se": float(stat.std(ddof=1)), "lo": lo, "hi": hi, "n": n}


def paired_difference(rep_a: np.ndarray, rep_b: np.ndarray, point: float) -> dict[str, float]:
    """``a - b`` with a paired-bootstrap interval (replicates drawn with shared indices)."""
    diff = rep_a.mean(axis=1) - rep_b.mean(axis=1)
    lo, hi = percentile_interval(diff)
    return {"diff": point, "se": float(diff.std(ddof=1)), "lo": lo, "hi": hi}


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
