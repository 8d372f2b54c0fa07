r"""MMEB evaluation (36 datasets, 4 meta-tasks), faithful to the MoCa/VLM2Vec protocol, resumable, multi-GPU.

``--benchmark v2`` runs MMEB-V2 instead (78 tasks: image, video, visual documents; package ``moca_bench.mmeb.v2``, see
``docs/mmeb.md``).

Commands (the module docstring of :mod:`moca_bench.mmeb.cli` lists every option):

    # one GPU, data from the hub (needs network once)
    python -m moca_bench.mmeb --model moca-embed/MoCa-Qwen25VL-3B
    # 8 GPUs on one node, local copy of TIGER-Lab/MMEB-eval
    torchrun --nproc_per_node 8 -m moca_bench.mmeb --model moca-embed/MoCa-Qwen25VL-7B --data-dir /data/MMEB-eval
    # CPU smoke run on a tiny random checkpoint and a generated sample
    python -m moca_model.tiny /tmp/tiny && python -c "from moca_bench.mmeb.synthetic import write_sample; \\
        write_sample('/tmp/mmeb')" && python -m moca_bench.mmeb --model /tmp/tiny --data-dir /tmp/mmeb \\
        --subsets N24News OK-VQA MSCOCO_t2i MSCOCO_i2t RefCOCO --output-dir /tmp/results

Protocol (moca-method.md §5.1): hit@1 per dataset with the ground truth at candidate 0; every unique
(text, image) pair of a subset encoded once; unweighted means for meta-tasks, IND / OOD and overall.
Exact score ties follow an explicit rule (default: the reference's, first index wins) and are counted.
Rows with a missing or unreadable image are skipped and counted per subset (``--strict``: fatal).

Modules: ``tasks`` (subset lists, meta-tasks, IND/OOD), ``data`` (rows -> pairs), ``cache``
(fingerprinted safetensors cache), ``encoding`` (one rank's shard), ``dist`` (torchrun plumbing),
``scoring``, ``report``, ``runner`` (``run``), ``synthetic`` (cost model, test samples), ``cli``; MMEB-V2:
``v2_tasks``, ``v2_data``, ``v2_text``, ``v2_build``, ``v2_parse``, ``v2_parse_video``, ``v2_scoring``,
``v2_report``, ``v2_runner``, ``v2_cost``, ``v2_synthetic``, ``v2_synthetic_video``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from moca_bench.mmeb.tasks import IND, META_TASKS, OOD, SUBSETS, group, meta_task, resolve_subsets

if TYPE_CHECKING:
    from moca_bench.mmeb.config import MMEBConfig
    from moca_bench.mmeb.runner import run
    from moca_bench.mmeb.synthetic import forward_passes, mmeb_structure

_LAZY = {
    "run": "moca_bench.mmeb.runner",
    "MMEBConfig": "moca_bench.mmeb.config",
    "mmeb_structure": "moca_bench.mmeb.synthetic",
    "forward_passes": "moca_bench.mmeb.synthetic",
}
__all__ = ["IND", "META_TASKS", "OOD", "SUBSETS", "group", "meta_task", "resolve_subsets", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:  # torch-heavy modules load on first use, so importing the task lists stays cheap
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moca_bench.mmeb' has no attribute {name!r}")
