"""``python -m moca_model.tiny OUT_DIR [--layout legacy|current]``: write a tiny random MoCa checkpoint.

The directory holds ``config.json``, ``model.safetensors``, tokenizer files, ``preprocessor_config.json``
and ``moca_config.json`` (small pixel bounds so CPU tests stay fast), and loads offline with
``MoCaEncoder.from_pretrained(OUT_DIR)``, ``vidore-benchmark --model-class moca --model-name OUT_DIR``
and ``mteb.get_model(OUT_DIR)``.

Layouts:
- ``legacy``: as released on the hub (flat ``config.json``; keys ``model.*``, ``visual.*``, ``lm_head.*``).
- ``current``: as transformers >= 5 writes ``Qwen2_5_VLForConditionalGeneration`` (nested config; keys
  ``model.language_model.*``, ``model.visual.*``, ``lm_head.*``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from moca_model.console import add_common_flags, run_cli, setup_logging, verbosity_of

logger = logging.getLogger(__name__)

TINY_MIN_PIXELS = 4 * 28 * 28
TINY_MAX_PIXELS = 64 * 28 * 28
TINY_MAX_LENGTH = 512
TINY_VIDEO_MAX_PIXELS = 16 * 28 * 28  # per frame: 8 frames stay within 64 visual tokens


def _layout_key(key: str, layout: str) -> str:
    top, rest = key.split(".", 1)  # "language_model" | "visual"
    if layout == "legacy":
        return f"model.{rest}" if top == "language_model" else key
    return f"model.{key}"


def write_tiny_checkpoint(
    out_dir: str | Path, *, layout: str = "current", seed: int = 0, hidden: int = 64, layers: int = 2
) -> Path:
    """Write a tiny random checkpoint and return its directory.

    Args:
        out_dir: target directory (created).
        layout: ``legacy`` or ``current`` (see module docstring).
        seed: weights are a pure function of the seed.
        hidden: text hidden size.
        layers: text decoder layers.

    Returns:
        ``out_dir`` as a Path.
    """
    from safetensors.torch import save_file

    from moca_model.modeling_moca import MoCaModel
    from moca_model.processing_moca import MoCaProcessor
    from moca_model.testing import tiny_config, tiny_tokenizer

    if layout not in ("legacy", "current"):
        raise ValueError(f"layout must be 'legacy' or 'current', got {layout!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    config = tiny_config(tokenizer, hidden=hidden, layers=layers)
    torch.manual_seed(seed)
    model = MoCaModel._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    state = {_layout_key(k, layout): v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    embed_key = "model.embed_tokens.weight" if layout == "legacy" else "model.language_model.embed_tokens.weight"
    state["lm_head.weight"] = state[embed_key].clone()  # tied, as in the released 3B; never loaded
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = config.to_dict()
    if layout == "legacy":  # transformers 4.50 wrote the text fields at the top level
        text = cfg.pop("text_config", {})
        cfg.update({k: v for k, v in text.items() if k not in ("model_type", "architectures")})
    cfg["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")
    processor = MoCaProcessor(
        tokenizer, min_pixels=TINY_MIN_PIXELS, max_pixels=TINY_MAX_PIXELS, max_length=TINY_MAX_LENGTH,
        video_min_pixels=TINY_MIN_PIXELS, video_max_pixels=TINY_VIDEO_MAX_PIXELS,
    )
    processor.save_pretrained(out)
    logger.info("wrote tiny %s checkpoint to %s", layout, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m moca_model.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="directory to write")
    parser.add_argument("--layout", choices=["legacy", "current"], default="current", help="weight-key layout")
    parser.add_argument("--seed", type=int, default=0, help="weights are a function of the seed")
    parser.add_argument("--hidden", type=int, default=64, help="text hidden size")
    parser.add_argument("--layers", type=int, default=2, help="text decoder layers")
    add_common_flags(parser)
    args = parser.parse_args(argv)
    setup_logging(verbosity_of(args))
    return run_cli(lambda: write_tiny_checkpoint(args.out_dir, layout=args.layout, seed=args.seed, hidden=args.hidden,
                                                 layers=args.layers) and 0, debug=args.debug)  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
