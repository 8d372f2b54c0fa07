"""``python -m moca_train.zero_checkpoint CHECKPOINT OUT``: a ZeRO-3 sharded training state -> a plain MoCa checkpoint.

Under DeepSpeed every ``checkpoint-<step>/`` holds two copies of the weights: ``model.safetensors``,
gathered at save time (``zero3_save_16bit_model: true``; in the parameter dtype, bf16 when the engine runs
in bf16), and ``train_state/`` (``accelerator.save_state``), DeepSpeed's own sharded files with each rank's
fp32 master partition. This command rebuilds the full fp32 weights from the shards (DeepSpeed's
``zero_to_fp32``) and writes a folder that ``MoCaEncoder.from_pretrained`` loads: ``model.safetensors``
(the encoder), the CPT heads in ``cpt_heads.safetensors`` (CPT checkpoints only; a tied LM head is not
repeated), and the checkpoint's config, processor and provenance files copied unchanged. Use it for runs
saved with ``zero3_save_16bit_model: false``, or to publish fp32 masters of a bf16 run.

DeepSpeed's shard files are torch pickles; read only checkpoints your own runs wrote.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from moca_train.checkpoint import ACCEL_DIR

logger = logging.getLogger(__name__)

ENCODER_PREFIX = "encoder."  # moca_train.cpt.model.ENCODER_PREFIX (CPT wraps the encoder; CL trains it directly)
HEADS_FILE = "cpt_heads.safetensors"  # moca_train.cpt.train.HEADS_FILE
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", HEADS_FILE)
TIED_HEAD = ("lm_head.weight", "language_model.embed_tokens.weight")


def fp32_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The full fp32 weights of ``checkpoint/train_state`` (every rank's ZeRO partition, gathered on CPU)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state_dir = Path(checkpoint) / ACCEL_DIR
    if not (state_dir / "latest").is_file():
        raise FileNotFoundError(f"{str(state_dir)!r} holds no DeepSpeed checkpoint (no 'latest' file)")
    return get_fp32_state_dict_from_zero_checkpoint(str(state_dir))


def split_encoder(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(encoder weights, CPT head weights)``; a CL state is all encoder, a CPT one is under ``encoder.``."""
    if not any(k.startswith(ENCODER_PREFIX) for k in state):
        return dict(state), {}
    encoder = {k[len(ENCODER_PREFIX) :]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    heads = {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIX)}
    head, embedding = TIED_HEAD
    if head in heads and embedding in encoder and torch.equal(heads[head], encoder[embedding]):
        del heads[head]  # tied to the input embedding, as the CPT save function writes it
    return encoder, heads


def convert(checkpoint: str | Path, out: str | Path) -> Path:
    """Write the plain checkpoint of ``checkpoint``'s sharded training state into ``out`` (created, atomically).

    Returns:
        ``out``.
    """
    from safetensors.torch import save_file

    checkpoint, out = Path(checkpoint), Path(out)
    encoder, heads = split_encoder(fp32_state_dict(checkpoint))
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for path in checkpoint.iterdir():
        if path.is_file() and path.name not in WEIGHT_FILES:
            shutil.copy2(path, tmp / path.name)
    save_file({k: v.contiguous().clone() for k, v in encoder.items()}, str(tmp / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    if heads:
        save_file({k: v.contiguous().clone() for k, v in heads.items()}, str(tmp / HEADS_FILE),
                  metadata={"format": "pt"})  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    logger.info("wrote %s: %d encoder tensors, %d head tensors (fp32)", out, len(encoder), len(heads))
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(prog="python -m moca_train.zero_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a checkpoint-<step> folder written under DeepSpeed")
    parser.add_argument("out", help="output folder (MoCaEncoder.from_pretrained loads it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    convert(args.checkpoint, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
