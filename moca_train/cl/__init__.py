"""Stage 2, heterogeneous contrastive fine-tuning: ``python -m moca_train.cl`` (entry point in ``train``)."""
