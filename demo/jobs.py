"""Run the demo's command-line stages as subprocesses: a small dependency graph, N at a time, with progress.

Each :class:`Job` is one real entry point (``python -m moca_train.cl ...``, ``vidore-benchmark ...``)
whose output goes to a log file. While jobs run, one tqdm bar per running job shows its progress (a
training job reports its step from the engine's ``log.jsonl``), and a failing job stops the run with the
tail of its log. A job whose ``done`` check already holds is skipped, so an interrupted demo resumes.

Two invocations may share a work directory (e.g. the learning-rate selection and the study's pre-training
stages): a running job holds an exclusive lock on ``<log>.lock``, and another invocation that needs the same
job waits for it to finish instead of starting it twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

POLL_S = 0.5


class JobFailedError(RuntimeError):
    """A stage's command exited non-zero (the message carries the tail of its log)."""


@dataclass
class Job:
    """One command of the pipeline."""

    name: str
    """Unique name; other jobs list it in ``deps``."""
    argv: list[str]
    """The command (run from the repository root)."""
    log: Path
    """File that receives the command's stdout and stderr."""
    deps: tuple[str, ...] = ()
    """Jobs that must finish first."""
    total: int = 1
    """Progress units (optimizer steps for training jobs)."""
    progress: Callable[[], int] | None = None
    """Current progress in units; None shows the job as 0 until it ends."""
    done: Callable[[], bool] | None = None
    """True when the job's outputs already exist (the job is then skipped)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment variables."""
    seconds: float = 0.0
    """Wall time once finished (0 when skipped)."""
    skipped: bool = False
    """True when the outputs existed and the command did not run."""
    cpu_seconds: float = 0.0
    """CPU time (user + system) of the command once finished: its wall time on an idle machine, roughly,
    since every stage runs one torch thread."""
    rank: tuple = ()
    """Sort key of the start order among ready jobs (the caller sorts the list by it)."""


def train_progress(output_dir: Path) -> Callable[[], int]:
    """A progress reader for a training run: the last step in ``output_dir/log.jsonl``."""

    def read() -> int:
        path = Path(output_dir) / "log.jsonl"
        try:
            lines = path.read_text().strip().splitlines()
            return int(json.loads(lines[-1])["step"]) if lines else 0
        except (OSError, ValueError, KeyError, IndexError):
            return 0

    return read


def simulate(jobs: list[Job], seconds: dict[str, float], *, max_parallel: int = 2) -> float:
    """Makespan of ``jobs`` under :func:`run_jobs`' rules if each took ``seconds[name]`` (an idle machine).

    With one torch thread per job, CPU seconds measured on a busy machine are close to the wall seconds the
    job would take alone, so this turns a run's CPU seconds into its wall time on an idle machine.
    """
    pending, finish, running, now = list(jobs), {}, {}, 0.0
    while pending or running:
        for job in [j for j in pending if all(d in finish and finish[d] <= now for d in j.deps)]:
            if len(running) < max_parallel:
                pending.remove(job)
                running[job.name] = now + seconds.get(job.name, 0.0)
        if not running:
            raise ValueError(f"unsatisfiable dependencies: {[j.name for j in pending]}")
        name = min(running, key=running.get)
        now = running.pop(name)
        finish[name] = now
    return now


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _try_lock(job: Job):
    """An exclusive lock on ``<log>.lock`` (an open file), or None when another process holds it."""
    job.log.parent.mkdir(parents=True, exist_ok=True)
    lock = job.log.with_name(job.log.name + ".lock").open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def _start(job: Job, cwd: Path | None, env: dict, show_progress: bool, slot: int, max_parallel: int, lock) -> tuple:
    handle = job.log.open("w")
    # The command inherits the lock: it stays held while the command runs, even if this process dies.
    proc = subprocess.Popen(job.argv, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                            pass_fds=(lock.fileno(),))  # fmt: skip
    bar = tqdm(total=job.total, desc=f"{job.name:<14}", position=slot % max(max_parallel, 1), leave=True,
               disable=not show_progress, dynamic_ncols=True)  # fmt: skip
    logger.info("%s: started (log: %s)", job.name, job.log)
    return job, proc, bar, time.perf_counter(), (handle, lock)


def run_jobs(
    jobs: list[Job],
    *,
    max_parallel: int = 2,
    show_progress: bool = True,
    cwd: Path | None = None,
    on_done: Callable[[Job], None] | None = None,
) -> None:
    """Run ``jobs`` respecting ``deps``, at most ``max_parallel`` at once; among ready jobs, list order first.

    ``on_done(job)`` is called after each job that ran succeeds (e.g. to persist its timing).

    Raises:
        JobFailedError: a command exited non-zero (the other running jobs are terminated first).
        ValueError: unknown dependency or a cycle.
    """
    names = {j.name for j in jobs}
    for j in jobs:
        missing = set(j.deps) - names
        if missing:
            raise ValueError(f"job {j.name!r} depends on unknown {sorted(missing)}")
    pending = list(jobs)
    finished: set[str] = set()
    running: dict[str, tuple[Job, subprocess.Popen, tqdm, float, object]] = {}
    elsewhere: set[str] = set()  # ready jobs another invocation is running (their lock is held)
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    slot = 0
    try:
        while pending or running:
            changed = True
            while changed:  # skipping a job can make others ready
                changed = False
                for job in [j for j in pending if set(j.deps) <= finished]:
                    if job.done is not None and job.done():
                        logger.info("%s: outputs exist, skipped", job.name)
                        job.skipped, changed = True, True
                        pending.remove(job)
                        elsewhere.discard(job.name)
                        finished.add(job.name)
                        break  # rescan: jobs it made ready may come before the rest in the start order
                    elif len(running) < max_parallel:
                        lock = _try_lock(job)
                        if lock is None:
                            if job.name not in elsewhere:
                                logger.info("%s: running in another invocation, waiting for it", job.name)
                            elsewhere.add(job.name)
                            continue
                        if job.done is not None and job.done():  # finished elsewhere since the check above
                            lock.close()
                            continue
                        elsewhere.discard(job.name)
                        pending.remove(job)
                        env = {**base_env, **job.env}
                        running[job.name] = _start(job, cwd, env, show_progress, slot, max_parallel, lock)
                        slot, changed = slot + 1, True
            if not running and pending and not elsewhere:
                raise ValueError(f"unsatisfiable dependencies: {[j.name for j in pending]}")
            time.sleep(POLL_S)
            for name, (job, proc, bar, start, handle) in list(running.items()):
                if job.progress is not None:
                    bar.n = min(job.progress(), job.total)
                    bar.refresh()
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid == 0:
                    continue
                code = proc.returncode = os.waitstatus_to_exitcode(status)
                job.cpu_seconds = usage.ru_utime + usage.ru_stime
                for h in handle:
                    h.close()
                del running[name]
                job.seconds = time.perf_counter() - start
                if code != 0:
                    bar.close()
                    raise JobFailedError(
                        f"{job.name} failed (exit {code}); command: {' '.join(job.argv)}\n"
                        f"last lines of {job.log}:\n{_tail(job.log)}"
                    )
                logger.info("%s: done in %.0f s (%.0f s of CPU)", job.name, job.seconds, job.cpu_seconds)
                bar.n = job.total
                bar.set_postfix_str(f"{job.seconds:.0f}s wall, {job.cpu_seconds:.0f}s cpu")
                bar.close()
                finished.add(name)
                if on_done is not None:
                    on_done(job)
    finally:
        for job, proc, bar, _, handle in running.values():
            proc.terminate()
            proc.wait()
            for h in handle:
                h.close()
            bar.close()
