"""Configuration of ``python -m moca_train.cpt`` (modality-aware continual pre-training, moca-method.md §3).

Composes the shared :class:`~moca_train.config.ModelConfig` and :class:`~moca_train.config.TrainConfig`
with CPT's data and objective sections. Where the paper and the reference code differ, the field
default is the paper's and the docstring names the code's value (moca-method.md preamble).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from moca_train.config import ModelConfig, TrainConfig, _check


@dataclass(frozen=True)
class CPTSourceConfig:
    """One interleaved corpus: rows ``{"text": ... placeholders ..., "images": [...]}``."""

    path: str = ""
    """A ``.jsonl``/``.json``/``.parquet`` file, a folder of them, a ``save_to_disk`` folder, or a hub dataset id."""
    split: str = "train"
    """Split to read (hub datasets and ``save_to_disk`` dataset dicts)."""
    name: str | None = None
    """Hub dataset configuration name."""
    streaming: bool = False
    """Stream instead of downloading (corpora like DocMatix, ~535 GB); the first ``num_samples`` rows of a
    seeded shuffle buffer are written once to ``data.cache_dir``. Requires ``num_samples``."""
    num_samples: int | None = None
    """Keep a seeded random subset of this many rows (reference: 500,000 per subset); None keeps all."""
    image_root: str | None = None
    """Folder that relative image paths are resolved against; default: the data file's folder."""
    text_column: str = "text"
    """Column with the text (image placeholders ``<|vision_start|><|image_pad|><|vision_end|>`` inline)."""
    images_column: str = "images"
    """Column with the list of images (paths, bytes, ``{"bytes", "path"}`` dicts or an Image feature)."""

    def __post_init__(self) -> None:
        _check(bool(self.path), "data.sources[].path", "is required")
        _check(self.num_samples is None or self.num_samples > 0, "data.sources[].num_samples", "must be > 0 or null")
        _check(not self.streaming or bool(self.num_samples), "data.sources[].num_samples", "is required to stream")


@dataclass
class CPTDataConfig:
    """Corpora and cost-bucketed batching."""

    sources: list[CPTSourceConfig] = field(default_factory=list)
    """The corpora, concatenated."""
    token_budget: int = 12800
    """Equivalent tokens per rank per micro-batch (cost = text + 4 * image tokens + 2 * images); reference 12,800."""
    drop_last: bool = False
    """Drop each bucket's incomplete last global batch (reference); else keep it if it has >= world_size rows."""
    seed: int = 1
    """Seed of sub-selection, epoch plans and masking (reference: 1)."""
    cache_dir: str = ""
    """Length statistics and materialised streams; '' = ``<train.output_dir>/data_cache``."""
    num_workers: int = 0
    """DataLoader workers that decode images, tokenise and mask ahead of the accelerator."""
    pad_to_multiple_of: int = 32
    """Pad the token axis to a multiple of this (reference: 32)."""
    dummy_image: bool = True
    """Give text-only micro-batches a masked-out dummy image so the vision tower runs on every rank (required with
    several ranks: DDP, FSDP and ZeRO-3 all need every rank to run the same modules; the reference does the same)."""

    def __post_init__(self) -> None:
        _check(self.token_budget > 0, "data.token_budget", f"must be > 0, got {self.token_budget}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.pad_to_multiple_of >= 1, "data.pad_to_multiple_of", "must be >= 1")


@dataclass
class CPTObjectiveConfig:
    """L = MLM + w * MAE on one corrupted forward pass (moca-method.md §3.1), or a causal LM."""

    use_mlm: bool = True
    """Masked language modelling on text tokens (switch off for the paper's ablation)."""
    use_mae: bool = True
    """Masked autoencoding of merged image patches (switch off for the paper's ablation)."""
    use_clm: bool = False
    """Causal language modelling instead of MoCa's objectives: next-token cross-entropy on uncorrupted text
    (image, special and padding positions are not targets) through the tied LM head. This is the stage that
    makes a *base model* (the stand-in for Qwen2.5-VL's own pre-training, e.g. the demo's); it needs
    ``model.attention: causal`` with ``use_mlm`` and ``use_mae`` off. Logged as ``clm``."""
    p_text: float = 0.4
    """MLM masking probability (paper: 0.4 at 3B, 0.6 at 7B; script: 0.4)."""
    p_image: float = 0.5
    """Probability of noising a merged visual token (paper: 0.5 at 3B, 0.6 at 7B; script 0.5; dataclass 0.25)."""
    mae_weight: float = 0.5
    """w (paper: 0.5, its sweep optimum; reference script: 0.1)."""
    shift_labels: bool = True
    """Paper (LLM2Vec): predict token i from position i-1. False: the reference code's unshifted labels."""
    noise: Literal["per_patch", "shared"] = "per_patch"
    """Noise for masked patches: an independent N(0, 1) draw per patch row (paper) or one vector shared by
    all masked rows of a micro-batch (reference code)."""
    normalize_targets: bool = False
    """Per-token normalised pixel targets (MAE norm_pix); off in the paper and the code."""
    mask_token: str = "<|mask|>"
    """The new special token that replaces masked text tokens (added to the tokenizer if absent)."""

    def __post_init__(self) -> None:
        _check(self.use_mlm or self.use_mae or self.use_clm, "objective.use_mlm",
               "use_mlm, use_mae and use_clm cannot all be off")  # fmt: skip
        _check(not (self.use_clm and (self.use_mlm or self.use_mae)), "objective.use_clm",
               "the causal LM replaces MoCa's objectives: set use_mlm and use_mae to false")  # fmt: skip
        _check(0.0 <= self.p_text <= 1.0, "objective.p_text", f"must be in [0, 1], got {self.p_text}")
        _check(0.0 <= self.p_image <= 1.0, "objective.p_image", f"must be in [0, 1], got {self.p_image}")
        _check(self.mae_weight >= 0, "objective.mae_weight", f"must be >= 0, got {self.mae_weight}")
        _check(self.noise in ("per_patch", "shared"), "objective.noise", "must be per_patch or shared")


@dataclass
class CPTConfig:
    """``python -m moca_train.cpt``: modality-aware continual pre-training (moca-method.md §3)."""

    model: ModelConfig
    """Starting weights (a Qwen2.5-VL base) and runtime options; max_length: paper 2048, script 1280."""
    data: CPTDataConfig
    """Interleaved corpora and batching."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, logging, checkpoints (paper: LR 2e-6, 10% warmup, linear decay, clip 5.0, accumulation 4)."""
    objective: CPTObjectiveConfig = field(default_factory=CPTObjectiveConfig)
    """Masking and loss weights."""

    def __post_init__(self) -> None:
        _check(bool(self.data.sources), "data.sources", "must list at least one corpus")
        lora_off = not self.model.lora.enabled
        _check(lora_off, "model.lora.enabled", "CPT trains all weights (paper §3.1.1); LoRA is for CL only")
        wanted = "causal" if self.objective.use_clm else "bidirectional"
        why = "next-token prediction" if self.objective.use_clm else "MLM and MAE (MoCa's CPT)"
        _check(self.model.attention == wanted, "model.attention", f"{why} needs {wanted} attention")

    def cache_dir(self) -> str:
        """Where length statistics and materialised streams go."""
        return self.data.cache_dir or f"{self.train.output_dir}/data_cache"
