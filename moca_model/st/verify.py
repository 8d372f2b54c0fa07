"""Probe inputs and the parity check of an exported sentence-transformers folder against MoCaEncoder.

The probes cover text, images and image + text, with and without prompts, in padded mixed batches, a text
passage under the (image-only) document prompt and MMEB's ``<|image_1|>`` placeholder. Their MoCaEncoder
equivalents come from :func:`as_moca_item`, which applies the same layout rule as the chat template
(:func:`moca_model.st.layout.layout_text`).
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from moca_model.st.layout import image_prompts, layout_text
from moca_model.st.write import ExportError, check_pil

logger = logging.getLogger(__name__)

TOLERANCE = {"float32": 1e-5}  # max |diff| of the probe embeddings
HALF_TOLERANCE = 2e-2  # bfloat16/float16: sentence-transformers' Pooling rounds the mean to the model dtype


def probe_images() -> list[Image.Image]:
    """Two deterministic RGB images of different sizes (so batches pad and token counts differ)."""
    images = []
    for w, h, colour in ((112, 84, (200, 30, 30)), (300, 196, (20, 90, 220))):
        ramp = np.linspace(0, 255, w * h * 3).reshape(h, w, 3).astype(np.uint8)
        img = Image.fromarray(ramp)
        ImageDraw.Draw(img).rectangle([w // 5, h // 4, w // 2, h // 2], fill=colour)
        images.append(img)
    return images


def probe_groups() -> list[tuple[str | None, list]]:
    """(prompt name, sentence-transformers inputs): text, images and image + text, with and without prompts."""
    a, b = probe_images()
    question = "What colour is the square?"
    mmeb = "<|image_1|>\nRepresent the given image with the following question: " + question  # Phi-3-V placeholder
    return [
        (None, ["What is the total revenue in 2021?", "a short query", a, {"image": b, "text": question},
                {"image": a, "text": mmeb}]),
        ("document", [a, b, "Revenue grew by 12% in 2021."]),  # a text passage: the page prompt is for pages
        ("image_question", [{"image": a, "text": question}, {"image": b, "text": "Where is it?"}]),
    ]  # fmt: skip


def as_moca_item(item, prompt: str | None, image_only=()) -> dict:
    """The MoCaEncoder item equivalent to one sentence-transformers input (str, PIL image or dict) under ``prompt``.

    ``image_only``: the prompts that apply to inputs with an image only (:func:`moca_model.st.layout.image_prompts`).
    """
    if isinstance(item, str):
        item = {"text": item}
    elif isinstance(item, Image.Image):
        item = {"image": item}
    images = item.get("image")
    images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
    return {"text": layout_text(item.get("text") or "", prompt, len(images), image_only), "images": images}


def reference(encoder, prompts: dict[str, str]) -> list[np.ndarray]:
    """MoCaEncoder's embeddings of every probe group."""
    only = image_prompts(prompts)
    return [encoder.encode([as_moca_item(x, prompts.get(name), only) for x in items], show_progress=False)
            for name, items in probe_groups()]  # fmt: skip


def verify(folder: Path, expected: list[np.ndarray], dtype: str) -> dict[str, float]:
    """Load ``folder`` with sentence-transformers (CPU, ``dtype``) and compare the probes with ``expected``.

    Returns:
        Max |diff| per probe group.

    Raises:
        ExportError: a group differs by more than the tolerance, or the image processor is not the PIL one.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu", local_files_only=True,
                                model_kwargs={"dtype": getattr(torch, dtype)})  # fmt: skip
    check_pil(model[0].processor)
    tol = TOLERANCE.get(dtype, HALF_TOLERANCE)
    diffs = {}
    for (name, items), ref in zip(probe_groups(), expected):
        got = model.encode(items, prompt_name=name, show_progress_bar=False)
        diffs[name or "none"] = diff = float(np.abs(got - ref).max())
        logger.info("parity, prompt %-14s max |diff| %.2e (tolerance %.0e)", name, diff, tol)
        if not diff <= tol:
            raise ExportError(f"sentence-transformers embeddings differ from MoCaEncoder's by {diff:.2e} "
                              f"(prompt {name!r}, tolerance {tol:.0e}); the folder was not written")  # fmt: skip
    del model
    gc.collect()
    return diffs
