"""Training configuration dataclasses shared by every stage (CPT, CL).

Each field carries an attribute docstring; :mod:`moca_train.cli` reads those docstrings for ``--help``
and maps YAML recipes (``configs/{cpt,cl}/*.yaml``) plus dotted overrides (``--train.learning_rate 1e-4``)
onto these classes. ``__post_init__`` only validates (house-style rule 7): no loading, no printing.
Derived values are methods. A stage config composes :class:`ModelConfig` and :class:`TrainConfig`
with its own data/loss sections in ``moca_train/<stage>/config.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from moca_model.backbones import BACKBONES
from moca_model.moca_config import ATTENTION_MODES, POOLING_MODES

DTYPES = ("float32", "bfloat16", "float16")


def _check(ok: bool, name: str, message: str) -> None:
    """Raise ``ValueError`` naming the offending option (``--section.field``)."""
    if not ok:
        raise ValueError(f"--{name}: {message}")


@dataclass
class LoraConfig:
    """Optional LoRA/DoRA adapters (peft) on the text decoder; the saved model is always merged."""

    enabled: bool = False
    """Train LoRA adapters instead of all weights (the reference models were fully fine-tuned)."""
    r: int = 16
    """Adapter rank (reference LoRA path: 16)."""
    alpha: int = 64
    """LoRA scaling numerator ``lora_alpha`` (reference: 64)."""
    dropout: float = 0.1
    """Dropout on the adapter input (reference: 0.1)."""
    use_dora: bool = False
    """Weight-decomposed LoRA (the reference's LoRA path used DoRA)."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module-name suffixes that get adapters (text decoder projections by default)."""

    def __post_init__(self) -> None:
        _check(self.r > 0, "model.lora.r", f"must be > 0, got {self.r}")
        _check(0.0 <= self.dropout < 1.0, "model.lora.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(bool(self.target_modules), "model.lora.target_modules", "must name at least one module")


@dataclass
class ModelConfig:
    """Which weights to start from and how to run them."""

    init_from: str = ""
    """Checkpoint directory (or hub id) to start from: a CPT checkpoint, a released MoCa model or a Qwen2.5-VL base."""
    processor_from: str | None = None
    """Where to load the tokenizer/image processor from; default: ``init_from``."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype. Keep float32 with ``train.mixed_precision: bf16`` (fp32 master weights); bfloat16
    halves memory but rounds away AdamW updates smaller than ~1e-3 of a weight (e.g. at LR 1e-5)."""
    backbone: Literal["qwen2_vl", "qwen2_5_vl", "qwen3_vl"] | None = None
    """The model family ``init_from`` must be; None accepts the checkpoint's own (``moca_config.json``
    ``backbone``, else ``config.json`` ``model_type``). Recipes name it, so a recipe run on the wrong
    checkpoint fails at load time instead of training something else; every checkpoint records it."""
    attention: Literal["bidirectional", "causal"] = "bidirectional"
    """Text attention this stage trains with, whatever the starting checkpoint recorded: ``bidirectional``
    (MoCa's CPT and CL) or ``causal`` (a base model's next-token pre-training, or the paper's causal CL
    ablation). Every checkpoint the stage writes records it in ``moca_config.json``, and every loader
    (``MoCaEncoder``, the vidore/mteb/MMEB adapters) honours it."""
    pooling: Literal["mean", "last"] = "mean"
    """How token states become one embedding: ``mean`` over every real token (MoCa, paper and reference) or
    ``last``, the last real token's state (what the reference pools when attention is causal, as in the
    paper's causal CL-only baseline; VLM2Vec-style). Recorded in every checkpoint's ``moca_config.json``;
    every loader honours it."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = None
    """Attention backend; None picks flash_attention_2 on CUDA when installed, else sdpa."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (non-reentrant) to save memory."""
    min_pixels: int | None = None
    """Lower image-size bound in pixels; None keeps the checkpoint's ``moca_config.json`` or MoCa's 256 visual
    tokens in the backbone's units (256*28*28 on Qwen2/2.5-VL, 256*32*32 on Qwen3-VL)."""
    max_pixels: int | None = None
    """Upper image-size bound in pixels; None keeps the checkpoint's ``moca_config.json`` or MoCa's 1,024 visual
    tokens in the backbone's units (1024*28*28 on Qwen2/2.5-VL, 1024*32*32 on Qwen3-VL)."""
    max_length: int | None = None
    """Token limit after image expansion; None keeps the checkpoint's or MoCa's 1280."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA options (off by default)."""

    def __post_init__(self) -> None:
        _check(bool(self.init_from), "model.init_from", "is required (a checkpoint directory or hub id)")
        _check(self.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        modes = ATTENTION_MODES
        names = BACKBONES
        _check(self.backbone is None or self.backbone in names, "model.backbone",
               f"must be one of {names} or null, got {self.backbone!r}")  # fmt: skip
        _check(self.attention in modes, "model.attention", f"must be one of {modes}, got {self.attention!r}")
        pools = POOLING_MODES
        _check(self.pooling in pools, "model.pooling", f"must be one of {pools}, got {self.pooling!r}")
        for name in ("min_pixels", "max_pixels", "max_length"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"model.{name}", f"must be > 0, got {value}")
        if self.min_pixels is not None and self.max_pixels is not None:
            _check(self.min_pixels <= self.max_pixels, "model.min_pixels", "must be <= model.max_pixels")


@dataclass
class TrainConfig:
    """Optimisation, logging and checkpointing, independent of the stage."""

    output_dir: str = "runs/default"
    """Run directory: ``checkpoint-<step>/`` folders (each a loadable model + ``train_state/``) and logs."""
    seed: int = 0
    """Seed for model-independent randomness (data order, masking, dropout)."""
    max_steps: int = 1000
    """Number of optimizer steps."""
    learning_rate: float = 1e-5
    """Peak learning rate (AdamW)."""
    warmup_ratio: float = 0.05
    """Fraction of ``max_steps`` spent warming up (W = ceil(ratio * max_steps), as HF computes it); then
    linear decay to 0 at ``max_steps``."""
    warmup: Literal["log", "linear"] = "log"
    """Warmup shape. ``log``: DeepSpeed ``WarmupDecayLR``'s default, factor log(k + 1) / log(W) at step k < W
    (W at least 2; step 0 runs at LR 0), which is what the reference ran: its DeepSpeed config declares that
    scheduler, so HF ignores the script's ``--lr_scheduler_type linear``. ``linear``: HF's linear warmup k / W,
    the schedule the script's flag names. The paper does not say."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (biases and norms are never decayed); HF default 0."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (each rank). Contrastive stages keep 1 and use GradCache."""
    max_grad_norm: float | None = 5.0
    """Clip the global gradient norm to this value (reference script: 5.0); None disables clipping. The norm is
    that of the gradient the reference's DeepSpeed engine clips: each rank's gradient of the stage's loss as
    the reference defines it, averaged over ranks. CPT: the gradient of the mean micro-batch loss. CL: the
    reference does not scale its global-batch loss by the number of ranks W, so its averaged gradient is the
    full-batch gradient / W; clipping therefore binds when the full-batch gradient norm exceeds W times this
    value, exactly as in the reference with W ranks (the optimizer itself always gets the full-batch gradient,
    so runs with different W agree whenever clipping does not bind). ``grad_norm`` in the logs is this norm."""
    mixed_precision: Literal["no", "bf16"] = "no"
    """Autocast: ``bf16`` on GPU (the reference's setting), ``no`` for exact CPU runs."""
    log_every: int = 10
    """Log averaged metrics every N steps (stdout, and the trackers in ``report_to``)."""
    save_every: int = 500
    """Write a checkpoint every N steps (and always at the end); 0 saves only at the end."""
    keep_last: int | None = 2
    """Keep only this many most recent checkpoints (the final one is always kept); None keeps all."""
    resume: str | None = "auto"
    """``auto``: continue from the newest checkpoint in ``output_dir`` if any; a path: from that
    checkpoint; None: start fresh."""
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    """Extra experiment tracker (needs the ``tensorboard`` or ``wandb`` package)."""
    run_name: str | None = None
    """Tracker run name; default: the basename of ``output_dir``."""
    progress_bar: bool = True
    """Show a tqdm bar on the main process."""

    def __post_init__(self) -> None:
        _check(bool(self.output_dir), "train.output_dir", "is required")
        _check(self.max_steps > 0, "train.max_steps", f"must be > 0, got {self.max_steps}")
        _check(self.learning_rate > 0, "train.learning_rate", f"must be > 0, got {self.learning_rate}")
        _check(0.0 <= self.warmup_ratio < 1.0, "train.warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.warmup in ("log", "linear"), "train.warmup", f"must be 'log' or 'linear', got {self.warmup!r}")
        _check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.grad_accum_steps >= 1, "train.grad_accum_steps", f"must be >= 1, got {self.grad_accum_steps}")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "train.max_grad_norm", "must be > 0 or null")
        _check(self.mixed_precision in ("no", "bf16"), "train.mixed_precision", "must be 'no' or 'bf16'")
        _check(self.log_every >= 1, "train.log_every", f"must be >= 1, got {self.log_every}")
        _check(self.save_every >= 0, "train.save_every", f"must be >= 0, got {self.save_every}")
        _check(self.keep_last is None or self.keep_last >= 1, "train.keep_last", "must be >= 1 or null")
        _check(self.report_to in ("none", "tensorboard", "wandb"), "train.report_to", "must be none|tensorboard|wandb")

    def warmup_steps(self) -> int:
        """Warmup length W in optimizer steps: ``ceil(warmup_ratio * max_steps)`` (HF ``get_warmup_steps``)."""
        return math.ceil(self.warmup_ratio * self.max_steps)
