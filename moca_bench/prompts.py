"""Prompt strings MoCa was trained and evaluated with (moca-method.md §2). One place for all adapters.

A prompt that follows an image is appended after the image placeholder, which
:func:`moca_model.processing_moca.normalize_item` puts first; the leading newline matches the reference.
"""

from __future__ import annotations

# ViDoRe (reference retriever): queries are raw text; pages get this text after the image.
VIDORE_QUERY_PROMPT = ""
VIDORE_DOCUMENT_PROMPT = "\nRepresent the given document image."
