"""MMEB's 36 evaluation subsets, their meta-tasks and the IND / OOD split (moca-method.md §5.1).

Names are the subset (config) names of ``TIGER-Lab/MMEB-eval``. IND = the 20 datasets that are also in
MMEB-train; OOD = the other 16 (VLM2Vec paper, reference ``eval.py:24-46``).
"""

from __future__ import annotations

from collections.abc import Iterable

from moca_model.console import did_you_mean
from moca_model.errors import MoCaConfigError

META_TASKS: dict[str, tuple[str, ...]] = {
    "Classification": (
        "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397",
        "Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211",
    ),
    "VQA": (
        "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA",
        "Visual7W", "ScienceQA", "VizWiz", "GQA", "TextVQA",
    ),
    "Retrieval": (
        "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t",
        "NIGHTS", "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS",
    ),
    "Grounding": ("MSCOCO", "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing"),
}  # fmt: skip

SUBSETS: tuple[str, ...] = tuple(name for names in META_TASKS.values() for name in names)

IND: tuple[str, ...] = (
    "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397",
    "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
    "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA",
    "MSCOCO",
)  # fmt: skip
OOD: tuple[str, ...] = tuple(name for name in SUBSETS if name not in IND)

# Candidates per query (moca-method.md §5.1): classification = number of classes, everything else
# 1 ground truth + 999 distractors.
CLASSIFICATION_CANDIDATES: dict[str, int] = {
    "ImageNet-1K": 1000, "N24News": 24, "HatefulMemes": 2, "VOC2007": 20, "SUN397": 397,
    "Place365": 365, "ImageNet-A": 1000, "ImageNet-R": 200, "ObjectNet": 313, "Country211": 211,
}  # fmt: skip
DEFAULT_CANDIDATES = 1000
QUERIES_PER_SUBSET = 1000

_META_OF = {name: meta for meta, names in META_TASKS.items() for name in names}


def meta_task(subset: str) -> str:
    """Meta-task of a subset ("Classification", "VQA", "Retrieval" or "Grounding")."""
    return _META_OF[subset]


def group(subset: str) -> str:
    """``"IND"`` or ``"OOD"``."""
    return "IND" if subset in IND else "OOD"


def published_candidates(subset: str) -> int:
    """Candidates per query in the published MMEB-eval."""
    return CLASSIFICATION_CANDIDATES.get(subset, DEFAULT_CANDIDATES)


def resolve_subsets(names: Iterable[str] | None) -> list[str]:
    """Expand a selection into subset names in benchmark order.

    Args:
        names: subset names, meta-task names ("VQA"), "IND" / "OOD", or "all"; None means all 36.
            Matching is case-insensitive.

    Returns:
        Selected subset names, in the benchmark's order, without duplicates.

    Raises:
        MoCaConfigError: an unknown name (a ``ValueError``; the message suggests a near miss and lists the
            valid ones).
    """
    if names is None:
        return list(SUBSETS)
    lookup = {s.lower(): (s,) for s in SUBSETS}
    lookup.update({m.lower(): subs for m, subs in META_TASKS.items()})
    lookup.update({"ind": IND, "ood": OOD, "all": SUBSETS})
    chosen: set[str] = set()
    for name in names:
        if name.lower() not in lookup:
            hint = did_you_mean(name, [*SUBSETS, *META_TASKS])
            raise MoCaConfigError(
                f"--subsets: unknown MMEB subset {name!r}{f' ({hint})' if hint else ''}; use one of "
                f"{', '.join(SUBSETS)}, a meta-task ({', '.join(META_TASKS)}), IND, OOD or all"
            )
        chosen.update(lookup[name.lower()])
    return [s for s in SUBSETS if s in chosen]
