"""A small synthetic interleaved corpus for CPU runs of CPT (tests, benchmarks, the tiny recipe).

Rows follow the CPT record layout (text with image placeholders + image paths): captioned shape
images, two-image comparisons and text-only sentences. Images are plain colour fields with one shape,
so both the MLM and the MAE losses have structure a tiny model can learn in a few dozen steps.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

from moca_model.processing_moca import IMAGE_PLACEHOLDER

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
PLACES = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75)}
SIDES = (56, 84, 112)  # 4, 9 and 16 merged visual tokens at 28 px per token


def render(colour: str, shape: str, place: str, side: int) -> Image.Image:
    """A ``side`` x ``side`` light image with one coloured shape at ``place``."""
    img = Image.new("RGB", (side, side), (245, 245, 240))
    cx, cy = (int(f * side) for f in PLACES[place])
    r = side // 5
    box = (cx - r, cy - r, cx + r, cy + r)
    draw = ImageDraw.Draw(img)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
    return img


def write_corpus(out_dir: str | Path, *, rows: int = 200, seed: int = 0) -> Path:
    """Write ``out_dir/cpt.jsonl`` and ``out_dir/images/*.png``.

    Args:
        out_dir: target folder (created).
        rows: number of records.
        seed: everything is a function of the seed.

    Returns:
        Path of the JSONL file (image paths in it are relative to its folder).
    """
    rng = random.Random(seed)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        kind = i % 3
        attrs = [(rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(list(PLACES))) for _ in range(2)]
        captions = [f"a {c} {s} on the {p}" for c, s, p in attrs]
        if kind == 2:
            lines.append({"text": f"The quick brown fox: {captions[0]} and {captions[1]}.", "images": []})
            continue
        n_images = kind + 1
        paths = []
        for j in range(n_images):
            name = f"images/{i:05d}_{j}.png"
            render(*attrs[j], rng.choice(SIDES)).save(out / name)
            paths.append(name)
        if n_images == 1:
            text = f"{IMAGE_PLACEHOLDER}Represent the given image: {captions[0]}."
        else:
            ph = IMAGE_PLACEHOLDER
            text = f"Left figure {ph} shows {captions[0]}; right figure {ph} {captions[1]}."
        lines.append({"text": text, "images": paths})
    path = out / "cpt.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m moca_train.cpt.synthetic OUT_DIR [--rows N] [--seed S]``: write the corpus."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m moca_train.cpt.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="folder for cpt.jsonl and images/")
    parser.add_argument("--rows", type=int, default=600, help="number of records")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    args = parser.parse_args(argv)
    write_corpus(args.out_dir, rows=args.rows, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
