"""MoCa bidirectional multimodal embeddings on stock transformers' Qwen2.5-VL.

Public API: :class:`MoCaEncoder` (load + encode), :class:`MoCaModel`, :class:`MoCaProcessor`,
:class:`MoCaInputError`, :class:`MoCaLoadError`, :class:`MoCaWorkerError`. Heavy modules load lazily,
so ``import moca_model`` is cheap and pulls in no training or benchmark dependency.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moca_model.encode import MoCaEncoder
    from moca_model.images import MoCaInputError
    from moca_model.loading import MoCaLoadError
    from moca_model.modeling_moca import EmbeddingOutput, MoCaModel
    from moca_model.parallel import MoCaWorkerError
    from moca_model.processing_moca import IMAGE_PLACEHOLDER, MoCaProcessor

_EXPORTS = {
    "MoCaEncoder": "moca_model.encode",
    "MoCaInputError": "moca_model.images",
    "MoCaLoadError": "moca_model.loading",
    "MoCaWorkerError": "moca_model.parallel",
    "MoCaModel": "moca_model.modeling_moca",
    "EmbeddingOutput": "moca_model.modeling_moca",
    "MoCaProcessor": "moca_model.processing_moca",
    "IMAGE_PLACEHOLDER": "moca_model.processing_moca",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'moca_model' has no attribute {name!r}")
