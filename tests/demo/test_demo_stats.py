"""The demo's statistics: bootstrap intervals over queries, t-intervals over seeds, vidore's ranking, scheduling."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo import stats  # noqa: E402


def _hits(p: float, n: int, seed: int) -> np.ndarray:
    return 100.0 * (np.random.default_rng(seed).random(n) < p)


def test_bootstrap_se_matches_the_binomial_formula():
    values = {"m": [_hits(0.6, 640, 0)]}
    reps = stats.group_replicates(values, n_boot=4000, seed=1)
    ci = stats.score_with_ci(values["m"], reps["m"])
    p = ci["score"] / 100
    binomial = 100 * math.sqrt(p * (1 - p) / 640)
    assert ci["se"] == pytest.approx(binomial, rel=0.08) and binomial <= 2.0  # the eval-size target
    assert ci["lo"] < ci["score"] < ci["hi"] and ci["hi"] - ci["lo"] == pytest.approx(2 * 1.96 * binomial, rel=0.1)
    assert ci["n"] == 640


def test_stratified_score_is_the_mean_of_group_means():
    groups = [_hits(0.9, 100, 0), _hits(0.2, 300, 1)]
    reps = stats.group_replicates({"m": groups}, n_boot=500, seed=0)
    ci = stats.score_with_ci(groups, reps["m"])
    assert ci["score"] == pytest.approx((groups[0].mean() + groups[1].mean()) / 2)
    assert reps["m"].shape == (500, 2)


def test_paired_bootstrap_cancels_shared_query_noise():
    a = _hits(0.5, 400, 0)
    b = a.copy()
    b[:20] = 100.0 - b[:20]  # b differs from a on 20 queries only
    reps = stats.group_replicates({"a": [a], "b": [b]}, n_boot=2000, seed=3)
    d = stats.paired_difference(reps["a"], reps["b"], float(a.mean() - b.mean()))
    unpaired_se = math.hypot(stats.score_with_ci([a], reps["a"])["se"], stats.score_with_ci([b], reps["b"])["se"])
    assert d["se"] < 0.5 * unpaired_se  # sharing the queries is what makes small differences visible
    same = stats.paired_difference(reps["a"], reps["a"], 0.0)
    assert (same["lo"], same["hi"], same["se"]) == (0.0, 0.0, 0.0)


def test_nan_queries_are_dropped_for_every_model():
    a, b = _hits(0.5, 50, 0), _hits(0.5, 50, 1)
    a[3] = math.nan
    reps = stats.group_replicates({"a": [a], "b": [b]}, n_boot=10, seed=0)
    assert np.isfinite(reps["a"]).all() and np.isfinite(reps["b"]).all()
    with pytest.raises(ValueError, match="share their query groups"):
        stats.group_replicates({"a": [a], "b": [b[:10]]})


def test_t_interval_by_hand():
    t = stats.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2 df) * sd / sqrt(n)
    assert (t["mean"], t["sd"], t["n"]) == (2.0, 1.0, 3)
    assert t["lo"] == pytest.approx(2.0 - half) and t["hi"] == pytest.approx(2.0 + half)
    one = stats.t_interval([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["lo"])


def test_vidore_ranking_equals_ndcg_when_scores_are_positive_and_clips_negatives():
    from demo.collect import vidore_ndcg5
    from moca_bench.metrics import ndcg_at_k

    rng = np.random.default_rng(0)
    scores = rng.random((30, 16)) + 0.01
    rel = np.zeros((30, 16))
    rel[np.arange(30), rng.integers(0, 16, 30)] = 1
    ids = [str(i) for i in range(16)]
    assert np.allclose(vidore_ndcg5(scores, rel, ids), ndcg_at_k(scores, rel, k=5))
    negative = -np.ones((1, 16))
    negative[0, 15] = -0.5  # the best score, but negative: vidore stores max(0, s) for all but page 0
    rel1 = np.zeros((1, 16))
    rel1[0, 15] = 1
    # all clipped pages tie at 0 and ties go to the larger id string: "9", "8", "7", "6", "5" take the top 5
    assert vidore_ndcg5(negative, rel1, ids)[0] == 0.0
    rel1[0, 15], rel1[0, 9] = 0, 1
    assert vidore_ndcg5(negative, rel1, ids)[0] == 1.0


def test_simulated_schedule_respects_dependencies_and_slots(tmp_path):
    from demo.jobs import Job, simulate

    def job(name, deps=()):
        return Job(name, ["true"], tmp_path / f"{name}.log", deps=deps)

    graph = [job("base"), job("cpt", ("base",)), job("a", ("base",)), job("c", ("cpt",)), job("b", ("base",))]
    seconds = {"base": 10, "cpt": 5, "a": 8, "c": 8, "b": 8}
    assert simulate(graph, seconds, max_parallel=2) == 10 + 16  # cpt+c on one slot, a+b on the other
    assert simulate(graph, seconds, max_parallel=1) == sum(seconds.values())
