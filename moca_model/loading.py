"""Loading MoCa checkpoints: the only ``from_pretrained`` call site for the model.

The model class is the checkpoint's backbone's (:mod:`moca_model.backbones`: ``moca_config.json``
``backbone``, else ``config.json`` ``model_type``). Three weight layouts are accepted and normalised to the
base model's (``language_model.*``, ``visual.*``):

- legacy, as released (transformers <= 4.51 ``Qwen2_5_VLForConditionalGeneration``):
  ``model.layers.*``, ``model.embed_tokens.*``, ``model.norm.*``, ``visual.*``, ``lm_head.*``;
- current ``...ForConditionalGeneration`` (transformers >= 4.52): ``model.language_model.*``,
  ``model.visual.*``, ``lm_head.*``;
- current base model: ``language_model.*``, ``visual.*``.

``lm_head.*`` and CPT heads (``mae_*``) are not materialised. A missing key is an error, never a
silently random weight (the failure mode of transformers 5 on the legacy layout, moca-method.md §0),
and two tensors are compared with the file after loading as a second line of defence.
Weights are read with safetensors only; remote code is never trusted.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from moca_model import backbones, moca_config
from moca_model.compat import config_dict_for_this_line
from moca_model.console import third_party_as_debug
from moca_model.errors import MoCaError
from moca_model.modeling_moca import MoCaMixin

logger = logging.getLogger(__name__)

# Applied in order, first match wins (transformers' ``key_mapping`` semantics).
_IGNORED_PREFIXES = ("lm_head.", "mae_")
_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]


class MoCaLoadError(MoCaError, RuntimeError):
    """A checkpoint that cannot be found or loaded faithfully."""


def key_mapping_for(keys) -> dict[str, str]:
    """The minimal renaming from a checkpoint's key layout to the base model's (empty if already native).

    Minimal on purpose: transformers 5 reverses the mapping a model was loaded with when it saves, so
    a model loaded from the legacy layout saves in the legacy layout, and one loaded from the base
    layout saves unchanged. Patterns apply in order, first match wins (transformers' semantics).

    Args:
        keys: every tensor name in the checkpoint.

    Returns:
        ``{regex: replacement}`` for ``from_pretrained(key_mapping=...)`` and :func:`map_key`.
    """
    keys = [k for k in keys if not k.startswith(_IGNORED_PREFIXES)]
    # A leading ``encoder.`` covers state dicts saved from the reference's MMEBModel wrapper.
    prefix = "encoder." if keys and all(k.startswith("encoder.") for k in keys) else ""
    bare = [k[len(prefix) :] for k in keys]
    p = re.escape(prefix)
    if any(k.startswith(("model.language_model.", "model.visual.")) for k in bare):  # transformers >= 4.52
        return {rf"^{p}model\.language_model\.": "language_model.", rf"^{p}model\.visual\.": "visual."}
    if any(k.startswith("model.") for k in bare):  # as released (transformers <= 4.51)
        mapping = {rf"^{p}model\.": "language_model."}
        return {**mapping, rf"^{p}visual\.": "visual."} if prefix else mapping
    if prefix:
        return {r"^encoder\.language_model\.": "language_model.", r"^encoder\.visual\.": "visual."}
    return {}


def map_key(key: str, mapping: dict[str, str]) -> str:
    """Checkpoint key -> base-model parameter name under ``mapping`` (first matching pattern)."""
    for pattern, replacement in mapping.items():
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    return key


def resolve_checkpoint(name_or_path: str | Path, *, revision: str | None = None) -> Path:
    """A local directory holding the checkpoint: the path itself, or a hub snapshot.

    Raises:
        MoCaLoadError: the path does not exist and the name is not a reachable hub repository.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if path.exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        raise MoCaLoadError(f"model path not found: {name!r} is not a directory (nor a hub id 'org/name')")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, revision=revision, allow_patterns=_HUB_FILES))
    except Exception as exc:  # offline, private, misspelled: all the same to the user
        raise MoCaLoadError(
            f"model path not found: {name!r} is not a local directory and the hub download failed "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def checkpoint_keys(path: Path) -> dict[str, Path]:
    """Every tensor name in the checkpoint's safetensors files -> the file holding it."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in path.iterdir())
        raise MoCaLoadError(f"no *.safetensors weights in {str(path)!r} (found {found}); pickled weights are refused")
    keys = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            keys.update(dict.fromkeys(f.keys(), file))
    return keys


def default_attn_implementation(device: torch.device) -> str:
    """flash_attention_2 on CUDA when flash-attn is installed, else SDPA."""
    if device.type == "cuda":
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            logger.info("flash-attn not installed; using SDPA")
    return "sdpa"


def load_model(
    path: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    attn_implementation: str,
    attention: str | None = None,
    pooling: str | None = None,
    backbone: str | None = None,
) -> MoCaMixin:
    """Load the checkpoint's MoCa model (its backbone's class) from a local directory in any supported layout.

    Args:
        path: directory with ``config.json`` and ``*.safetensors``.
        device: where the weights go.
        dtype: parameter dtype.
        attn_implementation: ``sdpa``, ``eager`` or ``flash_attention_2``.
        attention: ``bidirectional`` or ``causal``; None uses the checkpoint's ``moca_config.json``
            (bidirectional when it records none, as every released MoCa checkpoint).
        pooling: ``mean`` or ``last``; None uses the checkpoint's ``moca_config.json`` (mean when it
            records none).
        backbone: the backbone the caller expects (None: whatever the checkpoint is, see
            :func:`moca_model.moca_config.backbone`); a mismatch is an error.

    Returns:
        The model in eval mode, its ``bidirectional`` and ``pooling`` attributes set accordingly.

    Raises:
        MoCaLoadError: no safetensors, missing weights, weights that differ from the file, an unknown
            attention or pooling mode, or an unsupported backbone (names it and the supported ones).
    """
    try:
        mode = moca_config.check_attention(attention) if attention is not None else moca_config.attention(path)
        pooling = moca_config.check_pooling(pooling) if pooling is not None else moca_config.pooling(path)
        found = moca_config.backbone(path, attention=mode)
    except ValueError as exc:
        raise MoCaLoadError(str(exc)) from None
    if backbone is not None and backbone != found:
        raise MoCaLoadError(f"{str(path)!r} is a {found} checkpoint, not {backbone} (model.backbone / backbone=)")
    model_class = backbones.model_class(found)
    keys = checkpoint_keys(path)
    mapping = key_mapping_for(keys)
    try:
        with third_party_as_debug(logger):  # transformers' notes on a released config (rope_scaling) concern no user
            model, info = model_class.from_pretrained(
                path,
                config=portable_config(path, found),
                key_mapping=mapping or None,
                output_loading_info=True,
                dtype=dtype,
                attn_implementation=attn_implementation,
                use_safetensors=True,
                trust_remote_code=False,
                device_map=str(device) if device.type == "cuda" else None,
            )
    except (OSError, ValueError, RuntimeError) as exc:
        raise MoCaLoadError(f"cannot load MoCa weights from {str(path)!r}: {exc}") from exc
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise MoCaLoadError(
            f"{len(missing)} weights missing from {str(path)!r} (e.g. {missing[:3]}); refusing random initialisation"
        )
    params = dict(model.named_parameters())
    unexpected = sorted(k for k in keys if map_key(k, mapping) not in params)
    others = [k for k in unexpected if not k.startswith(_IGNORED_PREFIXES)]
    if len(others) < len(unexpected):
        logger.debug("not loaded, by design (MoCa pools hidden states; no LM head or CPT head): %s",
                     sorted(set(unexpected) - set(others))[:4])  # fmt: skip
    if others:
        logger.warning("ignored %d checkpoint tensors not used by %s, e.g. %s", len(others), model_class.__name__,
                       others[:3])  # fmt: skip
    _verify_against_file(model, keys, mapping)
    model.set_attention(mode)
    model.set_pooling(pooling)
    return model.to(device).eval()


def _verify_against_file(model: MoCaMixin, keys: dict[str, Path], mapping: dict[str, str]) -> None:
    """Compare the first text and vision tensors with the file: catches silent layout mismatches."""
    from safetensors import safe_open

    params = dict(model.named_parameters())
    for prefix in ("language_model.", "visual."):
        key = next((k for k in keys if map_key(k, mapping).startswith(prefix) and map_key(k, mapping) in params), None)
        if key is None:
            raise MoCaLoadError(f"checkpoint has no {prefix}* weights")
        with safe_open(keys[key], framework="pt") as f:
            stored = f.get_tensor(key)
        loaded = params[map_key(key, mapping)].detach().cpu()
        if not torch.equal(loaded, stored.to(loaded.dtype)):
            raise MoCaLoadError(f"weight {key!r} differs from the file after loading (key layout not understood)")


def processor_source(path: Path, processor_name_or_path: str | Path | None = None, *,
                     attention: str | None = None) -> Path:  # fmt: skip
    """The folder the tokenizer comes from.

    ``processor_name_or_path``, else the checkpoint when it has one, else the backbone's default processor (as
    the reference scripts load it).

    Raises:
        MoCaLoadError: the checkpoint's backbone cannot be determined.
    """
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    if processor_name_or_path is None and has_tokenizer:
        return path
    if processor_name_or_path is not None:
        return resolve_checkpoint(processor_name_or_path)
    try:
        backbone = moca_config.backbone(path, attention=attention or moca_config.attention(path))
    except ValueError as exc:
        raise MoCaLoadError(str(exc)) from None
    return resolve_checkpoint(backbones.get(backbone).default_processor)


def load_processor(
    path: Path, processor_name_or_path: str | Path | None = None, *, attention: str | None = None, **settings
) -> tuple:
    """The checkpoint's processor, or ``processor_name_or_path``'s when given or when the checkpoint has none.

    Args:
        path: the resolved checkpoint folder; its backbone decides the processor's (the tokenizer folder's
            ``preprocessor_config.json`` only supplies geometry and normalisation, checked against it).
        processor_name_or_path: tokenizer source (default: the checkpoint, then the backbone's base model
            (``Qwen/Qwen2.5-VL-3B-Instruct`` for Qwen2.5-VL, as the reference scripts load it)).
        attention: the attention the model will run with (None: the checkpoint's), for the backbone check.
        **settings: ``min_pixels``, ``max_pixels``, ``max_length`` overrides (None: the checkpoint's
            ``moca_config.json``, then the paper's values).

    Returns:
        ``(MoCaProcessor, the folder the tokenizer came from)``.

    Raises:
        MoCaLoadError: an unsupported backbone, or a processor whose patch geometry is another backbone's.
    """
    from moca_model.processing_moca import MoCaProcessor

    try:
        backbone = moca_config.backbone(path, attention=attention or moca_config.attention(path))
    except ValueError as exc:
        raise MoCaLoadError(str(exc)) from None
    spec = backbones.get(backbone)
    proc_dir = processor_source(path, processor_name_or_path, attention=attention)
    settings = {k: v for k, v in settings.items() if v is not None}
    if proc_dir != path:  # the checkpoint's own moca_config.json still wins (its processing keys)
        settings = {**moca_config.processing_settings(path), **settings}
    with third_party_as_debug(logger):  # AutoTokenizer reads config.json: the same notes as the model load
        processor = MoCaProcessor.from_pretrained(proc_dir, backbone=backbone, **settings)
    if processor.image_processor.patch_size != spec.patch_size:
        raise MoCaLoadError(
            f"the processor from {str(proc_dir)!r} cuts {processor.image_processor.patch_size}-px patches but the "
            f"{backbone} checkpoint {str(path)!r} needs {spec.patch_size}-px ones; pass processor_name_or_path= "
            f"a {backbone} processor (e.g. {spec.default_processor})"
        )
    return processor, proc_dir


def portable_config(path: Path, backbone: str):
    """None (let transformers read ``config.json``), or the config translated for this transformers line.

    A Qwen3-VL config written by transformers 5 (``rope_parameters``) fails to parse on 4.x, which reads
    ``rope_scaling``: it is translated (:func:`moca_model.compat.config_dict_for_this_line`), so a checkpoint
    trained in one environment loads in the other.
    """
    data = read_config(path)
    fixed = config_dict_for_this_line(data)
    if fixed == data:
        return None
    return backbones.model_class(backbone).config_class.from_dict(fixed)


def read_config(path: Path) -> dict:
    """The checkpoint's ``config.json`` as a dict (for model cards and fingerprints)."""
    return json.loads((path / "config.json").read_text())
