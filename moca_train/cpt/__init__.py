"""Stage 1, modality-aware continual pre-training: ``python -m moca_train.cpt`` (entry point in ``train``)."""
