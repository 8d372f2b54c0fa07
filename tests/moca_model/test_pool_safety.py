"""A device pool that fails safely (issue 24, item 8): Ctrl-C exits at once with one traceback, workers end
with a parent that dies, and a dropped encoder stops its workers."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ._pool_child import pooled_encoder

CHILD = Path(__file__).with_name("_pool_child.py")
EXIT_SECONDS = 60.0  # generous on a loaded 2-core machine; a hang never ends


def _start(tiny_dir, mode: str) -> tuple[subprocess.Popen, list[int]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(CHILD), str(tiny_dir), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)  # fmt: skip
    line = proc.stdout.readline()
    assert line.startswith("pids"), (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, [int(p) for p in line.split()[1:]]


def _kill_leftovers(proc: subprocess.Popen, pids: list[int]) -> None:
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


@pytest.mark.slow
def test_ctrl_c_exits_promptly_with_one_traceback(tiny_dir, wait_gone):
    proc, pids = _start(tiny_dir, "interrupt")
    try:
        assert proc.stdout.readline().strip() == "encoding"
        time.sleep(2.0)  # mid-call: several MB of batches queued on main, a few in flight now
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        try:
            _, err = proc.communicate(timeout=EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the process still runs {EXIT_SECONDS:.0f} s after Ctrl-C (hung at exit)")
        assert proc.returncode != 0
        assert err.count("Traceback") == 1, err[-3000:]
        assert "KeyboardInterrupt" in err
        assert wait_gone(pids, 10) == []
    finally:
        _kill_leftovers(proc, pids)


@pytest.mark.slow
def test_workers_end_when_their_parent_dies(tiny_dir, wait_gone):
    proc, pids = _start(tiny_dir, "die")
    try:
        proc.wait(timeout=EXIT_SECONDS)
        assert proc.returncode == -signal.SIGKILL
        assert wait_gone(pids, 30) == [], "workers outlived their killed parent"
    finally:
        _kill_leftovers(proc, pids)


def test_a_dropped_encoder_stops_its_workers(tiny_dir, wait_gone):
    enc = pooled_encoder(tiny_dir)
    pids = [p.pid for p in enc.pool._procs]
    assert enc.encode(["still works"], show_progress=False).shape == (1, enc.dim)
    del enc
    gc.collect()
    assert wait_gone(pids, 30) == [], "workers outlived the encoder that owned them"
