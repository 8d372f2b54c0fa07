"""Data-parallel encoding: one spawned worker process per device, fed batches from one caller.

The caller (:class:`moca_model.MoCaEncoder` with ``devices=``) de-duplicates, consults the cache, sorts
by length and cuts batches exactly as on one device; :meth:`DevicePool.run` then hands the batches out,
costliest first, a few at a time (at most ``IN_FLIGHT_PER_WORKER`` per worker are queued or running), and
each worker takes the next one when it is free (so faster devices take more; no device idles while another
holds a backlog). Each worker decodes and patchifies its own batches (preparing the next one while the
model runs), runs the model and sends the vectors back; :meth:`DevicePool.run` yields them as they arrive,
so the caller caches them and moves its progress bar batch by batch, and restores its own order.

Failure rules:
- an item error raised in a worker (e.g. :class:`MoCaInputError`) is re-raised in the caller unchanged;
  the pool stays usable;
- a worker that dies is noticed at once (its death is checked after every result and every half second),
  the results that already arrived are handed over first (the encoder caches them), then
  :class:`MoCaWorkerError` names the device and the pool is closed; no partial result is returned;
- Ctrl-C: workers ignore SIGINT (one traceback, the caller's), the caller stops its workers and exits
  promptly (the task queue never makes the interpreter wait for its feeder thread);
- workers watch their parent and exit when it dies, however it dies;
- the pool is closed by :meth:`DevicePool.close`, when it is garbage collected, and at interpreter exit;
- calls from several threads are serialised (a lock): each gets its own results.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often the caller checks that its workers are alive while it waits
START_TIMEOUT = 1800.0  # loading a 7B checkpoint on a busy node can take minutes
IN_FLIGHT_PER_WORKER = 3  # batches queued or being worked on, per worker: one running, one prepared, one waiting
JOIN_SECONDS = 10.0  # how long close() lets a worker finish its batch before terminating it


class MoCaWorkerError(RuntimeError):
    """A device worker died or could not start; no partial result is returned."""


def parse_devices(spec: str | Sequence[str] | None) -> list[str] | None:
    """Devices from ``"all"``, ``"cuda:0,cuda:1"``, ``"cpu,cpu"`` or a list; None/"" means no pool.

    ``"all"`` is every visible CUDA device, or one CPU worker when there is none.
    """
    if spec is None or spec == "" or (not isinstance(spec, str) and not spec):
        return None
    if isinstance(spec, str) and spec.strip() == "all":
        import torch

        n = torch.cuda.device_count()
        return [f"cuda:{i}" for i in range(n)] if n else ["cpu"]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    devices = [str(d).strip() for d in items if str(d).strip()]
    return devices or None


def _portable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _watch_parent() -> None:
    """End this worker as soon as the process that started it is gone (killed, crashed, exited)."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    parent = mp.parent_process()
    if parent is None:
        return

    def watch():
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="moca-parent-watch", daemon=True).start()


def _worker(factory: Callable, device: str, threads: int | None, tasks, results, rank: int) -> None:
    """Process body: build the encoder on ``device``, report ready, serve batches until ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle: no traceback per worker
    _watch_parent()
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        encoder = factory(device)
        fingerprint = encoder.weights_fingerprint()
        info = {"dim": encoder.dim, "settings": encoder.vector_settings(), "pid": os.getpid(),
                "weights": fingerprint.content if fingerprint is not None else None}  # fmt: skip
    except BaseException as exc:  # report, then end: the caller raises naming the device
        results.put(("failed", rank, None, None, _portable(exc)))
        return
    results.put(("ready", rank, None, None, info))
    _serve(encoder, tasks, results, rank)


def _serve(encoder, tasks, results, rank: int) -> None:
    """Forward batches; unless a batch asks to be prepared inline, the next one is prepared meanwhile."""
    pending: deque = deque()
    done = False
    with ThreadPoolExecutor(max_workers=1) as pool:
        while True:
            while not done and len(pending) < 2:
                try:
                    msg = tasks.get() if not pending else tasks.get_nowait()
                except queue.Empty:
                    break
                if msg is None:
                    done = True
                    break
                call, batch_id, entries, inline = msg
                future = None if inline else pool.submit(encoder.prepare_batch, entries)
                pending.append((call, batch_id, entries, future))
            if not pending:
                return
            call, batch_id, entries, future = pending.popleft()
            try:
                inputs = encoder.prepare_batch(entries) if future is None else future.result()
                results.put(("done", rank, call, batch_id, encoder.forward_batch(inputs)))
            except Exception as exc:
                results.put(("error", rank, call, batch_id, _portable(exc)))


def _shutdown(procs: list, tasks, results, graceful: bool) -> None:
    """Stop the workers: ask them to finish (``graceful``), then terminate any still running."""
    alive = [p for p in procs if p.is_alive()]
    if graceful:
        try:
            for _ in alive:
                tasks.put(None)
        except (OSError, ValueError):
            pass
        deadline = time.monotonic() + JOIN_SECONDS
        for proc in alive:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    for q in (tasks, results):
        q.close()


class DevicePool:
    """Worker processes, one per device, each holding its own copy of the model.

    Args:
        factory: picklable ``factory(device) -> MoCaEncoder`` (e.g. a ``functools.partial`` of a
            module-level function); each worker calls it once.
        devices: one entry per worker (``"cuda:0"``, ``"cpu"``; repeats allowed).
        threads: torch threads per worker (default: the CPU count divided among the workers).

    Raises:
        MoCaWorkerError: a worker failed to start; names its device and the cause.
    """

    def __init__(self, factory: Callable, devices: Sequence[str], *, threads: int | None = None):
        import torch.multiprocessing as mp

        if not devices:
            raise ValueError("a device pool needs at least one device")
        self.devices = list(devices)
        self.max_in_flight = IN_FLIGHT_PER_WORKER * len(self.devices)
        threads = threads or max(1, (os.cpu_count() or 1) // len(self.devices))
        ctx = mp.get_context("spawn")
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        self._tasks.cancel_join_thread()  # never make the interpreter wait to flush tasks nobody will read
        self._procs = [
            ctx.Process(target=_worker, args=(factory, dev, threads, self._tasks, self._results, rank), daemon=True)
            for rank, dev in enumerate(self.devices)
        ]
        self._call = 0
        self._lock = threading.Lock()
        self.closed = False
        self.peak_in_flight = 0  # the most batches ever handed out at once (never above max_in_flight)
        self.infos: dict[int, dict] = {}  # rank -> what its worker reported (dim, settings, pid, weights)
        for proc in self._procs:
            proc.start()
        # stops the workers when the pool is garbage collected or at interpreter exit (the callback holds no
        # reference to the pool itself); idle workers have nothing to finish, so they are terminated at once
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, self._tasks, self._results, False)
        self.info = self._wait_ready()
        logger.info("device pool ready: %s (%d torch threads each)", ", ".join(self.devices), threads)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [p.pid for p in self._procs]

    def _wait_ready(self) -> dict:
        infos = self.infos = {}
        while len(infos) < len(self._procs):
            messages, dead = self._receive(timeout=START_TIMEOUT, what="start")
            for kind, rank, _, _, payload in messages:
                if kind == "failed":
                    self.close(graceful=False)
                    raise MoCaWorkerError(f"worker {rank} on {self.devices[rank]} failed to start: {payload}") \
                        from payload
                infos[rank] = payload
            if dead:
                self._raise_dead(dead, "start", 0)
        settings = {rank: (i["dim"], i["settings"], i["weights"]) for rank, i in infos.items()}
        if len(set(map(repr, settings.values()))) > 1:
            self.close(graceful=False)
            raise MoCaWorkerError(f"workers disagree on model settings or weights: {settings}")
        return infos[0]

    def _dead(self) -> list[tuple[int, int | None]]:
        return [(r, p.exitcode) for r, p in enumerate(self._procs) if not p.is_alive()]

    def _receive(self, *, timeout: float, what: str) -> tuple[list, list]:
        """Block until a message arrives or a worker has died; returns (messages, dead workers).

        When a worker has died, every message already sent is returned with it (finished work is kept).
        """
        waited = 0.0
        while True:
            messages = []
            try:
                messages.append(self._results.get(timeout=POLL_SECONDS))
            except queue.Empty:
                waited += POLL_SECONDS
            dead = self._dead()
            if dead:
                while True:
                    try:
                        messages.append(self._results.get(timeout=0.05))
                    except queue.Empty:
                        break
            if messages or dead:
                return messages, dead
            if waited >= timeout:
                self.close(graceful=False)
                raise MoCaWorkerError(f"no answer from the workers on {self.devices} for {timeout:.0f} s ({what})")

    def _raise_dead(self, dead: list, what: str, kept: int) -> None:
        rank, code = dead[0]
        self.close(graceful=False)
        kept_note = f"; the {kept} batches that finished were handed over (the encoder caches them)" if kept else ""
        raise MoCaWorkerError(
            f"worker {rank} on {self.devices[rank]} died (exit code {code}) during {what}{kept_note}; "
            "no partial results are returned; the pool is closed"
        )

    def run(self, batches: Sequence[list], *, inline: bool = False) -> Iterator[tuple[int, np.ndarray]]:
        """Encode ``batches`` (lists of ``(caller index, Item)``); yields ``(batch id, (B, D) vectors)`` as they finish.

        ``inline=True`` makes each worker prepare a batch only when it is about to run it (one thread per
        worker); otherwise each worker prepares its next batch in a thread while the model runs. Calls from
        several threads take turns.

        Raises:
            MoCaWorkerError: a worker died (after the batches that finished were yielded); the pool is closed.
            Exception: the first item error a worker reported (e.g. ``MoCaInputError``).
            KeyboardInterrupt: the workers are stopped and the pool is closed.
        """
        with self._lock:
            if self.closed:
                raise MoCaWorkerError(f"the device pool on {self.devices} is closed")
            self._call += 1
            call = self._call
            todo = deque(enumerate(batches))
            in_flight, remaining, handed_over = 0, len(todo), 0
            try:
                while remaining:
                    while todo and in_flight < self.max_in_flight:
                        batch_id, entries = todo.popleft()
                        self._tasks.put((call, batch_id, entries, inline))
                        in_flight += 1
                    self.peak_in_flight = max(self.peak_in_flight, in_flight)
                    messages, dead = self._receive(timeout=float("inf"), what="encoding")
                    for kind, _, msg_call, batch_id, payload in messages:
                        if msg_call != call:  # left over from a call that failed or was abandoned
                            continue
                        in_flight -= 1
                        if kind == "error":
                            raise payload
                        remaining -= 1
                        handed_over += 1
                        yield batch_id, payload
                    if dead:
                        self._raise_dead(dead, "encoding", handed_over)
            except KeyboardInterrupt:
                self.close(graceful=False)
                raise
            except BaseException:
                self._drain()
                raise

    def _drain(self) -> None:
        """Drop queued batches no worker has taken yet (late results of this call are ignored by its id)."""
        if self.closed:
            return
        try:
            while True:
                self._tasks.get_nowait()
        except (queue.Empty, OSError, ValueError):
            pass

    def close(self, *, graceful: bool = True) -> None:
        """Stop the workers (idempotent); ``graceful`` lets each finish its batch first (up to 10 s)."""
        if self.closed:
            return
        self.closed = True
        self._finalizer.detach()
        _shutdown(self._procs, self._tasks, self._results, graceful)
