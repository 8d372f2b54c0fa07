"""Results of an MMEB-V2 run: ``<output_dir>/<model>/mmeb_v2.json`` and a Markdown table beside it.

Aggregates are plain means over datasets, as the reference and the leaderboard compute them
(``experiments/report_score_v2.py``): per meta-task, per modality (over its datasets, not its meta-tasks),
and overall over all 78 datasets (so modalities weigh 36 / 18 / 24). An aggregate over fewer datasets than
it has (a ``--subsets`` run, or a task with no scorable row) is marked ``complete: false`` and shown as
``(k/n)``; the reference's report silently averages whatever exists. Unscored extra tasks are listed but
never averaged.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from moca_bench.mmeb.report import (
    _fmt,
    _mean,
    _row,
    agg_cell,
    comparability_lines,
    dataset_cell,
    short_datasets,
    write_report,
)
from moca_bench.mmeb.v2 import tasks as t

PUBLISHED_FILE = Path("published") / "mmeb_v2.json"


def aggregate_v2(scores: Mapping[str, float | None]) -> dict:
    """Plain means of per-task scores.

    Args:
        scores: task name -> main metric in percent (None when it could not be scored).

    Returns:
        ``{"meta_tasks": {"image-CLS": agg, ...}, "modalities": {"image": agg, ...}, "overall": agg}`` with
        ``agg = {"score", "n_datasets", "n_expected", "complete"}``.
    """

    def agg(names) -> dict:
        present = [scores[n] for n in names if scores.get(n) is not None]
        return {"score": _mean(present), "n_datasets": len(present), "n_expected": len(names),
                "complete": len(present) == len(names)}  # fmt: skip

    metas = {f"{m}-{meta}": agg(names) for m in t.MODALITIES for meta, names in t.meta_tasks(m).items()}
    mods = {m: agg([n for n in t.SCORED if t.TASKS[n].modality == m]) for m in t.MODALITIES}
    return {"meta_tasks": metas, "modalities": mods, "overall": agg(t.SCORED)}


def _order_note(cell: str, score: float | None, other: float | None | str, order: str) -> str:
    """``cell`` (which starts with ``score``) with ``other``, the score under the other grade order, right
    after the score (graded-qrels tasks, always; aggregates, where it differs); ``"absent"`` adds nothing."""  # noqa: D205, D209
    if other == "absent":
        return cell
    head = _fmt(score)
    return f"{head} ({order} grade order {_fmt(other)}){cell[len(head):]}"


def _agg_cell(agg: Mapping, other: Mapping | None, order: str, names, short: Mapping[str, int]) -> str:
    """An aggregate's cell; its score under the other grade order beside it where that differs."""
    differs = other is not None and other["score"] != agg["score"]
    return _order_note(agg_cell(agg, names, short), agg["score"], other["score"] if differs else "absent", order)


def markdown_v2(report: Mapping, published: Mapping) -> str:
    """Markdown: one row per task of the run, then meta-task, modality and overall rows, then counts."""
    labels = list(published)
    me = report["model"]["name"]
    other = "reference" if report["grade_order"] == "correct" else "correct"
    other_aggs = report.get(f"aggregates_{other}_grade_order") or {}
    header = ["task", "modality", "meta-task", "metric", me, *labels]
    expected = {n: task.queries for n, task in t.TASKS.items()}
    short = short_datasets(report["datasets"], expected)
    lines = [f"# MMEB-V2: {me}", "", *comparability_lines(short, report["settings"].get("max_rows")),
             "Percent; hit@1 for image and video, linear nDCG@5 for visual documents; "
             f"tie rule `{report['tie_rule']}`; "
             f"{report['settings']['num_frames']} frames per video; graded nDCG with the `{report['grade_order']}` "
             f"grade order, the `{other}` order's score beside it for the graded-qrels tasks and every aggregate "
             "it moves (the reference's `evaluate()` permutes grades; docs/mmeb.md). Aggregates are plain means "
             "over datasets (overall: over all 78); `(k/n)` marks an aggregate over k of its n datasets. "
             "Published numbers: sources in `results/published/mmeb_v2.json`.",
             "", _row(header), "|" + "---|" * len(header)]  # fmt: skip
    for name, d in report["datasets"].items():
        pub = [_fmt(published[m].get("datasets", {}).get(name)) for m in labels]
        extra = "" if d["scored_in_v2"] else " (extra)"
        cell = dataset_cell(d["score"], d.get("rows"), expected.get(name))
        cell = _order_note(cell, d["score"], d.get(f"score_{other}_grade_order", "absent"), other)
        lines.append(_row([name + extra, d["modality"], d["meta_task"], d["metric"], cell, *pub]))
    aggs = report["aggregates"]
    members = {f"{m}-{meta}": names for m in t.MODALITIES for meta, names in t.meta_tasks(m).items()}
    for key, agg in aggs["meta_tasks"].items():
        if agg["n_datasets"]:
            pub = [_fmt(published[m].get("meta_tasks", {}).get(key)) for m in labels]
            cell = _agg_cell(agg, other_aggs.get("meta_tasks", {}).get(key), other, members.get(key, ()), short)
            lines.append(_row([f"**{key}**", "", "", "", f"**{cell}**", *pub]))
    for key, agg in aggs["modalities"].items():
        pub = [_fmt(published[m].get("modalities", {}).get(key)) for m in labels]
        names = [n for n in t.SCORED if t.TASKS[n].modality == key]
        cell = _agg_cell(agg, other_aggs.get("modalities", {}).get(key), other, names, short)
        lines.append(_row([f"**{key}**", "", "", "", f"**{cell}**", *pub]))
    pub = [_fmt(published[m].get("overall")) for m in labels]
    cell = _agg_cell(aggs["overall"], other_aggs.get("overall"), other, t.SCORED, short)
    lines.append(_row(["**overall (78)**", "", "", "", f"**{cell}**", *pub]))
    s = report["totals"]
    lines += ["", f"{s['rows']} rows ({s['bad_rows']} skipped as bad, {s['dropped_rows']} dropped by the parser, "
              f"{s['tied_rows']} decided by the tie rule); {s['unique_items']} unique inputs, {s['encoded_items']} "
              f"encoded in this run ({s['reference_forward_passes']} forward passes in the reference harness); "
              f"{s.get('truncated_items', 0)} inputs cut at max_length={report['settings'].get('max_length')} "
              f"({s.get('truncated_rows', 0)} rows touched); {s.get('text_only_videos', 0)} videos read as text "
              "only (empty frame folder).", ""]  # fmt: skip
    return "\n".join(lines)


def write_report_v2(report: Mapping, out_dir: Path, published_path: Path | None) -> tuple[Path, Path]:
    """Write ``mmeb_v2.json`` and ``mmeb_v2.md`` into ``out_dir`` atomically; returns both paths."""
    return write_report(report, out_dir, published_path, stem="mmeb_v2", table=markdown_v2)
