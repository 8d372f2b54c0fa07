"""``python -m moca_model.tiny OUT_DIR [--backbone qwen2_vl|qwen2_5_vl|qwen3_vl] [--layout legacy|current]``.

Writes a tiny random MoCa checkpoint of any backbone (default ``qwen2_5_vl``, the released models').

The directory holds ``config.json``, ``model.safetensors``, tokenizer files, ``preprocessor_config.json``
and ``moca_config.json`` (small pixel bounds so CPU tests stay fast), and loads offline with
``MoCaEncoder.from_pretrained(OUT_DIR)``, ``vidore-benchmark --model-class moca --model-name OUT_DIR``
and ``mteb.get_model(OUT_DIR)``.

Layouts:
- ``legacy``: as Qwen2-VL / Qwen2.5-VL checkpoints are released on the hub (flat ``config.json``; keys
  ``model.*``, ``visual.*``, ``lm_head.*``). Not for Qwen3-VL, which was never released that way.
- ``current``: as transformers >= 5 writes ``...ForConditionalGeneration`` (nested config; keys
  ``model.language_model.*``, ``model.visual.*``, ``lm_head.*``), and as Qwen3-VL is released.

Pixel bounds are 4..64 visual tokens per image and 16 per video frame, in the backbone's units (28² px per
token, 32² on Qwen3-VL), so CPU tests stay fast.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from moca_model.backbones import BACKBONES

logger = logging.getLogger(__name__)

TINY_MIN_TOKENS, TINY_MAX_TOKENS = 4, 64  # per image
TINY_VIDEO_MAX_TOKENS = 16  # per frame: 8 frames stay within 64 visual tokens
TINY_MIN_PIXELS = TINY_MIN_TOKENS * 28 * 28  # the Qwen2.5-VL values
TINY_MAX_PIXELS = TINY_MAX_TOKENS * 28 * 28
TINY_MAX_LENGTH = 512
TINY_VIDEO_MAX_PIXELS = TINY_VIDEO_MAX_TOKENS * 28 * 28


def _layout_key(key: str, layout: str) -> str:
    top, rest = key.split(".", 1)  # "language_model" | "visual"
    if layout == "legacy":
        return f"model.{rest}" if top == "language_model" else key
    return f"model.{key}"


def write_tiny_checkpoint(
    out_dir: str | Path,
    *,
    layout: str = "current",
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    backbone: str = "qwen2_5_vl",
) -> Path:
    """Write a tiny random checkpoint and return its directory.

    Args:
        out_dir: target directory (created).
        layout: ``legacy`` or ``current`` (see module docstring).
        seed: weights are a pure function of the seed.
        hidden: text hidden size.
        layers: text decoder layers.
        backbone: ``qwen2_vl``, ``qwen2_5_vl`` or ``qwen3_vl``.

    Returns:
        ``out_dir`` as a Path.
    """
    from safetensors.torch import save_file

    from moca_model import backbones
    from moca_model.processing_moca import MoCaProcessor
    from moca_model.testing import tiny_config, tiny_tokenizer

    if layout not in ("legacy", "current"):
        raise ValueError(f"layout must be 'legacy' or 'current', got {layout!r}")
    spec = backbones.get(backbone)
    if layout == "legacy" and spec.name == "qwen3_vl":
        raise ValueError("layout 'legacy' is for Qwen2-VL / Qwen2.5-VL; Qwen3-VL checkpoints use 'current'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    config = tiny_config(tokenizer, hidden=hidden, layers=layers, backbone=spec.name)
    torch.manual_seed(seed)
    model = backbones.model_class(spec.name)._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    state = {_layout_key(k, layout): v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    embed_key = "model.embed_tokens.weight" if layout == "legacy" else "model.language_model.embed_tokens.weight"
    state["lm_head.weight"] = state[embed_key].clone()  # tied, as in the released 3B; never loaded
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    if layout == "legacy":  # transformers 4.50 wrote the text fields at the top level
        text = cfg.pop("text_config", {})
        cfg.update({k: v for k, v in text.items() if k not in ("model_type", "architectures")})
    cfg["architectures"] = config.architectures
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    processor = MoCaProcessor(
        tokenizer, backbone=spec.name, min_pixels=spec.pixels(TINY_MIN_TOKENS), max_pixels=spec.pixels(TINY_MAX_TOKENS),
        max_length=TINY_MAX_LENGTH, video_min_pixels=spec.pixels(TINY_MIN_TOKENS),
        video_max_pixels=spec.pixels(TINY_VIDEO_MAX_TOKENS),
    )  # fmt: skip
    processor.save_pretrained(out)
    logger.info("wrote tiny %s %s checkpoint to %s", spec.name, layout, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m moca_model.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write")
    parser.add_argument("--backbone", choices=list(BACKBONES), default="qwen2_5_vl", help="model family")
    parser.add_argument("--layout", choices=["legacy", "current"], default="current", help="weight-key layout")
    parser.add_argument("--seed", type=int, default=0, help="weights are a function of the seed")
    parser.add_argument("--hidden", type=int, default=64, help="text hidden size")
    parser.add_argument("--layers", type=int, default=2, help="text decoder layers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    write_tiny_checkpoint(args.out_dir, layout=args.layout, seed=args.seed, hidden=args.hidden, layers=args.layers,
                          backbone=args.backbone)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
