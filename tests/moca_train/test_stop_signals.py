"""Stopping a run: SIGTERM saves when quick enough, SIGINT stops at once; both name the checkpoint to resume from."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

import torch  # noqa: E402

from moca_train.checkpoint import list_checkpoints  # noqa: E402
from moca_train.engine import train  # noqa: E402
from moca_train.stopping import StopRequested, expected_save_seconds  # noqa: E402

from .test_engine import Source, Toy, _cfg, _loss_fn, _save  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _signal_at(n: int, signum: int | None = None, *, interrupt: bool = False):
    """A loss function that sends ``signum`` to this process (or raises KeyboardInterrupt) at micro-batch ``n``."""
    inner, calls = _loss_fn(), {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] == n:
            if interrupt:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
        return inner(model, batch)

    return loss_fn


def test_sigterm_finishes_the_step_saves_and_resumes_exactly(tmp_path, caplog):
    full = train(model=Toy(), batches=Source(), cfg=_cfg(tmp_path / "a"), loss_fn=_loss_fn(), save_model_fn=_save)
    cfg = _cfg(tmp_path / "b")  # 6 steps x 2 micro-batches, checkpoints every 2 steps
    with caplog.at_level(logging.WARNING, logger="moca_train.engine"), pytest.raises(StopRequested) as stop:
        train(model=Toy(), batches=Source(), cfg=cfg, loss_fn=_signal_at(5, signal.SIGTERM), save_model_fn=_save)
    assert stop.value.exit_code == 143
    out = tmp_path / "b"
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-3"]  # step 3 finished, saved
    msg = stop.value.message
    assert msg.startswith(f"stopped by SIGTERM after step 3 of 6: saved {out / 'checkpoint-3'} in ")
    assert msg.endswith(f"; last checkpoint: {out / 'checkpoint-3'}; rerun the same command to resume from step 3")
    assert msg in caplog.text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the run
    resumed = train(model=Toy(), batches=Source(), cfg=cfg, loss_fn=_loss_fn(), save_model_fn=_save)
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full], abs=1e-6)
    assert (out / "checkpoint-6/model.safetensors").read_bytes() == (
        tmp_path / "a/checkpoint-6/model.safetensors").read_bytes()  # fmt: skip


def test_sigterm_does_not_start_a_save_that_cannot_finish_in_the_grace_period(tmp_path):
    cfg = _cfg(tmp_path, stop_grace_s=0.0)
    with pytest.raises(StopRequested) as stop:
        train(model=Toy(), batches=Source(), cfg=cfg, loss_fn=_signal_at(5, signal.SIGTERM), save_model_fn=_save)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2"]
    assert "not saved: a save is expected to take" in stop.value.message
    assert stop.value.message.endswith(f"last checkpoint: {tmp_path / 'checkpoint-2'}; rerun the same command to "
                                       "resume from step 2")  # fmt: skip


def test_sigint_stops_at_once_and_names_the_last_checkpoint(tmp_path):
    cfg = _cfg(tmp_path)
    with pytest.raises(StopRequested) as stop:  # Ctrl-C inside step 5 (its 9th micro-batch)
        train(model=Toy(), batches=Source(), cfg=cfg, loss_fn=_signal_at(9, interrupt=True), save_model_fn=_save)
    assert stop.value.exit_code == 130 and isinstance(stop.value, KeyboardInterrupt)  # callers catching Ctrl-C
    last = tmp_path / "checkpoint-4"
    assert stop.value.message == (f"interrupted (SIGINT) during step 5 of 6; last checkpoint: {last}; "
                                  "rerun the same command to resume from step 4")  # fmt: skip
    with pytest.raises(StopRequested) as stop:  # before the first checkpoint
        train(model=Toy(), batches=Source(), cfg=_cfg(tmp_path / "c", resume=None),
              loss_fn=_signal_at(1, interrupt=True), save_model_fn=_save)  # fmt: skip
    assert stop.value.message.endswith("last checkpoint: none; no checkpoint was written yet: rerunning the same "
                                       "command starts from step 0")  # fmt: skip


def test_expected_save_time_is_measured_or_estimated_from_the_parameters():
    model = torch.nn.Linear(1000, 1000)  # 4 MB of fp32 weights: 16 MB of state at 200 MB/s
    assert expected_save_seconds(model, []) == pytest.approx(4 * 1001 * 1000 * 4 / 200e6)
    assert expected_save_seconds(model, [0.5, 2.0, 1.0]) == 2.0


class Tied(torch.nn.Module):
    """An embedding and a head that shares its Parameter (CPT's tied MLM head)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Linear(4, 4, bias=False)
        self.head = torch.nn.Linear(4, 4, bias=False)
        self.head.weight = self.emb.weight
        self.out = torch.nn.Linear(4, 1)

    def forward(self, x):
        return self.out(self.head(self.emb(x)))


def _save_tied(model, directory, state_dict):
    from safetensors.torch import save_model

    save_model(model, str(directory / "model.safetensors"))


def test_a_tied_parameter_is_saved_once_without_accelerates_warning(tmp_path, caplog):
    cfg = _cfg(tmp_path, max_steps=4)
    with caplog.at_level(logging.DEBUG):
        train(model=Tied(), batches=Source(), cfg=cfg, loss_fn=_loss_fn(), save_model_fn=_save_tied)
    assert "Removed shared tensor" not in caplog.text
    assert "head.weight is emb.weight (tied), stored once" in caplog.text
    from safetensors import safe_open

    with safe_open(str(tmp_path / "checkpoint-2/train_state/model.safetensors"), "pt") as f:
        assert "emb.weight" in f.keys() and "head.weight" not in f.keys()
    model = Tied()  # resuming fills both names from the one tensor
    train(model=model, batches=Source(), cfg=_cfg(tmp_path, max_steps=5), loss_fn=_loss_fn(), save_model_fn=_save_tied)
    assert model.head.weight is model.emb.weight


def _cl_command(tiny_dir: Path, data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "moca_train.cl", "--config", "configs/cl/tiny.yaml", "--model.init_from",
            str(tiny_dir), "--data.datasets.0.path", str(data / "shapes_i2t.jsonl"), "--data.datasets.1.path",
            str(data / "shapes_t2i.jsonl"), "--train.output_dir", str(out), "--train.max_steps", "12",
            "--train.save_every", "2", "--data.global_batch_size", "8"]  # fmt: skip


def test_ctrl_c_on_the_cl_cli_says_how_to_resume_and_rerunning_resumes(tiny_dir, tmp_path):
    from moca_train.cl.synthetic import write_world

    write_world(tmp_path / "data", rows_per_task=48, heldout_per_combo=0)
    out = tmp_path / "run"
    cmd = _cl_command(tiny_dir, tmp_path / "data", out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint-2").is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = list_checkpoints(out)[-1]
    step = int(last.name.split("-")[1])
    assert 2 <= step < 12
    assert f"of 12; last checkpoint: {last}; rerun the same command to resume from step {step}" in err
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {last} at step {step}" in again.stderr
    assert list_checkpoints(out)[-1].name == "checkpoint-12"


def test_the_bar_shows_every_steps_loss(tmp_path, monkeypatch):
    import tqdm.auto

    postfixes = []

    class Recorder(tqdm.auto.tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
            postfixes.append(kwargs)
            super().set_postfix(ordered_dict, refresh=refresh, **kwargs)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    cfg = _cfg(tmp_path, progress_bar=True, log_every=3, save_every=0)  # a log line every 3 steps only
    history = train(model=Toy(), batches=Source(), cfg=cfg, loss_fn=_loss_fn(), save_model_fn=_save)
    assert [p["loss"] for p in postfixes] == [f"{r['loss']:.4f}" for r in history]  # one per step, never stale


def test_rerunning_a_finished_run_says_there_is_nothing_to_do(tmp_path, caplog):
    cfg = _cfg(tmp_path, max_steps=2)
    train(model=Toy(), batches=Source(), cfg=cfg, loss_fn=_loss_fn(), save_model_fn=_save)
    with caplog.at_level(logging.INFO, logger="moca_train.engine"):
        train(model=Toy(), batches=Source(), cfg=cfg, loss_fn=_loss_fn(), save_model_fn=_save)
    assert "nothing to do: already at step 2 of 2 (raise --train.max_steps to train on)" in caplog.text
