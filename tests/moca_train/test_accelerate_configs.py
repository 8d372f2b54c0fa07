"""The shipped accelerate configs parse with accelerate's own loader and launcher, and mean what they say."""

from __future__ import annotations

import pytest

pytest.importorskip("accelerate")

from accelerate.commands.config.config_args import load_config_from_file  # noqa: E402
from accelerate.commands.launch import _validate_launch_command, launch_command_parser  # noqa: E402
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env  # noqa: E402

from .conftest import ROOT  # noqa: E402

CONFIGS = ROOT / "configs" / "accelerate"


def _launch_env(name: str) -> dict[str, str]:
    """The environment ``accelerate launch --config_file <name> -m moca_train.cl`` gives each rank."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "-m", "moca_train.cl"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate.commands.launch.launch_command does before deepspeed_launcher
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_every_shipped_config_loads():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == ["deepspeed_zero3.yaml", "fsdp.yaml"]
    for name in names:
        cfg = load_config_from_file(str(CONFIGS / name))
        assert cfg.distributed_type.value in ("FSDP", "DEEPSPEED") and cfg.mixed_precision == "bf16"


def test_fsdp_config_is_fsdp2_with_transformer_wrapping(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    env = _launch_env("fsdp.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # a loadable checkpoint, not shards
    assert plugin.auto_wrap_policy is not None  # per decoder layer / vision block (the model's _no_split_modules)


def test_deepspeed_config_is_zero3_and_leaves_accumulation_and_clipping_to_the_training_config(monkeypatch):
    from accelerate.utils import DeepSpeedPlugin

    env = _launch_env("deepspeed_zero3.yaml")
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ds = DeepSpeedPlugin().deepspeed_config
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    # 'auto' values are filled from the Accelerator (train.grad_accum_steps) and by moca_train.optim
    # (train.max_grad_norm); a number here would silently override them
    assert ds["gradient_accumulation_steps"] == "auto" and ds.get("gradient_clipping", "auto") == "auto"
    assert "optimizer" not in ds and "scheduler" not in ds  # the engine's AdamW and DeepSpeed-style schedule
