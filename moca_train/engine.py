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
``mixed_precision: bf16``), zero gradients for parameters the step did not use (so one process moves
them exactly as DDP and the reference's DeepSpeed do), gradient clipping in the reference's units, AdamW,
DeepSpeed's log (or linear) warmup then linear decay (:mod:`moca_train.optim`), metrics averaged over
micro-batches and ranks. Logs go to stdout (``logging``) with a tqdm bar, to
``output_dir/log.jsonl``, and to TensorBoard/W&B via ``report_to``.

Checkpoints: ``output_dir/checkpoint-<step>/`` holds the model as written by ``save_model_fn``
(``save_pretrained`` safetensors + processor, so ``MoCaEncoder.from_pretrained`` loads the folder
itself), ``run_config.yaml`` + ``run_meta.json`` (git hash), ``trainer_state.json`` (step, batch-source
position, history) and ``train_state/`` (``accelerator.save_state``: model, optimizer, scheduler and
per-rank RNG states). Checkpoints are written to a temporary folder and renamed, so a crash never
leaves a half-written ``checkpoint-*``. Resuming restores all of it, so the loss curve continues
exactly as an uninterrupted run (same numbers to 1e-6 on CPU; tested).

Launch: ``python -m ...`` (one process), ``torchrun --nproc_per_node N -m ...`` (DDP), or
``accelerate launch --config_file configs/accelerate/{fsdp,deepspeed_zero3}.yaml -m ...`` (FSDP2 /
DeepSpeed ZeRO-3); :mod:`moca_train.launcher` builds the ``Accelerator`` without accelerate's silent
CPU fallbacks (FSDP runs as FSDP2 on CPU ranks too).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from moca_train.checkpoint import ACCEL_DIR, STATE_FILE, resolve_resume, save_checkpoint
from moca_train.launcher import build_accelerator
from moca_train.optim import (
    build_optimizer,
    build_scheduler,
    configure_deepspeed,
    finish_gradients,
    is_deepspeed,
)

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


def _run_step(model, batch_iter, accelerator, *, cfg, loss_fn, step_fn, divisor) -> tuple[dict[str, float], float]:
    """Forward/backward over ``grad_accum_steps`` micro-batches, then :func:`finish_gradients`.

    Returns:
        ``(metrics averaged over the micro-batches, gradient norm in the config's units)``.
    """
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
    return totals, finish_gradients(model, accelerator, max_grad_norm=cfg.max_grad_norm, divisor=divisor)


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
    grad_norm_divisor: float = 1.0,
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
        grad_norm_divisor: the accumulated gradient is this many times the gradient ``cfg.max_grad_norm``
            refers to (CL: its loss is scaled by the number of ranks, the reference's is not).

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
    scheduler = build_scheduler(optimizer, cfg)
    if is_deepspeed(accelerator):
        configure_deepspeed(accelerator, cfg.max_grad_norm, grad_norm_divisor)
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
    step = functools.partial(_run_step, cfg=cfg, loss_fn=loss_fn, step_fn=step_fn, divisor=grad_norm_divisor)
    return _loop(model, optimizer, scheduler, batches, accelerator, cfg, step, save_model_fn, run_config, start,
                 history)  # fmt: skip


def _loop(
    model, optimizer, scheduler, batches, accelerator, cfg, run_step, save_model_fn, run_config, start, history
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
        lr = optimizer.param_groups[0]["lr"]  # what this step's update uses (DeepSpeed: its optimizer's groups)
        logs, grad_norm = run_step(model, batch_iter, accelerator)
        optimizer.step()  # DeepSpeed: a no-op, its engine stepped inside accelerator.backward
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
    # Trackers finish and the process group is destroyed before the interpreter exits: a gloo group left to
    # the interpreter's teardown can abort a rank ("terminate called without an active exception") after
    # the last checkpoint was written, and the launcher then reports the whole run as failed.
    accelerator.wait_for_everyone()
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
