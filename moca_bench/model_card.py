"""Model-card facts about the released MoCa checkpoints, as plain data (no harness imports).

Used by the mteb ModelMetas (``moca_bench.mteb_models``); kept apart so the data can be read and tested
without mteb.
"""

from __future__ import annotations

from moca_model.st.card import MOCA_CITATION  # noqa: F401 (one copy, shared with the sentence-transformers card)

# mteb tasks built from MoCa's training data (moca-method.md §3.2, §4.3): MMEB-train subsets, InfoSeek,
# the ColPali train set (mteb marks these four ViDoRe v1 tasks for it) and VisRAG's in-domain sets.
MOCA_TRAINING_DATASETS = frozenset(
    {
        "HatefulMemesI2TRetrieval",
        "HatefulMemesT2IRetrieval",
        "SUN397",
        "SUN397ZeroShot",
        "VOC2007",
        "Imagenet1k",
        "Imagenet1kZeroShot",
        "OKVQAIT2TRetrieval",
        "CIRRIT2IRetrieval",
        "NIGHTSI2IRetrieval",
        "WebQAT2ITRetrieval",
        "WebQAT2TRetrieval",
        "VisualNewsI2TRetrieval",
        "VisualNewsT2IRetrieval",
        "MSCOCOI2TRetrieval",
        "MSCOCOT2IRetrieval",
        "InfoSeekIT2TRetrieval",
        "InfoSeekIT2ITRetrieval",
        "VidoreDocVQARetrieval",
        "VidoreInfoVQARetrieval",
        "VidoreTatdqaRetrieval",
        "VidoreArxivQARetrieval",
        "VisRAGRetArxivQA",
        "VisRAGRetChartQA",
        "VisRAGRetMPDocVQA",
        "VisRAGRetInfoVQA",
        "VisRAGRetPlotQA",
        "VisRAGRetSlideVQA",
    }
)
