"""Data-parallel encoding: one spawned worker process per device, fed batches from one caller.

The caller (:class:`moca_model.MoCaEncoder` with ``devices=``) de-duplicates, consults the cache, sorts
by length and cuts batches exactly as on one device; :meth:`DevicePool.run` then puts the batches on one
queue, costliest first, and each worker takes the next one when it is free (so faster devices take
more; no device idles while another holds a backlog). Each worker decodes and patchifies its own
batches (with its own prefetch threads), runs the model and sends the vectors back; the caller puts
them in place, so the caller's order is restored and the result equals one device's.

Failure rules: an item error raised in a worker (e.g. :class:`MoCaInputError`) is re-raised in the
caller unchanged; a worker that dies raises :class:`MoCaWorkerError` naming its device, the pool is
closed, and no partial result is ever returned. Workers are daemons: they end with the caller.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5  # how often the caller checks that its workers are alive while it waits
START_TIMEOUT = 1800.0  # loading a 7B checkpoint on a busy node can take minutes


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


def _worker(factory: Callable, device: str, threads: int | None, tasks, results, rank: int) -> None:
    """Process body: build the encoder on ``device``, report ready, serve batches until ``None``."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        encoder = factory(device)
        info = {"dim": encoder.dim, "settings": encoder.vector_settings(), "pid": os.getpid()}
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
        threads = threads or max(1, (os.cpu_count() or 1) // len(self.devices))
        ctx = mp.get_context("spawn")
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        self._procs = [
            ctx.Process(target=_worker, args=(factory, dev, threads, self._tasks, self._results, rank), daemon=True)
            for rank, dev in enumerate(self.devices)
        ]
        self._call = 0
        self.closed = False
        self.infos: dict[int, dict] = {}  # rank -> what its worker reported (dim, settings, pid)
        for proc in self._procs:
            proc.start()
        self.info = self._wait_ready()
        logger.info("device pool ready: %s (%d torch threads each)", ", ".join(self.devices), threads)

    def _wait_ready(self) -> dict:
        infos = self.infos = {}
        while len(infos) < len(self._procs):
            kind, rank, _, _, payload = self._get(timeout=START_TIMEOUT, what="start")
            if kind == "failed":
                self.close()
                raise MoCaWorkerError(f"worker {rank} on {self.devices[rank]} failed to start: {payload}") from payload
            infos[rank] = payload
        settings = {rank: (i["dim"], i["settings"]) for rank, i in infos.items()}
        if len(set(map(repr, settings.values()))) > 1:
            self.close()
            raise MoCaWorkerError(f"workers disagree on model settings: {settings}")
        return infos[0]

    def _get(self, *, timeout: float, what: str):
        waited = 0.0
        while True:
            try:
                return self._results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                waited += POLL_SECONDS
            dead = [(r, p.exitcode) for r, p in enumerate(self._procs) if not p.is_alive()]
            if dead:
                rank, code = dead[0]
                self.close()
                raise MoCaWorkerError(
                    f"worker {rank} on {self.devices[rank]} died (exit code {code}) during {what}; "
                    "no partial results are returned"
                )
            if waited >= timeout:
                self.close()
                raise MoCaWorkerError(f"no answer from the workers on {self.devices} for {timeout:.0f} s ({what})")

    def run(self, batches: Sequence[list], on_done: Callable[[int, np.ndarray], None], *, inline=False) -> None:
        """Encode ``batches`` (lists of ``(caller index, Item)``), calling ``on_done(batch id, (B, D))`` per batch.

        ``inline=True`` makes each worker prepare a batch only when it is about to run it (one thread per
        worker); otherwise each worker prepares its next batch in a thread while the model runs.

        Raises:
            MoCaWorkerError: a worker died; the pool is closed.
            Exception: the first item error a worker reported (e.g. ``MoCaInputError``).
        """
        if self.closed:
            raise MoCaWorkerError(f"the device pool on {self.devices} is closed")
        self._call += 1
        call = self._call
        for batch_id, entries in enumerate(batches):
            self._tasks.put((call, batch_id, entries, inline))
        remaining = len(batches)
        while remaining:
            kind, _, msg_call, batch_id, payload = self._get(timeout=float("inf"), what="encoding")
            if msg_call != call:  # left over from a call that failed
                continue
            if kind == "error":
                self._drain()
                raise payload
            on_done(batch_id, payload)
            remaining -= 1

    def _drain(self) -> None:
        """Drop this call's batches no worker has taken yet."""
        try:
            while True:
                self._tasks.get_nowait()
        except queue.Empty:
            pass

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for proc in self._procs:
            if proc.is_alive():
                try:
                    self._tasks.put(None)
                except (OSError, ValueError):
                    break
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
