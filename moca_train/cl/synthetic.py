"""``python -m moca_train.cl.synthetic OUT_DIR``: a small generated contrastive world for CPU runs and tests.

Coloured shapes rendered with PIL (4 colours x 3 shapes x 2 sizes = 24 captions such as "a small red
circle"), jittered in position, size and background. Two tasks in the CL row schema, with image paths
relative to ``OUT_DIR``:

- ``shapes_i2t.jsonl``: image + "Represent the given image." -> caption; negatives: captions with one
  attribute changed;
- ``shapes_t2i.jsonl``: caption instruction -> image; negatives: images with one attribute changed;
- ``heldout.json``: fresh renders (never trained on) with their captions, for in-batch retrieval tests.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
SIDE = 56  # pixels: 4 merged visual tokens under the tiny processor's bounds
IMAGE_TEXT = "<|image_1|>\nRepresent the given image.\n"
T2I_PREFIX = "Find me an everyday image that matches the given caption: "


def combos() -> list[tuple[str, str, str]]:
    """All (colour, shape, size) triples in a fixed order."""
    return [(c, s, z) for c in COLOURS for s in SHAPES for z in SIZES]


def caption(combo: tuple[str, str, str]) -> str:
    """``a small red circle``."""
    colour, shape, size = combo
    return f"a {size} {colour} {shape}"


def render(combo: tuple[str, str, str], rng: np.random.Generator) -> Image.Image:
    """One jittered render of ``combo``."""
    colour, shape, size = combo
    bg = tuple(int(v) for v in rng.integers(0, 60, 3))
    img = Image.new("RGB", (SIDE, SIDE), bg)
    draw = ImageDraw.Draw(img)
    half = int(rng.integers(8, 11)) if size == "small" else int(rng.integers(17, 21))
    cx, cy = (int(v) for v in rng.integers(half + 2, SIDE - half - 2, 2))
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = tuple(int(np.clip(v + rng.integers(-20, 21), 0, 255)) for v in COLOURS[colour])
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return img


def one_off(combo: tuple[str, str, str], rng: np.random.Generator) -> tuple[str, str, str]:
    """``combo`` with one randomly chosen attribute changed (a hard negative)."""
    values = [tuple(COLOURS), SHAPES, SIZES]
    axis = int(rng.integers(3))
    options = [v for v in values[axis] if v != combo[axis]]
    out = list(combo)
    out[axis] = options[int(rng.integers(len(options)))]
    return tuple(out)


def write_world(out_dir: str | Path, *, rows_per_task: int = 384, heldout_per_combo: int = 2, negatives: int = 2,
                seed: int = 0) -> Path:  # fmt: skip
    """Render the world into ``out_dir`` and return it.

    Args:
        out_dir: target directory (created).
        rows_per_task: training rows in each of the two tasks.
        heldout_per_combo: held-out renders per caption.
        negatives: hard negatives per row.
        seed: everything is a function of the seed.

    Returns:
        ``out_dir`` as a Path.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    all_combos = combos()
    counter = iter(range(10**9))

    def save(combo) -> str:
        rel = f"images/{next(counter):06d}.png"
        render(combo, rng).save(out / rel)
        return rel

    i2t, t2i = [], []
    for i in range(rows_per_task):
        combo = all_combos[i % len(all_combos)]
        negs = [one_off(combo, rng) for _ in range(negatives)]
        i2t.append({"qry": IMAGE_TEXT, "qry_image_path": save(combo), "pos_text": caption(combo), "pos_image_path": "",
                    "neg_text": [caption(n) for n in negs], "neg_image_path": [""] * negatives})  # fmt: skip
        combo = all_combos[(i * 7) % len(all_combos)]
        negs = [one_off(combo, rng) for _ in range(negatives)]
        t2i.append({"qry": f"{T2I_PREFIX}{caption(combo)}.\n", "qry_image_path": "", "pos_text": IMAGE_TEXT,
                    "pos_image_path": save(combo), "neg_text": [""] * negatives,
                    "neg_image_path": [save(n) for n in negs]})  # fmt: skip
    for name, rows in (("shapes_i2t", i2t), ("shapes_t2i", t2i)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    heldout = [{"image": save(c), "caption": caption(c)} for c in all_combos for _ in range(heldout_per_combo)]
    (out / "heldout.json").write_text(json.dumps(heldout, indent=1) + "\n")
    logger.info("wrote %d + %d CL rows and %d held-out renders to %s", len(i2t), len(t2i), len(heldout), out)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m moca_train.cl.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write")
    parser.add_argument("--rows-per-task", type=int, default=384, help="training rows per task")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_world(args.out_dir, rows_per_task=args.rows_per_task, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
