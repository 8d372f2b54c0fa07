"""Build the model and processor a training stage starts from, and save them so every loader reads them.

``build_model(cfg.model)`` loads the checkpoint's MoCa model (its backbone's class, checked against
``cfg.model.backbone``; with the attention and pooling that ``cfg.model.attention`` and ``cfg.model.pooling``
name, whatever the checkpoint recorded) from a CPT checkpoint, a released MoCa model or a Qwen2-VL,
Qwen2.5-VL or Qwen3-VL base (any weight layout ``moca_model.loading`` accepts), puts it in train mode,
optionally enables gradient checkpointing, and optionally wraps it with LoRA adapters (peft) on the text decoder only.
``make_save_fn(processor)`` returns the engine's ``save_model_fn``: a plain ``save_pretrained``
(safetensors) plus ``processor.save_pretrained``, with LoRA merged into the weights first, so
``MoCaEncoder.from_pretrained(checkpoint)`` (hence the vidore, mteb and MMEB adapters) loads a
checkpoint folder directly, with the attention it was trained with (``MoCaModel.save_pretrained``
records it in ``moca_config.json``). The unmerged adapter goes to ``adapter/``.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pathlib import Path

    from moca_model import MoCaModel, MoCaProcessor
    from moca_train.config import LoraConfig, ModelConfig

logger = logging.getLogger(__name__)

TEXT_DECODER_PATTERN = r"language_model\.layers\.\d+\..*"  # LoRA never touches the vision tower
ADAPTER_DIR = "adapter"


def build_processor(cfg: ModelConfig) -> MoCaProcessor:
    """The processor from ``processor_from`` (default ``init_from``) with the config's pixel/length bounds, for
    ``init_from``'s backbone.
    """  # noqa: D205
    from moca_model import MoCaProcessor, moca_config
    from moca_model.loading import resolve_checkpoint

    backbone = cfg.backbone or moca_config.backbone(resolve_checkpoint(cfg.init_from), attention=cfg.attention)
    path = resolve_checkpoint(cfg.processor_from or cfg.init_from)
    return MoCaProcessor.from_pretrained(
        path, backbone=backbone, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels, max_length=cfg.max_length
    )


def build_model(cfg: ModelConfig) -> tuple[torch.nn.Module, MoCaProcessor]:
    """Load ``MoCaModel`` for training (on CPU; the engine moves it), plus its processor.

    Args:
        cfg: model section of a stage config.

    Returns:
        ``(model, processor)``; the model is a ``peft.PeftModel`` around ``MoCaModel`` when LoRA is on.

    Raises:
        moca_model.MoCaLoadError: missing or unreadable checkpoint.
    """
    from moca_model.loading import load_model, resolve_checkpoint

    path = resolve_checkpoint(cfg.init_from)
    attn = cfg.attn_implementation
    if attn is None:
        attn = "flash_attention_2" if torch.cuda.is_available() and _has_flash_attn() else "sdpa"
    model = load_model(path, device=torch.device("cpu"), dtype=getattr(torch, cfg.dtype), attn_implementation=attn,
                       attention=cfg.attention, pooling=cfg.pooling, backbone=cfg.backbone)  # fmt: skip
    logger.info("training %s with %s attention (%s), %s pooling", model.backbone, model.attention, attn, model.pooling)
    model.train()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    return model, build_processor(cfg)


def _has_flash_attn() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def apply_lora(model: MoCaModel, cfg: LoraConfig) -> torch.nn.Module:
    """Wrap ``model`` with LoRA (or DoRA) adapters on the text decoder's listed projections."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = "|".join(re.escape(m) for m in cfg.target_modules)
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        use_dora=cfg.use_dora,
        target_modules=rf".*{TEXT_DECODER_PATTERN}({names})",
    )
    model = get_peft_model(model, peft_cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("LoRA: %d of %d parameters trainable (%.2f%%)", trainable, total, 100 * trainable / total)
    return model


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The ``MoCaModel`` inside a (possibly peft-wrapped) model, for calls like ``set_bidirectional``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def make_save_fn(processor: MoCaProcessor):
    """An engine ``save_model_fn`` writing a directly loadable checkpoint (weights + processor).

    Args:
        processor: saved next to the weights.

    Returns:
        ``save(model, directory, state_dict)``.
    """

    def save(model: torch.nn.Module, directory: Path, state_dict: dict | None) -> None:
        if hasattr(model, "merge_and_unload"):  # peft: save merged weights for the loaders, adapter aside
            model.save_pretrained(directory / ADAPTER_DIR)
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(directory, safe_serialization=True)
        else:
            model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(directory)

    return save
