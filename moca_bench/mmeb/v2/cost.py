"""MMEB-V2 cost model: encoder forward passes and decoded video frames per task, from the published task sizes.

Sizes are :class:`~moca_bench.mmeb.v2.tasks.V2Task` ``queries`` (the score files' ``num_data``) and
``candidates`` (paper Table 1, dataset cards). What the published numbers do not say is assumed, per family,
and stated in ``ASSUMPTIONS``; the results are estimates, exact only where the structure is fixed
(classification label pools, one video per retrieval query).

Counts per task: ``unique_inputs`` = what this runner encodes (queries are distinct; candidates once per
name); ``reference_passes`` = what the VLM2Vec harness encodes (every query, each pool name once: the same
number under these assumptions); ``naive_passes`` = one pass per query and per listed candidate;
``video_inputs`` / ``frames`` = inputs that are videos and the frames decoded for them.
"""

from __future__ import annotations

from moca_bench.mmeb.v2 import tasks as t

ASSUMPTIONS = {
    "image": "v1's: a local task's distractors come from one shared pool of max(queries, candidates) names",
    "video CLS": "global pool = the label list (SSv2, local: its 174 labels shared by all rows); distinct videos",
    "video RET": "one video per query (pool = queries); captions distinct",
    "video MRET": "10 clips per query, not shared between queries (an upper bound); every query carries a video",
    "video QA": "option texts distinct across questions (ActivityNetQA: yes/no); every question encodes its video",
    "visdoc": "pool = the corpus where its size is published, else unknown (None)",
}


def task_cost(task: t.V2Task, *, num_frames: int = 8) -> dict:
    """Forward passes and frames of one task (module docstring); ``None`` where the corpus size is unknown."""
    q, c = task.queries, task.candidates
    if task.modality == "image":
        pool = c if task.meta == "CLS" else max(q, c)
        return _counts(q, pool, per_row=c, videos=0, num_frames=num_frames)
    if task.modality == "visdoc":
        return _counts(q, c or None, per_row=c or None, videos=0, num_frames=num_frames)
    if task.meta == "CLS":
        return _counts(q, c, per_row=c, videos=q, num_frames=num_frames)
    if task.meta == "RET":
        return _counts(q, q, per_row=q, videos=0, num_frames=num_frames, candidate_videos=q)
    if task.meta == "MRET":
        return _counts(q, q * c, per_row=c, videos=q, num_frames=num_frames, candidate_videos=q * c)
    pool = 2 if task.name == "ActivityNetQA" else q * c
    return _counts(q, pool, per_row=c, videos=q, num_frames=num_frames)


def _counts(q: int, pool: int | None, *, per_row: int | None, videos: int, num_frames: int,
            candidate_videos: int = 0) -> dict:  # fmt: skip
    video_inputs = videos + candidate_videos
    return {"queries": q, "pool": pool, "unique_inputs": None if pool is None else q + pool,
            "reference_passes": None if pool is None else q + pool,
            "naive_passes": None if per_row is None else q * (1 + per_row),
            "video_inputs": video_inputs, "frames": video_inputs * num_frames}  # fmt: skip


def v2_costs(*, num_frames: int = 8) -> dict:
    """Per task, per modality and per meta-task totals over the 78 scored tasks (unknown corpora counted apart)."""
    per_task = {n: {"modality": t.TASKS[n].modality, "meta": t.TASKS[n].meta, **task_cost(t.TASKS[n],
                                                                                         num_frames=num_frames)}
                for n in t.SCORED}  # fmt: skip
    keys = ("queries", "unique_inputs", "naive_passes", "video_inputs", "frames")

    def total(names) -> dict:
        rows = [per_task[n] for n in names]
        out = {k: sum(r[k] for r in rows if r[k] is not None) for k in keys}
        out["tasks_with_unknown_corpus"] = sum(r["pool"] is None for r in rows)
        return out

    by_mod = {m: total([n for n in t.SCORED if t.TASKS[n].modality == m]) for m in t.MODALITIES}
    by_meta = {f"{m}-{meta}": total(names) for m in t.MODALITIES for meta, names in t.meta_tasks(m).items()}
    return {"num_frames": num_frames, "overall": total(t.SCORED), "modalities": by_mod, "meta_tasks": by_meta,
            "per_task": per_task, "assumptions": ASSUMPTIONS}  # fmt: skip
