"""Entry-point target for vidore-benchmark (``moca``, ``moca-qwen25``); re-export only.

The hook in :mod:`moca_plugins._hook` loads this when vidore-benchmark imports its retriever registry
and registers the class under each entry-point name. The retriever itself lives in ``moca_bench.vidore``.
"""

from __future__ import annotations

from moca_bench.vidore import MoCaVidoreRetriever

__all__ = ["MoCaVidoreRetriever"]
