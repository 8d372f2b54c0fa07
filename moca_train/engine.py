"""The training loop every stage shares, on HF accelerate (no home-grown distributed engine).

Interface::

    history = train(
        model=model,                     # nn.Module, not yet prepared
        batches=source,                  # stateful batch source (below)
        cfg=train_cfg,                   # moca_train.config.TrainConfig
        loss_fn=loss_fn,                 # loss_fn(model, batch) -> (loss tensor, {name: float})
        # or step_fn=step_fn,            # step_fn(model, batch, accelerator) -> {"loss": float, ...}; does its own
        #                                #   accelerator.backward calls (GradCache); model is the prepared model
        save_model_fn=save_fn,           # save_fn(unwrapped_model, directory, state_dict) -> None
        run_config=cfg,                  # the root config dataclass, written next to each checkpoint
        accelerator=acc,                 # optional; build_accelerator(cfg) when None
    )

``batches`` yields this rank's micro-batches forever (cycle epochs inside); the engine takes
``cfg.grad_accum_steps`` of them per optimizer step. It must implement ``state_dict()`` (JSON-ready,
the position after the last micro-batch handed out) and ``load_state_dict(state)``, and a new
``iter(batches)`` must continue from the loaded position. For DDP/FSDP/DeepSpeed the source itself
hands each rank its slice (nothing is wrapped by ``accelerator.prepare``), so the global batch of a
step is the same whatever the number of ranks.

Per step: forward/backward under ``accelerator.accumulate`` (bf16 autocast when
``mixed_precision: bf16``), gradient clipping, AdamW, linear warmup then linear decay, metrics
averaged over micro-batches and ranks. Logs go to stdout (``logging``) with a tqdm bar, to
``output_dir/log.jsonl``, and to TensorBoard/W&B via ``report_to``.

Checkpoints: ``output_dir/checkpoint-<step>/`` holds the model as written by ``save_model_fn``
(``save_pretrained`` safetensors + processor, so ``MoCaEncoder.from_pretrained`` loads the folder
itself), ``run_config.yaml`` + ``run_meta.json`` (git hash), ``trainer_state.json`` (step, batch-source
position, history) and ``train_state/`` (``accelerator.save_state``: model, optimizer, scheduler and
per-rank RNG states). Checkpoints are written to a temporary folder and renamed, so a crash never
leaves a half-written ``checkpoint-*``. Resuming restores all of it, so the loss curve continues
exactly as an uninterrupted run (same numbers to 1e-6 on CPU; tested).

Launch: ``python -m ...`` (one process), ``torchrun --nproc_per_node N -m ...`` (DDP), or
``accelerate launch --config_file fsdp.yaml|deepspeed.yaml -m ...`` (FSDP / DeepSpeed).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from moca_train.checkpoint import ACCEL_DIR, STATE_FILE, resolve_resume, save_checkpoint

if TYPE_CHECKING:
    from accelerate import Accelerator

    from moca_train.config import TrainConfig

logger = logging.getLogger(__name__)

LOG_FILE = "log.jsonl"

LossFn = Callable[[torch.nn.Module, Any], "tuple[torch.Tensor, dict[str, float]]"]
StepFn = Callable[[torch.nn.Module, Any, "Accelerator"], "dict[str, float]"]
SaveModelFn = Callable[[torch.nn.Module, Path, "dict[str, torch.Tensor] | None"], None]


class BatchSource(Protocol):
    """A resumable, endless iterable of this rank's micro-batches."""

    def __iter__(self) -> Iterator[Any]: ...  # noqa: D105

    def state_dict(self) -> dict: ...  # noqa: D102

    def load_state_dict(self, state: dict) -> None: ...  # noqa: D102


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    """An ``Accelerator`` for ``cfg``: mixed precision, accumulation, tracker; distributed setup from the launcher."""
    from accelerate import Accelerator

    return Accelerator(
        # without cpu=True accelerate ignores torchrun's WORLD_SIZE on CUDA-less machines: N independent runs
        cpu=not torch.cuda.is_available(),
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        step_scheduler_with_optimizer=False,  # the engine steps the scheduler once per optimizer step
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=cfg.output_dir,
    )


def lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based): linear warmup, then linear decay to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


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


def default_save_model(model: torch.nn.Module, directory: Path, state_dict: dict | None) -> None:
    """``model.save_pretrained(directory)`` in safetensors, with the gathered state dict under FSDP/ZeRO-3."""
    model.save_pretrained(directory, state_dict=state_dict, safe_serialization=True)


def _mean_logs(accelerator: Accelerator, logs: dict[str, float]) -> dict[str, float]:
    """Average metrics over ranks (every rank must report the same keys)."""
    if accelerator.num_processes == 1 or not logs:
        return logs
    keys = sorted(logs)
    values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(keys, values.tolist()))


def _run_step(model, batch_iter, accelerator, cfg, loss_fn, step_fn) -> dict[str, float]:
    """Forward/backward over ``grad_accum_steps`` micro-batches; metrics averaged over them."""
    totals: dict[str, float] = {}
    for _ in range(cfg.grad_accum_steps):
        batch = next(batch_iter)
        with accelerator.accumulate(model):
            if step_fn is not None:
                logs = dict(step_fn(model, batch, accelerator))
            else:
                loss, extra = loss_fn(model, batch)
                accelerator.backward(loss)
                logs = {"loss": loss.detach().float().item(), **extra}
        for key, value in logs.items():
            totals[key] = totals.get(key, 0.0) + float(value) / cfg.grad_accum_steps
    return totals


def train(
    *,
    model: torch.nn.Module,
    batches: BatchSource,
    cfg: TrainConfig,
    loss_fn: LossFn | None = None,
    step_fn: StepFn | None = None,
    save_model_fn: SaveModelFn | None = None,
    run_config: Any = None,
    accelerator: Accelerator | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps, resuming per ``cfg.resume``.

    Args:
        model: the model (unprepared; moved and wrapped here).
        batches: the stateful batch source (see module docstring).
        cfg: optimisation/logging/checkpoint settings.
        loss_fn: ``(model, batch) -> (loss, logs)``; the engine calls ``accelerator.backward(loss)``.
        step_fn: alternative to ``loss_fn`` for custom backward passes (GradCache):
            ``(model, batch, accelerator) -> logs`` with a ``loss`` entry.
        save_model_fn: writes the model into a checkpoint folder; default ``save_pretrained``.
        run_config: root config dataclass written as ``run_config.yaml`` next to each checkpoint.
        accelerator: reuse an ``Accelerator`` (e.g. one created before building rank-aware data).

    Returns:
        One dict per optimizer step (``step``, ``loss``, ``lr``, ``grad_norm`` and the loss logs,
        averaged over micro-batches and ranks), including steps restored from a checkpoint.
    """
    from accelerate.utils import set_seed

    if (loss_fn is None) == (step_fn is None):
        raise ValueError("pass exactly one of loss_fn and step_fn")
    accelerator = accelerator or build_accelerator(cfg)
    save_model_fn = save_model_fn or default_save_model
    set_seed(cfg.seed)
    model.train()
    optimizer = build_optimizer(model, cfg)
    warmup = cfg.warmup_steps()
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps=warmup, total_steps=cfg.max_steps)
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    history: list[dict[str, float]] = []
    start = 0
    ckpt = resolve_resume(cfg)
    if ckpt is not None:
        accelerator.load_state(str(ckpt / ACCEL_DIR))
        state = json.loads((ckpt / STATE_FILE).read_text())
        batches.load_state_dict(state["batches"])
        start, history = int(state["step"]), list(state["history"])
        logger.info("resumed from %s at step %d", ckpt, start)
    if cfg.report_to != "none":
        accelerator.init_trackers(cfg.run_name or Path(cfg.output_dir).name)
    return _loop(
        model,
        optimizer,
        scheduler,
        batches,
        accelerator,
        cfg,
        loss_fn,
        step_fn,
        save_model_fn,
        run_config,
        start,
        history,
    )


def _loop(
    model, optimizer, scheduler, batches, accelerator, cfg, loss_fn, step_fn, save_model_fn, run_config, start, history
) -> list[dict[str, float]]:
    from tqdm.auto import tqdm

    root = Path(cfg.output_dir)
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=cfg.max_steps,
        initial=start,
        desc="train",
        disable=not (cfg.progress_bar and accelerator.is_main_process),
        dynamic_ncols=True,
    )
    batch_iter = iter(batches)
    saved_at = start if start > 0 else -1
    tic = time.perf_counter()
    for step in range(start, cfg.max_steps):
        lr = scheduler.get_last_lr()[0]
        logs = _run_step(model, batch_iter, accelerator, cfg, loss_fn, step_fn)
        grad_norm = math.nan
        if cfg.max_grad_norm is not None:
            norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            grad_norm = float(norm) if norm is not None else math.nan  # DeepSpeed clips internally
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step + 1, "lr": lr, "grad_norm": grad_norm, **_mean_logs(accelerator, logs)}
        history.append(record)
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
            rate = (step + 1 - start) / max(time.perf_counter() - tic, 1e-9)
            _log(accelerator, bar, root, history[-cfg.log_every :], rate)
        last = step + 1 == cfg.max_steps
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or last:
            save_checkpoint(
                accelerator,
                model,
                step=step + 1,
                batches=batches,
                history=history,
                cfg=cfg,
                save_model_fn=save_model_fn,
                run_config=run_config,
            )
            saved_at = step + 1
    bar.close()
    if saved_at < 0:
        logger.info("nothing to do: already at step %d of %d", start, cfg.max_steps)
    if cfg.report_to != "none":
        accelerator.end_training()
    return history


def _log(accelerator, bar, root: Path, window: list[dict[str, float]], steps_per_s: float) -> None:
    """Average the last ``log_every`` records and report them (main process)."""
    if not accelerator.is_main_process:
        return
    keys = [k for k in window[-1] if k != "step"]
    mean = {k: sum(r.get(k, math.nan) for r in window) / len(window) for k in keys}
    mean["lr"] = window[-1]["lr"]
    mean["steps_per_s"] = steps_per_s
    step = int(window[-1]["step"])
    bar.set_postfix(loss=f"{mean.get('loss', math.nan):.4f}", lr=f"{mean['lr']:.2e}")
    logger.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in mean.items()))
    with (root / LOG_FILE).open("a") as f:
        f.write(json.dumps({"step": step, **mean}) + "\n")
    if accelerator.trackers:
        accelerator.log(mean, step=step)
