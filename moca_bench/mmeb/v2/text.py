r"""Every MMEB-V2 prompt string and text rule, exactly as the reference harness writes them.

Source: TIGER-AI-Lab/VLM2Vec @ 6e1e1d4, ``src/data/eval_dataset/*.py`` and ``src/model/processor.py``
(``process_input_text`` for the Qwen2-VL / Qwen2.5-VL backbones). The reference marks a visual input
with a bare ``<|image_pad|>`` / ``<|video_pad|>`` followed by a space and no ``<|vision_start|>``;
:func:`model_text` turns each bare pad token into MoCa's three-token placeholder
(``<|vision_start|><|image_pad|><|vision_end|>``), the form MoCa was trained with, at the same position.
Everything else (instructions, the " \\n" -> "\\n" fix, trailing newlines, double spaces) is kept byte for byte.
"""

from __future__ import annotations

import hashlib
import os

from moca_model.processing_moca import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
PHI3_IMAGE = "<|image_1|>"

# Video classification (video_classification_utils.py DATASET_INSTRUCTION; Breakfast's trailing space is the data's)
VIDEO_CLS_INSTRUCTION = {
    "K700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",
}
# Video retrieval queries (msrvtt/msvd/didemo/youcook2/vatex_dataset.py TASK_INST_QRY) and their shared target
VIDEO_RET_QUERY = {
    "MSR-VTT": "Find a video that contains the following visual content:",
    "MSVD": "Find the video snippet that corresponds to the given summary:",
    "DiDeMo": "Find a video that includes the following described scenes:",
    "YouCook2": "Find a video that demonstrates the following action while making a recipe:",
    "VATEX": "Select a video that fits the description provided:",
}
VIDEO_TARGET = "Understand the content of the provided video."
MOMENT_QUERY = "Find the clip that corresponds to the described scene in the given video:"
MOMENTSEEKER_QUERY = {
    "text": "Find the clip that corresponds to the given text:",
    "image": "Select the video clip that aligns with the given text and image:",
    "video": "Find the clip that corresponds to the given sentence and video segment:",
}
MOMENTSEEKER_TARGET = "Understand the content of the provided video clip."
# Video QA (videomme/nextqa/egoschema/mvbench/activitynetqa_dataset.py TASK_PROMPT; note the trailing space)
QA_PROMPT = ("Given a video and a question, select the most accurate answer from the provided candidates. "
             "Return only the exact text of your chosen answer. Question: ")  # fmt: skip
QA_LETTERS = ("A", "B", "C", "D")  # Video-MME answers are letters
YES_NO = ("yes", "no")
# Visual documents (vidore_dataset.py / visrag_dataset.py)
DOC_QUERY = "Find a document image that matches the given query:"
DOC_TARGET = "Understand the content of the provided document image."


def input_text(instruction: str, text: str | None = None, *, video: bool = False, image: bool = False) -> str:
    """``process_input_text``: instruction, then ``" " + text`` when text is non-empty; pad tokens in front."""
    prompt = instruction + (" " + text if text else "")
    if video:
        prompt = VIDEO_TOKEN + " " + prompt
    if image:
        prompt = IMAGE_TOKEN + " " + prompt
    return prompt


def v1_fix(text: str) -> str:
    r"""The image parsers' "to stay consistent with v1 eval" step: ``" \\n"`` -> ``"\\n"``."""
    return text.replace(" \n", "\n")


def qa_query(question: str) -> str:
    """Video QA query: ``f"{video token} {QA_PROMPT} {question}"`` (so a double space after "Question:")."""
    return f"{VIDEO_TOKEN} {QA_PROMPT} {question}"


def qa_template(question: str, candidates: list[str], answer) -> tuple[str, list[str], str]:
    """``vision_utils.qa_template``: options appended as ``(A) ...``; the answer in the same form.

    An answer that is not among the candidates gets the letter ``@`` (index -1), so it can never match.

    Returns:
        (query, options, formatted answer).
    """
    lines, options, answer_idx = [f"{question}\n", "Options:\n"], [], -1
    for idx, c in enumerate(candidates):
        lines.append(f"({chr(ord('A') + idx)}) {c}\n")
        options.append(f"({chr(ord('A') + idx)}) {c}")
        if c == answer:
            answer_idx = idx
    return "".join(lines).rstrip(), options, f"({chr(ord('A') + answer_idx)}) {answer}"


def strip_option(option: str) -> str:
    """Video-MME / EgoSchema candidate text: ``o[o.find('. '):].strip('. ')``.

    Drops a leading ``"A. "`` and any trailing dots or spaces. Without ``". "`` in the option, ``find``
    returns -1 and only the LAST character survives (a reference quirk, reproduced).
    """
    return option[option.find(". ") :].strip(". ")


def visrag_file_name(name: str) -> str:
    """VisRAG page file name: first 50 characters of the stem, ``_``, 8 hex of md5(name), the extension."""
    base, ext = os.path.splitext(name)  # noqa: PTH122 - the reference's exact split
    return base[:50] + "_" + hashlib.md5(name.encode("utf-8")).hexdigest()[:8] + ext


def model_text(text: str) -> str:
    """The reference text with each bare pad token turned into MoCa's placeholder (same position)."""
    return text.replace(IMAGE_TOKEN, IMAGE_PLACEHOLDER).replace(VIDEO_TOKEN, VIDEO_PLACEHOLDER)
