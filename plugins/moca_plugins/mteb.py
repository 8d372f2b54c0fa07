"""Entry point ``mteb.models`` -> ``moca`` (pyproject.toml): MoCa's ModelMetas for mteb 2.x's registry.

``moca_plugins._hook`` loads this when mteb builds ``MODEL_REGISTRY`` and assigns each meta by name, so
``moca-embed/MoCa-Qwen25VL-3B`` (replacing mteb's built-in entry), ``moca-embed/MoCa-Qwen25VL-7B`` and the
checkpoints listed in ``$MOCA_MTEB_CHECKPOINTS`` resolve to ``moca_bench.mteb_models.MoCaMTEBEncoder``.
"""

from __future__ import annotations

from moca_bench.mteb_models import model_metas

MODEL_METAS = model_metas()
