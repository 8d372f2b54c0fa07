"""``make demo`` (``python demo/run.py``): the offline end-to-end MoCa demo.

Fallback stage (until the training CLIs land): write a tiny random MoCa checkpoint, render a few world
items (coloured shapes, a handwritten digit, a documentation page), encode them together with their
captions and print the image x caption cosine matrix.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the ``demo`` package importable
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger("demo")


def _fallback(work: Path, seed: int) -> int:
    import numpy as np
    import torch

    from demo import render
    from moca_model import MoCaEncoder
    from moca_model.tiny import write_tiny_checkpoint

    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    ckpt = write_tiny_checkpoint(work / "init", seed=seed, hidden=64, layers=2)
    shapes = [("red", "circle", "top left", "large"), ("blue", "square", "bottom right", "small"),
              ("green", "triangle", "top right", "large")]  # fmt: skip
    images = [render.render_shape(rng, *s) for s in shapes]
    captions = [render.shape_caption(*s) for s in shapes]
    bitmaps, labels = render.digit_bitmaps()
    images.append(render.render_digit(rng, bitmaps[7]))
    captions.append(f"digit {render.DIGIT_WORDS[labels[7]]}")
    images.append(render.render_page(rng, "json"))
    captions.append(render.module_doc("json")[0])
    encoder = MoCaEncoder.from_pretrained(ckpt, device="cpu")
    img_vecs = encoder.encode(
        [{"image": im, "text": "\nRepresent the given image."} for im in images], show_progress=False
    )
    txt_vecs = encoder.encode(captions, show_progress=False)
    sims = img_vecs @ txt_vecs.T
    out = sys.stdout
    out.write("cosine similarity (random init; training CLIs not landed yet)\n")
    out.write("rows: images, named by their caption; columns: the captions in the same order\n")
    for caption, row in zip(captions, sims, strict=True):
        out.write(f"  {caption[:40]:<40} " + " ".join(f"{v:+.3f}" for v in row) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the demo."""
    parser = argparse.ArgumentParser(prog="python demo/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=ROOT / "demo_out", help="world, checkpoints, logs")
    parser.add_argument("--seed", type=int, default=0, help="everything is a function of the seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    return _fallback(args.work_dir, args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
