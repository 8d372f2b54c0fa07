"""``run(cfg)``: load data and model, encode each subset's unique pairs (cached, sharded), score, report.

Order of work: every selected subset is loaded first (cheap), so the progress bar knows the total; rank 0
checks which subsets are already cached and broadcasts it; each missing subset is encoded across ranks,
gathered, cached (atomically) and scored before the next one starts, so a killed run loses at most the
subset in flight.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from tqdm.auto import tqdm

from moca_bench.mmeb import dist, tasks
from moca_bench.mmeb.cache import EmbeddingCache, content_hash, model_key
from moca_bench.mmeb.config import MMEBConfig
from moca_bench.mmeb.data import (
    SubsetData,
    build_subset,
    find_image_root,
    hub_image_root,
    read_hub_rows,
    read_local_rows,
)
from moca_bench.mmeb.report import _fmt, aggregate, find_published, package_versions, write_report, write_rows
from moca_bench.mmeb.scoring import score_subset
from moca_bench.mmeb.session import (
    MAX_BAD_EXAMPLES,
    default_cache_dir,
    encode_subset,
    load_encoder,
    model_label,
    truncation_counts,
)

logger = logging.getLogger(__name__)


def load_subsets(cfg: MMEBConfig, names: list[str], ctx: dist.DistContext) -> dict[str, SubsetData]:
    """Read every selected subset (rank 0 first when downloading, so ranks share one download)."""
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    if cfg.data_dir is None and not ctx.is_main:
        dist.barrier(ctx)
    out = {}
    for name in names:
        if cfg.data_dir is not None:
            rows = read_local_rows(Path(cfg.data_dir), name, cfg.split)
        else:
            rows = read_hub_rows(name, split=cfg.split, dataset=cfg.dataset, revision=cfg.dataset_revision)
        subset = build_subset(name, rows, max_rows=cfg.max_rows)
        if cfg.image_root is not None:
            subset.image_root = Path(cfg.image_root)
        elif cfg.data_dir is not None:
            subset.image_root = find_image_root(Path(cfg.data_dir), (p.image for p in subset.pairs))
        else:
            base = hub_image_root(cache_root, dataset=cfg.dataset, revision=cfg.dataset_revision)
            subset.image_root = find_image_root(base, (p.image for p in subset.pairs))
        out[name] = subset
    if cfg.data_dir is None and ctx.is_main:
        dist.barrier(ctx)
    return out


def _subset_entry(name: str, subset: SubsetData, scored: dict, reasons: dict, **extra) -> dict:
    per_row = (subset.candidates >= 0).sum(axis=1)
    return {
        "meta_task": tasks.meta_task(name), "group": tasks.group(name), **scored,
        "candidates_per_row": [int(per_row.min()), int(per_row.max())] if len(per_row) else [0, 0],
        "unique_items": len(subset.pairs), "naive_forward_passes": int(subset.n_rows + per_row.sum()),
        "bad_items": len(reasons), "bad_examples": [reasons[k] for k in sorted(reasons)[:MAX_BAD_EXAMPLES]],
        **extra,
    }  # fmt: skip


def run(cfg: MMEBConfig, *, encoder=None) -> dict | None:
    """Evaluate a model on MMEB and write ``<output_dir>/<model>/mmeb.json`` + ``mmeb.md`` (v2: ``mmeb_v2.*``).

    Args:
        cfg: the run's settings.
        encoder: an already loaded encoder (tests); default: loaded from ``cfg.model``.

    Returns:
        The results dict on rank 0, None on other ranks.

    Raises:
        MMEBDataError: data not found, or a bad image under ``cfg.strict``.
    """
    from moca_model.loading import resolve_checkpoint

    if cfg.benchmark == "v2":
        from moca_bench.mmeb.v2.runner import run_v2

        return run_v2(cfg, encoder=encoder)
    start = time.perf_counter()
    ctx = dist.init_distributed(cfg.device)
    try:
        names = tasks.resolve_subsets(cfg.subsets)
        encoder = encoder if encoder is not None else load_encoder(cfg, ctx)
        model_dir = resolve_checkpoint(cfg.model, revision=cfg.revision)
        key, inputs = model_key(encoder, model_dir, cfg.processor)
        cache = EmbeddingCache(None if cfg.no_cache else Path(cfg.cache_dir or default_cache_dir()), key, inputs)
        t_load = time.perf_counter()
        subsets = load_subsets(cfg, names, ctx)
        t_load = time.perf_counter() - t_load
        hashes = {n: content_hash(s) for n, s in subsets.items()}
        cached = dist.broadcast_flags(ctx, [ctx.is_main and cache.contains(n, hashes[n]) for n in names])
        todo = sum(len(dist.shard_indices(len(subsets[n].pairs), ctx)) for n, hit in zip(names, cached) if not hit)
        bar = tqdm(total=todo, desc="MMEB encode", unit="item", disable=not (cfg.progress and ctx.is_main))
        datasets, row_hits = {}, {}
        for name, hit in zip(names, cached):
            subset = subsets[name]
            bar.set_postfix_str(name)
            if hit:
                loaded = cache.load(name, hashes[name]) if ctx.is_main else None
                if ctx.is_main and loaded is None:
                    raise RuntimeError(f"{name}: cache file vanished during the run")
                emb, bad, reasons, truncated = loaded if ctx.is_main else (None, None, None, None)
                encoded, enc_s = 0, 0.0
            else:
                emb, bad, reasons, encoded, enc_s, truncated = encode_subset(encoder, subset, cfg, ctx, bar)
                if ctx.is_main:
                    cache.save(name, hashes[name], emb, bad, reasons, truncated)
            if ctx.is_main:
                t = time.perf_counter()
                scored = score_subset(subset, emb, bad, tie_rule=cfg.tie_rule)
                row_hits[name] = scored.pop("row_hits")
                timings = {"encode_s": round(enc_s, 3), "score_s": round(time.perf_counter() - t, 3)}
                cut = truncated[subset.queries] | (truncated[subset.candidates] & (subset.candidates >= 0)).any(axis=1)
                datasets[name] = _subset_entry(name, subset, scored, reasons, encoded_items=encoded, cache_hit=hit,
                                               **truncation_counts(truncated, cut), timings=timings)  # fmt: skip
                logger.info("%s: hit@1 %s on %d rows (%d bad, %d tied)", name, _fmt(scored["score"]),
                            scored["scored_rows"], scored["bad_rows"], scored["tied_rows"])  # fmt: skip
        bar.close()
        if not ctx.is_main:
            return None
        report = build_report(cfg, datasets, encoder, key, inputs, ctx, load_s=t_load, start=start)
        out_dir = Path(cfg.output_dir) / model_label(cfg)
        json_path, md_path = write_report(report, out_dir, find_published(cfg.published, Path(cfg.output_dir)))
        if cfg.save_rows:
            write_rows(row_hits, out_dir)
        logger.info("overall %s; wrote %s and %s", _fmt(report["aggregates"]["overall"]["score"]), json_path, md_path)
        return report
    finally:
        dist.close_distributed(ctx)


def build_report(cfg, datasets: dict, encoder, key: str, inputs: dict, ctx, *, load_s: float, start: float) -> dict:
    """Assemble the results dict written to ``mmeb.json``."""
    sums = {k: sum(d[k] for d in datasets.values()) for k in
            ("rows", "scored_rows", "bad_rows", "tied_rows", "top_tied_rows", "unique_items", "encoded_items",
             "naive_forward_passes", "bad_items", "truncated_items", "truncated_rows")}  # fmt: skip
    return {
        "benchmark": "MMEB", "metric": "hit@1 (= precision@1), percent; ground truth at candidate 0",
        "tie_rule": cfg.tie_rule,
        "model": {"name": model_label(cfg), "path": str(cfg.model), "revision": cfg.revision, "cache_key": key,
                  "settings": inputs["settings"], "weights": inputs["weights"], "checkpoint": inputs["checkpoint"]},
        "data": {"source": cfg.data_dir or cfg.dataset, "revision": cfg.dataset_revision, "split": cfg.split,
                 "max_rows": cfg.max_rows, "subsets": list(datasets)},
        "run": {"world_size": ctx.world_size, "device": str(encoder.device), "batch_size": cfg.batch_size,
                "strict": cfg.strict, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "datasets": datasets,
        "aggregates": aggregate({n: d["score"] for n, d in datasets.items()}),
        "totals": sums,
        "timings": {"total_s": round(time.perf_counter() - start, 3), "load_s": round(load_s, 3),
                    "encode_s": round(sum(d["timings"]["encode_s"] for d in datasets.values()), 3),
                    "score_s": round(sum(d["timings"]["score_s"] for d in datasets.values()), 3)},
        "versions": package_versions(),
    }  # fmt: skip
