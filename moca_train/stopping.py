"""Stopping a training run on SIGINT or SIGTERM, and saying how to resume it.

- **SIGINT** (Ctrl-C): the run stops at once; the step in flight is abandoned. Nothing is half-written
  (checkpoints are written to a temporary folder and renamed), so the newest ``checkpoint-<step>`` is intact.
- **SIGTERM** (what Slurm, Kubernetes and ``torchrun`` send some seconds before SIGKILL): the step in
  flight finishes, then a checkpoint is saved **if that is quick enough**, and the run stops. Quick
  enough means: the expected save time fits in what is left of ``train.stop_grace_s`` (default 30 s,
  Slurm's default ``KillWait`` and Kubernetes' default ``terminationGracePeriodSeconds``) since the signal
  arrived. The expected save time is the longest save this run has measured, or, before its first save,
  the run's state (weights + two AdamW moments + the model copy, so 4 x the parameter bytes) written at
  :data:`ASSUMED_WRITE_BYTES_PER_S`. Set ``stop_grace_s`` to your scheduler's grace period (Slurm
  ``--signal``/``KillWait``; 0 never saves on SIGTERM). A second signal while stopping stops at once.
- Either way the main process logs one line, e.g. ``stopped by SIGTERM after step 23 of 60: saved
  runs/cl-tiny/checkpoint-23 in 0.4 s; rerun the same command to resume from step 23``, and the entry
  point exits with 128 + the signal number (130, 143): the run did not finish. In Python, ``run()`` raises
  :class:`StopRequested`, a ``KeyboardInterrupt``.

Under several ranks every rank receives the signal (the terminal's process group, or the launcher
forwarding it); the ranks agree on stopping after the same step (one max-reduction of a flag per step).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

ASSUMED_WRITE_BYTES_PER_S = 200e6  # a conservative disk / network-filesystem write speed for the first estimate
STATE_COPIES = 4  # weights in the train state + 2 AdamW moments + the loadable model copy


class StopRequested(KeyboardInterrupt):  # noqa: N818 - a stop, not an error
    """The run stopped on a signal; ``exit_code`` is 128 + the signal number, ``message`` says how to resume.

    A ``KeyboardInterrupt``: code that handles Ctrl-C (``except KeyboardInterrupt``) sees a stop on SIGTERM
    the same way, and no ``except Exception`` swallows it.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum, self.message = signum, message
        self.exit_code = 128 + signum


class StopSignals:
    """Context manager: SIGTERM sets :attr:`signum` (a second one raises ``KeyboardInterrupt``); SIGINT keeps
    Python's default (``KeyboardInterrupt`` at once). Handlers are installed only in the main thread and
    restored on exit."""  # noqa: D205, D209

    def __init__(self):
        self.signum: int | None = None
        self.received_at: float | None = None
        self._previous = None

    def _on_term(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self.signum, self.received_at = signum, time.monotonic()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def seconds_left(self, grace_s: float) -> float:
        """Seconds of the grace period still left since the signal (the full period when none arrived)."""
        return grace_s if self.received_at is None else grace_s - (time.monotonic() - self.received_at)


def expected_save_seconds(model, measured: list[float]) -> float:
    """The longest measured save, or the estimate from the parameter bytes before any save."""
    if measured:
        return max(measured)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return STATE_COPIES * nbytes / ASSUMED_WRITE_BYTES_PER_S


def resume_hint(resume: str | None, last: Path | None) -> str:
    """How to continue: rerun the same command (``train.resume: auto``), else the override that resumes."""
    if last is None:
        return "no checkpoint was written yet: rerunning the same command starts from step 0"
    step = last.name.rsplit("-", 1)[-1]
    if resume == "auto":
        return f"rerun the same command to resume from step {step}"
    return f"rerun the same command with --train.resume auto (or --train.resume {last}) to resume from step {step}"


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, ..."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
