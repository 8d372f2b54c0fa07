"""The demo world: one generator that writes every training and evaluation format the toolkit reads.

Coloured shapes, multi-object scenes, handwritten digits and documentation pages (:mod:`demo.render`),
written as unlabelled interleaved corpora (base model, CPT), contrastive pairs (CL), MMEB-eval subsets
and ViDoRe BEIR pools. See :mod:`demo.world.build` for the layout.
"""

from demo.world.build import build_world
from demo.world.common import (
    CL_PAIRS,
    CL_TASK_NAMES,
    MMEB_SUBSETS,
    VIDORE_NAME,
    WorldConfig,
    all_shape_combos,
    eval_combos,
    eval_page_queries,
    is_held_out,
    object_names,
    page_queries,
    pool_name,
    train_combos,
)
from demo.world.common import T2I_PREFIX as T2I_PREFIX
from demo.world.train_data import CL_TASKS, VAL_SUBSETS

__all__ = [
    "CL_PAIRS",
    "CL_TASKS",
    "CL_TASK_NAMES",
    "MMEB_SUBSETS",
    "T2I_PREFIX",
    "VAL_SUBSETS",
    "VIDORE_NAME",
    "WorldConfig",
    "all_shape_combos",
    "build_world",
    "eval_combos",
    "eval_page_queries",
    "is_held_out",
    "object_names",
    "page_queries",
    "pool_name",
    "train_combos",
]
