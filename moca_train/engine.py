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
micro-batches and ranks. Logs go to stderr (``logging``, through tqdm's writer, so a line never lands on
the bar, whose loss is the last step's), to ``output_dir/log.jsonl``, and to TensorBoard/W&B via
``report_to``.

Signals (:mod:`moca_train.stopping`): SIGINT stops at once, SIGTERM finishes the step and saves a checkpoint
when that fits in ``train.stop_grace_s``; both log the newest checkpoint and how to resume (rerun the same
command), then raise :class:`~moca_train.stopping.StopRequested` (exit status 130 / 143).

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
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from moca_train.checkpoint import ACCEL_DIR, STATE_FILE, list_checkpoints, resolve_resume, save_checkpoint
from moca_train.launcher import build_accelerator
from moca_train.optim import (
    build_optimizer,
    build_scheduler,
    configure_deepspeed,
    finish_gradients,
    is_deepspeed,
)
from moca_train.stopping import StopRequested, StopSignals, expected_save_seconds, resume_hint

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


def _store_tied_once(models: list, weights: list, output_dir: str) -> None:
    """Pre-hook of accelerate's ``save_state``: a parameter reachable under two names is stored under the first only.

    CPT's tied MLM head is the input embedding's Parameter under a second name (``lm_head.weight``).
    accelerate would drop that alias itself, with a warning on every save ("Removed shared tensor ... check by
    verifying that you don't receive any warning while reloading"); dropping it here is the same file, and
    ``load_state`` fills both names from the one tensor (they are one Parameter).
    """
    for model, state in zip(models, weights):
        if not isinstance(state, dict):
            continue
        first: dict[int, str] = {}
        for name, param in model.named_parameters(remove_duplicate=False):
            kept = first.setdefault(id(param), name)
            if kept != name and name in state and kept in state:
                del state[name]
                logger.debug("train state: %s is %s (tied), stored once", name, kept)


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
    accelerator.register_save_state_pre_hook(_store_tied_once)
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
    save_times: list[float] = []
    save = functools.partial(_save, accelerator, model, batches=batches, history=history, cfg=cfg,
                             save_model_fn=save_model_fn, run_config=run_config, times=save_times)  # fmt: skip
    tic = time.perf_counter()
    step = done = start
    with StopSignals() as signals:
        try:
            for step in range(start, cfg.max_steps):
                lr = optimizer.param_groups[0]["lr"]  # what this step's update uses (DeepSpeed: its optimizer's groups)
                logs, grad_norm = run_step(model, batch_iter, accelerator)
                optimizer.step()  # DeepSpeed: a no-op, its engine stepped inside accelerator.backward
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                record = {"step": step + 1, "lr": lr, "grad_norm": grad_norm, **_mean_logs(accelerator, logs)}
                history.append(record)
                done = step + 1
                bar.set_postfix(loss=f"{record.get('loss', math.nan):.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(1)  # the bar shows this step's loss; the log line the mean of the last log_every steps
                if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.max_steps:
                    rate = (step + 1 - start) / max(time.perf_counter() - tic, 1e-9)
                    _log(accelerator, root, history[-cfg.log_every :], rate)
                if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == cfg.max_steps:
                    save(step + 1)
                    saved_at = step + 1
                if step + 1 < cfg.max_steps and _any_rank(accelerator, signals.signum is not None):
                    _stop_after_step(accelerator, model, cfg, signals, step + 1, saved_at, save, save_times, bar)
        except StopRequested:  # SIGTERM's stop (a KeyboardInterrupt itself)
            raise
        except KeyboardInterrupt:
            bar.close()
            where = f"after step {done}" if done == step + 1 else f"during step {step + 1}"
            _stop(accelerator, cfg, signal.SIGINT, f"interrupted (SIGINT) {where} of {cfg.max_steps}")
    bar.close()
    if start >= cfg.max_steps and accelerator.is_main_process:
        logger.info("nothing to do: already at step %d of %d (raise --train.max_steps to train on)", start,
                    cfg.max_steps)  # fmt: skip
    # Trackers finish and the process group is destroyed before the interpreter exits: a gloo group left to
    # the interpreter's teardown can abort a rank ("terminate called without an active exception") after
    # the last checkpoint was written, and the launcher then reports the whole run as failed.
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return history


def _save(accelerator, model, step: int, *, batches, history, cfg, save_model_fn, run_config, times) -> Path:
    """Write ``checkpoint-<step>`` and record how long it took (the SIGTERM budget, :mod:`moca_train.stopping`)."""
    tic = time.perf_counter()
    path = save_checkpoint(accelerator, model, step=step, batches=batches, history=history, cfg=cfg,
                           save_model_fn=save_model_fn, run_config=run_config)  # fmt: skip
    times.append(time.perf_counter() - tic)
    return path


def _any_rank(accelerator, flag: bool, *, every: bool = False) -> bool:
    """``flag`` on any rank (``every``: on every rank); one reduction when there are several ranks."""
    if accelerator.num_processes == 1:
        return flag
    total = accelerator.reduce(torch.tensor([float(flag)], device=accelerator.device), reduction="sum").item()
    return total >= accelerator.num_processes if every else total > 0


def _stop_after_step(accelerator, model, cfg, signals, done: int, saved_at: int, save, save_times, bar) -> None:
    """SIGTERM: save ``checkpoint-<done>`` if quick enough (module docs of :mod:`moca_train.stopping`), then stop."""
    if saved_at == done:
        note = f"checkpoint-{done} is saved"
    else:
        expected, left = expected_save_seconds(model, save_times), signals.seconds_left(cfg.stop_grace_s)
        if _any_rank(accelerator, expected <= left, every=True):
            path = save(done)
            note = f"saved {path} in {save_times[-1]:.1f} s"
        else:
            note = (f"not saved: a save is expected to take {expected:.0f} s, more than the {max(left, 0):.0f} s left "
                    f"of train.stop_grace_s={cfg.stop_grace_s:g}")  # fmt: skip
    bar.close()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    _stop(accelerator, cfg, signal.SIGTERM, f"stopped by SIGTERM after step {done} of {cfg.max_steps}: {note}")


def _stop(accelerator, cfg, signum: int, what: str) -> None:
    """Log which checkpoint is the newest and how to resume (main process), then raise :class:`StopRequested`."""
    found = list_checkpoints(cfg.output_dir)
    last = found[-1] if found else None
    message = f"{what}; last checkpoint: {last if last else 'none'}; {resume_hint(cfg.resume, last)}"
    if accelerator.is_main_process:
        logger.warning("%s", message)
    raise StopRequested(signum, message) from None


def _log(accelerator, root: Path, window: list[dict[str, float]], steps_per_s: float) -> None:
    """Average the last ``log_every`` records and report them (main process)."""
    if not accelerator.is_main_process:
        return
    keys = [k for k in window[-1] if k != "step"]
    mean = {k: sum(r.get(k, math.nan) for r in window) / len(window) for k in keys}
    mean["lr"] = window[-1]["lr"]
    mean["steps_per_s"] = steps_per_s
    step = int(window[-1]["step"])
    logger.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in mean.items()))
    with (root / LOG_FILE).open("a") as f:
        f.write(json.dumps({"step": step, **mean}) + "\n")
    if accelerator.trackers:
        accelerator.log(mean, step=step)
