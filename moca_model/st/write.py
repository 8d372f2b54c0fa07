"""The files of a sentence-transformers folder exported from MoCa (see :mod:`moca_model.export_st`).

``write_model`` writes the transformers part (config with the attention mode, weights in the layout of
the backbone's stock base model (``Qwen2_5_VLModel``, ``Qwen2VLModel``, ``Qwen3VLModel``), tokenizer, PIL
image processor, MoCa's chat template, ``moca_config.json``);
``write_processor`` lets transformers add its processor files; ``write_st_config`` writes what
sentence-transformers reads (modules, module configs, prompts, version requirements).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from moca_model.errors import MoCaError
from moca_model.st.layout import (
    MODALITY_CONFIG,
    MODULE_OUTPUT_NAME,
    PROCESSING_KWARGS,
    PROCESSOR_KWARGS,
    REQUIREMENTS,
    chat_template,
    image_prompts,
)

ST_POOLING = {"mean": "mean", "last": "lasttoken"}  # MoCa pooling -> sentence-transformers Pooling mode
SHARD_BYTES = 2 * 2**30  # weights go out in shards: a converted copy of a large model never sits in memory whole


class ExportError(MoCaError, RuntimeError):
    """The export cannot be written faithfully (environment, destination or a failed parity check)."""


def write_model(encoder, folder: Path, *, dtype: str, source_dir: Path | None, prompts: dict[str, str]) -> dict:
    """Write the transformers files of ``encoder`` into a new ``folder``.

    Args:
        encoder: a :class:`moca_model.MoCaEncoder`.
        folder: created; must not exist.
        dtype: weight dtype to write (``float32``, ``bfloat16``, ...).
        source_dir: the source checkpoint, whose ``moca_config.json`` keys are kept.
        prompts: the exported prompts (the chat template lists the image prompts among them).

    Returns:
        Facts for the model card: ``dim``, ``bidirectional``, ``pooling``, ``backbone``, ``min_pixels``,
        ``max_pixels``, ``max_length``.
    """
    model, proc = encoder.model, encoder.processor
    folder.mkdir(parents=True)
    config = copy.deepcopy(model.config)
    config.text_config.is_causal = not model.bidirectional  # transformers >= 5.2 builds the mask from this
    config.architectures = [model.stock_class().__name__]  # what AutoModel builds: the stock base model
    config.dtype = dtype
    config.save_pretrained(folder)
    save_weights(model.state_dict(), folder, dtype)
    tokenizer = copy.deepcopy(proc.tokenizer)
    tokenizer.padding_side = "right"  # text-only batches take positions 0..n-1 from the left edge
    tokenizer.chat_template = None  # the processor's template (MoCa's layout) is the only one
    if proc.max_length:
        tokenizer.model_max_length = proc.max_length  # MoCa's truncation
    tokenizer.save_pretrained(folder)
    proc.image_processor.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(chat_template(image_prompts(prompts)))
    source_settings = source_dir / "moca_config.json" if source_dir else None
    settings = json.loads(source_settings.read_text()) if source_settings and source_settings.is_file() else {}
    settings.update(min_pixels=proc.min_pixels, max_pixels=proc.max_pixels, max_length=proc.max_length)
    (folder / "moca_config.json").write_text(json.dumps(settings, indent=2) + "\n")  # MoCaEncoder loads it too
    return {"dim": model.config.text_config.hidden_size, "bidirectional": model.bidirectional,
            "pooling": model.pooling, "backbone": model.backbone, "min_pixels": proc.min_pixels,
            "max_pixels": proc.max_pixels, "max_length": proc.max_length}  # fmt: skip


def save_weights(state: dict, folder: Path, dtype: str, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """Write ``state`` as safetensors in ``dtype``, sharded (with an index) above ``shard_bytes``.

    Returns:
        The weight file names.
    """
    import torch
    from safetensors.torch import save_file

    target, shards, size = getattr(torch, dtype), [{}], 0
    for key, tensor in state.items():
        if sum(t.nbytes for t in shards[-1].values()) >= shard_bytes:
            shards.append({})
        shards[-1][key] = tensor.detach().to("cpu", target).contiguous()
        size += shards[-1][key].nbytes
    names, weight_map = [], {}
    for i, shard in enumerate(shards):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        names.append(name)
        shard.clear()
    if len(shards) > 1:
        index = {"metadata": {"total_size": size}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return names


def write_processor(folder: Path, backbone: str = "qwen2_5_vl") -> None:
    """Let transformers write its processor files (processor, video processor) and check the image backend.

    A folder without a video-processor config gets the Qwen2-VL one from ``AutoProcessor``; a Qwen3-VL
    export writes Qwen3-VL's (16-px patches, timestamps), so videos given to sentence-transformers are cut
    as the model expects.
    """
    import transformers

    from moca_model import backbones

    processor = transformers.AutoProcessor.from_pretrained(folder, **PROCESSOR_KWARGS)
    check_pil(processor)
    spec = backbones.get(backbone)
    if spec.video_timestamps and not isinstance(processor.video_processor, transformers.Qwen3VLVideoProcessor):
        processor.video_processor = transformers.Qwen3VLVideoProcessor(
            patch_size=spec.patch_size, temporal_patch_size=spec.temporal_patch_size, merge_size=spec.merge_size,
            image_mean=list(processor.image_processor.image_mean), image_std=list(processor.image_processor.image_std),
        )  # fmt: skip
    processor.save_pretrained(folder)


def check_pil(processor) -> None:
    """Raise unless ``processor`` resizes images with PIL (MoCa's preprocessing; torchvision's differs)."""
    name = type(processor.image_processor).__name__
    if not name.endswith("Pil"):
        raise ExportError(f"transformers gave image processor {name}, not the PIL one MoCa was trained with")


def write_st_config(folder: Path, prompts: dict[str, str], dim: int, pooling: str = "mean") -> None:
    """modules.json and the module and model configs, as sentence-transformers itself writes them.

    ``pooling``: MoCa's ``mean`` (over every token, prompt and image tokens included) or ``last``
    (sentence-transformers' ``lasttoken``: the last position whose attention mask is 1, any padding side).
    """
    import sentence_transformers
    import torch
    import transformers
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    modules = [(Transformer, ""), (Pooling, "1_Pooling"), (Normalize, "2_Normalize")]
    spec = [{"idx": i, "name": str(i), "path": p, "type": f"{c.__module__}.{c.__name__}"} for i, (c, p) in
            enumerate(modules)]  # fmt: skip
    (folder / "modules.json").write_text(json.dumps(spec, indent=2) + "\n")
    sbert = {"transformer_task": "feature-extraction", "modality_config": MODALITY_CONFIG,
             "module_output_name": MODULE_OUTPUT_NAME, "processing_kwargs": PROCESSING_KWARGS,
             "unpad_inputs": False, "processor_kwargs": PROCESSOR_KWARGS}  # fmt: skip
    (folder / Transformer.config_file_name).write_text(json.dumps(sbert, indent=2) + "\n")
    pooling = Pooling(dim, pooling_mode=ST_POOLING[pooling], include_prompt=True)
    for module, sub in ((pooling, "1_Pooling"), (Normalize(), "2_Normalize")):
        (folder / sub).mkdir()
        module.save(str(folder / sub))
    versions = {"sentence_transformers": sentence_transformers.__version__, "transformers": transformers.__version__,
                "pytorch": torch.__version__}  # fmt: skip
    model_config = {"model_type": "SentenceTransformer", "__version__": versions, "prompts": prompts,
                    "default_prompt_name": None, "similarity_fn_name": "cosine",
                    "requirements": REQUIREMENTS}  # fmt: skip
    (folder / "config_sentence_transformers.json").write_text(json.dumps(model_config, indent=2) + "\n")
