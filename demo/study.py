"""Several seeds' results (docs/demo-protocol.md §5).

The primary comparisons with Holm's procedure, arm means, secondary differences, per-subset results and the
variance story.

Input: one :func:`demo.report.seed_summary` per seed (the same world and evaluation set, different training
seeds; the secondary arms only at some seeds). A difference's interval adds the seed-to-seed variance of the
per-seed differences and the cluster-bootstrap variance of their mean on the shared evaluation set
(:func:`demo.stats.combined_interval`); the six primary tests (three comparisons x MMEB overall and pages)
are one family under Holm at 0.05, and the Bonferroni simultaneous interval is reported beside the 95% one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from demo import stats
from demo.plan import PRIMARY_ARMS
from demo.report import (
    ALL_ROWS,
    PAGES_ROW,
    PAIRS,
    PRIMARY_PAIRS,
    PRIMARY_ROWS,
    SCORES,
    SUBSET_ROWS,
    draw_bars,
    label,
    pair_name,
    save_figure,
)

ALPHA = 0.05
FAMILY = len(PRIMARY_PAIRS) * len(PRIMARY_ROWS)
BONFERRONI = 1.0 - ALPHA / FAMILY
LEVELS = (stats.LEVEL, BONFERRONI)
COLLAPSE_POINTS = 15.0  # a (seed, subset) score this far below the arm's median over seeds is a collapse


def _combined(per_seed: Mapping[int, dict], seeds: list[int], row: str, a: str, b: str | None = None) -> dict:
    """Mean over ``seeds`` of arm ``a``'s score (or of ``a - b``) on ``row``, with its combined interval."""

    def score(s: int, m: str) -> float:
        section = "scores" if row in SCORES else "subsets"
        return per_seed[s][section][row][m]["score"]

    def reps(s: int, m: str) -> np.ndarray:
        return per_seed[s]["replicates"][row][m]

    values = [score(s, a) - (score(s, b) if b else 0.0) for s in seeds]
    seed_mean = np.mean([reps(s, a) - (reps(s, b) if b else 0.0) for s in seeds], axis=0)
    out = stats.combined_interval(values, seed_mean, levels=LEVELS)
    return {**out, "seeds": list(seeds), "per_seed": values, "seeds_ahead": sum(v > 0 for v in values)}


def aggregate(per_seed: Mapping[int, dict]) -> dict:
    """Study summary from per-seed summaries.

    Returns:
        ``{"seeds", "complete_seeds", "scores": {row: {arm: c}}, "differences": {pair: {row: c}},
        "primary": [...], "variance": {...}, "eval_se": {row: {arm: mean bootstrap SE}}}`` with ``c`` a
        :func:`demo.stats.combined_interval` result plus ``seeds``, ``per_seed`` and ``seeds_ahead``.
    """
    seeds = sorted(per_seed)
    arms_at = {s: set(per_seed[s]["scores"][PAGES_ROW]) for s in seeds}
    arms = list(dict.fromkeys(m for s in seeds for m in per_seed[s]["scores"][PAGES_ROW]))
    complete = [s for s in seeds if set(PRIMARY_ARMS) <= arms_at[s]]
    scores, eval_se = {}, {}
    for row in ALL_ROWS:
        scores[row] = {}
        for m in arms:
            ran = [s for s in seeds if m in arms_at[s]]
            scores[row][m] = _combined(per_seed, ran, row, m)
        if row in SCORES:
            section = "scores"
            eval_se[row] = {m: float(np.mean([per_seed[s][section][row][m]["se"] for s in seeds if m in arms_at[s]]))
                            for m in arms}  # fmt: skip
    differences = {}
    for a, b in PAIRS:
        both = [s for s in seeds if {a, b} <= arms_at[s]]
        if len(both) >= 1:
            differences[pair_name(a, b)] = {row: _combined(per_seed, both, row, a, b) for row in ALL_ROWS}
    primary = []
    tests = {}
    for a, b in PRIMARY_PAIRS:
        for row in PRIMARY_ROWS:
            d = differences.get(pair_name(a, b), {}).get(row)
            if d is not None and d["n"] >= 2:
                tests[f"{pair_name(a, b)} | {row}"] = d["p"]
    decided = stats.holm(tests, alpha=ALPHA) if tests else {}
    for key, verdict in decided.items():
        pair, row = key.split(" | ")
        primary.append({"pair": pair, "row": row, **differences[pair][row], **verdict})
    primary.sort(key=lambda t: (PAIRS.index(tuple(t["pair"].split("-", 1))), PRIMARY_ROWS.index(t["row"])))
    return {"seeds": seeds, "complete_seeds": complete, "scores": scores, "eval_se": eval_se,
            "differences": differences, "primary": primary, "variance": variance(per_seed, complete)}  # fmt: skip


def variance(per_seed: Mapping[int, dict], seeds: list[int]) -> dict:
    """Seed-to-seed spread of the primary arms, SD ratios of c against b and b+, and collapse events."""
    out: dict = {"sd": {}, "ratios": {}, "collapses": {}}
    if len(seeds) < 3:
        return out
    primary = [m for m in PRIMARY_ARMS if all(m in per_seed[s]["scores"][PAGES_ROW] for s in seeds)]

    def series(row: str, m: str) -> list[float]:
        section = "scores" if row in SCORES else "subsets"
        return [per_seed[s][section][row][m]["score"] for s in seeds]

    for row in PRIMARY_ROWS:
        out["sd"][row] = {m: float(np.std(series(row, m), ddof=1)) for m in primary}
        for other in ("b", "b_plus"):
            if "c" in primary and other in primary:
                out["ratios"][f"SD(c)/SD({other}) | {row}"] = stats.sd_ratio_interval(series(row, "c"),
                                                                                       series(row, other))
    for m in primary:
        events = []
        for row in SUBSET_ROWS:
            xs = series(row, m)
            med = float(np.median(xs))
            events += [{"seed": s, "subset": row.removeprefix("subset "), "score": x, "median": med}
                       for s, x in zip(seeds, xs, strict=True) if x < med - COLLAPSE_POINTS]  # fmt: skip
        out["collapses"][m] = events
    return out


def _ci(d: dict, signed: bool = False, level: float = stats.LEVEL) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    lo, hi = d["intervals"][str(level)]
    if math.isnan(lo):
        return fmt.format(d["mean"])
    return f"{fmt.format(d['mean'])} [{fmt.format(lo)}, {fmt.format(hi)}]"


def task_accuracy(curves: Mapping[int, Mapping[str, dict]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per CL run and task, mean over seeds of the first and last bin of training accuracy and validation hit@1."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for runs in curves.values():
        for run, c in runs.items():
            for task, bins in c.get("task_accuracy", {}).items():
                d = out.setdefault(run, {}).setdefault(task, {"first": [], "last": [], "val": []})
                finite = [b for b in bins if b == b]  # NaN-free bins
                if finite:
                    d["first"].append(finite[0])
                    d["last"].append(finite[-1])
                if task in c.get("val", {}):
                    d["val"].append(c["val"][task])
    return {run: {task: {k: float(np.mean(v)) if v else math.nan for k, v in d.items()} for task, d in tasks.items()}
            for run, tasks in out.items()}  # fmt: skip


def markdown(study: dict, chance: Mapping[str, float], *, diagnostics: Mapping[str, dict], cost: dict,
             provenance: Mapping, tasks: Mapping[str, Mapping[str, dict]] | None = None) -> str:  # fmt: skip
    """The study as Markdown: primary tests, arms, secondary differences, subsets, variance, diagnostics, cost."""
    arms = list(study["scores"][PAGES_ROW])
    n = len(study["complete_seeds"])
    out = [f"# MoCa demo study: {n} complete seeds ({', '.join(map(str, study['complete_seeds']))})", "",
           f"Protocol: `docs/demo-protocol.md`, SHA-256 `{provenance.get('protocol_sha256', '?')}`. Code: "
           + ", ".join(f"`{c}`" for c in provenance.get("commits", [])) + " (every job's commit is in `study.json`).",
           "", "Intervals add the seed-to-seed variance and the cluster-bootstrap variance of the shared evaluation "
           "set (Student-t, n - 1 df). hit@1 (%) for MMEB, nDCG@5 (%) for pages.", "",
           "## Primary comparisons (pre-registered; Holm over these six tests at 0.05)", "",
           f"| comparison | metric | mean | 95% interval | {BONFERRONI:.2%} interval (Bonferroni) | p | p (Holm) | "
           "resolved | seeds ahead | per seed |", "|---|---|--:|--:|--:|--:|--:|---|--:|---|"]  # fmt: skip
    for t in study["primary"]:
        a, b = t["pair"].split("-", 1)
        verdict = ("yes, " + ("positive" if t["mean"] > 0 else "negative")) if t["reject"] else "no (null)"
        per = " / ".join(f"{v:+.1f}" for v in t["per_seed"])
        out.append(f"| ({a}) - ({b}) | {t['row']} | {t['mean']:+.1f} | {_ci(t, True).split(' ', 1)[1]} | "
                   f"{_ci(t, True, BONFERRONI).split(' ', 1)[1]} | {t['p']:.3f} | {t['p_holm']:.3f} | {verdict} | "
                   f"{t['seeds_ahead']}/{t['n']} | {per} |")  # fmt: skip
    out += ["", "## Arms (mean over the seeds each arm ran [95% interval]; secondary arms at 3 seeds)", "",
            "| score | chance | " + " | ".join(label(m) for m in arms) + " |", "|---|--:|" + "--:|" * len(arms)]
    for row in SCORES:
        cells = " | ".join(f"{_ci(study['scores'][row][m])} (n={study['scores'][row][m]['n']})" for m in arms)
        out.append(f"| {row} | {chance[row]:.1f} | {cells} |")
    out += ["", "## Secondary differences (no multiplicity control; not claims)", "",
            "| difference | seeds | " + " | ".join(SCORES) + " |", "|---|--:|" + "--:|" * len(SCORES)]
    for pair, rows in study["differences"].items():
        a, b = pair.split("-", 1)
        cells = " | ".join(f"{_ci(rows[r], True)} ({rows[r]['seeds_ahead']}/{rows[r]['n']})" for r in SCORES)
        out.append(f"| ({a}) - ({b}) | {rows['MMEB overall']['n']} | {cells} |")
    out += ["", "## Per subset, primary pairs (secondary)", "",
            "| difference | " + " | ".join(r.removeprefix("subset ") for r in SUBSET_ROWS) + " |",
            "|---|" + "--:|" * len(SUBSET_ROWS)]  # fmt: skip
    for a, b in PRIMARY_PAIRS:
        rows = study["differences"].get(pair_name(a, b))
        if rows:
            out.append(f"| ({a}) - ({b}) | " + " | ".join(f"{_ci(rows[r], True)} ({rows[r]['seeds_ahead']}/"
                                                         f"{rows[r]['n']})" for r in SUBSET_ROWS) + " |")
    var = study["variance"]
    if var.get("sd"):
        out += ["", "## Variance: does CPT reduce seed-to-seed collapse? (secondary)", "",
                "| metric | " + " | ".join(f"SD {m}" for m in var["sd"][PRIMARY_ROWS[0]]) + " |",
                "|---|" + "--:|" * len(var["sd"][PRIMARY_ROWS[0]])]  # fmt: skip
        for row, sds in var["sd"].items():
            out.append(f"| {row} | " + " | ".join(f"{v:.1f}" for v in sds.values()) + " |")
        out += [""] + [f"- {k}: {r['ratio']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}] (bootstrap over {r['n']} seeds)"
                       for k, r in var["ratios"].items()]  # fmt: skip
        out += [f"- collapse events (a subset more than {COLLAPSE_POINTS:.0f} points below the arm's median over "
                "seeds): " + "; ".join(f"{m}: {len(ev)}" + (" (" + ", ".join(f"s{e['seed']} {e['subset']} "
                f"{e['score']:.0f} vs {e['median']:.0f}" for e in ev) + ")" if ev else "")
                for m, ev in var["collapses"].items())]  # fmt: skip
    out += ["", "## Training diagnostics (mean over seeds; exploratory)", "", "| run | " + " | ".join(_DIAG) + " |",
            "|---|" + "--:|" * len(_DIAG)]  # fmt: skip
    for run, d in diagnostics.items():
        out.append(f"| {run} | " + " | ".join(_num(d.get(k)) for k in _DIAG) + " |")
    if tasks:
        names = list(next(iter(tasks.values())))
        out += ["", "## CL per task: training accuracy, first tenth -> last tenth of the steps, and validation hit@1 "
                "(mean over seeds; exploratory)", "", "| run | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names)]  # fmt: skip
        for run, by_task in tasks.items():
            out.append(f"| {run} | " + " | ".join(f"{by_task[t]['first']:.2f} -> {by_task[t]['last']:.2f} / "
                                                  f"{by_task[t]['val']:.0f}" for t in names) + " |")
    out += ["", "## Cost (CPU seconds, one torch thread per job)", "",
            f"{cost['cpu_total']:.0f} CPU s in all"
            + (f"; about {cost['idle_wall_estimate'] / 60:.0f} min of wall on an idle 2-core machine with "
               f"{cost['jobs']} jobs at a time" if cost.get("idle_wall_estimate") else "") + ".", "",
            "| job kind | runs | CPU s per run (mean) | CPU s total |", "|---|--:|--:|--:|"]  # fmt: skip
    out += [f"| {kind} | {v['runs']} | {v['cpu_mean']:.0f} | {v['cpu_total']:.0f} |"
            for kind, v in cost["by_kind"].items()]
    return "\n".join(out) + "\n"


_DIAG = ("first_loss", "loss", "clm", "mlm", "mae", "accuracy", "weight_drift", "val_mean", "tokens")


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def write_chart(study: dict, chance: Mapping[str, float], per_seed_scores: Mapping[str, Mapping[int, float]],
                path) -> None:  # fmt: skip
    """Left: every arm per score with 95% intervals. Right: MMEB overall of every seed per arm (the spread)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(study["scores"][PAGES_ROW])
    rows = {row: {m: {"mean": d["mean"], "lo": d["intervals"][str(stats.LEVEL)][0],
                      "hi": d["intervals"][str(stats.LEVEL)][1]} for m, d in study["scores"][row].items()}
            for row in SCORES}  # fmt: skip
    for by_arm in rows.values():  # one seed only: no interval, draw the point
        for d in by_arm.values():
            if math.isnan(d["lo"]):
                d["lo"] = d["hi"] = d["mean"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(16, 5.4), gridspec_kw={"width_ratios": [2.2, 1]})
    draw_bars(left, rows, chance, arms)
    left.set_ylabel("score (%), mean over seeds, 95% interval")
    left.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    left.set_title(f"arms from one causal base ({len(study['complete_seeds'])} seeds; dashed: chance)", fontsize=9)
    for k, m in enumerate(arms):
        pts = per_seed_scores.get(m, {})
        right.scatter([k] * len(pts), list(pts.values()), s=14, alpha=0.7)
    right.set_xticks(range(len(arms)), arms, fontsize=8, rotation=30)
    right.set_ylabel("MMEB overall (%), one point per seed")
    right.set_title("seed-to-seed spread", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
