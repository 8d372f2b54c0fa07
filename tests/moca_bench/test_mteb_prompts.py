"""The MTEB prompt table (moca_bench.prompts) is pure and runs in both venvs; the layouts it produces
encode as the explicit interleaved strings they stand for (here also on transformers 4.57 in .venv)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from moca_bench.prompts import (
    MMEB_CLASSIFICATION,
    MMEB_SCENE,
    MTEB_IMAGE_INSTRUCTION,
    MTEB_IMAGE_QUESTION_INSTRUCTION,
    MTEB_IMAGE_TEXT_INSTRUCTION,
    VIDORE_DOCUMENT_PROMPT,
    MTEBTask,
    bare_labels,
    is_page_task,
    mteb_instruction,
    mteb_items,
    mteb_text,
    override_keys,
    zero_shot_labels,
)
from moca_model.processing_moca import IMAGE_PLACEHOLDER

VIDORE_PROMPT = {"query": "Find a screenshot that relevant to the user's question."}


def layout(
    text, task="T", task_type="Any2AnyRetrieval", side=None, image=False, task_prompt=None, overrides=None, **kw
):
    view = MTEBTask(task, task_type, kw.pop("category", None), task_prompt, page=is_page_task(task, task_type))
    instruction = mteb_instruction(view, side, has_image=image, has_text=bool(text), overrides=overrides, **kw)
    return mteb_text(text, has_image=image, instruction=instruction)


def test_page_tasks_use_raw_queries_and_the_vidore_document_prompt():
    assert is_page_task("Vidore2ESGReportsRetrieval", "DocumentUnderstanding")
    assert is_page_task("VisRAGRetChartQA", "Retrieval")
    assert is_page_task("VDRMultilingualRetrieval", "Retrieval", category="t2i")
    assert is_page_task("AnyNewReranking", "Reranking", category="t2it")  # pages + OCR text
    assert not is_page_task("AnyNewReranking", "Reranking", category="t2i")
    assert not is_page_task("MSCOCOT2IRetrieval", "Any2AnyRetrieval")
    registry = {"Parent": ("DocumentUnderstanding", "t2i", ()), "Child": ("Retrieval", "t2i", ("Parent",))}
    assert is_page_task("Grandchild", "Reranking", category="t2i", adapted_from=["Child"], lookup=registry.get)
    assert not is_page_task("X", "Reranking", category="t2i", adapted_from=["Unknown"], lookup=registry.get)
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
    # a modality suffix targets one side of the input only; the bare key reaches both
    by_modality = {"Any2AnyRetrieval-image": "img", "Any2AnyRetrieval": "both"}
    assert layout(None, side="query", image=True, overrides=by_modality) == "\nimg\n"
    assert layout("x", side="query", overrides=by_modality) == "both x\n"
    assert layout("x", side="query", overrides={"T-text": "t", "T": "b"}) == "t x\n"
    assert layout(None, side="query", image=True, overrides={"text": "t"}) == f"\n{MTEB_IMAGE_INSTRUCTION}\n"
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


def test_override_keys_follow_mteb_order_with_modality_first():
    view = MTEBTask("Task", "ZeroShotClassification")
    assert override_keys(view, "query", "text") == [
        "Task-query-text", "Task-query", "Task-text", "Task",
        "ZeroShotClassification-query-text", "ZeroShotClassification-query",
        "ZeroShotClassification-text", "ZeroShotClassification", "query-text", "query", "text",
    ]  # fmt: skip
    assert override_keys(view, None, "image")[:2] == ["Task-image", "Task"]


def test_mmeb_instructions_reach_the_mmeb_families_only():
    cls = {"task_type": "ImageClassification", "image": True}
    assert layout(None, "Imagenet1k", **cls) == f"\n{MTEB_IMAGE_INSTRUCTION}\n"
    assert layout(None, "Imagenet1k", **cls, instructions="mmeb") == f"\n{MMEB_CLASSIFICATION}\n"
    assert layout(None, "SUN397", **cls, instructions="mmeb") == f"\n{MMEB_SCENE}\n"
    sts = layout(None, "STS12VisualSTS", "VisualSTS(eng)", image=True, instructions="mmeb")
    assert sts == VIDORE_DOCUMENT_PROMPT
    assert layout(None, side="document", image=True, instructions="mmeb") == f"\n{MTEB_IMAGE_INSTRUCTION}\n"
    assert layout("label", "Imagenet1kZeroShot", "ZeroShotClassification", instructions="mmeb") == "label"
    # a user override still wins over the mmeb wording
    got = layout(None, "Imagenet1k", **cls, instructions="mmeb", overrides={"ImageClassification-image": "mine"})
    assert got == "\nmine\n"


def test_zero_shot_labels_lose_newlines_and_with_mmeb_their_template():
    imagenet = ["a photo of tench\n.", "a photo of goldfish\n."]  # mteb's Imagenet1kZeroShot, verbatim
    assert zero_shot_labels(imagenet) == ["a photo of tench.", "a photo of goldfish."]
    assert zero_shot_labels(imagenet, instructions="mmeb") == ["tench", "goldfish"]
    gtsrb = [
        "a close up photo of a 'red and white circle 20 kph speed limit\n' traffic sign.",
        "a close up photo of a 'stop\n' traffic sign.",
    ]
    assert zero_shot_labels(gtsrb, instructions="mmeb") == ["red and white circle 20 kph speed limit", "stop"]
    birds = ["a photo of a Acadian Flycatcher, a type of bird.", "a photo of a Acorn Woodpecker, a type of bird."]
    assert bare_labels(birds) == ["Acadian Flycatcher", "Acorn Woodpecker"]  # common "Ac" is not eaten
    clevr = ["very nearby shapes.", "nearby shapes.", " shapes."]  # an unnamed class: templates kept
    assert bare_labels(clevr) == clevr
    assert bare_labels(["only one"]) == ["only one"]
    assert bare_labels(["a negative review of a movie", "a positive review of a movie"]) == ["negative", "positive"]


def test_items_keep_images_and_order():
    view = MTEBTask("T", "Any2AnyRetrieval", "it2t")
    items = mteb_items(view, "query", ["q1", None, "q3"], ["img", "img2", None])
    assert items == [
        {"text": f"\n{MTEB_IMAGE_QUESTION_INSTRUCTION} q1\n", "image": "img"},
        {"text": f"\n{MTEB_IMAGE_INSTRUCTION}\n", "image": "img2"},
        "q3",
    ]
    assert mteb_items(view, "query", [None], [["a", "b"]]) == [
        {"text": f"\n{MTEB_IMAGE_INSTRUCTION}\n", "images": ["a", "b"]}
    ]
