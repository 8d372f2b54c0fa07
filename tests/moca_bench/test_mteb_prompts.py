"""The MTEB prompt table (moca_bench.prompts) is pure and runs in both venvs; the layouts it produces
encode as the explicit interleaved strings they stand for (here also on transformers 4.57 in .venv)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from moca_bench.prompts import (
    MTEB_IMAGE_INSTRUCTION,
    MTEB_IMAGE_QUESTION_INSTRUCTION,
    MTEB_IMAGE_TEXT_INSTRUCTION,
    VIDORE_DOCUMENT_PROMPT,
    is_page_task,
    mteb_instruction,
    mteb_text,
)
from moca_model.processing_moca import IMAGE_PLACEHOLDER

VIDORE_PROMPT = {"query": "Find a screenshot that relevant to the user's question."}


def layout(text, task="T", task_type="Any2AnyRetrieval", side=None, image=False, task_prompt=None, overrides=None):
    instruction = mteb_instruction(
        task,
        task_type,
        side,
        has_image=image,
        has_text=bool(text),
        task_prompt=task_prompt,
        overrides=overrides,
    )
    return mteb_text(text, has_image=image, instruction=instruction)


def test_page_tasks_use_raw_queries_and_the_vidore_document_prompt():
    assert is_page_task("Vidore2ESGReportsRetrieval", "DocumentUnderstanding")
    assert is_page_task("VisRAGRetChartQA", "Retrieval")
    assert not is_page_task("MSCOCOT2IRetrieval", "Any2AnyRetrieval")
    page = {"task": "Vidore2ESGReportsRetrieval", "task_type": "DocumentUnderstanding", "task_prompt": VIDORE_PROMPT}
    assert layout("what is ESG?", side="query", **page) == "what is ESG?"  # the task's own prompt is not used
    assert layout(None, side="document", image=True, **page) == VIDORE_DOCUMENT_PROMPT
    assert layout("OCR markdown", side="document", image=True, **page) == VIDORE_DOCUMENT_PROMPT  # page text unused
    assert layout("a text-only page", side="document", **page) == "a text-only page"


def test_other_tasks_follow_the_mmeb_layout():
    assert layout("a dog", side="query") == "a dog"  # no prompt anywhere: raw text
    assert layout("a dog", side="query", task_prompt={"query": "Find an image."}) == "Find an image. a dog\n"
    assert layout(None, side="document", image=True) == f"\n{MTEB_IMAGE_INSTRUCTION}\n"
    assert layout("what?", side="query", image=True) == f"\n{MTEB_IMAGE_QUESTION_INSTRUCTION} what?\n"
    assert layout("caption", side="document", image=True) == f"\n{MTEB_IMAGE_TEXT_INSTRUCTION} caption\n"
    assert layout(None, side="query", image=True, task_prompt={"query": "Find a caption."}) == "\nFind a caption.\n"
    # a string prompt applies to queries and symmetric tasks, never to documents
    assert layout("x", side="query", task_prompt="Classify:") == "Classify: x\n"
    assert layout("x", side=None, task_prompt="Classify:") == "Classify: x\n"
    assert layout("x", side="document", task_prompt="Classify:") == "x"


def test_user_overrides_win_in_mteb_key_order():
    keys = {"T-query": "a", "T": "b", "Any2AnyRetrieval-query": "c", "Any2AnyRetrieval": "d", "query": "e"}
    for drop in [None, "T-query", "T", "Any2AnyRetrieval-query", "Any2AnyRetrieval"]:
        keys.pop(drop, None)
        assert layout("x", side="query", overrides=keys) == f"{next(iter(keys.values()))} x\n"
    # "" switches instructions off, even the ViDoRe page prompt
    page = {"task": "VidoreDocVQARetrieval", "task_type": "DocumentUnderstanding"}
    assert layout(None, side="document", image=True, overrides={"document": ""}, **page) == ""
    assert layout("q", side="query", overrides={"VidoreDocVQARetrieval-query": "Find:"}, **page) == "Find: q\n"


@pytest.fixture(scope="module")
def page_image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (60, 44, 3), dtype=np.uint8))


def test_layouts_encode_as_the_interleaved_strings_they_stand_for(tiny_encoder, page_image):
    text = layout(None, "VidoreDocVQARetrieval", "DocumentUnderstanding", "document", image=True)
    question = layout("what?", side="query", image=True)
    got = tiny_encoder.encode(
        [{"text": text, "image": page_image}, {"text": question, "image": page_image}], show_progress=False
    )
    want = tiny_encoder.encode(
        [
            {"text": IMAGE_PLACEHOLDER + "\nRepresent the given document image.", "images": [page_image]},
            {"text": f"{IMAGE_PLACEHOLDER}\n{MTEB_IMAGE_QUESTION_INSTRUCTION} what?\n", "images": [page_image]},
        ],
        show_progress=False,
    )
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert not np.allclose(got[0], got[1], atol=1e-4)  # the prompt matters
