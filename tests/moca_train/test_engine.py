"""Engine: exact resume, checkpoint layout, accumulation, warmup shape, unused parameters, clipping units."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("accelerate")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from moca_train.checkpoint import list_checkpoints
from moca_train.config import TrainConfig  # noqa: E402
from moca_train.engine import train  # noqa: E402


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


class Source:
    """Deterministic stream: batch k is a pure function of k."""

    def __init__(self):
        self.pos = 0

    def __iter__(self):
        while True:
            g = torch.Generator().manual_seed(self.pos)
            use_b = self.pos % 2 == 0  # TwoBranch uses its branch b on even batches only
            self.pos += 1
            x = torch.randn(5, 4, generator=g)
            yield {"x": x, "y": x.sum(-1, keepdim=True), "use_b": use_b}

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


class CrashError(RuntimeError):
    pass


def _loss_fn(crash_at=None):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise CrashError
        loss = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
        return loss, {"extra": 2 * loss.item()}

    return loss_fn


def _save(model, directory, state_dict):
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))


def _cfg(out, **kw):
    base = dict(
        output_dir=str(out),
        max_steps=6,
        learning_rate=1e-2,
        warmup_ratio=0.3,
        save_every=2,
        log_every=2,
        grad_accum_steps=2,
        keep_last=None,
        progress_bar=False,
        weight_decay=0.1,
    )
    return TrainConfig(**{**base, **kw})


def test_exact_resume_after_crash(tmp_path):
    full = train(model=Toy(), batches=Source(), cfg=_cfg(tmp_path / "a"), loss_fn=_loss_fn(), save_model_fn=_save)
    assert len(full) == 6 and full[-1]["step"] == 6
    with pytest.raises(CrashError):  # dies in step 5 (9th micro-batch), after checkpoint-4 was written
        train(
            model=Toy(), batches=Source(), cfg=_cfg(tmp_path / "b"), loss_fn=_loss_fn(crash_at=9), save_model_fn=_save
        )
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["checkpoint-2", "checkpoint-4"]
    resumed = train(model=Toy(), batches=Source(), cfg=_cfg(tmp_path / "b"), loss_fn=_loss_fn(), save_model_fn=_save)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(full, resumed):
        assert abs(a["loss"] - b["loss"]) < 1e-6, (a, b)
        assert abs(a["lr"] - b["lr"]) < 1e-12
    wa = (tmp_path / "a" / "checkpoint-6" / "model.safetensors").read_bytes()
    wb = (tmp_path / "b" / "checkpoint-6" / "model.safetensors").read_bytes()
    assert wa == wb
    state = json.loads((tmp_path / "b" / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["batches"] == {"pos": 12}  # 6 steps x 2 micro-batches
    assert (tmp_path / "b" / "checkpoint-6" / "train_state").is_dir()
    assert full[0]["extra"] == pytest.approx(2 * full[0]["loss"])


def test_keep_last_prunes_and_resume_none_restarts(tmp_path):
    cfg = _cfg(tmp_path, keep_last=1, max_steps=4, grad_accum_steps=1)
    train(model=Toy(), batches=Source(), cfg=cfg, loss_fn=_loss_fn(), save_model_fn=_save)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4"]
    again = train(model=Toy(), batches=Source(), cfg=cfg, loss_fn=_loss_fn(), save_model_fn=_save)
    assert len(again) == 4  # resumed at the end: history restored, nothing re-run
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


def test_default_warmup_is_deepspeeds_log_warmup(tmp_path):
    # the reference ran DeepSpeed WarmupDecayLR (log warmup, its default): factor log(k + 1) / log(W) at step k
    cfg = _cfg(tmp_path, max_steps=100, warmup_ratio=0.5, save_every=0, grad_accum_steps=1)  # W = 50
    lrs = [r["lr"] / cfg.learning_rate for r in train(model=Toy(), batches=Source(), cfg=cfg, loss_fn=_loss_fn(),
                                                      save_model_fn=_save)]  # fmt: skip
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(math.log(6) / math.log(50))  # 0.458
    assert lrs[10] == pytest.approx(math.log(11) / math.log(50))  # 0.613
    assert lrs[50] == 1.0 and lrs[99] == pytest.approx(1 / 50)


class TwoBranch(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a, self.b = torch.nn.Linear(4, 1), torch.nn.Linear(4, 1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)

    def forward(self, x, use_b):
        return self.a(x) + (self.b(x) if use_b else 0.0)


def _loss(model, batch):
    loss = torch.nn.functional.mse_loss(model(batch["x"], batch["use_b"]), batch["y"])
    return loss, {}


def _branch_cfg(out, **kw):
    base = dict(output_dir=str(out), max_steps=3, learning_rate=0.1, warmup_ratio=0.0, save_every=1,
                keep_last=None, progress_bar=False, weight_decay=0.1, max_grad_norm=None)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_parameters_unused_in_a_step_still_move_as_under_ddp(tmp_path):
    # step 1 (k=0) runs at LR 0 (log warmup) but fills AdamW's moments; step 2 (k=1) does not use branch b:
    # DDP (and the reference's DeepSpeed) give b a zero gradient, so AdamW moves it by momentum and decay
    train(model=TwoBranch(), batches=Source(), cfg=_branch_cfg(tmp_path), loss_fn=_loss, save_model_fn=_save)
    w = [load_file(str(tmp_path / f"checkpoint-{k}" / "model.safetensors")) for k in (1, 2)]
    assert not torch.equal(w[0]["b.weight"], w[1]["b.weight"]) and not torch.equal(w[0]["b.bias"], w[1]["b.bias"])


def test_clipping_threshold_and_logged_norm_are_in_the_reference_units(tmp_path):
    model = TwoBranch()
    loss, _ = _loss(model, next(iter(Source())))
    loss.backward()
    full = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))  # step-1 gradient norm
    d = 4.0  # e.g. CL on 4 ranks: the accumulated gradient is 4x what max_grad_norm refers to
    kw = dict(model=TwoBranch(), batches=Source(), loss_fn=_loss, save_model_fn=_save)
    scaled = train(**kw, cfg=_branch_cfg(tmp_path / "a", max_grad_norm=full / d / 3), grad_norm_divisor=d)
    assert scaled[0]["grad_norm"] == pytest.approx(full / d, rel=1e-6)
    kw["model"], kw["batches"] = TwoBranch(), Source()
    plain = train(**kw, cfg=_branch_cfg(tmp_path / "b", max_grad_norm=full / 3))  # the same threshold in plain units
    for k in (1, 2, 3):
        a = load_file(str(tmp_path / "a" / f"checkpoint-{k}" / "model.safetensors"))
        b = load_file(str(tmp_path / "b" / f"checkpoint-{k}" / "model.safetensors"))
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-7)
    assert [r["grad_norm"] * d for r in scaled] == pytest.approx([r["grad_norm"] for r in plain], rel=1e-6)
