"""Several seeds' results: mean and 95% t-interval over seeds, paired differences, label efficiency.

Input: one :func:`demo.report.seed_summary` per seed (the same world and evaluation set, different training
seeds). Over seeds the unit of replication is a whole training run, so intervals are Student-t on the
per-seed scores; a paired difference (``c-b``) is the t-interval of the per-seed differences. The mean
bootstrap standard error within a seed (evaluation noise for a fixed model) is reported beside the seed
spread, so a reader sees which of the two limits a comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from demo import stats
from demo.plan import ARMS
from demo.report import PAGES_ROW, SCORES, draw_bars, label, save_figure

FRACTIONS = {"b": (("b_25", 0.25), ("b_50", 0.5), ("b", 1.0)), "c": (("c_25", 0.25), ("c_50", 0.5), ("c", 1.0))}


def aggregate(per_seed: Mapping[int, dict]) -> dict:
    """Study summary from per-seed summaries.

    Returns:
        ``{"seeds", "scores": {row: {model: t}}, "eval_se": {row: {model: mean bootstrap SE}},
        "differences": {pair: {row: t + per_seed}}, "label_efficiency": {arm: {fraction: {row: t}}}}`` where
        ``t = {"mean", "sd", "lo", "hi", "n"}``.
    """
    seeds = sorted(per_seed)
    models = list(next(iter(per_seed.values()))["scores"][PAGES_ROW])
    scores, eval_se = {}, {}
    for row in SCORES:
        scores[row] = {m: stats.t_interval([per_seed[s]["scores"][row][m]["score"] for s in seeds]) for m in models}
        eval_se[row] = {m: sum(per_seed[s]["scores"][row][m]["se"] for s in seeds) / len(seeds) for m in models}
    differences = {}
    for pair in per_seed[seeds[0]]["differences"]:
        differences[pair] = {}
        for row in SCORES:
            runs = [per_seed[s]["differences"][pair][row] for s in seeds]
            t = stats.t_interval([d["diff"] for d in runs])
            differences[pair][row] = {**t, "per_seed": runs, "seeds_positive": sum(d["diff"] > 0 for d in runs)}
    efficiency = {arm: {str(frac): {row: scores[row][key] for row in SCORES} for key, frac in steps if key in models}
                  for arm, steps in FRACTIONS.items()}  # fmt: skip
    return {"seeds": seeds, "scores": scores, "eval_se": eval_se, "differences": differences,
            "label_efficiency": efficiency}  # fmt: skip


def _t(t: dict, signed: bool = False) -> str:
    fmt = "{:+.1f}" if signed else "{:.1f}"
    if math.isnan(t["lo"]):
        return fmt.format(t["mean"])
    return f"{fmt.format(t['mean'])} [{fmt.format(t['lo'])}, {fmt.format(t['hi'])}]"


def markdown(study: dict, chance: Mapping[str, float], *, diagnostics: Mapping[str, dict], cost: dict) -> str:
    """The study as Markdown: scores, paired differences, label efficiency, diagnostics and cost."""
    models = list(study["scores"][PAGES_ROW])
    n = len(study["seeds"])
    out = [f"# MoCa demo study: {n} seeds ({', '.join(map(str, study['seeds']))}), "
           f"{len(models) - 1} arms from one causal base per seed", "",
           f"Mean over seeds [95% t-interval over seeds, {n - 1} df]; hit@1 (%) for MMEB, nDCG@5 (%) for pages.",
           "`eval SE` is the mean bootstrap standard error over queries within one seed (evaluation noise).", "",
           "| score | chance | " + " | ".join(label(m) for m in models) + " | eval SE |",
           "|---|--:|" + "--:|" * len(models) + "--:|"]  # fmt: skip
    for row in SCORES:
        se = max(study["eval_se"][row].values())
        cells = " | ".join(_t(study["scores"][row][m]) for m in models)
        out.append(f"| {row} | {chance[row]:.1f} | {cells} | <= {se:.1f} |")
    out += ["", "## Paired differences (same seeds, same queries)", "",
            "Mean of the per-seed differences [95% t-interval]; `+ seeds`: seeds where the first arm is ahead.", "",
            "| difference | " + " | ".join(SCORES) + " |", "|---|" + "--:|" * len(SCORES)]  # fmt: skip
    for pair, rows in study["differences"].items():
        cells = " | ".join(f"{_t(rows[r], signed=True)} ({rows[r]['seeds_positive']}/{n} +)" for r in SCORES)
        out.append(f"| ({pair.replace('-', ') - (')}) | {cells} |")
    out += ["", "## Label efficiency (CL pairs used; same steps)", "",
            "| arm | pairs | " + " | ".join(SCORES) + " |", "|---|--:|" + "--:|" * len(SCORES)]  # fmt: skip
    for arm, by_frac in study["label_efficiency"].items():
        for frac, rows in by_frac.items():
            out.append(f"| {arm} | {float(frac):.2f} | " + " | ".join(_t(rows[r]) for r in SCORES) + " |")
    out += ["", "## Training diagnostics (mean over seeds)", "", "| run | " + " | ".join(_DIAG) + " |",
            "|---|" + "--:|" * len(_DIAG)]  # fmt: skip
    for run, d in diagnostics.items():
        out.append(f"| {run} | " + " | ".join(_num(d.get(k)) for k in _DIAG) + " |")
    idle = cost["idle_wall_estimate"]
    out += ["", "## Cost", "", f"CPU seconds (one thread per job): {cost['cpu_total']:.0f} in total"
            + (f", about {idle / 60:.0f} min of wall on an idle machine with {cost['jobs']} jobs at a time (the job "
               "graph scheduled with these durations)" if idle else "")
            + f". The invocation that wrote this file ran {cost['jobs_run_here']} of {cost['jobs_total']} jobs "
            f"(the rest were resumed from the work directory) in {cost['wall_this_invocation']:.0f} s.", "",
            "| job kind | runs | CPU s per run (mean) |", "|---|--:|--:|"]  # fmt: skip
    out += [f"| {kind} | {v['runs']} | {v['cpu_mean']:.0f} |" for kind, v in cost["by_kind"].items()]
    return "\n".join(out) + "\n"


_DIAG = ("first_loss", "loss", "clm", "mlm", "mae", "accuracy", "weight_drift")


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def write_chart(study: dict, chance: Mapping[str, float], path) -> None:
    """Left: arms a-e per score with t-interval error bars. Right: label efficiency of b and c."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [m for m in study["scores"][PAGES_ROW] if m in "abcde" or m == "base"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5.4), gridspec_kw={"width_ratios": [2.2, 1]})
    draw_bars(left, {row: study["scores"][row] for row in SCORES}, chance, arms)
    left.set_ylabel("score (%), mean over seeds, 95% t-interval")
    left.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.14))
    left.set_title(f"arms from one causal base ({len(study['seeds'])} seeds; dashed: chance)", fontsize=9)
    for arm, marker, colour in (("b", "o", "C2"), ("c", "s", "C3")):  # the bar colours of arms b and c on the left
        for row, style in (("MMEB overall", "-"), (PAGES_ROW, "--")):
            pts = sorted((float(f), rows_[row]) for f, rows_ in study["label_efficiency"].get(arm, {}).items())
            if not pts:
                continue
            xs = [f for f, _ in pts]
            err = [[t["mean"] - t["lo"] for _, t in pts], [t["hi"] - t["mean"] for _, t in pts]]
            right.errorbar(xs, [t["mean"] for _, t in pts], yerr=err, marker=marker, linestyle=style, capsize=3,
                           color=colour, label=f"({arm}) {ARMS[arm].label.split(',')[0]}: {row}")  # fmt: skip
    right.set_xscale("log", base=2)
    right.set_xticks([0.25, 0.5, 1.0], ["1/4", "1/2", "all"])
    right.set_xlabel("share of the CL pairs (same steps)")
    right.set_title("label efficiency", fontsize=9)
    right.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
