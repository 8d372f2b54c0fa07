"""Image renderers for the demo world: coloured shapes, handwritten digits and documentation pages.

Every image carries content that only the image tells (which colour, shape, position and size; which
digit; which module a page documents). Renderers are pure functions of their arguments and a
``numpy.random.Generator``, so the world is deterministic for a seed. Fonts come from matplotlib's
bundled DejaVu files, so the pages look the same on every machine.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
}
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
SIZES = ("small", "large")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COUNT_WORDS = ("one", "two", "three", "four")

SHAPE_CANVAS = 112  # 16 merged visual tokens with the tiny processor
DIGIT_CANVAS = 56  # 4 merged visual tokens
SCENE_CANVAS = 112  # a 2x2 grid of 56-px cells
PAGE_CANVAS = 168  # 36 merged visual tokens

# Short, distinctive standard-library modules whose docstrings exist on every CPython >= 3.10.
PAGE_MODULES = (
    "json", "math", "csv", "re", "os", "time", "random", "string",
    "struct", "heapq", "bisect", "zlib", "uuid", "glob", "gzip", "copy",
)  # fmt: skip


def _font(size: int, *, bold: bool = False) -> ImageFont.FreeTypeFont:
    import matplotlib

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return _cached_font(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), size)


@functools.lru_cache(maxsize=64)
def _cached_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _jitter_colour(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = 25) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    grey = int(rng.integers(60, 140))
    return Image.new("RGB", (size, size), _jitter_colour((grey, grey, grey), rng, 12))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], radius: float, fill) -> None:
    cx, cy = centre
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=fill)
    elif shape == "square":
        r = radius * 0.9
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius * 0.8), (cx + radius, cy + radius * 0.8)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def shape_caption(colour: str, shape: str, position: str, size: str) -> str:
    """The caption naming all four attributes, e.g. ``a small red circle at the top left``."""
    return f"a {size} {colour} {shape} at the {position}"


def render_shape(rng: np.random.Generator, colour: str, shape: str, position: str, size: str) -> Image.Image:
    """One shape on a 112-px canvas, in the quadrant ``position``, with jittered place, size and colours.

    Returns:
        An RGB image of SHAPE_CANVAS x SHAPE_CANVAS pixels.
    """
    img = _background(rng, SHAPE_CANVAS)
    draw = ImageDraw.Draw(img)
    half = SHAPE_CANVAS / 2
    radius = rng.uniform(13, 16) if size == "small" else rng.uniform(21, 25)
    col = 1 if position.endswith("right") else 0
    row = 1 if position.startswith("bottom") else 0
    slack = half / 2 - radius - 2
    cx = half * col + half / 2 + rng.uniform(-slack, slack)
    cy = half * row + half / 2 + rng.uniform(-slack, slack)
    _draw_shape(draw, shape, (cx, cy), radius, _jitter_colour(COLOURS[colour], rng))
    return img


def render_scene(rng: np.random.Generator, objects: list[tuple[str, str] | None]) -> Image.Image:
    """Up to four shapes, one per 56-px cell of a 2x2 grid (cell order: POSITIONS).

    Args:
        rng: randomness for jitter.
        objects: four entries, each ``(colour, shape)`` or None for an empty cell.

    Returns:
        An RGB image of SCENE_CANVAS x SCENE_CANVAS pixels.
    """
    img = _background(rng, SCENE_CANVAS)
    draw = ImageDraw.Draw(img)
    cell = SCENE_CANVAS / 2
    for k, obj in enumerate(objects):
        if obj is None:
            continue
        colour, shape = obj
        radius = rng.uniform(15, 20)
        slack = cell / 2 - radius - 2
        cx = cell * (k % 2) + cell / 2 + rng.uniform(-slack, slack)
        cy = cell * (k // 2) + cell / 2 + rng.uniform(-slack, slack)
        _draw_shape(draw, shape, (cx, cy), radius, _jitter_colour(COLOURS[colour], rng))
    return img


def scene_cell(img: Image.Image, k: int) -> Image.Image:
    """Crop cell ``k`` (0..3, POSITIONS order) of a scene: a 56-px image of one object."""
    cell = SCENE_CANVAS // 2
    x, y = cell * (k % 2), cell * (k // 2)
    return img.crop((x, y, x + cell, y + cell))


@functools.lru_cache(maxsize=1)
def digit_bitmaps() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: (1797, 8, 8) intensities in 0..16 and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32), data.target.astype(np.int64)


def render_digit(rng: np.random.Generator, bitmap: np.ndarray) -> Image.Image:
    """An 8x8 handwritten digit upscaled to 56 px with jittered ink and paper colours.

    Args:
        rng: randomness for colours.
        bitmap: (8, 8) intensities in 0..16.

    Returns:
        An RGB image of DIGIT_CANVAS x DIGIT_CANVAS pixels.
    """
    ink = np.array(_jitter_colour((20, 20, 20), rng, 20), dtype=np.float32)
    paper = np.array(_jitter_colour((235, 235, 225), rng, 20), dtype=np.float32)
    alpha = (bitmap / 16.0)[..., None]
    small = (alpha * ink + (1 - alpha) * paper).clip(0, 255).astype(np.uint8)
    return Image.fromarray(small, "RGB").resize((DIGIT_CANVAS, DIGIT_CANVAS), Image.BILINEAR)


@functools.cache
def module_doc(name: str) -> tuple[str, list[str]]:
    """A standard-library module's docstring as (summary sentence, remaining paragraph lines)."""
    doc = inspect.getdoc(importlib.import_module(name)) or name
    paragraphs = [" ".join(p.split()) for p in doc.split("\n\n") if p.strip()]
    summary = paragraphs[0].split(". ")[0].rstrip(".") + "."
    return summary, paragraphs


def render_page(rng: np.random.Generator, module: str) -> Image.Image:
    """A documentation page: the module name as a bold title, then its docstring in small type.

    Returns:
        An RGB image of PAGE_CANVAS x PAGE_CANVAS pixels.
    """
    paper = _jitter_colour((248, 246, 240), rng, 7)
    img = Image.new("RGB", (PAGE_CANVAS, PAGE_CANVAS), paper)
    draw = ImageDraw.Draw(img)
    x0 = int(rng.integers(6, 16))
    y = int(rng.integers(4, 14))
    title_font = _font(int(rng.integers(26, 32)), bold=True)
    draw.text((x0, y), module, font=title_font, fill=_jitter_colour((20, 30, 90), rng, 20))
    y += title_font.size + 10
    draw.line([(x0, y - 5), (PAGE_CANVAS - x0, y - 5)], fill=(120, 120, 120), width=1)
    body_font = _font(8)
    _summary, paragraphs = module_doc(module)
    for paragraph in paragraphs:
        for line in textwrap.wrap(paragraph, width=36):
            if y > PAGE_CANVAS - 10:
                return img
            draw.text((x0, y), line, font=body_font, fill=(40, 40, 40))
            y += 10
        y += 3
    return img
