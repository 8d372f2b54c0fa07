"""The backbones MoCa's recipe runs on, as data: one small module per backbone, looked up by name.

Supported: ``qwen2_vl`` (Qwen2-VL), ``qwen2_5_vl`` (Qwen2.5-VL, the released MoCa models) and ``qwen3_vl``
(Qwen3-VL). Each module (``moca_model/backbones/<name>.py``) names the stock transformers class the model
is (``MODEL_CLASS``: :class:`moca_model.modeling_moca.MoCaMixin` on that class, nothing vendored), and its
:class:`Backbone` spec: patch geometry (so pixel bounds in each backbone's own units), normalisation,
how videos are written and positioned, whether the unpadded no-mask fast path is available, and a tiny
random config for tests.

Everything else in the toolkit is backbone-agnostic and reads these facts from the spec. A checkpoint
names its backbone in ``moca_config.json`` (``backbone``); without it, :func:`from_model_type` reads
``config.json``'s ``model_type``, so released MoCa checkpoints load as ``qwen2_5_vl``, as before.

Shapes: none (configuration only).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

BACKBONES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
DEFAULT_BACKBONE = "qwen2_5_vl"  # what a checkpoint that names no backbone and no model_type is
# Linear-attention (Gated DeltaNet) hybrids: most of their layers are recurrent, so "every token sees every
# token" has no meaning there; see docs/backbones.md for what causal last-token support would take.
LINEAR_ATTENTION_MODEL_TYPES = ("qwen3_5", "qwen3_5_moe", "qwen3_next")


class UnsupportedBackboneError(ValueError):
    """A checkpoint or config names a backbone this toolkit cannot run (the message says which are supported)."""


@dataclass(frozen=True)
class Backbone:
    """What differs between backbones, for processing, positions and training (no model weights).

    Attributes:
        name: the toolkit's name (``qwen3_vl``), recorded as ``moca_config.json`` ``backbone``.
        model_type: transformers' ``model_type`` of the checkpoint's ``config.json``.
        patch_size: ViT patch side in pixels (14, or 16 for Qwen3-VL).
        temporal_patch_size: frames per patch (a still image is repeated to fill it).
        merge_size: patches merged per side into one LLM visual token.
        image_mean: normalisation mean when the checkpoint has no ``preprocessor_config.json``.
        image_std: normalisation std (same rule).
        video_timestamps: Qwen3-VL writes ``<t seconds>`` + one vision start/end pair per temporal patch
            and positions every temporal patch at time index 0; the others write one run per video.
        video_resize: ``pil`` (the Qwen2-VL image processor's video path, which MoCa's and VLM2Vec's
            pipelines use) or ``torch`` (the stock Qwen3-VL video processor's uint8 bicubic resize).
        dict_mask: the text decoder accepts a ``{layer type: None}`` mask, which the unpadded
            bidirectional fast path needs (Qwen3-VL always builds its mask itself).
        default_processor: where the tokenizer and image-processor settings come from when a checkpoint
            ships none (a hub id of the base model).
    """

    name: str
    model_type: str
    patch_size: int
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    video_timestamps: bool = False
    video_resize: str = "pil"
    dict_mask: bool = True
    default_processor: str = "Qwen/Qwen2.5-VL-3B-Instruct"  # what the MoCa reference scripts load

    @property
    def factor(self) -> int:
        """Pixels per side of one merged visual token (28, or 32 on Qwen3-VL): the unit of pixel bounds."""
        return self.patch_size * self.merge_size

    def pixels(self, tokens: int) -> int:
        """An area in pixels holding ``tokens`` merged visual tokens (``tokens * factor**2``)."""
        return tokens * self.factor**2

    @property
    def row_size(self) -> int:
        """Values per ``pixel_values`` row: 3 channels x temporal patch x patch² (1176, or 1536 on Qwen3-VL)."""
        return 3 * self.temporal_patch_size * self.patch_size**2


@dataclass(frozen=True)
class ModelSize:
    """The size of a random model (tests, benchmarks): what each backbone's ``random_config`` builds.

    Attributes:
        hidden: text hidden size.
        layers: text decoder layers.
        heads: attention heads.
        kv_heads: key/value heads.
        intermediate: text FFN size.
        vision: ViT fields ``depth``, ``hidden_size``, ``intermediate_size``, ``num_heads``, plus the
            backbone's own options (Qwen2.5-VL ``fullatt_block_indexes``; Qwen3-VL
            ``deepstack_visual_indexes``, ``num_position_embeddings``).
        vocab_size: embedding rows.
    """

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision: dict
    vocab_size: int

    @property
    def head_dim(self) -> int:
        """Attention head size: ``hidden // heads``."""
        return self.hidden // self.heads

    def text_fields(self) -> dict:
        """The text config fields every Qwen-VL config names the same way."""
        return {"vocab_size": self.vocab_size, "hidden_size": self.hidden, "intermediate_size": self.intermediate,
                "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
                "num_key_value_heads": self.kv_heads}  # fmt: skip


def check_backbone(value: str) -> str:
    """``value`` if it names a supported backbone.

    Raises:
        UnsupportedBackboneError: anything else (names the supported ones).
    """
    if value not in BACKBONES:
        raise UnsupportedBackboneError(f"backbone must be one of {BACKBONES}, got {value!r}")
    return value


def module(name: str) -> ModuleType:
    """The backbone's module (``moca_model.backbones.<name>``), which imports transformers."""
    return importlib.import_module(f"moca_model.backbones.{check_backbone(name)}")


def get(name: str) -> Backbone:
    """The :class:`Backbone` spec of ``name``.

    Raises:
        UnsupportedBackboneError: an unknown name.
    """
    return module(name).SPEC


def model_class(name: str) -> type:
    """The MoCa model class of ``name``: the stock transformers base model with :class:`MoCaMixin`."""
    return module(name).MODEL_CLASS


def from_model_type(model_type: str | None, *, attention: str = "bidirectional", source: str = "") -> str:
    """The backbone name of a checkpoint's ``config.json`` ``model_type``.

    Args:
        model_type: e.g. ``qwen2_5_vl``; None gives :data:`DEFAULT_BACKBONE`.
        attention: the mode it will run in (Qwen3.5-style hybrids are refused with the reason when
            bidirectional).
        source: what to name in messages (the checkpoint folder).

    Raises:
        UnsupportedBackboneError: a model type no backbone has; one clear message naming it and the
            supported ones.
    """
    if model_type is None:
        return DEFAULT_BACKBONE
    for name in BACKBONES:
        if name == model_type:
            return name
    where = f" ({source})" if source else ""
    supported = ", ".join(BACKBONES)
    if model_type in LINEAR_ATTENTION_MODEL_TYPES:
        if attention == "bidirectional":
            raise UnsupportedBackboneError(
                f"model_type {model_type!r}{where} cannot run with attention: bidirectional: most of its layers "
                "are linear-attention (Gated DeltaNet) recurrences, which have no bidirectional form (a token's "
                "state is a left-to-right scan). Supported backbones: " + supported
            )
        raise UnsupportedBackboneError(
            f"model_type {model_type!r}{where} is not supported yet (causal last-token use of its hybrid layers "
            f"is not implemented; see docs/backbones.md). Supported backbones: {supported}"
        )
    raise UnsupportedBackboneError(f"unsupported model_type {model_type!r}{where}; supported backbones: {supported}")
