"""Fixtures for moca_model tests: a tiny model/processor in memory and images of every kind."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw


@pytest.fixture
def tiny_model_and_processor(tiny_encoder):
    """Deep copies, so tests may switch attention modes freely."""
    import copy

    return copy.deepcopy(tiny_encoder.model), tiny_encoder.processor


def draw_image(w: int, h: int, seed: int = 0) -> Image.Image:
    """A deterministic RGB image with some structure (so embeddings differ between images)."""
    g = torch.Generator().manual_seed(seed)
    colour = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=g))
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    x0, y0 = int(w * 0.2), int(h * 0.2)
    d.rectangle([x0, y0, max(x0 + 1, int(w * 0.7)), max(y0 + 1, int(h * 0.6))], fill=colour)
    return img


@pytest.fixture
def mixed_items():
    """16 items of mixed length and modality: texts, images, image+text, interleaved two-image."""
    long_text = " ".join(f"word{i}" for i in range(60))
    items = [
        "a short query",
        long_text,
        draw_image(60, 40, 1),
        {"text": "\nRepresent the given document image.", "image": draw_image(200, 280, 2)},
        "what is the revenue in 2021?",
        {"text": "Find me an everyday image that matches the given caption: a red circle.", "image": None},
        draw_image(30, 300, 3),
        {"text": "\nRepresent the given image.", "image": draw_image(120, 120, 4)},
        {
            "text": "compare <|vision_start|><|image_pad|><|vision_end|> with "
            "<|vision_start|><|image_pad|><|vision_end|> please",
            "images": [draw_image(56, 56, 5), draw_image(90, 50, 6)],
        },
        "x",
        long_text[:100],
        draw_image(400, 120, 7),
        {
            "text": "<|image_1|>\nRepresent the given image with the following question: what colour?",
            "image": draw_image(80, 80, 8),
        },
        "Le rapport annuel de l'entreprise",
        {"text": "\nRepresent the given document image.", "image": draw_image(150, 100, 9)},
        "the last item " * 5,
    ]
    assert len(items) == 16
    return items


def st_export_ready() -> bool:
    """Whether this environment can export and load sentence-transformers folders (.venv-mteb, not .venv)."""
    try:
        from moca_model.export_st import check_environment

        check_environment()
        return True
    except Exception:
        return False
