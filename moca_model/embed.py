"""``python -m moca_model.embed``: embed your own texts and images (successor of the reference ``demo.py``).

Input is JSONL, one item per line: a JSON string (text), or an object ``{"text": ..., "image": path}``,
or ``{"text": "... <|vision_start|><|image_pad|><|vision_end|> ...", "images": [path, ...]}``.
Relative image paths are resolved against the JSONL file's folder. Output is a float32 ``.npy`` of
shape (N, D), written atomically.

Examples:
    python -m moca_model.embed --model moca-embed/MoCa-Qwen25VL-3B --input items.jsonl --output vecs.npy
    python -m moca_model.embed --model ./tiny --input items.jsonl --output vecs.npy --similarity
    python -m moca_model.embed --model M --input items.jsonl --output v.npy --devices all --cache-dir ~/.cache/moca
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from moca_model.moca_config import ATTENTION_MODES, POOLING_MODES

logger = logging.getLogger(__name__)


def read_items(path: Path) -> list:
    """Parse a JSONL file of items, resolving relative image paths against its folder.

    Raises:
        ValueError: a line that is not valid JSON or not a string/object (names the line).
    """
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({exc})") from exc
        if isinstance(item, dict):
            for key in ("image", "images"):
                if isinstance(item.get(key), str):
                    item[key] = str(path.parent / item[key])
                elif isinstance(item.get(key), list):
                    item[key] = [str(path.parent / p) for p in item[key]]
        elif not isinstance(item, str):
            raise ValueError(f"{path}:{lineno}: expected a string or an object, got {type(item).__name__}")
        items.append(item)
    return items


def format_similarity(vectors: np.ndarray, limit: int = 12) -> str:
    """Cosine-similarity matrix of the first ``limit`` vectors as an aligned text table."""
    v = vectors[:limit]
    sims = v @ v.T
    header = "      " + "".join(f"{j:>7d}" for j in range(len(v)))
    rows = [f"{i:>5d} " + "".join(f"{s:7.3f}" for s in sims[i]) for i in range(len(v))]
    return "\n".join([header, *rows])


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` via a temporary file and ``os.replace`` (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m moca_model.embed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--input", required=True, type=Path, help="JSONL file of items")
    parser.add_argument("--output", required=True, type=Path, help="where to write the (N, D) float32 .npy")
    parser.add_argument("--batch-size", type=int, default=16, help="items per forward pass (default 16)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="bfloat16 / float32 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--attn-implementation", default=None, help="sdpa / eager / flash_attention_2")
    parser.add_argument("--attention", choices=ATTENTION_MODES, default=None,
                        help="text attention (default: the checkpoint's moca_config.json, else bidirectional)")
    parser.add_argument("--pooling", choices=POOLING_MODES, default=None,
                        help="mean or last-token pooling (default: the checkpoint's moca_config.json, else mean)")
    parser.add_argument("--min-pixels", type=int, default=None, help="per-image lower bound (default 256*28*28)")
    parser.add_argument("--max-pixels", type=int, default=None, help="per-image upper bound (default 1024*28*28)")
    parser.add_argument("--max-length", type=int, default=None, help="token limit incl. image tokens (default 1280)")
    parser.add_argument(
        "--devices",
        default=os.environ.get("MOCA_DEVICES"),
        help="encode on several devices, one worker process each: all / cuda:0,cuda:1 / cpu,cpu ($MOCA_DEVICES)",
    )
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("MOCA_CACHE_DIR"),
        help="persistent embedding cache root; a rerun encodes nothing it has seen ($MOCA_CACHE_DIR)",
    )
    parser.add_argument("--similarity", action="store_true", help="print the cosine-similarity matrix")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from moca_model import MoCaEncoder

    items = read_items(args.input)
    encoder = MoCaEncoder.from_pretrained(
        args.model,
        device=args.device,
        dtype=args.dtype,
        attn_implementation=args.attn_implementation,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        max_length=args.max_length,
        devices=args.devices or None,
        cache_dir=args.cache_dir or None,
        attention=args.attention,
        pooling=args.pooling,
    )
    with encoder:
        vectors = encoder.encode(items, batch_size=args.batch_size, show_progress=not args.no_progress)
    logger.info("%s", encoder.last_stats.summary())
    save_npy_atomic(args.output, vectors)
    logger.info("wrote %s with shape %s", args.output, vectors.shape)
    if args.similarity:
        sys.stdout.write(format_similarity(vectors) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
