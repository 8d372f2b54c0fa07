"""Optimizer, learning-rate schedule and the gradient work between backward and ``optimizer.step``.

- :func:`build_optimizer`: AdamW; matrices decay, biases and norm weights do not.
- :func:`lr_factor`: DeepSpeed ``WarmupDecayLR`` (the reference's scheduler: ``ds_config_stage3.json``
  declares it, so HF hands scheduling to DeepSpeed and ignores ``--lr_scheduler_type linear``):
  logarithmic (default) or linear warmup over W steps, then linear decay to 0 at ``total_steps``.
- :func:`finish_gradients`: give every trainable parameter a gradient (zeros where a step did not use it)
  and clip. Under DDP, and in the reference (DeepSpeed ZeRO-3, dummy image in every batch), a parameter
  unused in a step gets a zero gradient, so AdamW still moves it (momentum, weight decay); in one process it
  would keep ``grad=None`` and stand still. Zero-filling in every world size makes one process train like
  many.

Schedule indexing: the factor of optimizer step k (0-based) is applied *at* step k, as HF's ``LambdaLR``
schedules do. DeepSpeed steps its scheduler after each optimizer step, so the reference applied factor k
one optimizer step later (and DeepSpeed 0.14.4, its pinned version, ran the very first step at the peak
LR, because that release's ``WarmupLR`` never set the initial LR; fixed in 0.15.3). Neither off-by-one is
reproduced: they are DeepSpeed artefacts, not the recipe.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from moca_train.config import TrainConfig

MIN_LOG_WARMUP = 2  # DeepSpeed WarmupLR: warmup_num_steps = max(2, W), so log(W) > 0


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, warmup: Literal["log", "linear"] = "log") -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based).

    ``log`` is DeepSpeed ``WarmupDecayLR._get_gamma`` with ``warmup_type="log"`` (DeepSpeed's default):
    log(step + 1) / log(W) for step < W, with W raised to 2 as DeepSpeed does (so W = 0 still warms up over
    2 steps). ``linear`` is HF ``get_linear_schedule_with_warmup``: step / W for step < W. Both give 0 at
    step 0 and then decay linearly, max(0, (total - step) / (total - W)), reaching 0 at ``total_steps``.

    Args:
        step: optimizer step, 0-based.
        warmup_steps: W.
        total_steps: T, the number of optimizer steps.
        warmup: warmup shape.

    Returns:
        The factor in [0, 1].
    """
    w = max(MIN_LOG_WARMUP, warmup_steps) if warmup == "log" else warmup_steps
    if step < w:
        return math.log(step + 1) / math.log(w) if warmup == "log" else step / w
    return max(0.0, (total_steps - step) / max(1, total_steps - w))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters; matrices decay, biases and norm weights (ndim < 2) do not."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` over :func:`lr_factor` with the config's warmup length and shape."""
    warmup, total, shape = cfg.warmup_steps(), cfg.max_steps, cfg.warmup
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps=warmup, total_steps=total, warmup=shape)
    )


def is_deepspeed(accelerator: Accelerator) -> bool:
    """True when accelerate runs the model through a DeepSpeed engine."""
    return accelerator.distributed_type.value == "DEEPSPEED"


def configure_deepspeed(accelerator: Accelerator, max_grad_norm: float | None, divisor: float) -> None:
    """Fill the DeepSpeed config from the training config (call before ``prepare``).

    - Clipping: DeepSpeed clips inside its own ``step`` at the config's ``gradient_clipping``; accelerate
      fills an ``auto`` value with 1.0, whatever the training config says. The engine's gradient is
      ``divisor`` times the gradient ``max_grad_norm`` refers to (see :func:`finish_gradients`), so the
      threshold is scaled.
    - ``train_micro_batch_size_per_gpu``: accelerate derives an ``auto`` value from a DataLoader passed to
      ``prepare`` and refuses to prepare without one; our batch sources hand each rank its micro-batches
      themselves (rows per micro-batch vary with the token budget), so the engine is told 1. DeepSpeed
      uses the value only for its own data loader and throughput accounting, never for the gradient.
    - ``zero_force_ds_cpu_optimizer: false``: the training config owns the optimizer (torch AdamW). With
      ``offload_optimizer_device: cpu`` accelerate and DeepSpeed would otherwise swap it for
      ``DeepSpeedCPUAdam``, a C++ extension compiled at start-up, with its own numerics.

    Raises:
        ValueError: the DeepSpeed config sets a different number than ``--train.max_grad_norm``.
    """
    ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
    want = 0.0 if max_grad_norm is None else float(max_grad_norm)
    have = ds_config.get("gradient_clipping", "auto")
    if have not in ("auto", None) and float(have) != want:
        raise ValueError(
            f"--train.max_grad_norm: the DeepSpeed config sets gradient_clipping={have} but the training config "
            f"says {max_grad_norm}; set gradient_clipping to 'auto' in the DeepSpeed config"
        )
    ds_config["gradient_clipping"] = want * divisor
    ds_config["zero_force_ds_cpu_optimizer"] = False
    if ds_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds_config["train_micro_batch_size_per_gpu"] = 1
    if ds_config.get("train_batch_size") == "auto":
        del ds_config["train_batch_size"]  # DeepSpeed derives it from the micro-batch size, accumulation and ranks


def finish_gradients(
    model: torch.nn.Module, accelerator: Accelerator, *, max_grad_norm: float | None, divisor: float = 1.0
) -> float:
    """Zero-fill missing gradients, clip, and return the gradient norm in the config's units.

    Args:
        model: the prepared model.
        accelerator: its accelerator.
        max_grad_norm: threshold for the norm of ``gradient / divisor``; None: measure only.
        divisor: how many times larger the accumulated gradient is than the gradient ``max_grad_norm``
            refers to (CL: the number of ranks, see ``TrainConfig.max_grad_norm``).

    Returns:
        The pre-clipping norm of ``gradient / divisor`` (NaN if DeepSpeed does not report one).
    """
    if is_deepspeed(accelerator):  # the engine already clipped and stepped inside accelerator.backward
        norm = accelerator.clip_grad_norm_(model.parameters(), math.inf)
        return math.nan if norm is None else float(norm) / divisor
    for param in model.parameters():
        if param.requires_grad and param.grad is None:
            param.grad = torch.zeros_like(param)
    limit = math.inf if max_grad_norm is None else max_grad_norm * divisor
    return float(accelerator.clip_grad_norm_(model.parameters(), limit)) / divisor
