r"""How a sentence-transformers model exported by :mod:`moca_model.export_st` lays out MoCa's input.

Plain data (no heavy imports): the chat template that renders MoCa's layout, the default prompts, and the
settings of sentence-transformers' own ``Transformer`` module that the export writes.

**The layout** (moca-method.md §2, :func:`moca_model.processing_moca.normalize_item`): no chat markup, no
system prompt, no EOS. sentence-transformers turns every input into a chat message (dicts, images, text,
mixed batches) and a ``prompt=`` / ``prompt_name=`` into a system message; :data:`CHAT_TEMPLATE` renders
that message as MoCa reads it:

1. one ``<|vision_start|><|image_pad|><|vision_end|>`` per image, first, unless the text already places
   its images with that placeholder (interleaved input, as in :class:`moca_model.MoCaEncoder`);
2. the prompt; a prompt containing ``{text}`` wraps the text instead (MMEB's ``"\n{instruction} {text}\n"``).
   The image prompts (:data:`IMAGE_PROMPT_NAMES`: ``document``, ``image``, ``image_question``,
   ``image_text``) apply to inputs with an image only: ``encode_document`` on a text passage encodes the raw
   text, as MoCa's text targets are (the page prompt would otherwise be glued onto the passage);
3. the text.

As in MoCaEncoder (:func:`moca_model.processing_moca.normalize_item`), MMEB's Phi-3-V placeholders
``<|image_1|>``, ``<|image_2|>``... become Qwen's placeholder; placeholders without images are removed; a
placeholder count that differs from the image count raises. An input with nothing to read becomes a
single space (MoCaEncoder does the same). Video or audio parts raise: MoCa reads text and images.
"""

from __future__ import annotations

import json

from moca_model.prompts import (
    IMAGE_INSTRUCTION,
    IMAGE_QUESTION_INSTRUCTION,
    IMAGE_TEXT_INSTRUCTION,
    VIDORE_DOCUMENT_PROMPT,
    VIDORE_QUERY_PROMPT,
)

TEXT_SLOT = "{text}"  # in a prompt: where the input's text goes (otherwise it follows the prompt)

PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"  # moca_model.processing_moca.IMAGE_PLACEHOLDER
IMAGE_PROMPT_NAMES = ("document", "image", "image_question", "image_text")  # prompts for inputs with an image

_TEMPLATE = """\
{#- MoCa's input layout (moca_model/st/layout.py): images first unless the text places them, then the
    prompt (the system message), then the text; a prompt containing {text} wraps the text. An image prompt
    (listed below) applies to inputs with an image only. <|image_N|> becomes Qwen's placeholder.
    No chat markup, no EOS; an empty input reads as one space. -#}
{%- set image_prompts = IMAGE_PROMPTS -%}
{%- set ph = '<|vision_start|><|image_pad|><|vision_end|>' -%}
{%- set ns = namespace(images=0, prompt='', text='') -%}
{%- for message in messages -%}
{%- set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string
    else message['content'] -%}
{%- for part in parts -%}
{%- if part['type'] == 'text' and message['role'] == 'system' -%}
{%- set ns.prompt = ns.prompt + part['text'] -%}
{%- elif part['type'] == 'text' -%}
{%- set ns.text = ns.text + part['text'] -%}
{%- elif part['type'] == 'image' -%}
{%- set ns.images = ns.images + 1 -%}
{%- else -%}
{{- raise_exception('MoCa reads text and images only; got a ' ~ part['type'] ~ ' part') -}}
{%- endif -%}
{%- endfor -%}
{%- endfor -%}
{%- set prompt = '' if ns.images == 0 and ns.prompt in image_prompts else ns.prompt -%}
{%- set body = prompt.replace('{text}', ns.text) if '{text}' in prompt else prompt + ns.text -%}
{%- set pieces = body.split('<|image_') -%}
{%- set out = namespace(text=pieces[0]) -%}
{%- for piece in pieces[1:] -%}
{%- set end = piece.find('|>') -%}
{%- if end > 0 and piece[:end].isdigit() -%}
{%- set out.text = out.text + ph + piece[end + 2:] -%}
{%- else -%}
{%- set out.text = out.text + '<|image_' + piece -%}
{%- endif -%}
{%- endfor -%}
{%- set found = out.text.count(ph) -%}
{%- if ns.images and not found -%}
{%- set out.text = ph * ns.images + out.text -%}
{%- elif found and not ns.images -%}
{%- set out.text = out.text.replace(ph, '') -%}
{%- elif found != ns.images -%}
{{- raise_exception(found ~ ' image placeholders for ' ~ ns.images ~ ' images') -}}
{%- endif -%}
{{- out.text if out.text else ' ' -}}"""


def chat_template(image_prompts) -> str:
    """The chat template, with ``image_prompts`` (the texts of the prompts that apply to image inputs only)."""
    return _TEMPLATE.replace("IMAGE_PROMPTS", json.dumps(sorted(set(image_prompts))))


def image_prompts(prompts: dict[str, str]) -> list[str]:
    """The texts of the image prompts among ``prompts`` (:data:`IMAGE_PROMPT_NAMES`)."""
    return [text for name, text in prompts.items() if name in IMAGE_PROMPT_NAMES]


# name -> prompt. ViDoRe's pair (``encode_query`` / ``encode_document`` pick them up by name) and MMEB's
# wording for image inputs; any other MMEB instruction is passed as ``prompt="... {text}\n"``.
DEFAULT_PROMPTS: dict[str, str] = {
    "query": VIDORE_QUERY_PROMPT,  # ViDoRe query: the raw text
    "document": VIDORE_DOCUMENT_PROMPT,  # ViDoRe page: the image, then this
    "image": f"\n{IMAGE_INSTRUCTION}\n",  # MMEB image (a candidate, or an image-only query)
    "image_question": f"\n{IMAGE_QUESTION_INSTRUCTION} {TEXT_SLOT}\n",  # MMEB image + question (a query)
    "image_text": f"\n{IMAGE_TEXT_INSTRUCTION} {TEXT_SLOT}\n",  # MMEB image + related text (a candidate)
}

# sentence-transformers' Transformer module: every input goes through the chat template ("message"); text and
# image are listed so that sentence-transformers accepts them (and reads a string naming an image file as an
# image). The model's last_hidden_state feeds mean pooling.
_FORWARD = {"method": "forward", "method_output_name": "last_hidden_state"}
MODALITY_CONFIG = {"text": _FORWARD, "image": _FORWARD, "message": {**_FORWARD, "format": "structured"}}
MODULE_OUTPUT_NAME = "token_embeddings"
# use_fast=False selects transformers' PIL image processor (the one MoCa was trained with). sentence-
# transformers cannot save this key itself, so a model re-saved with model.save() loses it (see the card).
PROCESSOR_KWARGS = {"use_fast": False}
# Truncation cuts the text like MoCaEncoder does; sentence-transformers' suffix restore would write the tail of
# a {text}-wrapping prompt over the last kept tokens.
PROCESSING_KWARGS = {"chat_template": {"restore_suffix": False}}
# Versions the exported folder needs, checked by sentence-transformers before it loads anything.
REQUIREMENTS = {
    "transformers": {
        "specifier": ">=5.2,<6",
        "reason": "bidirectional attention is read from text_config.is_causal, which transformers<5.2 ignores "
        "(the model would silently run causal attention)",
    },
    "sentence-transformers": {
        "specifier": ">=6.2,<7",
        "reason": "the multimodal Transformer module and chat-template inputs, as exported and tested",
    },
}


def apply_prompt(text: str, prompt: str | None) -> str:
    """The text MoCa reads after the images for one input, as :data:`CHAT_TEMPLATE` lays it out.

    Args:
        text: the input's text (``""`` when it has none).
        prompt: the prompt, or None.

    Returns:
        ``prompt`` with ``{text}`` replaced by ``text`` when it has that slot, else ``prompt + text``.
    """
    prompt = prompt or ""
    return prompt.replace(TEXT_SLOT, text) if TEXT_SLOT in prompt else prompt + text


CHAT_TEMPLATE = chat_template(image_prompts(DEFAULT_PROMPTS))  # the template of an export with the default prompts


def layout_text(text: str, prompt: str | None, n_images: int, image_only: list[str] | tuple = ()) -> str:
    """The text MoCaEncoder must read for one input so that it equals :data:`CHAT_TEMPLATE`'s rendering.

    Args:
        text: the input's text (``""`` when it has none).
        prompt: the prompt, or None.
        n_images: how many images the input has.
        image_only: prompts that apply to inputs with an image only (:func:`image_prompts`).

    Returns:
        :func:`apply_prompt`'s text, without the prompt when it is an image prompt and there is no image.
    """
    return apply_prompt(text, None if n_images == 0 and prompt in image_only else prompt)
