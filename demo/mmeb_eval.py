"""``python -m demo.mmeb_eval ARGS``: ``python -m moca_bench.mmeb ARGS`` with the demo world's subsets registered.

The MMEB runner knows the 36 subsets of TIGER-Lab/MMEB-eval and their meta-tasks. The demo's folders have
the same layout but their own subsets (``demo.world.MMEB_SUBSETS`` and the CL validation split's
``demo.world.VAL_SUBSETS``), so this wrapper adds them to
:mod:`moca_bench.mmeb.tasks` (as out-of-domain datasets of their meta-task) and then runs the unchanged
command-line entry point; scoring, aggregation and the written ``mmeb.json`` are the runner's own.
"""

from __future__ import annotations

import sys

from demo.world import MMEB_SUBSETS, VAL_SUBSETS


def register_demo_subsets(subsets: dict[str, str] | None = None) -> None:
    """Add ``{subset: meta-task}`` to the MMEB task tables (idempotent)."""
    from moca_bench.mmeb import tasks

    subsets = {**MMEB_SUBSETS, **VAL_SUBSETS} if subsets is None else subsets
    new = {name: meta for name, meta in subsets.items() if name not in tasks.SUBSETS}
    if not new:
        return
    for name, meta in new.items():
        tasks.META_TASKS[meta] = (*tasks.META_TASKS[meta], name)
        tasks._META_OF[name] = meta
    tasks.SUBSETS = tuple(n for names in tasks.META_TASKS.values() for n in names)
    tasks.OOD = (*tasks.OOD, *new)


def main(argv: list[str] | None = None) -> int:
    """Register the demo subsets, then run ``moca_bench.mmeb``'s CLI with ``argv``."""
    from moca_bench.mmeb.cli import main as mmeb_main

    register_demo_subsets()
    return mmeb_main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
