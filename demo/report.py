"""One seed's results: every score with a 95% cluster-bootstrap interval, paired differences, a table, a chart.

Input is ``{model: {group: per-query values in %}}`` (groups: the seven MMEB subsets and ``pages``, see
:mod:`demo.collect`) and the evaluation set's cluster resample (:func:`demo.stats.cluster_weights`). A
*score* is the unweighted mean of its groups' means, as MMEB aggregates subsets. These intervals describe
the evaluation set for fixed trained models: evaluation noise only, not training randomness.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from demo import stats
from demo.collect import PAGES
from demo.plan import ARMS, BASE
from demo.world import MMEB_SUBSETS

META_ORDER = ("Classification", "VQA", "Retrieval", "Grounding")
PAGES_ROW = "ViDoRe pages nDCG@5"
SCORES: dict[str, tuple[str, ...]] = {
    **{f"MMEB {m}": tuple(s for s, meta in MMEB_SUBSETS.items() if meta == m) for m in META_ORDER},
    "MMEB overall": tuple(MMEB_SUBSETS),
    PAGES_ROW: (PAGES,),
}
SUBSET_ROWS = {f"subset {s}": (s,) for s in MMEB_SUBSETS}
ALL_ROWS = {**SCORES, **SUBSET_ROWS}
# The primary comparisons (docs/demo-protocol.md §1), then the secondary ones, when both arms ran.
PRIMARY_PAIRS = (("c", "b"), ("c", "a_last"), ("c", "b_plus"))
PRIMARY_ROWS = ("MMEB overall", PAGES_ROW)
PAIRS = (*PRIMARY_PAIRS, ("b", "a_last"), ("b_plus", "b"), ("a_last", "a_mean"), ("a_plus", "a_last"),
         ("d", "b"), ("e", "b"), ("c", "d"), ("c", "e"))  # fmt: skip


def label(model: str) -> str:
    """Column label of a model (an arm key or ``base``)."""
    return "causal base" if model == BASE else f"({model}) {ARMS[model].label}"


def pair_name(a: str, b: str) -> str:
    """``c-b`` for the pair (c, b)."""
    return f"{a}-{b}"


def chance_hit1(n_candidates: int) -> float:
    """Expected hit@1 (%) of a random ranking over ``n_candidates``."""
    return 100.0 / n_candidates


def chance_ndcg5(n_docs: int, n_relevant: int = 1) -> float:
    """Expected nDCG@5 (%) of a random ranking of ``n_docs`` pages with ``n_relevant`` relevant ones (binary)."""
    p = n_relevant / n_docs
    dcg = sum(p / math.log2(r + 1) for r in range(1, min(5, n_docs) + 1))
    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(5, n_relevant) + 1))
    return 100.0 * dcg / ideal


def chance_scores(group_chance: Mapping[str, float]) -> dict[str, float]:
    """Chance level of every score row and subset row from each group's chance."""
    rows = {row: sum(group_chance[g] for g in gs) / len(gs) for row, gs in SCORES.items()}
    return {**rows, **{f"subset {s}": group_chance[s] for s in MMEB_SUBSETS}}


def groups() -> tuple[str, ...]:
    """The per-query groups, in the order of the cluster resample."""
    return (*MMEB_SUBSETS, PAGES)


def seed_summary(values: Mapping[str, Mapping[str, np.ndarray]], weights: list[tuple]) -> dict:
    """Scores with cluster-bootstrap CIs and paired differences for the models of one seed.

    Args:
        values: ``{model: {group: per-query values}}``, the same queries for every model.
        weights: the shared cluster resample of :func:`groups` (:func:`demo.stats.cluster_weights`).

    Returns:
        ``{"scores": {row: {model: ci}}, "subsets": {"subset S": {model: ci}}, "differences": {"c-b": {row: d}},
        "replicates": {row: {model: (n_boot,)}}}`` with ``ci = {"score", "se", "lo", "hi", "n"}`` and
        ``d = {"diff", "se", "lo", "hi"}`` (rows: the scores and the subsets). ``replicates`` (arrays) are
        for the study's aggregation, not for JSON.
    """
    models = list(values)
    reps = {m: stats.replicate_means([values[m][g] for g in groups()], weights) for m in models}
    index = {g: i for i, g in enumerate(groups())}

    def ci(model: str, row_groups: tuple[str, ...]) -> dict:
        cols = [index[g] for g in row_groups]
        return stats.score_with_ci([values[model][g] for g in row_groups], reps[model][:, cols])

    table = {row: {m: ci(m, gs) for m in models} for row, gs in ALL_ROWS.items()}
    replicates = {row: {m: reps[m][:, [index[g] for g in gs]].mean(axis=1) for m in models}
                  for row, gs in ALL_ROWS.items()}  # fmt: skip
    differences = {}
    for a, b in PAIRS:
        if a in values and b in values:
            differences[pair_name(a, b)] = {
                row: stats.paired_difference(reps[a][:, [index[g] for g in gs]], reps[b][:, [index[g] for g in gs]],
                                             table[row][a]["score"] - table[row][b]["score"])
                for row, gs in ALL_ROWS.items()
            }  # fmt: skip
    return {"scores": {row: table[row] for row in SCORES}, "subsets": {row: table[row] for row in SUBSET_ROWS},
            "differences": differences, "replicates": replicates}  # fmt: skip


def format_table(rows: Mapping[str, Mapping[str, dict]], chance: Mapping[str, float]) -> str:
    """Fixed-width text: one row per score, ``score [lo, hi]`` per model, chance first."""
    models = list(next(iter(rows.values())))
    width = 20
    head = f"{'':<26}{'chance':>7}" + "".join(f"{m if m == BASE else '(' + m + ')':>{width}}" for m in models)
    lines = [head, "-" * len(head)]
    for row, by_model in rows.items():
        cells = "".join(f"{_cell(by_model[m]):>{width}}" for m in models)
        lines.append(f"{row:<26}{chance.get(row, math.nan):>7.1f}{cells}")
    return "\n".join(lines)


def _cell(ci: dict) -> str:
    return f"{ci['score']:.1f} [{ci['lo']:.1f}, {ci['hi']:.1f}]"


def format_differences(differences: Mapping[str, Mapping[str, dict]], study: Mapping | None = None) -> str:
    """Fixed-width text of one seed's paired differences, each beside the committed study's result.

    Args:
        differences: ``{pair: {row: d}}`` of one seed (score rows only are printed).
        study: the committed study's ``differences`` (``{pair: {row: {"mean", "intervals", "n", ...}}}``),
            or None when there is none.
    """
    lines = []
    for pair, rows in differences.items():
        a, b = pair.split("-", 1)
        lines.append(f"({a}) - ({b})")
        for row in SCORES:
            d = rows[row]
            cell = f"  {row:<24}{d['diff']:>+7.1f}  [{d['lo']:+.1f}, {d['hi']:+.1f}] (evaluation noise only)"
            ref = (study or {}).get(pair, {}).get(row)
            if ref is not None:
                lo, hi = ref["intervals"][str(stats.LEVEL)]
                cell += (f"   committed study, {ref['n']} seeds: {ref['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}], "
                         f"ahead in {ref['seeds_ahead']}/{ref['n']}")  # fmt: skip
            elif study is not None:
                cell += "   (not in the committed study)"
            lines.append(cell)
    return "\n".join(lines)


def write_chart(rows: Mapping[str, Mapping[str, dict]], chance: Mapping[str, float], path: Path, title: str) -> None:
    """Grouped bars (one group per score, one bar per model) with 95% CI error bars and chance as a dash."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.7 * len(rows) + 2, 4.4))
    draw_bars(ax, rows, chance, list(next(iter(rows.values()))))
    ax.set_ylabel("score (%): hit@1, nDCG@5")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def draw_bars(ax, rows: Mapping[str, Mapping[str, dict]], chance: Mapping[str, float], models: list[str]) -> None:
    """Grouped bars on ``ax``: one group per row, one bar per model, interval error bars, chance dashed.

    Args:
        ax: a matplotlib axes.
        rows: ``{row: {model: interval}}``, an interval being a bootstrap ``{"score", "lo", "hi"}`` or a
            t-interval ``{"mean", "lo", "hi"}``.
        chance: chance level per row (rows without one get no dash).
        models: the models to draw, in bar order.
    """
    names = list(rows)
    width = 0.8 / len(models)
    for k, model in enumerate(models):
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(names))]
        cis = [rows[n][model] for n in names]
        centre = [c.get("score", c.get("mean")) for c in cis]
        err = [[v - c["lo"] for v, c in zip(centre, cis)], [c["hi"] - v for v, c in zip(centre, cis)]]
        ax.bar(xs, centre, width, yerr=err, capsize=2, label=label(model), error_kw={"linewidth": 0.8})
    for i, n in enumerate(names):
        if n in chance:
            ax.hlines(chance[n], i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax.set_ylim(0, 100)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_json(payload: Mapping, path: Path) -> Path:
    """Write ``payload`` as JSON atomically (NaN written as null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(payload), indent=2) + "\n")
    tmp.replace(path)
    return path


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
