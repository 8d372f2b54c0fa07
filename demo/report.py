"""One seed's results: every score with a 95% bootstrap interval, paired differences, a table and a chart.

Input is ``{model: {group: per-query values in %}}`` (groups: the seven MMEB subsets and ``pages``, see
:mod:`demo.collect`). A *score* is the unweighted mean of its groups' means, as MMEB aggregates subsets.
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
# Paired differences reported when both arms ran: MoCa vs its baselines, the ablations, label efficiency.
PAIRS = (("c", "b"), ("c", "a"), ("b", "a"), ("d", "b"), ("e", "b"), ("c", "d"), ("c", "e"), ("c_25", "b_25"),
         ("c_50", "b_50"))  # fmt: skip


def label(model: str) -> str:
    """Column label of a model."""
    return "causal base" if model == BASE else f"({model}) {ARMS[model].label}"


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
    rows = {row: sum(group_chance[g] for g in groups) / len(groups) for row, groups in SCORES.items()}
    return {**rows, **{f"subset {s}": group_chance[s] for s in MMEB_SUBSETS}}


def seed_summary(values: Mapping[str, Mapping[str, np.ndarray]], *, seed: int = 0) -> dict:
    """Scores with bootstrap CIs and paired differences for the models of one seed.

    Args:
        values: ``{model: {group: per-query values}}``, the same queries for every model.
        seed: bootstrap seed.

    Returns:
        ``{"scores": {row: {model: ci}}, "subsets": {"subset S": {model: ci}}, "differences": {"c-b": {row: d}}}``
        with ``ci = {"score", "se", "lo", "hi", "n"}`` and ``d = {"diff", "se", "lo", "hi"}``.
    """
    models = list(values)
    reps = stats.group_replicates({m: [values[m][g] for g in _groups()] for m in models}, seed=seed)
    index = {g: i for i, g in enumerate(_groups())}

    def ci(model: str, groups: tuple[str, ...]) -> dict:
        cols = [index[g] for g in groups]
        return stats.score_with_ci([values[model][g] for g in groups], reps[model][:, cols])

    scores = {row: {m: ci(m, groups) for m in models} for row, groups in SCORES.items()}
    subsets = {f"subset {s}": {m: ci(m, (s,)) for m in models} for s in MMEB_SUBSETS}
    differences = {}
    for a, b in PAIRS:
        if a in values and b in values:
            differences[f"{a}-{b}"] = {
                row: stats.paired_difference(reps[a][:, [index[g] for g in groups]],
                                             reps[b][:, [index[g] for g in groups]],
                                             scores[row][a]["score"] - scores[row][b]["score"])
                for row, groups in SCORES.items()
            }  # fmt: skip
    return {"scores": scores, "subsets": subsets, "differences": differences}


def _groups() -> tuple[str, ...]:
    return (*MMEB_SUBSETS, PAGES)


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


def format_differences(differences: Mapping[str, Mapping[str, dict]]) -> str:
    """Fixed-width text of paired differences with their bootstrap intervals."""
    lines = []
    for pair, rows in differences.items():
        lines.append(f"({pair.replace('-', ') - (')})")
        lines += [f"  {row:<24}{d['diff']:>+7.1f}  [{d['lo']:+.1f}, {d['hi']:+.1f}]" for row, d in rows.items()]
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
