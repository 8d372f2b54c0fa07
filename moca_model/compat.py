"""Everything that differs between the two supported transformers lines (4.52-4.x and 5.x).

- ``get_rope_index``: 4.x takes ``(input_ids, image_grid_thw, video_grid_thw, attention_mask=...)``;
  5.x needs ``mm_token_type_ids`` (1 on image tokens) and silently falls back to 1-D positions
  without it, so we always compute the 3-D mRoPE positions ourselves and pass them in.
- The image processor: 5.x resolves ``Qwen2VLImageProcessor`` to a torchvision implementation when
  torchvision is installed; MoCa was trained with the PIL one (bicubic resize, rescale, CLIP
  normalisation), which is ``Qwen2VLImageProcessorPil`` on 5.x. We always use the PIL one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import transformers

if TYPE_CHECKING:
    import torch

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
MIN_VERSION = (4, 52)
MAX_MAJOR = 5


def check_transformers_version(version: str | None = None) -> None:
    """Raise with an actionable message outside the range this package supports.

    Args:
        version: the version to check (default: the installed transformers).

    Raises:
        ImportError: transformers is older than 4.52 or newer than 5.x.
    """
    version = version or transformers.__version__
    major, minor = (int(p) for p in version.split(".")[:2])
    if (major, minor) < MIN_VERSION or major > MAX_MAJOR:
        raise ImportError(
            f"moca_model supports transformers>=4.52,<6 (found {version}). "
            "4.52 is the first release whose Qwen2_5_VLModel owns the vision tower and get_rope_index; "
            "install a supported version, e.g. pip install 'transformers>=4.57,<6'."
        )


def rope_index(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    image_token_id: int,
) -> torch.Tensor:
    """3-D mRoPE positions of a batch, as Qwen2.5-VL computes them over attended tokens.

    Args:
        model: a ``Qwen2_5_VLModel`` (owns ``get_rope_index``).
        input_ids: (B, T) token ids.
        attention_mask: (B, T) 1 on real tokens, 0 on padding.
        image_grid_thw: (I, 3) grid of every image in row-major batch order, or None.
        image_token_id: id of ``<|image_pad|>``.

    Returns:
        (3, B, T) position ids (temporal, height, width axes).
    """
    if TRANSFORMERS_MAJOR >= 5:
        mm_token_type_ids = (input_ids == image_token_id).int()
        pos, _ = model.get_rope_index(
            input_ids, mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
    else:
        pos, _ = model.get_rope_index(input_ids, image_grid_thw, None, attention_mask=attention_mask)
    return pos


def pil_image_processor_class():
    """The PIL-backed Qwen2-VL image processor class of the installed transformers."""
    if TRANSFORMERS_MAJOR >= 5:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor
