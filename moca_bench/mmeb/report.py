"""Results of an MMEB run: ``<output_dir>/<model>/mmeb.json`` and a Markdown table beside it.

Aggregates are unweighted means over datasets (reference ``eval.py:272-280``): per meta-task, IND,
OOD and overall. An aggregate over fewer datasets than the benchmark defines (a ``--subsets`` run, or a
dataset with no scorable row) is marked ``complete: false`` and flagged in the table. A dataset read with
fewer query rows than the published benchmark has (``--max-rows``, a sample) is marked *not comparable* in
the table, and so is every aggregate over it. Scores are rounded to one decimal in the table and the log.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from moca_bench.mmeb import tasks

logger = logging.getLogger(__name__)

PUBLISHED_FILE = Path("published") / "mmeb.json"
_REPO_ROOT = Path(__file__).resolve().parents[2]
_PACKAGES = ("moca-toolkit", "torch", "transformers", "tokenizers", "numpy", "safetensors", "pillow", "datasets")


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else None


def aggregate(scores: Mapping[str, float | None]) -> dict:
    """Unweighted means of per-dataset scores.

    Args:
        scores: dataset name -> score (None when it could not be scored).

    Returns:
        ``{"meta_tasks": {name: agg}, "IND": agg, "OOD": agg, "overall": agg}`` where ``agg`` is
        ``{"score", "n_datasets", "n_expected", "complete"}``.
    """

    def agg(names) -> dict:
        present = [scores[n] for n in names if scores.get(n) is not None]
        return {"score": _mean(present), "n_datasets": len(present), "n_expected": len(names),
                "complete": len(present) == len(names)}  # fmt: skip

    return {
        "meta_tasks": {meta: agg(names) for meta, names in tasks.META_TASKS.items()},
        "IND": agg(tasks.IND),
        "OOD": agg(tasks.OOD),
        "overall": agg(tasks.SUBSETS),
    }


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that change the numbers, plus Python and the git commit."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        commit = subprocess.run(["git", "-C", str(_REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    out["git_commit"] = commit or None
    return out


def find_published(explicit: str | None, output_dir: Path, file: Path = PUBLISHED_FILE) -> Path | None:
    """The published-numbers file: ``explicit``, else ``<output_dir>/<file>``, else the repo's ``results/<file>``."""
    candidates = [Path(explicit)] if explicit else []
    candidates += [output_dir / file, _REPO_ROOT / "results" / file]
    for path in candidates:
        if path.is_file():
            return path
    return None


def load_published(path: Path | None) -> dict:
    """``{model label: {"datasets": {...}, "meta_tasks": {...}, "IND", "OOD", "overall"}}`` or {}."""
    if path is None:
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("models", {})


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


NOT_COMPARABLE = "not comparable"


def short_datasets(datasets: Mapping[str, Mapping], published_rows: Mapping[str, int]) -> dict[str, int]:
    """``{dataset: rows read}`` for the datasets read with fewer query rows than the published benchmark."""
    rows = {n: d.get("rows") for n, d in datasets.items()}
    return {n: r for n, r in rows.items() if r is not None and published_rows.get(n) and r < published_rows[n]}


def comparability_lines(short: Mapping[str, int], max_rows: int | None) -> list[str]:
    """The table's warning when some datasets are not comparable with published numbers (else nothing)."""
    if not short:
        return []
    why = f"`--max-rows {max_rows}`" if max_rows else "a sample of the data"
    return [f"**{NOT_COMPARABLE.capitalize()} with the published numbers**: {len(short)} dataset(s) ran on fewer "
            f"query rows than the benchmark has ({why}); their scores and every aggregate over them are marked "
            f"*{NOT_COMPARABLE}*.", ""]  # fmt: skip


def dataset_cell(score: float | None, rows: int | None = None, published_rows: int | None = None) -> str:
    """A dataset's score, marked when ``rows`` is under ``published_rows``."""
    if rows is None or not published_rows or rows >= published_rows:
        return _fmt(score)
    return f"{_fmt(score)} ({NOT_COMPARABLE}: {rows} of {published_rows} rows)"


def agg_cell(agg: Mapping, names=(), short: Mapping[str, int] | None = None) -> str:
    """An aggregate's score: ``(k/n)`` when it covers k of its n datasets; *not comparable* when one of
    ``names`` (its datasets) is in ``short``."""  # noqa: D205, D209
    cell = _fmt(agg["score"])
    if agg["score"] is None:
        return cell
    if not agg["complete"]:
        cell += f" ({agg['n_datasets']}/{agg['n_expected']})"
    return f"{cell} ({NOT_COMPARABLE})" if short and any(n in short for n in names) else cell


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def markdown_table(report: Mapping, published: Mapping) -> str:
    """Markdown: one row per dataset of the run, then meta-task, IND, OOD and overall rows.

    Args:
        report: the run's results (as written to ``mmeb.json``).
        published: :func:`load_published` output.

    Returns:
        The Markdown text.
    """
    labels = list(published)
    header = ["dataset", "meta-task", "split", report["model"]["name"], *[f"{m} (paper)" for m in labels]]
    expected = dict.fromkeys(tasks.SUBSETS, tasks.QUERIES_PER_SUBSET)
    short = short_datasets(report["datasets"], expected)
    lines = [f"# MMEB: {report['model']['name']}", "",
             *comparability_lines(short, report.get("data", {}).get("max_rows")),
             f"hit@1 (%), tie rule `{report['tie_rule']}`; aggregates are unweighted means over datasets, "
             "`(k/n)` marks an aggregate over k of its n datasets.", "",
             _row(header), "|" + "---|" * len(header)]  # fmt: skip
    for name, d in report["datasets"].items():
        pub = [_fmt(published[m].get("datasets", {}).get(name)) for m in labels]
        lines.append(_row([name, d["meta_task"], d["group"], dataset_cell(d["score"], d.get("rows"), expected[name]),
                           *pub]))  # fmt: skip
    aggs = report["aggregates"]
    rows = [(meta, aggs["meta_tasks"][meta], [published[m].get("meta_tasks", {}).get(meta) for m in labels], names)
            for meta, names in tasks.META_TASKS.items()]  # fmt: skip
    groups = {"IND": tasks.IND, "OOD": tasks.OOD, "overall": tasks.SUBSETS}
    rows += [(k, aggs[k], [published[m].get(k) for m in labels], groups[k]) for k in ("IND", "OOD", "overall")]
    for label, agg, pub, names in rows:
        lines.append(_row([f"**{label}**", "", "", f"**{agg_cell(agg, names, short)}**", *(_fmt(p) for p in pub)]))
    t = report["totals"]
    lines += ["", f"{t['rows']} rows ({t['bad_rows']} skipped as bad, {t['tied_rows']} decided by the tie rule); "
              f"{t['unique_items']} unique inputs, {t['encoded_items']} encoded in this run "
              f"({t['naive_forward_passes']} without de-duplication).", ""]  # fmt: skip
    return "\n".join(lines)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_rows(row_hits: Mapping[str, list], out_dir: Path) -> Path:
    """Write ``rows.json`` (``{subset: [hit@1 per row, None for a bad row]}``) atomically; returns its path."""
    path = out_dir / "rows.json"
    _atomic_write_text(path, json.dumps({"metric": "hit@1 per row, in row order", "subsets": dict(row_hits)}) + "\n")
    return path


def write_report(
    report: Mapping, out_dir: Path, published_path: Path | None, *, stem: str = "mmeb", table=markdown_table
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` (rendered by ``table(report, published)``) atomically; returns both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    _atomic_write_text(json_path, json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n")
    _atomic_write_text(md_path, table(report, load_published(published_path)))
    return json_path, md_path
