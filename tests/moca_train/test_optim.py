"""LR schedule formulas and DeepSpeed settings (moca_train.optim); their effect in training: test_engine.py."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest

pytest.importorskip("accelerate")

import torch  # noqa: E402

from moca_train.config import TrainConfig  # noqa: E402
from moca_train.optim import configure_deepspeed, lr_factor  # noqa: E402


def test_log_warmup_is_deepspeeds_warmup_decay_lr():
    # DeepSpeed WarmupDecayLR._get_gamma, warmup_type "log" (its default): log(k + 1) / log(W), then linear decay
    f = [lr_factor(k, warmup_steps=50, total_steps=1000) for k in range(1001)]
    assert f[0] == 0.0  # log(1) = 0: the first step runs at LR 0
    assert f[5] == pytest.approx(math.log(6) / math.log(50)) and f[5] == pytest.approx(0.458, abs=5e-4)
    assert f[10] == pytest.approx(math.log(11) / math.log(50)) and f[10] == pytest.approx(0.613, abs=5e-4)
    assert f[49] == pytest.approx(1.0) and f[50] == 1.0  # log(50)/log(50), then (T - W) / (T - W)
    assert f[525] == pytest.approx(0.5) and f[999] == pytest.approx(1 / 950) and f[1000] == 0.0
    # DeepSpeed raises W to 2 (log(1) would divide by zero): no warmup still means one step at LR 0
    assert [lr_factor(k, warmup_steps=0, total_steps=4) for k in range(4)] == pytest.approx([0.0, 1.0, 1.0, 0.5])


def test_linear_warmup_is_hfs_linear_schedule():
    f = [lr_factor(k, warmup_steps=2, total_steps=6, warmup="linear") for k in range(7)]
    assert f == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert lr_factor(0, warmup_steps=0, total_steps=4, warmup="linear") == 1.0  # no warmup at all


def test_warmup_length_is_hfs_ceil():
    assert TrainConfig(max_steps=3311, warmup_ratio=0.1).warmup_steps() == 332  # HF: ceil(331.1)
    with pytest.raises(ValueError, match="--train.warmup"):
        TrainConfig(warmup="cosine")


def test_deepspeed_clips_at_the_training_configs_value():
    def accelerator(value):
        cfg = {} if value is None else {"gradient_clipping": value}
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=cfg))), cfg

    acc, ds = accelerator("auto")  # accelerate would fill 'auto' with 1.0
    configure_deepspeed(acc, 5.0, divisor=8)
    assert ds["gradient_clipping"] == 40.0  # the engine's gradient is 8x the reference's (CL on 8 ranks)
    # no DataLoader goes through prepare (accelerate would refuse 'auto'); the config's torch AdamW is kept
    assert ds["train_micro_batch_size_per_gpu"] == 1 and ds["zero_force_ds_cpu_optimizer"] is False
    acc, ds = accelerator(None)
    configure_deepspeed(acc, None, divisor=1)
    assert ds["gradient_clipping"] == 0.0  # DeepSpeed: 0 disables clipping
    acc, _ = accelerator(1.0)
    with pytest.raises(ValueError, match="gradient_clipping=1.0"):
        configure_deepspeed(acc, 5.0, divisor=1)


def test_deepspeed_without_cuda_is_refused_when_it_cannot_run_on_the_cpu(monkeypatch):
    """A DeepSpeed launch on a CUDA-less machine runs on DeepSpeed's CPU accelerator (tests/moca_train/
    test_deepspeed.py); without deepspeed it is refused, never silently turned into DDP."""
    from moca_train.launcher import build_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # not installed
    monkeypatch.setitem(sys.modules, "deepspeed.accelerator", None)
    with pytest.raises(RuntimeError, match="DeepSpeed, which is not installed"):
        build_accelerator(TrainConfig())
