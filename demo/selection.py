"""The CL learning-rate rule (docs/demo-protocol.md §4), applied once before the study's CL runs.

Candidates LR in {1e-4, 3e-4, 1e-3}; for each, CL runs of arms a_last and b from the base models of seeds 0
and 1 are scored on the CL *validation* split (fresh pairs of the training distribution, never trained on,
never the evaluation sets): the mean hit@1 over the 8 ``Val_<task>`` subsets. A candidate's criterion is
its lowest run score (a recipe that collapses in any run loses); the highest criterion wins, and candidates
within ``TIE_POINTS`` of it are tied, the smallest LR among them chosen (the least weight change).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

GRID = (1e-4, 3e-4, 1e-3)
SEEDS = (0, 1)
ARMS = ("a_last", "b")
TIE_POINTS = 1.0


def choose(runs: Mapping[float, Sequence[float]], *, tie: float = TIE_POINTS) -> dict:
    """Apply the rule to ``{lr: validation scores of its runs}``.

    Returns:
        ``{"chosen": lr, "criterion": {lr: min score}, "mean": {lr: mean score}, "best": highest criterion,
        "tied": [lrs within tie of it]}``.

    Raises:
        ValueError: no candidate, or a candidate without runs.
    """
    if not runs or any(len(v) == 0 for v in runs.values()):
        raise ValueError(f"every candidate needs validation scores, got {dict(runs)}")
    criterion = {lr: float(min(v)) for lr, v in runs.items()}
    best = max(criterion.values())
    tied = sorted(lr for lr, c in criterion.items() if c >= best - tie)
    return {"chosen": tied[0], "criterion": criterion, "mean": {lr: sum(v) / len(v) for lr, v in runs.items()},
            "best": best, "tied": tied, "tie_points": tie}  # fmt: skip


def payload(scores: Mapping[tuple[str, float, int], dict], diagnostics: Mapping[tuple[str, float, int], dict]) -> dict:
    """The committed evidence: every run's validation scores (per task and mean), drift, and the rule's result.

    Args:
        scores: ``{(arm, lr, seed): val_scores}`` (:func:`demo.collect.val_scores`).
        diagnostics: ``{(arm, lr, seed): {"weight_drift", "loss", "accuracy", ...}}``.
    """
    runs: dict[float, list[float]] = {}
    for (_, lr, _), v in scores.items():
        runs.setdefault(lr, []).append(v["mean"])
    result = choose(runs)
    return {
        "rule": __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        "runs": [{"arm": arm, "lr": lr, "seed": seed, "val": scores[(arm, lr, seed)],
                  **diagnostics.get((arm, lr, seed), {})} for arm, lr, seed in sorted(scores)],  # fmt: skip
        "criterion": {f"{lr:g}": c for lr, c in result["criterion"].items()},
        "mean": {f"{lr:g}": m for lr, m in result["mean"].items()},
        "tied": [f"{lr:g}" for lr in result["tied"]],
        "chosen_lr": result["chosen"],
    }


def markdown(p: dict) -> str:
    """The evidence as a table."""
    lines = ["| arm | LR | seed | validation mean | " + " | ".join(k for k in p["runs"][0]["val"] if k != "mean")
             + " | weight drift | final loss |", "|---|--:|--:|--:|" + "--:|" * (len(p["runs"][0]["val"]) + 1)]
    for r in p["runs"]:
        tasks = " | ".join(f"{v:.1f}" for k, v in r["val"].items() if k != "mean")
        lines.append(f"| {r['arm']} | {r['lr']:g} | {r['seed']} | {r['val']['mean']:.1f} | {tasks} | "
                     f"{r.get('weight_drift', float('nan')):.3f} | {r.get('loss', float('nan')):.3f} |")
    lines += ["", "| LR | lowest run (criterion) | mean |", "|--:|--:|--:|"]
    lines += [f"| {lr} | {c:.1f} | {p['mean'][lr]:.1f} |" for lr, c in p["criterion"].items()]
    lines += ["", f"Tied within {TIE_POINTS} point of the best criterion: {', '.join(p['tied'])}; chosen: "
              f"**{p['chosen_lr']:g}**."]  # fmt: skip
    return "\n".join(lines) + "\n"
