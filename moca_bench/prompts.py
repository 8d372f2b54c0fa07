"""Prompt strings MoCa was trained and evaluated with (moca-method.md §2) and the per-task rules for mteb.

Pure functions of task metadata, so they run in both environments. A prompt that follows an image is
appended after the image placeholder, which :func:`moca_model.processing_moca.normalize_item` puts
first; the leading newline matches the reference. docs/mteb.md holds the full table of what every
mteb task family reads, generated from these rules by ``python -m moca_bench.mteb_layouts``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from moca_model.prompts import (  # noqa: F401 (they live with the model: the sentence-transformers export reads them)
    IMAGE_INSTRUCTION,
    IMAGE_QUESTION_INSTRUCTION,
    IMAGE_TEXT_INSTRUCTION,
    VIDORE_DOCUMENT_PROMPT,
    VIDORE_QUERY_PROMPT,
)

# --- MTEB (moca_bench.mteb_models) ----------------------------------------------------------------
# What MoCa reads for one mteb input: the image first (if any), then
#   page task, query, text                      -> {text} (raw; the task's prompt is not used)
#   page task, document, image (+ OCR text)     -> VIDORE_DOCUMENT_PROMPT (the OCR text is dropped)
#   any other input, text                       -> {text}, or "{instruction} {text}\n"
#   any other input, image                      -> "\n{instruction}\n"
#   any other input, image + text               -> "\n{instruction} {text}\n"
# Instruction, first match wins: the user's ``prompts`` (see :func:`override_keys`; "" means none);
# UPSTREAM_PROMPT_FIXES; the task's ``metadata.prompt`` (a dict by side, or a string, which applies to
# queries and symmetric tasks but not to documents); with ``instructions="mmeb"``, MMEB's wording for the
# MMEB_FAMILIES; for image inputs the MMEB retrieval wording below; text gets none.
PAGE_TASK_TYPES = frozenset({"DocumentUnderstanding"})
PAGE_CORPUS_TYPES = frozenset({"Retrieval", "Reranking"})  # with category t2it: pages + their OCR text
PAGE_CORPUS_CATEGORY = "t2it"
# Page-screenshot corpora filed under other task types (read from their mteb descriptions and datasets).
SCREENSHOT_TASK_PREFIXES = ("VisRAGRet",)
SCREENSHOT_TASKS = frozenset({"VDRMultilingualRetrieval", "OmniWikiV2IRetrieval"})

MTEB_IMAGE_INSTRUCTION = IMAGE_INSTRUCTION
MTEB_IMAGE_QUESTION_INSTRUCTION = IMAGE_QUESTION_INSTRUCTION  # image+text query
MTEB_IMAGE_TEXT_INSTRUCTION = IMAGE_TEXT_INSTRUCTION  # image+text document

# MMEB-train/-eval classification wording (VLM2Vec Tables 7-10; stored without a final period).
MMEB_CLASSIFICATION = "Represent the given image for classification"
MMEB_SCENE = "Identify the scene shown in the image"
MMEB_OBJECT = "Identify the object shown in the image"
MMEB_COUNTRY = "Identify the country depicted in the image"
MMEB_TASK_INSTRUCTIONS = {  # the MMEB dataset each mteb task re-uses
    "SUN397": MMEB_SCENE,
    "SUN397ZeroShot": MMEB_SCENE,
    "VOC2007": MMEB_OBJECT,
    "VOC2007.v2": MMEB_OBJECT,
    "Country211": MMEB_COUNTRY,
    "Country211ZeroShot": MMEB_COUNTRY,
}
# Image wording per family with instructions="mmeb". Visual STS images are rendered sentences, which MMEB
# lacks; MoCa's nearest trained input is a page, so they get the page wording.
MMEB_FAMILIES = {
    "ImageClassification": MMEB_CLASSIFICATION,
    "ZeroShotClassification": MMEB_CLASSIFICATION,
    "ImageClustering": MMEB_CLASSIFICATION,
    "VisualSTS(eng)": VIDORE_DOCUMENT_PROMPT,
    "VisualSTS(multi)": VIDORE_DOCUMENT_PROMPT,
}
# Task prompts that contradict the task's inputs, replaced (docs/mteb.md "Upstream defects").
UPSTREAM_PROMPT_FIXES: dict[str, dict[str, str]] = {
    # mteb's prompt describes a text query, but the query is an image (category i2t).
    "Fashion200kI2TRetrieval": {"query": "Find a fashion description that matches the given image."},
}
ZERO_SHOT = "ZeroShotClassification"

Instructions = Literal["default", "mmeb"]


@dataclass(frozen=True)
class MTEBTask:
    """What the prompt rules read from an mteb task's metadata."""

    name: str
    """mteb task name."""
    type: str | None = None
    """mteb task type (``Any2AnyRetrieval``, ``DocumentUnderstanding``, ...)."""
    category: str | None = None
    """mteb category (``t2i``, ``t2it``, ``i2c``, ...)."""
    prompt: str | Mapping | None = field(default=None, compare=False)
    """The task's ``metadata.prompt``."""
    page: bool = False
    """Whether the corpus holds document pages (:func:`is_page_task`)."""


def is_page_task(
    name: str,
    task_type: str | None,
    *,
    category: str | None = None,
    adapted_from: Sequence[str] | None = None,
    lookup: Callable[[str], tuple[str | None, str | None, Sequence[str] | None] | None] | None = None,
) -> bool:
    """Whether an mteb task retrieves document pages, decided from its metadata.

    A page task is of type ``DocumentUnderstanding``; or a t2it corpus (pages + OCR text) of type
    ``Retrieval`` or ``Reranking``; or adapted from a page task; or a known screenshot corpus.

    Args:
        name: task name.
        task_type: task type.
        category: task category.
        adapted_from: names of the tasks this one is adapted from.
        lookup: name -> ``(type, category, adapted_from)`` of another task, or None when unknown.

    Returns:
        True for page tasks.
    """
    if task_type in PAGE_TASK_TYPES or name in SCREENSHOT_TASKS or name.startswith(SCREENSHOT_TASK_PREFIXES):
        return True
    if task_type in PAGE_CORPUS_TYPES and category == PAGE_CORPUS_CATEGORY:
        return True
    for parent in adapted_from or ():
        found = lookup(parent) if lookup is not None and parent != name else None
        if found is None:
            continue
        parent_type, parent_category, grandparents = found
        if is_page_task(parent, parent_type, category=parent_category, adapted_from=grandparents, lookup=lookup):
            return True
    return False


def override_keys(task: MTEBTask, side: str | None, modality: str) -> list[str]:
    """User-prompt keys for one input, most specific first.

    mteb's order (``Task-query``, ``Task``, ``TaskType-query``, ``TaskType``, ``query``), each tried first
    with the input's modality appended (``-image`` or ``-text``), then the bare modality. So
    ``{"ZeroShotClassification-image": ...}`` reaches the images of a zero-shot task but not its labels.
    """
    base = [f"{task.name}-{side}"] if side else []
    base.append(task.name)
    if task.type:
        base += [f"{task.type}-{side}", task.type] if side else [task.type]
    if side:
        base.append(side)
    return [key for b in base for key in (f"{b}-{modality}", b)] + [modality]


def mteb_instruction(
    task: MTEBTask,
    side: str | None,
    *,
    has_image: bool,
    has_text: bool,
    overrides: Mapping[str, str] | None = None,
    instructions: Instructions = "default",
) -> str | None:
    """The instruction for one kind of input of an mteb task, or ``None`` for none (module docstring).

    Args:
        task: the task's metadata.
        side: ``"query"``, ``"document"`` or ``None`` (symmetric tasks).
        has_image: the input has an image.
        has_text: the input has text.
        overrides: user prompts by key (:func:`override_keys`).
        instructions: ``"mmeb"`` gives MMEB's wording to the MMEB_FAMILIES.

    Returns:
        The instruction, or ``None``.
    """
    for key in override_keys(task, side, "image" if has_image else "text"):
        if overrides and key in overrides:
            return overrides[key] or None
    if task.page:
        if side == "document" and has_image:
            return VIDORE_DOCUMENT_PROMPT  # laid out verbatim by mteb_text
        if not has_image:
            return None
    else:
        prompt = UPSTREAM_PROMPT_FIXES.get(task.name) or task.prompt
        given = prompt.get(side) if isinstance(prompt, Mapping) else prompt
        if given and (side != "document" or isinstance(prompt, Mapping)):
            return given
    if not has_image:
        return None
    if instructions == "mmeb" and task.type in MMEB_FAMILIES and not has_text:
        return MMEB_TASK_INSTRUCTIONS.get(task.name, MMEB_FAMILIES[task.type])
    if not has_text:
        return MTEB_IMAGE_INSTRUCTION
    return MTEB_IMAGE_QUESTION_INSTRUCTION if side == "query" else MTEB_IMAGE_TEXT_INSTRUCTION


def mteb_text(text: str | None, *, has_image: bool, instruction: str | None) -> str:
    """Lay out the text that follows the image (if any) for one input, as in the module docstring.

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


def zero_shot_labels(labels: Sequence[str], *, instructions: Instructions = "default") -> list[str]:
    r"""Candidate label texts of a zero-shot task as MoCa reads them.

    Newlines are deleted: several mteb tasks build labels from ``readlines()`` and keep the line end
    inside the template (``"a photo of tench\n."``). With ``instructions="mmeb"`` the CLIP template is
    also stripped (:func:`bare_labels`), since MoCa was trained on MMEB's bare label texts.
    """
    labels = [label.replace("\r", "").replace("\n", "") for label in labels]
    return bare_labels(labels) if instructions == "mmeb" else labels


def bare_labels(labels: Sequence[str]) -> list[str]:
    """Strip the template shared by every label: ``"a photo of a {x}, a type of bird."`` -> ``"{x}"``.

    The template is the longest common prefix and suffix, cut back to word boundaries. With fewer than
    two labels, or when a label would become empty, the labels are returned unchanged.
    """
    if len(labels) < 2:
        return list(labels)
    prefix = os.path.commonprefix(list(labels))
    cut = len(prefix)
    while cut and prefix[cut - 1].isalnum():
        cut -= 1
    suffix = os.path.commonprefix([label[::-1] for label in labels])[::-1]
    shortest = min(len(label) for label in labels)
    start = max(0, len(suffix) - (shortest - cut))  # prefix and suffix may not overlap
    while start < len(suffix) and suffix[start].isalnum():
        start += 1
    keep = len(suffix) - start
    out = [label[cut : len(label) - keep].strip(" '\",") for label in labels]
    return list(labels) if not all(out) else out


def mteb_items(
    task: MTEBTask,
    side: str | None,
    texts: Sequence[str | None],
    images: Sequence,
    *,
    overrides: Mapping[str, str] | None = None,
    instructions: Instructions = "default",
) -> list:
    """Format one ``encode`` call's inputs into ``MoCaEncoder`` items (str, or dict with the image).

    Args:
        task: the task's metadata.
        side: ``"query"``, ``"document"`` or ``None``.
        texts: each input's text or ``None``.
        images: each input's image (any source ``MoCaEncoder`` reads; a list for several) or ``None``.
        overrides: user prompts (:func:`override_keys`).
        instructions: ``"default"`` or ``"mmeb"``.

    Returns:
        One item per input, in order.
    """
    if task.type == ZERO_SHOT and not any(image is not None for image in images):
        texts = zero_shot_labels([t or "" for t in texts], instructions=instructions)
    chosen: dict[tuple[bool, bool], str | None] = {}
    items = []
    for text, image in zip(texts, images, strict=True):
        kind = (image is not None, bool(text))
        if kind not in chosen:
            chosen[kind] = mteb_instruction(
                task, side, has_image=kind[0], has_text=kind[1], overrides=overrides, instructions=instructions
            )
        formatted = mteb_text(text, has_image=kind[0], instruction=chosen[kind])
        if image is None:
            items.append(formatted)
        elif isinstance(image, (list, tuple)):
            items.append({"text": formatted, "images": list(image)})
        else:
            items.append({"text": formatted, "image": image})
    return items
