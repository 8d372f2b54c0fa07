"""The ``Accelerator`` of a training run, as the launcher asked for it, with no silent fallback.

``torchrun`` gives DDP; ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` gives FSDP2 and
``.../deepspeed_zero3.yaml`` DeepSpeed ZeRO-3. Two of accelerate 1.x's quiet fallbacks are closed here:

- on a machine without GPUs accelerate turns an FSDP launch into plain DDP (``AcceleratorState`` enables
  FSDP only for accelerator device types). torch's ``fully_shard`` works on CPU with gloo, so the state is
  switched to FSDP2: the sharded code path is the one that runs, and it is tested on CPU;
- a DeepSpeed launch on such a machine would likewise run as DDP (or, without a process group, as one
  process per rank). DeepSpeed ships a CPU accelerator (``DS_ACCELERATOR=cpu``; gloo when oneCCL is absent),
  so the state is switched to DeepSpeed on CPU ranks: ``accelerator.prepare`` then builds a real
  ``DeepSpeedEngine`` (ZeRO-3 with the training config's torch AdamW), as on GPUs. Without deepspeed, or
  with a DeepSpeed accelerator other than ``cpu`` on a CUDA-less machine, the launch is refused.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

    from moca_train.config import TrainConfig

logger = logging.getLogger(__name__)


def build_accelerator(cfg: TrainConfig) -> Accelerator:
    """An ``Accelerator`` for ``cfg``: mixed precision, accumulation, tracker; distributed setup from the launcher.

    Raises:
        RuntimeError: the launcher asks for DeepSpeed on a machine without CUDA and DeepSpeed cannot run on
            the CPU here (not installed, or its accelerator is not ``cpu``).
    """
    from accelerate import Accelerator

    cpu = not torch.cuda.is_available()
    deepspeed_on_cpu = cpu and _env_flag("ACCELERATE_USE_DEEPSPEED")
    if deepspeed_on_cpu:
        _check_deepspeed_cpu()
    _accumulation_from_config(cfg.grad_accum_steps)
    accelerator = Accelerator(
        # without cpu=True accelerate ignores torchrun's WORLD_SIZE on CUDA-less machines: N independent runs
        cpu=cpu,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum_steps,
        step_scheduler_with_optimizer=False,  # the engine steps the scheduler once per optimizer step
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_dir=cfg.output_dir,
    )
    if cpu and _env_flag("ACCELERATE_USE_FSDP") and accelerator.distributed_type.value == "MULTI_CPU":
        _fsdp_on_cpu(accelerator)
    if deepspeed_on_cpu:
        _deepspeed_on_cpu(accelerator, cfg.mixed_precision)
    if accelerator.distributed_type.value == "DEEPSPEED":
        _load_whole_unless_zero3_init(accelerator)
    return accelerator


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


def _accumulation_from_config(steps: int) -> None:
    """Let ``train.grad_accum_steps`` decide gradient accumulation, whatever the launcher's config says.

    ``accelerate launch`` exports a DeepSpeed config's ``gradient_accumulation_steps`` as
    ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS``, which overrides the ``Accelerator`` argument; its ``auto``
    (configs/accelerate/deepspeed_zero3.yaml) makes accelerate 1.x fail with ``int('auto')``. ``auto`` is
    dropped (DeepSpeed's own ``auto`` is then filled from the training config at ``prepare``); a number
    that contradicts the training config is an error.

    Raises:
        ValueError: the launcher's accumulation differs from ``train.grad_accum_steps``.
    """
    name = "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"
    value = os.environ.get(name)
    if value == "auto":
        del os.environ[name]
    elif value is not None and int(value) != steps:
        raise ValueError(
            f"--train.grad_accum_steps: the accelerate config asks for {value} accumulation steps but the training "
            f"config says {steps}; set gradient_accumulation_steps to 'auto' in the accelerate config"
        )


def _load_whole_unless_zero3_init(accelerator: Accelerator) -> None:
    """Honour ``zero3_init_flag: false``: the model is then loaded whole and partitioned by ``prepare``.

    accelerate registers the DeepSpeed config with transformers whenever a plugin is selected
    (``DeepSpeedPlugin.set_deepspeed_weakref``), whatever ``zero3_init_flag`` says; ``from_pretrained`` then
    loads ZeRO-3 partitioned (empty) parameters, which ``moca_model.loading`` rightly refuses as "differs
    from the file". With the flag off the registration is withdrawn.
    """
    if accelerator.state.deepspeed_plugin.zero3_init_flag:
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def _check_deepspeed_cpu() -> None:
    """Raise unless DeepSpeed is installed and its accelerator is the CPU one (``DS_ACCELERATOR=cpu``)."""
    try:
        from deepspeed.accelerator import get_accelerator
    except ImportError as exc:
        raise RuntimeError(
            "this launch asks for DeepSpeed, which is not installed (the training environment .venv installs it: "
            "make env); accelerate would silently fall back to DDP"
        ) from exc
    name = get_accelerator().device_name()
    if name != "cpu":
        raise RuntimeError(f"DeepSpeed without CUDA needs DS_ACCELERATOR=cpu (its accelerator is {name!r})")


def _deepspeed_on_cpu(accelerator: Accelerator, mixed_precision: str) -> None:
    """Run a DeepSpeed launch configuration on CPU ranks, where accelerate would quietly use DDP.

    accelerate 1.x enables DeepSpeed only when ``cpu`` is False (``AcceleratorState.__init__``), and without a
    GPU it then finds no backend and runs every rank as its own single process. Here the state built with
    ``cpu=True`` (gloo process group) is switched to DeepSpeed with the plugin ``accelerate launch`` described
    in its ``ACCELERATE_DEEPSPEED_*`` variables, exactly as accelerate sets it up on GPUs.
    """
    import deepspeed.ops
    from accelerate.state import PartialState
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    # DeepSpeed's CPU communication backend JIT-compiles a shared-memory C++ kernel (minutes, a compiler) that
    # serves only inference_all_reduce; training collectives go through torch.distributed (gloo) either way.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    plugin = DeepSpeedPlugin()  # reads the ACCELERATE_DEEPSPEED_* variables that accelerate launch sets
    plugin.set_mixed_precision(mixed_precision)
    plugin.select(_from_accelerator_state=True)
    state = accelerator.state
    state.deepspeed_plugins = plugin
    state._mixed_precision = "no"  # DeepSpeed does mixed precision itself (bf16 section of its config)
    state.distributed_type = DistributedType.DEEPSPEED
    PartialState._shared_state["distributed_type"] = DistributedType.DEEPSPEED  # see _fsdp_on_cpu
    accelerator.deepspeed_engine_wrapped = None
    logger.info("DeepSpeed ZeRO-%s on %d CPU ranks (%s)", plugin.zero_stage, accelerator.num_processes,
                torch.distributed.get_backend() if torch.distributed.is_initialized() else "one process")  # fmt: skip


def _fsdp_on_cpu(accelerator: Accelerator) -> None:
    """Run an FSDP launch configuration as FSDP2 on CPU ranks, where accelerate would quietly use DDP.

    accelerate 1.x enables FSDP only for accelerator device types (``AcceleratorState.__init__``); torch's
    ``fully_shard`` itself works on CPU with gloo. Only FSDP2 is switched on (FSDP1 needs CUDA).
    """
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables that accelerate launch sets
    if plugin.fsdp_version != 2:
        raise RuntimeError("FSDP on CPU needs fsdp_version: 2 (FSDP1 requires CUDA); see configs/accelerate/fsdp.yaml")
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    # every later AcceleratorState() copies PartialState's fields over its own; accelerate sets both the same way
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    logger.info("FSDP2 on %d CPU ranks (gloo)", accelerator.num_processes)
