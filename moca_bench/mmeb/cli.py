"""``python -m moca_bench.mmeb``: parse the command line into an :class:`MMEBConfig` and run it.

Examples:
    python -m moca_bench.mmeb --model moca-embed/MoCa-Qwen25VL-3B --data-dir /data/MMEB-eval
    python -m moca_bench.mmeb --benchmark v2 --model moca-embed/MoCa-Qwen25VL-3B --data-dir /data/hub \
        --image-root /data/MMEB-V2 --subsets video visdoc
    torchrun --nproc_per_node 8 -m moca_bench.mmeb --model moca-embed/MoCa-Qwen25VL-7B --data-dir /data/MMEB-eval
    python -m moca_bench.mmeb --model ./tiny --data-dir ./mmeb-sample --subsets VQA --max-rows 10 --device cpu
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from moca_bench.metrics import TIE_RULES
from moca_bench.mmeb.config import BENCHMARKS, GRADE_ORDERS, SHORT_CLIPS, MMEBConfig
from moca_model.console import add_common_flags, run_cli, setup_logging, verbosity_of
from moca_model.errors import MoCaConfigError
from moca_model.moca_config import ATTENTION_MODES, POOLING_MODES

_EPILOG = """\
The results table is printed at the end (scores rounded to one decimal); a run on fewer rows than the benchmark
(--max-rows, a sample) is marked "not comparable" there.
Results: <output-dir>/<model-name>/mmeb.json (per dataset, meta-task, IND/OOD, overall, counts, ties, bad rows,
timings, versions) and mmeb.md (table next to the published MoCa-3B/7B numbers); with --benchmark v2,
mmeb_v2.json / mmeb_v2.md (per task, meta-task, modality and overall plain means, next to published
VLM2Vec-V2, GME and Qwen3-VL-Embedding numbers). Data layout, downloads and costs: docs/mmeb.md.
Bad rows (a query or candidate whose image is missing or unreadable) are skipped and counted per subset.
Cache: one safetensors file per subset, keyed by the checkpoint's files and the preprocessing settings; a
killed run resumes without re-encoding finished subsets. Under torchrun the unique inputs are sharded across
ranks (NCCL on GPUs, gloo on CPU)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every option maps to one :class:`MMEBConfig` field."""
    p = argparse.ArgumentParser(
        prog="python -m moca_bench.mmeb", description=__doc__.split("\n\n")[0], epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    a = p.add_argument
    a("--model", required=True, help="checkpoint directory or hub id (e.g. moca-embed/MoCa-Qwen25VL-3B)")
    a("--model-name", help="results folder name under --output-dir (default: the checkpoint's folder name)")
    a("--benchmark", choices=BENCHMARKS, default=MMEBConfig.benchmark,
      help="v1: MMEB, 36 image subsets (the MoCa paper); v2: MMEB-V2, 78 tasks (image, video, visdoc) "
           "(default %(default)s)")  # fmt: skip
    a("--data-dir", help="v1: local TIGER-Lab/MMEB-eval copy (<Subset>/test-*.parquet + unpacked images.zip); "
                         "v2: folder of local hub copies <data-dir>/<owner>/<name>/ (default: the hub)")  # fmt: skip
    a("--image-root", help="v1: folder the image paths are relative to (default: found below --data-dir); "
                           "v2: unpacked TIGER-Lab/MMEB-V2 with image-tasks/ and visdoc-tasks/")  # fmt: skip
    a("--frame-root", help="v2: unpacked TIGER-Lab/MMEB-V2 with video-tasks/frames/ (default: --image-root)")
    a("--media-path", dest="media_paths", action="append", metavar="TASK=DIR",
      help="v2: a task's media folder, overriding the layout's (repeatable; relative to the media root)")
    a("--dataset-pin", dest="dataset_pins", action="append", metavar="REPO=REV",
      help="v2: hub revision of a table repository (repeatable); the reference pins nothing")
    a("--dataset", default=MMEBConfig.dataset, help="hub dataset id without --data-dir (default %(default)s)")
    a("--dataset-revision", help="hub dataset revision; pin it for comparable numbers")
    a("--split", default=MMEBConfig.split, help="dataset split (default %(default)s)")
    a("--subsets", nargs="+", metavar="NAME",
      help="v1: subsets, meta-tasks (Classification VQA Retrieval Grounding), IND, OOD or all (default all 36); "
           "v2: tasks, modalities (image video visdoc), meta-tasks (image-CLS video-MRET visdoc-OOD ...) or all "
           "(default the 78)")  # fmt: skip
    a("--num-frames", type=int, default=MMEBConfig.num_frames,
      help="v2: frames sampled per video, uniformly (default %(default)s, as the reference)")
    a("--short-clips", choices=SHORT_CLIPS, default=MMEBConfig.short_clips,
      help="v2: clips with fewer saved frames: as-saved (reference) or pad (repeat the last frame)")
    a("--grade-order", choices=GRADE_ORDERS, default=MMEBConfig.grade_order,
      help="v2: graded nDCG label/grade mapping: correct, or reference (its set-order bug); both are reported")
    a("--max-rows", type=int, help="first N rows per subset only (smoke runs; not comparable to the paper)")
    a("--output-dir", default=MMEBConfig.output_dir, help="results root (default %(default)s)")
    a("--cache-dir", help="embedding cache root (default $MOCA_CACHE_DIR or ~/.cache/moca_bench, then /mmeb)")
    a("--no-cache", action="store_true", help="neither read nor write cached embeddings")
    a("--batch-size", type=int, default=MMEBConfig.batch_size, help="items per forward pass (default %(default)s)")
    a("--chunk-size", type=int, default=MMEBConfig.chunk_size,
      help="items per encoder call: progress and bad-image recovery granularity (default %(default)s)")
    a("--num-workers", type=int, help="batch-preparation threads (default 2 on CUDA, 0 on CPU)")
    a("--device", help="cuda or cpu (default cuda when available; torchrun ranks use cuda:LOCAL_RANK)")
    a("--dtype", help="bfloat16 or float32 (default bfloat16 on CUDA, float32 on CPU)")
    a("--attn-implementation", help="sdpa, eager or flash_attention_2 (default flash-attn when installed on CUDA)")
    a("--attention", choices=ATTENTION_MODES,
      help="text attention (default: the checkpoint's moca_config.json, else bidirectional)")
    a("--pooling", choices=POOLING_MODES,
      help="mean or last (real token) pooling (default: the checkpoint's moca_config.json, else mean)")
    a("--min-pixels", type=int, help="per-image lower bound (default the checkpoint's, else 256*28*28)")
    a("--max-pixels", type=int, help="per-image upper bound (default the checkpoint's, else 1024*28*28)")
    a("--max-length", type=int, help="token limit after image expansion; cut inputs are counted (default: v1 1280, "
      "as MoCa's eval.py; v2 none, as the VLM2Vec harness; 0: none)")
    a("--video-min-pixels", type=int, help="v2: per-frame lower bound (default the checkpoint's, else 128*28*28)")
    a("--video-max-pixels", type=int, help="v2: per-frame upper bound (default the checkpoint's, else 256*28*28)")
    a("--revision", help="model revision on the hub")
    a("--processor", help="tokenizer source when the checkpoint has none (default Qwen/Qwen2.5-VL-3B-Instruct)")
    a("--tie-rule", choices=TIE_RULES, default=MMEBConfig.tie_rule,
      help="exact score ties: first = reference (lowest index wins, i.e. the ground truth), pessimistic, "
           "optimistic or expected (default %(default)s); tied rows are reported whatever the rule")  # fmt: skip
    a("--strict", action="store_true", help="fail on a missing or unreadable image instead of skipping its rows")
    a("--save-rows", action="store_true", help="also write rows.json: each row's hit@1 (for bootstrap CIs)")
    a("--published", help="published numbers JSON for the table (default <output-dir>/published/mmeb.json; "
                          "v2: mmeb_v2.json)")
    a("--no-progress", action="store_true", help="hide progress bars")
    a("--log-level", help="logging level of our lines (default INFO; -v / -q below; non-zero ranks: warnings)")
    add_common_flags(p)
    return p


def parse_config(argv: list[str] | None = None) -> tuple[MMEBConfig, str | None]:
    """Parse ``argv`` into ``(config, log level)``.

    Raises:
        MoCaConfigError: an option value the config rejects (the message names it).
    """
    args = vars(build_parser().parse_args(argv))
    log_level = args.pop("log_level")
    for key in ("verbose", "quiet", "debug"):
        args.pop(key)
    args["progress"] = not args.pop("no_progress")
    try:
        return MMEBConfig(**args), log_level
    except ValueError as exc:
        raise MoCaConfigError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: runs the evaluation, then prints the results table (rank 0)."""
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(verbosity_of(args), fmt=f"%(levelname)s [rank {rank}] %(name)s: %(message)s", rank=rank)
    if args.log_level and rank == 0:
        logging.getLogger().setLevel(args.log_level.upper())
    return run_cli(lambda: _main(argv), debug=args.debug)


def _main(argv: list[str] | None) -> int:
    cfg, _ = parse_config(argv)
    from moca_bench.mmeb.runner import run

    report = run(cfg)
    if report is not None:  # rank 0: the table written beside the JSON
        stem = "mmeb_v2" if cfg.benchmark == "v2" else "mmeb"
        table = Path(cfg.output_dir) / report["model"]["name"] / f"{stem}.md"
        sys.stdout.write("\n" + table.read_text(encoding="utf-8"))
        sys.stdout.flush()
    return 0
