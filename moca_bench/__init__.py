"""Harness adapters for MoCa: vidore-benchmark retriever, MTEB encoder + ModelMeta, MMEB runner.

Nothing here registers itself on import; registration lives in ``plugins/`` (``moca_plugins``).
Heavy harness imports happen inside the adapter modules, never here.
"""
