"""CPT collation: records -> corrupted model inputs + MLM labels + MAE targets, as one nested dict.

Records are tokenised, their images patchified and their lengths truncated by :class:`MoCaProcessor`
(an image whose token run would be cut is dropped whole, moca-method.md §2.4), right-padded to a
multiple of ``pad_to_multiple_of``, then corrupted by :mod:`moca_train.cpt.masking`.

Text-only micro-batches get a dummy image (:mod:`moca_train.dummy_image`) so that the vision tower runs
in every forward and backward (sharded engines hang when ranks run different modules). It sits in extra
columns with attention 0, changes no real token's output and is excluded from the MAE targets.

Shapes: B batch, T tokens, P patch rows, C = 1176 values per row, K = merge_size**2, N merged visual
tokens of real images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from moca_model.images import MoCaInputError
from moca_model.processing_moca import IMAGE_PLACEHOLDER, Item, normalize_item
from moca_train.cpt.masking import IGNORE_INDEX, NoiseMode, causal_lm_labels, mask_image_patches, mask_text_tokens
from moca_train.dummy_image import add_dummy_image

if TYPE_CHECKING:
    from moca_model import MoCaProcessor
    from moca_model.processing_moca import Encoded

logger = logging.getLogger(__name__)


@dataclass
class MaskingSettings:
    """What the collator corrupts and how (a subset of the CPT config).

    Attributes:
        mask_token_id: id of ``<|mask|>``.
        never_mask_ids: special and vision ids never masked.
        p_text: MLM masking probability (paper: 0.4 at 3B, 0.6 at 7B).
        p_image: MAE masking probability per merged visual token (paper: 0.5 at 3B, 0.6 at 7B).
        use_mlm: produce MLM labels.
        use_mae: noise patches and produce MAE targets.
        use_clm: produce next-token labels on uncorrupted text instead (the causal base-model stage).
        shift_labels: paper's shifted MLM labels (True) or the reference code's unshifted ones.
        noise: ``per_patch`` (paper) or ``shared`` (reference) Gaussian replacement.
        normalize_targets: per-token normalised pixel targets (MAE norm_pix; off in MoCa).
        dummy_image: add a masked dummy image to text-only micro-batches.
        pad_to_multiple_of: pad the token axis to a multiple of this (reference: 32).
    """

    mask_token_id: int
    never_mask_ids: list[int]
    p_text: float = 0.4
    p_image: float = 0.5
    use_mlm: bool = True
    use_mae: bool = True
    use_clm: bool = False
    shift_labels: bool = True
    noise: NoiseMode = "per_patch"
    normalize_targets: bool = False
    dummy_image: bool = True
    pad_to_multiple_of: int = 32


class CPTCollator:
    """``collator(records, generator=g)`` -> ``{"inputs": {...}, "mlm_labels", "mae_target", "mae_mask"}``.

    Args:
        processor: the MoCa processor (tokenizer with ``<|mask|>`` added, resize and max_length settings).
        settings: masking settings.
    """

    def __init__(self, processor: MoCaProcessor, settings: MaskingSettings):
        self.processor, self.settings = processor, settings
        ip = processor.image_processor
        self.merge_size = ip.merge_size
        self.row_size = 3 * ip.temporal_patch_size * ip.patch_size**2  # RGB x temporal x patch x patch
        self.target_size = self.merge_size**2 * self.row_size

    def encode(self, record: dict, index: int) -> Encoded:
        """Tokenise + patchify one record; an unreadable or unfittable image falls back to text only."""
        try:
            return self.processor.process(normalize_item(record, index), index)
        except MoCaInputError as exc:
            logger.warning("%s; using the record's text only", exc)
            return self.processor.process(Item(text=record.get("text", "").replace(IMAGE_PLACEHOLDER, "")), index)

    def __call__(self, records: list[dict], *, generator: torch.Generator) -> dict:
        """Collate and corrupt one micro-batch.

        Args:
            records: ``{"text", "images"}`` dicts.
            generator: source of every random draw (masking and noise).

        Returns:
            ``inputs`` (``input_ids`` (B, T), ``attention_mask`` (B, T), and ``pixel_values`` (P, C) +
            ``image_grid_thw`` (I, 3) when there is an image, dummy included); ``mlm_labels`` (B, T) (the
            next-token labels under ``use_clm``, then ``text_objective`` is ``clm``, else ``mlm``);
            ``mae_target`` (N, K * C); ``mae_mask`` (N,) bool.
        """
        s = self.settings
        inputs = self._pad(self.processor.collate([self.encode(r, i) for i, r in enumerate(records)]))
        labels = torch.full_like(inputs["input_ids"], IGNORE_INDEX)
        if s.use_clm:
            labels = causal_lm_labels(inputs["input_ids"], inputs["attention_mask"], never_predict_ids=s.never_mask_ids)
        if s.use_mlm:
            text = mask_text_tokens(
                inputs["input_ids"],
                inputs["attention_mask"],
                mask_token_id=s.mask_token_id,
                never_mask_ids=s.never_mask_ids,
                probability=s.p_text,
                generator=generator,
                shift_labels=s.shift_labels,
            )
            inputs["input_ids"], labels = text.input_ids, text.labels
        target = torch.zeros((0, self.target_size))
        mask = torch.zeros(0, dtype=torch.bool)
        if s.use_mae and "pixel_values" in inputs:
            patches = mask_image_patches(
                inputs["pixel_values"],
                merge_size=self.merge_size,
                probability=s.p_image,
                generator=generator,
                noise=s.noise,
                normalize_targets=s.normalize_targets,
            )
            inputs["pixel_values"], target, mask = patches.pixel_values, patches.target, patches.mask
        if s.dummy_image and "pixel_values" not in inputs:
            width = inputs["input_ids"].shape[1]
            inputs = add_dummy_image(inputs, self.processor)
            labels = torch.nn.functional.pad(labels, (0, inputs["input_ids"].shape[1] - width), value=IGNORE_INDEX)
        return {"inputs": inputs, "mlm_labels": labels, "mae_target": target, "mae_mask": mask,
                "text_objective": "clm" if s.use_clm else "mlm"}  # fmt: skip

    def _pad(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids, attn = inputs["input_ids"], inputs["attention_mask"]
        extra = -ids.shape[1] % self.settings.pad_to_multiple_of
        if extra:
            inputs["input_ids"] = torch.nn.functional.pad(ids, (0, extra), value=self.processor.pad_id)
            inputs["attention_mask"] = torch.nn.functional.pad(attn, (0, extra), value=0)
        return inputs
