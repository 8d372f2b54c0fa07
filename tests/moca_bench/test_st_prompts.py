"""The sentence-transformers export's default prompts lay inputs out exactly as the harness adapters do."""

from __future__ import annotations

import pytest

from moca_bench.prompts import (
    MTEB_IMAGE_INSTRUCTION,
    MTEB_IMAGE_QUESTION_INSTRUCTION,
    MTEB_IMAGE_TEXT_INSTRUCTION,
    VIDORE_DOCUMENT_PROMPT,
    VIDORE_QUERY_PROMPT,
    mteb_text,
)
from moca_model.st.layout import DEFAULT_PROMPTS, apply_prompt


def test_vidore_pair():
    assert apply_prompt("What is the revenue?", DEFAULT_PROMPTS["query"]) == "What is the revenue?"
    assert DEFAULT_PROMPTS["query"] == VIDORE_QUERY_PROMPT
    assert apply_prompt("", DEFAULT_PROMPTS["document"]) == VIDORE_DOCUMENT_PROMPT


@pytest.mark.parametrize(
    ("name", "instruction", "text"),
    [("image", MTEB_IMAGE_INSTRUCTION, None), ("image_question", MTEB_IMAGE_QUESTION_INSTRUCTION, "what colour?"),
     ("image_text", MTEB_IMAGE_TEXT_INSTRUCTION, "a caption")],
)  # fmt: skip
def test_mmeb_image_prompts_match_the_mteb_adapter(name, instruction, text):
    want = mteb_text(text, has_image=True, instruction=instruction)
    assert apply_prompt(text or "", DEFAULT_PROMPTS[name]) == want


def test_chat_template_renders_apply_prompt():
    """The Jinja template (what sentence-transformers runs) and apply_prompt (what the tests compare with) agree."""
    jinja2 = pytest.importorskip("jinja2")
    from moca_model.st.layout import CHAT_TEMPLATE

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
    template = env.from_string(CHAT_TEMPLATE)
    ph = "<|vision_start|><|image_pad|><|vision_end|>"

    def render(prompt, parts):
        system = [{"role": "system", "content": [{"type": "text", "text": prompt}]}] if prompt else []
        return template.render(messages=[*system, {"role": "user", "content": parts}], raise_exception=raise_exception)

    img, txt = {"type": "image", "image": None}, {"type": "text", "text": "what colour?"}
    for name, prompt in DEFAULT_PROMPTS.items():
        assert render(prompt, [txt, img]) == ph + apply_prompt("what colour?", prompt), name  # images first
        assert render(prompt, [img, img]) == 2 * ph + apply_prompt("", prompt), name
    placed = {"type": "text", "text": f"compare {ph} and {ph}"}
    assert render(None, [placed, img, img]) == f"compare {ph} and {ph}"  # the text places its images
    assert render(None, [{"type": "text", "text": ""}]) == " "  # MoCaEncoder encodes empty text as a space
    with pytest.raises(jinja2.exceptions.TemplateError, match="text and images only"):
        render(None, [{"type": "video", "video": None}])


def test_chat_template_image_prompts_placeholders_and_mismatches():
    """Image prompts apply to image inputs only; <|image_N|> becomes Qwen's placeholder; counts must match."""
    jinja2 = pytest.importorskip("jinja2")
    from moca_model.st.layout import CHAT_TEMPLATE, image_prompts, layout_text

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    template = jinja2.Environment().from_string(CHAT_TEMPLATE)
    ph = "<|vision_start|><|image_pad|><|vision_end|>"
    img = {"type": "image", "image": None}

    def render(prompt, text, n_images=0):
        system = [{"role": "system", "content": [{"type": "text", "text": prompt}]}] if prompt else []
        parts = [{"type": "text", "text": text}, *[img] * n_images]
        return template.render(messages=[*system, {"role": "user", "content": parts}], raise_exception=raise_exception)

    only = image_prompts(DEFAULT_PROMPTS)
    assert sorted(only) == sorted(DEFAULT_PROMPTS[n] for n in ("document", "image", "image_question", "image_text"))
    passage = "Revenue grew by 12% in 2021."
    for name, prompt in DEFAULT_PROMPTS.items():
        assert render(prompt, passage) == layout_text(passage, prompt, 0, only), name
        assert render(prompt, passage, 1) == ph + layout_text(passage, prompt, 1, only), name
    assert render(DEFAULT_PROMPTS["document"], passage) == passage  # not "...document image.Revenue grew..."
    custom = "Find me an everyday image that matches the given caption: {text}\n"
    assert render(custom, "a red circle") == apply_prompt("a red circle", custom)  # other prompts: every input
    assert render(None, "<|image_1|>\nwhat colour?", 1) == ph + "\nwhat colour?"
    assert render(None, "compare <|image_1|> with <|image_12|>", 2) == f"compare {ph} with {ph}"
    assert render(None, "<|image_x|> stays, <|image_|> too", 0) == "<|image_x|> stays, <|image_|> too"
    assert render(None, "a stray <|image_1|> placeholder") == "a stray  placeholder"  # as MoCaEncoder removes it
    with pytest.raises(jinja2.exceptions.TemplateError, match="2 image placeholders for 1 images"):
        render(None, f"{ph} and {ph}", 1)
