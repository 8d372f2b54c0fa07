"""The demo's statistics: cluster bootstrap, intervals over seeds and clusters, Holm, the LR rule, vidore's ranking."""

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


def _singletons(n: int) -> list[str]:
    return [str(i) for i in range(n)]


def _reps(groups, clusters=None, n_boot=2000, seed=0):
    weights = stats.cluster_weights(clusters or [_singletons(len(g)) for g in groups], n_boot=n_boot, seed=seed)
    return stats.replicate_means(groups, weights), weights


def test_bootstrap_se_matches_the_binomial_formula_when_every_query_is_its_own_cluster():
    values = [_hits(0.6, 640, 0)]
    reps, _ = _reps(values, n_boot=4000, seed=1)
    ci = stats.score_with_ci(values, reps)
    p = ci["score"] / 100
    binomial = 100 * math.sqrt(p * (1 - p) / 640)
    assert ci["se"] == pytest.approx(binomial, rel=0.08)
    assert ci["lo"] < ci["score"] < ci["hi"] and ci["hi"] - ci["lo"] == pytest.approx(2 * 1.96 * binomial, rel=0.1)
    assert ci["n"] == 640


def test_cluster_bootstrap_counts_repeated_strings_once():
    """20 copies of 32 query strings answered alike: the unit is the string, 32 of them, not 640 rows."""
    per_string = _hits(0.5, 32, 3)
    values = [np.tile(per_string, 20)]
    keys = [[f"q{i}" for i in range(32)] * 20]
    clustered, _ = _reps(values, keys, n_boot=4000, seed=2)
    naive, _ = _reps(values, None, n_boot=4000, seed=2)
    se_c = stats.score_with_ci(values, clustered)["se"]
    se_n = stats.score_with_ci(values, naive)["se"]
    p = per_string.mean() / 100
    assert se_c == pytest.approx(100 * math.sqrt(p * (1 - p) / 32), rel=0.1)
    assert se_c > 4 * se_n  # sqrt(20) wider: the rows were never independent


def test_stratified_score_is_the_mean_of_group_means():
    groups = [_hits(0.9, 100, 0), _hits(0.2, 300, 1)]
    reps, _ = _reps(groups, n_boot=500)
    ci = stats.score_with_ci(groups, reps)
    assert ci["score"] == pytest.approx((groups[0].mean() + groups[1].mean()) / 2)
    assert reps.shape == (500, 2)


def test_paired_bootstrap_cancels_shared_query_noise():
    a = _hits(0.5, 400, 0)
    b = a.copy()
    b[:20] = 100.0 - b[:20]  # b differs from a on 20 queries only
    weights = stats.cluster_weights([_singletons(400)], seed=3)
    ra, rb = stats.replicate_means([a], weights), stats.replicate_means([b], weights)
    d = stats.paired_difference(ra, rb, float(a.mean() - b.mean()))
    unpaired_se = math.hypot(stats.score_with_ci([a], ra)["se"], stats.score_with_ci([b], rb)["se"])
    assert d["se"] < 0.5 * unpaired_se  # sharing the queries is what makes small differences visible
    same = stats.paired_difference(ra, ra, 0.0)
    assert (same["lo"], same["hi"], same["se"]) == (0.0, 0.0, 0.0)


def test_nan_queries_are_dropped_and_keys_must_match():
    a = _hits(0.5, 50, 0)
    a[3] = math.nan
    weights = stats.cluster_weights([_singletons(50)], n_boot=10)
    assert np.isfinite(stats.replicate_means([a], weights)).all()
    with pytest.raises(ValueError, match="cluster keys"):
        stats.replicate_means([a[:10]], weights)


def test_combined_interval_adds_training_and_evaluation_variance():
    per_seed = [1.0, 3.0, 2.0, 4.0, 0.0]
    evaluation = np.random.default_rng(0).normal(2.0, 0.5, 20000)
    c = stats.combined_interval(per_seed, evaluation, levels=(0.95, 0.99))
    sd = float(np.std(per_seed, ddof=1))
    se = math.sqrt(sd**2 / 5 + 0.25)
    assert c["se"] == pytest.approx(se, rel=0.02) and c["se_eval"] == pytest.approx(0.5, rel=0.02)
    lo, hi = c["intervals"]["0.95"]
    assert lo == pytest.approx(2.0 - 2.7764451051977987 * se, rel=0.01) and hi - 2.0 == pytest.approx(2.0 - lo)
    assert c["intervals"]["0.99"][1] > hi
    from scipy.stats import t

    assert c["p"] == pytest.approx(2 * t.sf(2.0 / c["se"], 4))
    no_eval = stats.combined_interval(per_seed, np.zeros(100))
    t = stats.t_interval(per_seed)
    assert no_eval["intervals"]["0.95"] == pytest.approx([t["lo"], t["hi"]])


def test_holm_by_hand():
    out = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.2}, alpha=0.05)
    assert out["a"]["p_holm"] == pytest.approx(0.04) and out["a"]["reject"]
    assert out["c"]["p_holm"] == pytest.approx(0.09) and not out["c"]["reject"]  # 3 x 0.03
    assert out["b"]["p_holm"] == pytest.approx(0.09)  # running maximum: max(0.09, 2 x 0.04)
    assert out["d"]["p_holm"] == pytest.approx(0.2) and not out["d"]["reject"]


def test_lr_rule_takes_the_best_worst_run_and_the_smallest_tied_lr():
    from demo import selection

    runs = {1e-4: [40.0, 41.0, 42.0, 43.0], 3e-4: [50.0, 55.0, 60.0, 61.0], 1e-3: [20.0, 70.0, 72.0, 75.0]}
    assert selection.choose(runs)["chosen"] == 3e-4  # 1e-3 has the best mean but collapses once
    tied = {1e-4: [49.5, 50.0], 3e-4: [50.0, 52.0], 1e-3: [50.4, 60.0]}
    result = selection.choose(tied)
    assert result["tied"] == [1e-4, 3e-4, 1e-3] and result["chosen"] == 1e-4
    with pytest.raises(ValueError):
        selection.choose({1e-4: []})


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


def test_one_seed_differences_are_labelled_evaluation_noise_beside_the_study_result():
    """make demo prints each one-seed difference as evaluation noise only, with the committed study's
    seed-level result for the same comparison beside it (issue 22, deliverable 8)."""
    from demo.report import SCORES, format_differences

    one_seed = {"c-b": {row: {"diff": -4.2, "se": 0.9, "lo": -5.9, "hi": -2.2} for row in SCORES},
                "c-b_plus": {row: {"diff": 1.0, "se": 0.9, "lo": -0.8, "hi": 2.7} for row in SCORES}}
    study = {"c-b": {row: {"mean": 0.6, "n": 4, "seeds_ahead": 3, "intervals": {"0.95": [-3.1, 4.3]}}
                     for row in SCORES}}  # fmt: skip
    lines = format_differences(one_seed, study).splitlines()
    rows = [line for line in lines if line.startswith("  ")]
    assert len(rows) == 2 * len(SCORES)
    assert all("(evaluation noise only)" in line for line in rows)
    cb = lines[1 : 1 + len(SCORES)]
    assert all("committed study, 4 seeds: +0.6 [-3.1, +4.3], ahead in 3/4" in line for line in cb)
    assert all("(not in the committed study)" in line for line in lines[2 + len(SCORES) :])
    assert "committed study" not in format_differences(one_seed, None)


def test_the_committed_study_holds_what_make_demo_prints_beside_its_differences():
    """results/demo/study.json carries every primary comparison with its interval, n and seeds ahead."""
    from demo.outputs import COMMITTED_STUDY, committed_differences
    from demo.report import PRIMARY_PAIRS, SCORES, pair_name

    if not COMMITTED_STUDY.is_file():
        pytest.skip("no committed study yet")
    study = committed_differences()
    assert study is not None, "results/demo/study.json lacks the study layout make demo reads"
    for a, b in PRIMARY_PAIRS:
        for row in SCORES:
            ref = study[pair_name(a, b)][row]
            lo, hi = ref["intervals"][str(stats.LEVEL)]
            assert ref["n"] >= 2 and 0 <= ref["seeds_ahead"] <= ref["n"] and lo <= ref["mean"] <= hi
