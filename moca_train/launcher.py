"""The ``Accelerator`` of a training run, as the launcher asked for it, with no silent fallback.

``torchrun`` gives DDP; ``accelerate launch --config_file configs/accelerate/fsdp.yaml`` gives FSDP2 and
``.../deepspeed_zero3.yaml`` DeepSpeed ZeRO-3. Two of accelerate 1.x's quiet fallbacks are closed here:

- on a machine without GPUs accelerate turns an FSDP launch into plain DDP (``AcceleratorState`` enables
  FSDP only for accelerator device types). torch's ``fully_shard`` works on CPU with gloo, so the state is
  switched to FSDP2: the sharded code path is the one that runs, and it is tested on CPU;
- DeepSpeed on such a machine would likewise be dropped for DDP; it is refused with a message instead.
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
        RuntimeError: the launcher asks for DeepSpeed on a machine without CUDA.
    """
    from accelerate import Accelerator

    cpu = not torch.cuda.is_available()
    if cpu and _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise RuntimeError(
            "DeepSpeed needs CUDA devices and accelerate would silently fall back to DDP here; "
            "on CPU launch with configs/accelerate/fsdp.yaml or torchrun (DDP) instead"
        )
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
    return accelerator


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() == "true"


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
