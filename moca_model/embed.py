"""``python -m moca_model.embed``: embed your own texts and images (successor of the reference ``demo.py``).

Input is JSONL, one item per line (README "Input items"): a JSON string (a text), or an object with the
keys ``text``, ``image`` (one image or a list), ``images`` (a list: interleaved input, placed in the text
with ``<|vision_start|><|image_pad|><|vision_end|>``), ``video`` (a folder of frames) and ``num_frames``.
Any other key is an error. Relative image and video paths are resolved against the JSONL file's folder.
Output is a float32 ``.npy`` of shape (N, D), one row per line, written atomically.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moca_model.console import add_common_flags, run_cli, setup_logging, verbosity_of
from moca_model.errors import MoCaError
from moca_model.moca_config import ATTENTION_MODES, POOLING_MODES

logger = logging.getLogger(__name__)

_EPILOG = """\
items.jsonl, one item per line:
  "What is the revenue in 2021?"
  {"image": "pages/p1.png", "text": "\\nRepresent the given document image."}
  {"text": "Compare <|vision_start|><|image_pad|><|vision_end|> and <|vision_start|><|image_pad|><|vision_end|>",
   "images": ["a.png", "b.png"]}
  {"video": "frames/clip_0042/", "text": " Understand the content of the provided video."}
Errors name the file's line (1-based); --debug shows the traceback."""


@dataclass
class Items:
    """The items of a JSONL file and the (1-based) line each came from."""

    path: Path
    items: list = field(default_factory=list)
    lines: list[int] = field(default_factory=list)

    def where(self, index: int | None) -> str:
        """``items.jsonl:3`` for item ``index`` (0-based), or the file alone."""
        known = index is not None and 0 <= index < len(self.lines)
        return f"{self.path}:{self.lines[index]}" if known else str(self.path)


def _resolve(value, base: Path):
    """A relative path string (or a list of them) resolved against ``base``; other values unchanged."""
    if isinstance(value, str):
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)
    if isinstance(value, list):
        return [_resolve(v, base) for v in value]
    return value


def read_items(path: Path) -> Items:
    """Parse a JSONL file of items, resolving relative image and video paths against its folder.

    Every item is checked against the input contract (:func:`moca_model.processing_moca.normalize_item`)
    before any model is loaded.

    Raises:
        MoCaError: a missing file, no items, a line that is not valid JSON or not a string/object, or an
            item that breaks the contract (an unknown key, ...); the message names the line.
    """
    from moca_model.images import MoCaInputError
    from moca_model.processing_moca import normalize_item

    if not path.is_file():
        raise MoCaError(f"input file not found: {str(path)!r}" + (" (a folder)" if path.is_dir() else ""))
    out = Items(path)
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MoCaError(f"{path}:{lineno}: invalid JSON ({exc.msg}, column {exc.colno})") from exc
        if isinstance(item, dict):
            for key in ("image", "images", "video"):
                if key in item:
                    item[key] = _resolve(item[key], path.parent)
        elif not isinstance(item, str):
            raise MoCaError(f"{path}:{lineno}: expected a string or an object, got {type(item).__name__}")
        try:
            normalize_item(item, len(out.items))
        except MoCaInputError as exc:
            raise MoCaError(f"{path}:{lineno}: {exc.detail}") from exc
        out.items.append(item)
        out.lines.append(lineno)
    if not out.items:
        raise MoCaError(f"{path}: no items (the file is empty or has only blank lines); nothing written")
    return out


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
    """CLI entry point: 0 on success; 1 (one ``error:`` line naming the file's line) on bad input."""
    parser = argparse.ArgumentParser(prog="python -m moca_model.embed", description=__doc__.split("\n\n")[0],
                                     epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--input", required=True, type=Path, help="JSONL file of items (see below)")
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
    add_common_flags(parser)
    args = parser.parse_args(argv)
    setup_logging(verbosity_of(args))
    return run_cli(lambda: _embed(args), debug=args.debug)


def _embed(args: argparse.Namespace) -> int:
    from moca_model import MoCaEncoder
    from moca_model.images import MoCaInputError

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
        try:
            vectors = encoder.encode(items.items, batch_size=args.batch_size, show_progress_bar=not args.no_progress)
        except MoCaInputError as exc:  # name the file's line, not the 0-based position
            raise MoCaError(f"{items.where(exc.index)}: {exc.detail}") from exc
    logger.info("%s", encoder.last_stats.summary())
    save_npy_atomic(args.output, vectors)
    logger.info("wrote %s with shape %s", args.output, vectors.shape)
    if args.similarity:
        sys.stdout.write(format_similarity(vectors) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
