"""Read what the demo's stages wrote: per-query scores of each model, training diagnostics, weight drift.

- MMEB: ``rows.json`` of ``python -m moca_bench.mmeb --save-rows`` (each row's hit@1).
- ViDoRe: the score matrices vidore-benchmark's ``moca`` retriever saved (``MOCA_SCORES_DIR``), one per
  pool in the order vidore read the collection folder (``os.listdir``). Per-query nDCG@5 is recomputed the
  way vidore-benchmark ranks (:func:`vidore_ndcg5`), and each pool's mean must equal vidore's own metric.
- The CL validation split: ``rows.json`` of the same runner on the ``Val_<task>`` subsets.
- Training: the last logged losses of each stage (``log.jsonl``), its logged curve, the full per-step
  history of the final checkpoint (``trainer_state.json``: token totals, the per-task CL accuracy) and how
  far CL moved the weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from demo.world import MMEB_SUBSETS

logger = logging.getLogger(__name__)

PAGES = "pages"
GROUPS = (*MMEB_SUBSETS, PAGES)  # the per-query groups every model is scored on
CHECK_TOLERANCE = 1e-3  # points: our per-pool nDCG@5 vs vidore's


def mmeb_rows(folder: Path, names=MMEB_SUBSETS) -> dict[str, np.ndarray]:
    """``{subset: (rows,) hit@1 in %}`` (NaN for a bad row) from ``<folder>/rows.json``.

    ``names``: the subsets to read; None reads every subset in the file.
    """
    subsets = json.loads((folder / "rows.json").read_text())["subsets"]
    return {s: 100.0 * np.array([math.nan if v is None else v for v in subsets[s]], dtype=np.float64)
            for s in (subsets if names is None else names)}  # fmt: skip


def val_scores(evals: Path, name: str) -> dict[str, float]:
    """Validation hit@1 (%) per CL task and their mean (``"mean"``: the learning-rate rule's score)."""
    rows = mmeb_rows(evals / "val" / name, None)
    out = {s.removeprefix("Val_"): float(np.nanmean(v)) for s, v in rows.items()}
    return {**out, "mean": sum(out.values()) / len(out)}


def pool_relevance(pool: Path) -> tuple[np.ndarray, list[str]]:
    """(queries, pages) relevance of one BEIR pool in the order vidore loads its rows, and the page ids."""
    import pyarrow.parquet as pq

    corpus = pq.read_table(pool / "corpus" / "test-00000-of-00001.parquet", columns=["corpus-id"])
    queries = pq.read_table(pool / "queries" / "test-00000-of-00001.parquet", columns=["query-id"])
    qrels = pq.read_table(pool / "qrels" / "test-00000-of-00001.parquet").to_pylist()
    ids = [str(c) for c in corpus.column("corpus-id").to_pylist()]
    col = {c: j for j, c in enumerate(ids)}
    row = {int(q): i for i, q in enumerate(queries.column("query-id").to_pylist())}
    rel = np.zeros((len(row), len(col)))
    for r in qrels:
        rel[row[int(r["query-id"])], col[str(r["corpus-id"])]] = float(r["score"])
    return rel, ids


def vidore_ndcg5(scores: np.ndarray, relevance: np.ndarray, doc_ids: list[str]) -> np.ndarray:
    """Per-query nDCG@5 (0..1) ranked as vidore-benchmark ranks.

    vidore-benchmark 5.0 stores ``max(0, score)`` for every page but the first (see docs/demo.md) and
    pytrec_eval breaks ties by page id, larger string first; both matter when scores are negative.

    Args:
        scores: (Q, N) scores in corpus order.
        relevance: (Q, N) graded relevance.
        doc_ids: the N page ids (strings).
    """
    from moca_bench.metrics import ndcg_at_k

    ranked = scores.astype(np.float64).copy()
    ranked[:, 1:] = np.maximum(ranked[:, 1:], 0.0)
    by_id = np.argsort(np.array(doc_ids))[::-1]  # (N,) columns by page id, larger string first
    return ndcg_at_k(ranked[:, by_id], np.asarray(relevance)[:, by_id], k=5, ties="first")


def page_ndcg(vidore_out: Path, collection: Path) -> np.ndarray:
    """Per-query nDCG@5 (%) over every pool, in pool-name order.

    Raises:
        ValueError: a missing score matrix, or a pool mean that disagrees with vidore's metrics file.
    """
    order = os.listdir(collection)  # noqa: PTH208 (the order vidore-benchmark evaluated and saved the pools in)
    reported = _reported(vidore_out)
    per_pool = {}
    for k, name in enumerate(order):
        path = vidore_out / "scores" / f"scores-{k:03d}.npy"
        if not path.is_file():
            raise ValueError(f"{path} missing: was vidore-benchmark run with MOCA_SCORES_DIR?")
        values = 100.0 * vidore_ndcg5(np.load(path), *pool_relevance(collection / name))
        theirs = reported[name]
        if abs(values.mean() - theirs) > CHECK_TOLERANCE:
            raise ValueError(f"{name}: per-query nDCG@5 mean {values.mean():.2f} but vidore reports {theirs:.2f}")
        per_pool[name] = values
    return np.concatenate([per_pool[name] for name in sorted(per_pool)])


def _reported(vidore_out: Path) -> dict[str, float]:
    """vidore-benchmark's own nDCG@5 (%) per pool, from its combined metrics file."""
    (path,) = vidore_out.glob("*_metrics.json")
    metrics = json.loads(path.read_text())["metrics"]
    return {Path(name).name: 100.0 * m["ndcg_at_5"] for name, m in metrics.items()}


def vidore_mean(vidore_out: Path) -> float:
    """vidore-benchmark's own nDCG@5 (%), averaged over the pools (equal sizes)."""
    values = list(_reported(vidore_out).values())
    return sum(values) / len(values)


def model_values(evals: Path, name: str, collection: Path) -> dict[str, np.ndarray]:
    """Every per-query group of one model: the MMEB subsets and ``pages``."""
    return {**mmeb_rows(evals / "mmeb" / name), PAGES: page_ndcg(evals / "vidore" / name, collection)}


def last_losses(run_dir: Path, window: int = 5) -> dict[str, float]:
    """Mean of the last ``window`` log records' loss terms of a training run (``loss``, ``clm``, ``mlm``, ``mae``)."""
    lines = (run_dir / "log.jsonl").read_text().strip().splitlines()
    records = [json.loads(line) for line in lines[-window:]]
    keys = [k for k in ("loss", "clm", "mlm", "mae", "accuracy") if k in records[-1]]
    first = json.loads(lines[0])
    out = {k: sum(r[k] for r in records) / len(records) for k in keys}
    out.update({f"first_{k}": first[k] for k in keys})
    return out


def weight_drift(start: Path, end: Path) -> float:
    """Relative change ``||W_end - W_start|| / ||W_start||`` over every tensor the two checkpoints share.

    The embedding table is compared on its common rows (CPT adds a mask-token row).
    """
    from safetensors.torch import load_file

    from moca_model.loading import key_mapping_for, map_key

    def load(path: Path) -> dict:
        tensors = {}
        for file in sorted(path.glob("*.safetensors")):
            tensors.update(load_file(str(file)))
        mapping = key_mapping_for(tensors)
        return {map_key(k, mapping): v.double() for k, v in tensors.items() if not k.startswith(("lm_head", "mae_"))}

    a, b = load(start), load(end)
    num = den = 0.0
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if x.shape != y.shape:
            rows = min(x.shape[0], y.shape[0])
            x, y = x[:rows], y[:rows]
        num += float(((y - x) ** 2).sum())
        den += float((x**2).sum())
    return math.sqrt(num / den) if den else math.nan


def history(run_dir: Path) -> list[dict]:
    """Every step's record of a finished training run (the final checkpoint's ``trainer_state.json``)."""
    from moca_train.checkpoint import STATE_FILE, list_checkpoints

    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir}: no finished checkpoint")
    return json.loads((found[-1] / STATE_FILE).read_text())["history"]


def token_total(run_dir: Path) -> int:
    """Real (attended) tokens over every step of a CPT-entry-point run, from its run record."""
    return int(round(sum(r["tokens"] for r in history(run_dir))))


def logged_curve(run_dir: Path) -> dict[str, list[float]]:
    """The run's ``log.jsonl`` (means over ``log_every`` steps) as columns, 4 significant digits."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    keys = [k for k in records[-1] if k not in ("steps_per_s",)]
    return {k: [float(f"{r.get(k, math.nan):.4g}") for r in records] for k in keys}


def task_accuracy_curves(run_dir: Path, task_sizes: dict[str, int], *, batch: int, seed: int,
                         bins: int = 10) -> dict[str, list[float]]:  # fmt: skip
    """Per-task in-batch training accuracy of a CL run, in ``bins`` equal spans of its steps.

    Each step's batch comes from one task; which one is a pure function of the sampler's settings
    (:class:`moca_train.cl.sampler.TaskBatchSampler`: task sizes, global batch, data seed), so the task of
    step k is the plan's batch at position k - 1. Bins without a step of a task are NaN.
    """
    from moca_train.cl.sampler import TaskBatchSampler

    steps = history(run_dir)
    sampler = TaskBatchSampler(list(task_sizes.values()), global_batch_size=batch, seed=seed)
    names = list(task_sizes)
    edges = np.linspace(0, len(steps), bins + 1)
    sums, counts = np.zeros((len(names), bins)), np.zeros((len(names), bins))
    for k, record in enumerate(steps):
        task = sampler.batch_at(int(record["step"]) - 1)[0]
        b = min(int(np.searchsorted(edges, k, side="right")) - 1, bins - 1)
        sums[task, b] += record["accuracy"]
        counts[task, b] += 1
    with np.errstate(invalid="ignore"):
        means = sums / counts
    return {name: [round(float(v), 4) for v in means[i]] for i, name in enumerate(names)}
