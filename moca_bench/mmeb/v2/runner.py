"""``run_v2(cfg)``: MMEB-V2 with the v1 runner's guarantees (de-duplication, content-keyed cache, sharding).

Order of work, as in v1 (:mod:`moca_bench.mmeb.runner`): every selected task is parsed first (rank 0 first,
so page images written from a corpus and hub downloads happen once); rank 0 checks the cache and
broadcasts which tasks are done; each missing task's unique inputs are encoded across ranks, gathered,
cached atomically (``<cache>/<model key>/v2__<Task>.safetensors``) and scored before the next one starts,
so a killed run loses at most the task in flight.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from moca_bench.mmeb import dist
from moca_bench.mmeb.cache import EmbeddingCache, model_key
from moca_bench.mmeb.config import MMEBConfig
from moca_bench.mmeb.report import _fmt, find_published, package_versions
from moca_bench.mmeb.session import (
    MAX_BAD_EXAMPLES,
    default_cache_dir,
    encode_subset,
    load_encoder,
    model_label,
    truncation_counts,
)
from moca_bench.mmeb.v2 import tasks as tasks
from moca_bench.mmeb.v2.build import TaskData
from moca_bench.mmeb.v2.data import TableSource, hub_media_root, media_dir
from moca_bench.mmeb.v2.parse import ParseOptions, parse_task
from moca_bench.mmeb.v2.report import PUBLISHED_FILE, aggregate_v2, write_report_v2
from moca_bench.mmeb.v2.scoring import rows_touched, score_task

logger = logging.getLogger(__name__)

_SUMMED = ("rows", "scored_rows", "bad_rows", "dropped_rows", "tied_rows", "top_tied_rows", "unique_items",
           "encoded_items", "reference_forward_passes", "bad_items", "truncated_items", "truncated_rows",
           "text_only_videos")  # fmt: skip


def _pairs(entries: list[str] | None) -> dict[str, str]:
    return dict(e.split("=", 1) for e in entries or [])


def media_roots(cfg: MMEBConfig, names: list[str], cache_root: Path) -> dict[str, Path | None]:
    """``{"image": root, "video": root, "visdoc": root}``: the MMEB-V2 folders media paths are relative to."""
    image = cfg.image_root or cfg.frame_root
    frame = cfg.frame_root or cfg.image_root
    local = Path(cfg.data_dir) / "TIGER-Lab" / "MMEB-V2" if cfg.data_dir else None
    default = str(local) if local is not None and local.is_dir() else None
    roots = {"image": image or default, "video": frame or default, "visdoc": image or default}
    need = {tasks.TASKS[n].modality for n in names} - {"visdoc"}  # pages can always come from the corpus
    missing = {m for m in need if roots[m] is None}
    if missing:
        hub = hub_media_root(cache_root, missing, revision=cfg.dataset_revision)
        roots.update({m: str(hub) for m in missing})
    return {m: Path(r).expanduser() if r else None for m, r in roots.items()}


def check_video_budget(proc, cfg: MMEBConfig, names: list[str]) -> None:
    """Fail early when even the smallest video of the selection cannot fit ``max_length``.

    Raises:
        ValueError: ``num_frames`` / 2 temporal patches at ``video_min_pixels`` alone exceed the token limit.
    """
    if proc.max_length is None or all(tasks.TASKS[n].modality != "video" for n in names):
        return
    floor = -(-cfg.num_frames // 2) * (proc.video_min_pixels // proc.factor**2)  # tokens at the lower bound
    if floor >= proc.max_length:
        raise ValueError(
            f"{cfg.num_frames} frames take at least {floor} visual tokens (video_min_pixels={proc.video_min_pixels}), "
            f"more than max_length={proc.max_length}: every video would be rejected. Raise --max-length (e.g. "
            f"{floor + floor // 2 + 256}) or lower --video-min-pixels / --num-frames"
        )


def load_tasks(cfg: MMEBConfig, names: list[str], ctx: dist.DistContext, cache_root: Path) -> dict[str, TaskData]:
    """Parse every selected task; rank 0 first (it may download or write page images), then the others."""
    if not ctx.is_main:
        dist.barrier(ctx)
    source = TableSource(Path(cfg.data_dir) if cfg.data_dir else None, _pairs(cfg.dataset_pins))
    roots = media_roots(cfg, names, cache_root)
    overrides = _pairs(cfg.media_paths)
    opts = ParseOptions(num_frames=cfg.num_frames, short_clips=cfg.short_clips, max_rows=cfg.max_rows,
                        page_cache=cache_root / "mmeb-v2-pages")  # fmt: skip
    out = {}
    for name in names:
        task = tasks.TASKS[name]
        out[name] = parse_task(task, source, media_dir(task, roots[task.modality], overrides), opts)
        if out[name].dropped:
            logger.warning("%s: %d row(s) dropped, e.g. %s", name, len(out[name].dropped), out[name].dropped[0])
    if ctx.is_main:
        dist.barrier(ctx)
    return out


def _entry(data: TaskData, scored: dict, reasons: dict, **extra) -> dict:
    task = data.task
    per_row = [len(c) for c in data.row_cands] if data.row_cands is not None else [len(data.names)] * data.n_rows
    return {
        "modality": task.modality, "meta_task": task.meta, "scored_in_v2": task.scored, "eval_type": task.eval_type,
        **scored, "candidates_per_row": [min(per_row), max(per_row)] if per_row else [0, 0],
        "pool_size": len(data.names), "unique_items": len(data.pairs),
        "reference_forward_passes": data.n_rows + len(data.names), "published_queries": task.queries,
        "bad_items": len(reasons), "bad_examples": [reasons[k] for k in sorted(reasons)[:MAX_BAD_EXAMPLES]],
        "source": task.repo + (f" ({task.config})" if task.config else "") + f" [{task.split}]",
        "text_only_videos": data.text_only_videos(), "notes": data.notes, **extra,
    }  # fmt: skip


def run_v2(cfg: MMEBConfig, *, encoder=None) -> dict | None:
    """Evaluate a model on MMEB-V2 and write ``<output_dir>/<model>/mmeb_v2.json`` + ``mmeb_v2.md``.

    Args:
        cfg: the run's settings (``benchmark="v2"``).
        encoder: an already loaded encoder (tests); default: loaded from ``cfg.model``.

    Returns:
        The results dict on rank 0, None on other ranks.

    Raises:
        MMEBDataError: data not found, or a bad input under ``cfg.strict``.
    """
    from moca_model.loading import resolve_checkpoint

    start = time.perf_counter()
    ctx = dist.init_distributed(cfg.device)
    try:
        names = tasks.resolve_tasks(cfg.subsets)
        if encoder is None:  # the reference never truncates an input (its max_len is None): no limit unless given
            encoder = load_encoder(cfg if cfg.max_length is not None else replace(cfg, max_length=0), ctx)
        check_video_budget(encoder.processor, cfg, names)
        key, inputs = model_key(encoder, resolve_checkpoint(cfg.model, revision=cfg.revision), cfg.processor)
        cache_root = Path(cfg.cache_dir or default_cache_dir())
        cache = EmbeddingCache(None if cfg.no_cache else cache_root, key, inputs)
        t_load = time.perf_counter()
        data = load_tasks(cfg, names, ctx, cache_root)
        t_load = time.perf_counter() - t_load
        hashes = {n: d.content_hash() for n, d in data.items()}
        cached = dist.broadcast_flags(ctx, [ctx.is_main and cache.contains(f"v2__{n}", hashes[n]) for n in names])
        todo = sum(len(dist.shard_indices(len(data[n].pairs), ctx)) for n, hit in zip(names, cached) if not hit)
        bar = tqdm(total=todo, desc="MMEB-V2 encode", unit="item", disable=not (cfg.progress and ctx.is_main))
        results = {}
        for name, hit in zip(names, cached):
            bar.set_postfix_str(name)
            if hit:
                loaded = cache.load(f"v2__{name}", hashes[name]) if ctx.is_main else (None,) * 4
                if loaded is None:
                    raise RuntimeError(f"{name}: cache file vanished during the run")
                (emb, bad, reasons, truncated), encoded, enc_s = loaded, 0, 0.0
            else:
                emb, bad, reasons, encoded, enc_s, truncated = encode_subset(encoder, data[name], cfg, ctx, bar)
                if ctx.is_main:
                    cache.save(f"v2__{name}", hashes[name], emb, bad, reasons, truncated)
            if ctx.is_main:
                t = time.perf_counter()
                scored = score_task(data[name], emb, bad, tie_rule=cfg.tie_rule, grade_order=cfg.grade_order)
                timings = {"encode_s": round(enc_s, 3), "score_s": round(time.perf_counter() - t, 3)}
                results[name] = _entry(data[name], scored, reasons, encoded_items=encoded, cache_hit=hit,
                                       dropped_examples=data[name].dropped[:MAX_BAD_EXAMPLES],
                                       **truncation_counts(truncated, rows_touched(data[name], truncated)),
                                       timings=timings)  # fmt: skip
                logger.info("%s: %s %s on %d rows (%d bad, %d dropped, %d tied)", name, scored["metric"],
                            _fmt(scored["score"]), scored["scored_rows"], scored["bad_rows"], scored["dropped_rows"],
                            scored["tied_rows"])  # fmt: skip
        bar.close()
        if not ctx.is_main:
            return None
        report = _report(cfg, results, encoder, key, inputs, ctx, load_s=t_load, start=start)
        out_dir = Path(cfg.output_dir) / model_label(cfg)
        paths = write_report_v2(report, out_dir, find_published(cfg.published, Path(cfg.output_dir), PUBLISHED_FILE))
        logger.info("overall %s; wrote %s and %s", _fmt(report["aggregates"]["overall"]["score"]), *paths)
        return report
    finally:
        dist.close_distributed(ctx)


def _report(cfg, results: dict, encoder, key: str, inputs: dict, ctx, *, load_s: float, start: float) -> dict:
    totals = {k: sum(d[k] for d in results.values()) for k in _SUMMED}
    scores = {n: d["score"] for n, d in results.items() if d["scored_in_v2"]}
    other = "reference" if cfg.grade_order == "correct" else "correct"
    other_scores = {n: d.get(f"score_{other}_grade_order", d["score"]) for n, d in results.items()
                    if d["scored_in_v2"]}  # fmt: skip
    graded = {n: {"correct": d["score_correct_grade_order"], "reference": d["score_reference_grade_order"],
                  "rows_differ": d["grade_order_rows_differ"]}
              for n, d in results.items() if "grade_order_rows_differ" in d}  # fmt: skip
    return {
        "benchmark": "MMEB-V2", "metric": {m: tasks.METRIC[m] for m in tasks.MODALITIES},
        "tie_rule": cfg.tie_rule, "grade_order": cfg.grade_order,
        "settings": {"num_frames": cfg.num_frames, "short_clips": cfg.short_clips, "max_rows": cfg.max_rows,
                     "max_length": encoder.processor.max_length},
        "model": {"name": model_label(cfg), "path": str(cfg.model), "revision": cfg.revision, "cache_key": key,
                  "settings": inputs["settings"]},
        "data": {"tables": cfg.data_dir or "hub", "pins": _pairs(cfg.dataset_pins), "image_root": cfg.image_root,
                 "frame_root": cfg.frame_root, "media_paths": _pairs(cfg.media_paths), "tasks": list(results)},
        "run": {"world_size": ctx.world_size, "device": str(encoder.device), "batch_size": cfg.batch_size,
                "strict": cfg.strict, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "datasets": results,
        "aggregates": aggregate_v2(scores),
        f"aggregates_{other}_grade_order": aggregate_v2(other_scores),
        "graded_ndcg_grade_order": graded,
        "totals": totals,
        "timings": {"total_s": round(time.perf_counter() - start, 3), "load_s": round(load_s, 3),
                    "encode_s": round(sum(d["timings"]["encode_s"] for d in results.values()), 3),
                    "score_s": round(sum(d["timings"]["score_s"] for d in results.values()), 3)},
        "versions": package_versions(),
    }  # fmt: skip


__all__ = ["load_tasks", "media_roots", "run_v2"]
