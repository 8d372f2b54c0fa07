"""Engine: exact resume, checkpoint layout, accumulation (schedule and gradients: test_optim.py)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("accelerate")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

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
            self.pos += 1
            x = torch.randn(5, 4, generator=g)
            yield {"x": x, "y": x.sum(-1, keepdim=True)}

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
