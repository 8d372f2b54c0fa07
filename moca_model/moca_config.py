"""A checkpoint's ``moca_config.json``: its MoCa processing settings, attention mode and pooling.

Keys (all optional):

- ``min_pixels``, ``max_pixels``, ``max_length``, ``video_min_pixels``, ``video_max_pixels``: processing
  defaults, read by :class:`MoCaProcessor`.
- ``attention``: ``"bidirectional"`` or ``"causal"``, how the text decoder attends; read by
  :func:`moca_model.loading.load_model`. Absent means bidirectional, as in every released MoCa checkpoint.
  ``MoCaModel.save_pretrained`` records it, so every checkpoint a training stage writes says how it was
  trained (a causal base model, a bidirectional CPT or CL model).
- ``pooling``: ``"mean"`` (MoCa: the mean over every real token) or ``"last"`` (the state of the last real
  token, what the reference pools when attention is causal and what causal embedders such as VLM2Vec use).
  Absent means mean, as in every released MoCa checkpoint. Recorded and read like ``attention``.

- ``backbone``: ``"qwen2_vl"``, ``"qwen2_5_vl"`` or ``"qwen3_vl"`` (:mod:`moca_model.backbones`). Absent means
  the backbone of ``config.json``'s ``model_type`` (so every released MoCa checkpoint is ``qwen2_5_vl``).
  Recorded by ``save_pretrained`` and by ``MoCaProcessor.save_pretrained``.

Other keys are kept on update and ignored on read, so newer checkpoints still load.
"""

from __future__ import annotations

import json
from pathlib import Path

FILE = "moca_config.json"
PROCESSING_KEYS = ("min_pixels", "max_pixels", "max_length", "video_min_pixels", "video_max_pixels")
ATTENTION_MODES = ("bidirectional", "causal")
DEFAULT_ATTENTION = "bidirectional"
POOLING_MODES = ("mean", "last")
DEFAULT_POOLING = "mean"


def read(directory: str | Path) -> dict:
    """The whole ``moca_config.json`` of ``directory`` ({} when there is none).

    Raises:
        ValueError: the file is not a JSON object (names the file).
    """
    path = Path(directory) / FILE
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def processing_settings(directory: str | Path) -> dict:
    """Only the processing keys (:data:`PROCESSING_KEYS`) that the file sets."""
    return {k: v for k, v in read(directory).items() if k in PROCESSING_KEYS}


def check_attention(value: str) -> str:
    """``value`` if it is an attention mode.

    Raises:
        ValueError: anything but ``bidirectional`` or ``causal``.
    """
    if value not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {value!r}")
    return value


def attention(directory: str | Path) -> str:
    """The checkpoint's recorded attention mode (``bidirectional`` when it records none).

    Raises:
        ValueError: an unknown recorded mode (names the file).
    """
    value = read(directory).get("attention", DEFAULT_ATTENTION)
    try:
        return check_attention(value)
    except ValueError as exc:
        raise ValueError(f"{Path(directory) / FILE}: {exc}") from None


def check_pooling(value: str) -> str:
    """``value`` if it is a pooling mode.

    Raises:
        ValueError: anything but ``mean`` or ``last``.
    """
    if value not in POOLING_MODES:
        raise ValueError(f"pooling must be one of {POOLING_MODES}, got {value!r}")
    return value


def pooling(directory: str | Path) -> str:
    """The checkpoint's recorded pooling (``mean`` when it records none).

    Raises:
        ValueError: an unknown recorded mode (names the file).
    """
    value = read(directory).get("pooling", DEFAULT_POOLING)
    try:
        return check_pooling(value)
    except ValueError as exc:
        raise ValueError(f"{Path(directory) / FILE}: {exc}") from None


def model_type(directory: str | Path) -> str | None:
    """``config.json``'s ``model_type`` in ``directory`` (None without a config.json).

    Raises:
        ValueError: a config.json that is not a JSON object (names the file).
    """
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data.get("model_type")


def backbone(directory: str | Path, *, attention: str = DEFAULT_ATTENTION) -> str:
    """The checkpoint's backbone: the recorded ``backbone``, else the one of ``config.json``'s ``model_type``,
    else ``qwen2_5_vl`` (a folder with neither, such as a bare tokenizer folder).

    Args:
        directory: the checkpoint folder.
        attention: the mode it will run in (refusals of linear-attention hybrids give the reason).

    Raises:
        moca_model.backbones.UnsupportedBackboneError: an unknown recorded backbone or model type (a
            ``ValueError``; names the file, the value and the supported backbones).
    """  # noqa: D205
    from moca_model import backbones

    recorded = read(directory).get("backbone")
    if recorded is not None:
        try:
            return backbones.check_backbone(recorded)
        except ValueError as exc:
            raise backbones.UnsupportedBackboneError(f"{Path(directory) / FILE}: {exc}") from None
    return backbones.from_model_type(model_type(directory), attention=attention, source=str(directory))


def update(directory: str | Path, **values) -> None:
    """Merge ``values`` into ``directory``'s ``moca_config.json`` (created if absent), atomically."""
    path = Path(directory) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**read(directory), **values}
    tmp = path.with_name(FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
