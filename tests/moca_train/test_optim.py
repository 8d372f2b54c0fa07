"""Schedule, zero-filled gradients and clipping units (moca_train.optim), through the real engine."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

pytest.importorskip("accelerate")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from moca_train.config import TrainConfig  # noqa: E402
from moca_train.engine import train  # noqa: E402
from moca_train.optim import configure_deepspeed_clipping, lr_factor  # noqa: E402


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


class TwoBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)

    def forward(self, x, use_b):
        return self.a(x) + (self.b(x) if use_b else 0.0)


class Source:
    """Batch k: 5 rows of a seeded stream; branch ``b`` is used on even k only."""

    def __init__(self):
        self.pos = 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.pos)
            x = torch.randn(5, 4, generator=g)
            yield {"x": x, "y": x.sum(-1, keepdim=True), "use_b": self.pos % 2 == 0}
            self.pos += 1

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def _loss(model, batch):
    loss = torch.nn.functional.mse_loss(model(batch["x"], batch["use_b"]), batch["y"])
    return loss, {}


def _save(model, directory, state_dict):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))


def _cfg(out, **kw):
    base = dict(output_dir=str(out), max_steps=3, learning_rate=0.1, warmup_ratio=0.0, save_every=1,
                keep_last=None, progress_bar=False, weight_decay=0.1, max_grad_norm=None)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_parameters_unused_in_a_step_still_move_as_under_ddp(tmp_path):
    # step 1 (k=0) runs at LR 0 (log warmup) but fills AdamW's moments; step 2 (k=1) does not use branch b:
    # DDP (and the reference's DeepSpeed) give b a zero gradient, so AdamW moves it by momentum and decay
    train(model=TwoBranch(), batches=Source(), cfg=_cfg(tmp_path), loss_fn=_loss, save_model_fn=_save)
    w = [load_file(str(tmp_path / f"checkpoint-{k}" / "model.safetensors")) for k in (1, 2)]
    assert not torch.equal(w[0]["b.weight"], w[1]["b.weight"]) and not torch.equal(w[0]["b.bias"], w[1]["b.bias"])


def test_clipping_threshold_and_logged_norm_are_in_the_reference_units(tmp_path):
    model = TwoBranch()
    loss, _ = _loss(model, next(iter(Source())))
    loss.backward()
    full = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))  # step-1 gradient norm
    d = 4.0  # e.g. CL on 4 ranks: the accumulated gradient is 4x what max_grad_norm refers to
    kw = dict(model=TwoBranch(), batches=Source(), loss_fn=_loss, save_model_fn=_save)
    scaled = train(**kw, cfg=_cfg(tmp_path / "a", max_grad_norm=full / d / 3), grad_norm_divisor=d)
    assert scaled[0]["grad_norm"] == pytest.approx(full / d, rel=1e-6)
    kw["model"], kw["batches"] = TwoBranch(), Source()
    plain = train(**kw, cfg=_cfg(tmp_path / "b", max_grad_norm=full / 3))  # the same threshold in plain units
    for k in (1, 2, 3):
        a = load_file(str(tmp_path / "a" / f"checkpoint-{k}" / "model.safetensors"))
        b = load_file(str(tmp_path / "b" / f"checkpoint-{k}" / "model.safetensors"))
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)
    assert [r["grad_norm"] * d for r in scaled] == pytest.approx([r["grad_norm"] for r in plain], rel=1e-6)


def test_deepspeed_clips_at_the_training_configs_value():
    def accelerator(value):
        cfg = {} if value is None else {"gradient_clipping": value}
        return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=cfg))), cfg

    acc, ds = accelerator("auto")  # accelerate would fill 'auto' with 1.0
    configure_deepspeed_clipping(acc, 5.0, divisor=8)
    assert ds["gradient_clipping"] == 40.0  # the engine's gradient is 8x the reference's (CL on 8 ranks)
    acc, ds = accelerator(None)
    configure_deepspeed_clipping(acc, None, divisor=1)
    assert ds["gradient_clipping"] == 0.0  # DeepSpeed: 0 disables clipping
    acc, _ = accelerator(1.0)
    with pytest.raises(ValueError, match="gradient_clipping=1.0"):
        configure_deepspeed_clipping(acc, 5.0, divisor=1)


def test_deepspeed_is_refused_without_cuda(monkeypatch):
    from moca_train.launcher import build_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RuntimeError, match="DeepSpeed needs CUDA"):
        build_accelerator(TrainConfig())
