"""The demo's results: one table on stdout, ``results.json`` and a bar chart PNG.

Input is a mapping ``model -> {"mmeb": {subset: hit@1 %}, "vidore": {"ndcg_at_5": %}, "mteb": {task: %}}``
plus the chance level of every row (the expected score of a random ranking), so a reader can see at a
glance how far each trained model is above random.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

MODEL_LABELS = {"random": "random init", "cl_only": "CL only", "cpt_cl": "CPT + CL"}
META_ORDER = ("Classification", "VQA", "Retrieval", "Grounding")


def chance_hit1(n_candidates: int) -> float:
    """Expected hit@1 (%) of a random ranking over ``n_candidates``."""
    return 100.0 / n_candidates


def chance_ndcg5(n_docs: int, n_relevant: int = 1) -> float:
    """Expected nDCG@5 (%) of a random ranking of ``n_docs`` pages with ``n_relevant`` relevant ones (binary)."""
    p = n_relevant / n_docs
    dcg = sum(p / math.log2(r + 1) for r in range(1, min(5, n_docs) + 1))
    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(5, n_relevant) + 1))
    return 100.0 * dcg / ideal


def summarize(models: Mapping[str, Mapping], subset_meta: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Rows of the main table: per model, each meta-task mean, the MMEB overall mean, page nDCG@5, MTEB.

    Args:
        models: per model, ``{"mmeb": {subset: score}, "vidore": {"ndcg_at_5": score}, "mteb": {...}}``.
        subset_meta: subset -> meta-task.

    Returns:
        ``{row name: {model: score}}`` in display order.
    """
    rows: dict[str, dict[str, float]] = {}
    for meta in META_ORDER:
        subsets = [s for s, m in subset_meta.items() if m == meta]
        if subsets:
            rows[f"MMEB {meta}"] = {
                name: sum(r["mmeb"][s] for s in subsets) / len(subsets) for name, r in models.items()
            }
    rows["MMEB overall"] = {
        name: sum(r["mmeb"][s] for s in subset_meta) / len(subset_meta) for name, r in models.items()
    }
    rows["ViDoRe pages nDCG@5"] = {name: r["vidore"]["ndcg_at_5"] for name, r in models.items()}
    mteb_tasks = sorted({t for r in models.values() for t in r.get("mteb", {})})
    for task in mteb_tasks:
        rows[f"MTEB {task} nDCG@5"] = {name: r.get("mteb", {}).get(task, math.nan) for name, r in models.items()}
    return rows


def format_table(rows: Mapping[str, Mapping[str, float]], chance: Mapping[str, float]) -> str:
    """A fixed-width text table: one row per metric, columns chance and each model."""
    models = list(next(iter(rows.values())))
    head = f"{'':<24}{'chance':>9}" + "".join(f"{MODEL_LABELS.get(m, m):>13}" for m in models)
    lines = [head, "-" * len(head)]
    for row, scores in rows.items():
        cells = "".join(f"{scores[m]:>13.1f}" for m in models)
        lines.append(f"{row:<24}{chance.get(row, math.nan):>9.1f}{cells}")
    return "\n".join(lines)


def write_chart(rows: Mapping[str, Mapping[str, float]], chance: Mapping[str, float], path: Path) -> None:
    """Grouped bars (one group per row, one bar per model) with each row's chance level as a tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    models = list(next(iter(rows.values())))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 4.2))
    for k, model in enumerate(models):
        xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(names))]
        ax.bar(xs, [rows[n][model] for n in names], width, label=MODEL_LABELS.get(model, model))
    for i, n in enumerate(names):
        if n in chance:
            ax.hlines(chance[n], i - 0.45, i + 0.45, colors="black", linestyles="dashed", linewidth=1)
    ax.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=8)
    ax.set_ylabel("score (%): hit@1, nDCG@5")
    ax.set_ylim(0, 100)
    ax.set_title("MoCa demo: tiny model on the generated world (dashed: chance)")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_results(payload: Mapping, out_dir: Path) -> Path:
    """Write ``results.json`` atomically and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    tmp = path.with_name("results.json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path
