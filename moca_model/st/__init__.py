"""Pieces of the sentence-transformers export (``python -m moca_model.export_st``): layout, files, card, check."""
