"""Prompt strings MoCa was trained and evaluated with (moca-method.md §2). One place for all adapters.

A prompt that follows an image is appended after the image placeholder, which
:func:`moca_model.processing_moca.normalize_item` puts first; the leading newline matches the reference.
"""

from __future__ import annotations

from moca_model.prompts import (  # noqa: F401 (they live with the model: the sentence-transformers export reads them)
    IMAGE_INSTRUCTION,
    IMAGE_QUESTION_INSTRUCTION,
    IMAGE_TEXT_INSTRUCTION,
    VIDORE_DOCUMENT_PROMPT,
    VIDORE_QUERY_PROMPT,
)

# --- MTEB (moca_bench.mteb_models) ----------------------------------------------------------------
# What MoCa reads for one mteb input. The image, when there is one, always comes first; the text
# below follows it. ``{instruction}`` is resolved by :func:`mteb_instruction`.
#
# | task                                 | side     | input        | text after the image                  |
# |--------------------------------------|----------|--------------|---------------------------------------|
# | page task: DocumentUnderstanding     | query    | text         | ``{text}`` (raw; task prompt unused)  |
# |   (ViDoRe v1/v2/v3, ...), VisRAGRet* | document | page image   | ``VIDORE_DOCUMENT_PROMPT`` (no text)  |
# | any other task                       | any      | text         | ``{text}``, or ``{instruction} {text}\n`` |
# |                                      | any      | image        | ``\n{instruction}\n``                 |
# |                                      | any      | image + text | ``\n{instruction} {text}\n``          |
#
# Instruction, first match wins: the user's ``prompts`` (keys as in mteb: ``Task-query``, ``Task``,
# ``TaskType-query``, ``TaskType``, ``query``; ``""`` means none); the task's own ``metadata.prompt``
# (a dict by side, or a string, which applies to queries and symmetric tasks but not to documents);
# for image inputs the MMEB wording below; text gets none.
PAGE_TASK_TYPES = frozenset({"DocumentUnderstanding"})
PAGE_TASK_PREFIXES = ("VisRAGRet",)  # page-image corpora filed under task type "Retrieval"
MTEB_IMAGE_INSTRUCTION = IMAGE_INSTRUCTION
MTEB_IMAGE_QUESTION_INSTRUCTION = IMAGE_QUESTION_INSTRUCTION  # image+text query
MTEB_IMAGE_TEXT_INSTRUCTION = IMAGE_TEXT_INSTRUCTION  # image+text document


def is_page_task(task_name: str, task_type: str | None) -> bool:
    """Whether an mteb task retrieves document pages (ViDoRe-style formatting)."""
    return task_type in PAGE_TASK_TYPES or task_name.startswith(PAGE_TASK_PREFIXES)


def mteb_instruction(
    task_name: str,
    task_type: str | None,
    prompt_type: str | None,
    *,
    has_image: bool,
    has_text: bool,
    task_prompt: str | dict | None = None,
    overrides: dict[str, str] | None = None,
) -> str | None:
    """The instruction for one kind of input of an mteb task, or ``None`` for none (see the table above).

    Args:
        task_name: mteb task name.
        task_type: mteb task type (``Any2AnyRetrieval``, ``DocumentUnderstanding``, ...).
        prompt_type: ``"query"``, ``"document"`` or ``None`` (symmetric tasks).
        has_image: the input has an image.
        has_text: the input has text.
        task_prompt: the task's ``metadata.prompt``.
        overrides: user prompts by mteb key.

    Returns:
        The instruction, or ``None``.
    """
    keys = [f"{task_name}-{prompt_type}", task_name, f"{task_type}-{prompt_type}", task_type, prompt_type]
    for key in keys:
        if overrides and key is not None and key in overrides:
            return overrides[key] or None
    if is_page_task(task_name, task_type):
        if prompt_type == "document" and has_image:
            return VIDORE_DOCUMENT_PROMPT  # laid out verbatim by mteb_text
        if not has_image:
            return None
    else:
        prompt = task_prompt.get(prompt_type) if isinstance(task_prompt, dict) else task_prompt
        if prompt and (prompt_type != "document" or isinstance(task_prompt, dict)):
            return prompt
    if not has_image:
        return None
    if not has_text:
        return MTEB_IMAGE_INSTRUCTION
    return MTEB_IMAGE_QUESTION_INSTRUCTION if prompt_type == "query" else MTEB_IMAGE_TEXT_INSTRUCTION


def mteb_text(text: str | None, *, has_image: bool, instruction: str | None) -> str:
    """Lay out the text that follows the image (if any) for one input, as in the table above.

    Args:
        text: the input's text, or ``None``.
        has_image: the input has an image.
        instruction: from :func:`mteb_instruction`; ``VIDORE_DOCUMENT_PROMPT`` on an image is used
            verbatim and the text is dropped (a page's OCR text is not part of MoCa's page input).

    Returns:
        The text MoCa reads after the image.
    """
    if has_image and instruction == VIDORE_DOCUMENT_PROMPT:
        return VIDORE_DOCUMENT_PROMPT
    body = " ".join(part for part in (instruction, text) if part)
    if has_image:
        return f"\n{body}\n" if body else ""
    return f"{body}\n" if instruction else (text or "")
