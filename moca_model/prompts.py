"""The instruction strings MoCa was trained and evaluated with (moca-method.md §2), as plain data.

The model layer owns them because they are part of MoCa's input convention: the harness adapters
(:mod:`moca_bench.prompts`) and the sentence-transformers export (:mod:`moca_model.st.layout`) read them
from here, so the two cannot drift apart. Text that follows an image comes after the image placeholder.
"""

from __future__ import annotations

# ViDoRe (reference retriever): queries are raw text; a page is the image followed by this text.
VIDORE_QUERY_PROMPT = ""
VIDORE_DOCUMENT_PROMPT = "\nRepresent the given document image."

# MMEB wording for image inputs (VLM2Vec tables): an image alone, an image with a question (queries),
# an image with related text (candidates). MMEB lays them out as "<image>\n{instruction}[ {text}]\n".
IMAGE_INSTRUCTION = "Represent the given image."
IMAGE_QUESTION_INSTRUCTION = "Represent the given image with the following question:"
IMAGE_TEXT_INSTRUCTION = "Represent the given image with related text information:"
