"""MMEB cost model: encoder forward passes with and without de-duplication, on MMEB's published structure.

Builds synthetic rows for the 36 subsets (1,000 queries each, the published candidate counts; distractors
drawn from a shared pool, see ``moca_bench.mmeb.synthetic``), runs them through the runner's real
de-duplication (``moca_bench.mmeb.data.build_subset``) and counts the unique inputs it would encode,
against one forward pass per query and per listed candidate. Writes ``results/benchmarks/mmeb_cost.json``.

MMEB-V2 (78 tasks): forward passes and decoded frames per task, meta-task and modality from the published
task sizes and per-family assumptions (``moca_bench.mmeb.v2.cost``). Writes ``results/benchmarks/mmeb_v2_cost.json``.

    python -m benchmarks.mmeb_cost
"""

from __future__ import annotations

import logging
import time

from benchmarks.common import write_result

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    from moca_bench.mmeb.data import build_subset
    from moca_bench.mmeb.synthetic import forward_passes, mmeb_structure, synthetic_rows

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    shapes = mmeb_structure()
    per_subset, with_d, without_d = {}, 0, 0
    for shape in shapes:
        rows = synthetic_rows(shape)
        data = build_subset(shape.name, rows)
        naive = sum(1 + len(r["tgt_text"]) for r in rows)
        per_subset[shape.name] = {
            "meta_task": shape.meta_task,
            "unique_encodes": len(data.pairs),
            "naive_encodes": naive,
        }
        with_d, without_d = with_d + len(data.pairs), without_d + naive
    model = forward_passes(shapes)
    result = {
        "unique_encodes": with_d,
        "naive_encodes": without_d,
        "ratio": round(without_d / with_d, 1),
        "matches_closed_form": (with_d, without_d) == (model["with_dedup"], model["without_dedup"]),
        "per_meta_task": model["per_meta_task"],
        "per_subset": per_subset,
        "seconds": round(time.perf_counter() - t0, 2),
        "assumption": "distractors of a subset come from one shared pool of max(queries, candidates) inputs",
    }
    logger.info(
        "forward passes: %d with dedup vs %d without (%.0fx) -> %s",
        with_d,
        without_d,
        without_d / with_d,
        write_result("mmeb_cost", result),
    )
    from moca_bench.mmeb.v2.cost import v2_costs

    v2 = v2_costs()
    o = v2["overall"]
    logger.info("MMEB-V2: %d unique inputs (%d tasks with unknown corpus left out), %d video inputs, %d frames -> %s",
                o["unique_inputs"], o["tasks_with_unknown_corpus"], o["video_inputs"], o["frames"],
                write_result("mmeb_v2_cost", v2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
