"""MoCa training, laid out by stage.

Shared machinery sits at the package root (``config``, ``cli``, ``engine``, ``checkpoint``,
``distributed``, ``gradcache``, ``losses``, ``modeling``); each stage owns a sub-package with its
data, batching, model pieces and entry point: :mod:`moca_train.cpt` (``python -m moca_train.cpt``)
and :mod:`moca_train.cl` (``python -m moca_train.cl``).
"""
