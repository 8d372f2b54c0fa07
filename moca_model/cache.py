"""The embedding cache every adapter shares: an input is encoded once per process, and once ever with a disk.

A vector is stored under a *namespace* and an *item key*:
- the namespace is the key of the encoder's identity (:mod:`moca_model.identity`): the checkpoint
  fingerprint (:func:`checkpoint_fingerprint`: every file of the checkpoint folder, and of the tokenizer
  folder when it is another one), a fingerprint of the weights in memory, and every setting that changes
  vectors (:func:`moca_model.encode.vector_settings`: dtype, attention backend, bidirectional or causal,
  pixel bounds, max length, image normalisation), plus this module's ``FORMAT_VERSION``. Another
  checkpoint, another model in memory, weights changed in place or another setting land in another
  namespace, so they never hit. In memory the namespace follows the weights as they are now; on disk it
  is the checkpoint's, and the encoder stops using the disk for good once its weights differ from the
  ones it loaded (:class:`moca_model.MoCaEncoder`);
- the item key (:func:`moca_model.encode.item_key`) hashes the exact text after prompt formatting (a
  query and a document of the same text are different texts) and the content of each image (bytes for
  paths and bytes, converted pixels for PIL images; see :func:`moca_model.images.image_key`).

Memory: the most recently used vectors, at most ``memory_mb`` MiB (default 1024 MiB: 131,072 vectors of
the 3B model's 2048 dimensions, 74,898 of the 7B's 3584); older ones are dropped first. Safe to share
between threads.

Disk (opt-in, ``directory``): ``<directory>/<namespace>/<kk>/<key>.vec``, one small file per vector:
magic, dimension, float32 values, then a blake2b digest of all of it. Each file is written under a
unique temporary name and moved into place with ``os.replace``, so concurrent writers (two processes,
torchrun ranks) never leave a partial entry, and two writers of one key leave one complete version. A
truncated or corrupt entry fails its size or digest check: it counts as a miss, is logged, and is
rewritten after recomputation. A write that fails (full disk, unwritable folder) is logged once per cache
and counted (``EncodeStats.write_errors``); the vectors are still returned. ``<namespace>/namespace.json``
records what the namespace hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from moca_model.identity import identity_key

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when preprocessing changes what a given input becomes; 2: namespaces hash the weights
DEFAULT_MEMORY_MB = 1024
_MAGIC = b"MOCAVEC1"
_DIGEST = 16  # blake2b bytes at the end of an entry
_FULL_HASH_LIMIT = 32 << 20  # checkpoint files up to this size are hashed whole
_SAMPLES, _SAMPLE_SIZE = 32, 256 << 10  # larger files: this many evenly spaced blocks of this size


def _file_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
            return h.hexdigest()
        if path.suffix == ".safetensors":  # header: 8-byte little-endian length, then JSON
            n = int.from_bytes(f.read(8), "little")
            h.update(f.read(min(n, size - 8)))
        for i in range(_SAMPLES):
            f.seek((size - _SAMPLE_SIZE) * i // (_SAMPLES - 1))
            h.update(f.read(_SAMPLE_SIZE))
    return h.hexdigest()


def checkpoint_files(folder: Path) -> dict[str, dict]:
    """Size, mtime and content digest of every file in a checkpoint folder.

    Files up to 32 MiB are hashed whole; larger ones by their safetensors header plus 32 evenly spaced
    blocks (any fine-tuning step changes those), and their mtime guards the rest.
    """
    files = {}
    for path in sorted(Path(folder).iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        st = path.stat()
        files[path.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": _file_digest(path, st.st_size)}
    return files


def checkpoint_fingerprint(model_dir: Path, processor_dir: Path | None = None) -> str:
    """Digest of a checkpoint's files (and of the tokenizer folder's, when it is another folder)."""
    parts = {"model": checkpoint_files(model_dir)}
    if processor_dir is not None and Path(processor_dir).resolve() != Path(model_dir).resolve():
        parts["processor"] = checkpoint_files(processor_dir)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class EncodeStats:
    """What one ``encode`` call did (or, summed, several)."""

    inputs: int = 0
    """Items passed in."""
    unique: int = 0
    """Distinct items (by content key)."""
    memory_hits: int = 0
    """Distinct items served from memory."""
    disk_hits: int = 0
    """Distinct items served from the disk cache."""
    corrupt: int = 0
    """Disk entries that were unreadable and recomputed."""
    encoded: int = 0
    """Distinct items run through the model."""
    batches: int = 0
    """Forward passes."""
    truncated: int = 0
    """Distinct items encoded that were longer than ``max_length`` tokens and were cut."""
    write_errors: int = 0
    """Vectors that could not be written to the disk cache (they were returned all the same)."""
    seconds: float = 0.0
    """Wall time of the call."""

    @property
    def cached(self) -> int:
        """Distinct items served from the cache."""
        return self.memory_hits + self.disk_hits

    def add(self, other: EncodeStats) -> None:
        """Accumulate ``other`` into this one."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        """One log line: ``12 inputs, 10 unique, 4 from cache (4 memory, 0 disk), 6 encoded in 2 batches``."""
        return (
            f"{self.inputs} inputs, {self.unique} unique, {self.cached} from cache ({self.memory_hits} memory, "
            f"{self.disk_hits} disk), {self.encoded} encoded in {self.batches} batches"
            + (f", {self.truncated} truncated" if self.truncated else "")
            + (f", {self.write_errors} not written to the disk cache" if self.write_errors else "")
        )


class EmbeddingCache:
    """Vectors by (namespace, item key): a bounded LRU in memory, optionally backed by a folder.

    The cache stores; the encoder decides under which namespaces (see the module docstring).

    Args:
        memory_mb: memory bound in MiB (0 keeps nothing in memory).
        directory: folder of the persistent cache, or None for memory only.
    """

    def __init__(self, *, memory_mb: float = DEFAULT_MEMORY_MB, directory: Path | None = None):
        self.memory_bytes = int(memory_mb * 2**20)
        self.directory = None if directory is None else Path(directory).expanduser()
        self._memory: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._used = 0
        self._described: set[str] = set()
        self._lock = threading.RLock()
        self._write_failed = False

    @staticmethod
    def namespace(identity: Mapping) -> str:
        """The namespace of an identity (:mod:`moca_model.identity`), with this module's format version."""
        return identity_key({**identity, "format": FORMAT_VERSION})

    def lookup(
        self, namespace: str, keys: Sequence[str], *, disk_namespace: str | None = None
    ) -> tuple[dict[int, np.ndarray], EncodeStats]:
        """Cached vectors of ``keys`` as ``{position in keys: (D,) float32}``, and the hit counts.

        Memory is searched under ``namespace``; the disk (when there is one) under ``disk_namespace``, and
        what it serves is remembered in memory under ``namespace``. ``disk_namespace=None`` skips the disk.
        """
        found: dict[int, np.ndarray] = {}
        stats = EncodeStats()
        for pos, key in enumerate(keys):
            with self._lock:
                vec = self._memory.get((namespace, key))
                if vec is not None:
                    self._memory.move_to_end((namespace, key))
            if vec is not None:
                found[pos] = vec
                stats.memory_hits += 1
                continue
            use_disk = disk_namespace is not None and self.directory is not None
            vec = self._read(disk_namespace, key, stats) if use_disk else None
            if vec is None:
                continue
            found[pos] = vec
            stats.disk_hits += 1
            self._remember(namespace, key, vec)
        return found, stats

    def store(
        self, namespace: str, keys: Sequence[str], vectors: np.ndarray, *, disk_namespace: str | None = None,
        about: Mapping | None = None,
    ) -> int:  # fmt: skip
        """Keep ``vectors`` (N, D) under ``keys``: in memory under ``namespace``, on disk under ``disk_namespace``.

        Args:
            namespace: memory namespace.
            keys: item keys.
            vectors: (N, D) float32.
            disk_namespace: disk namespace, or None to keep the vectors in memory only.
            about: what the disk namespace hashes, written once to ``namespace.json`` for humans.

        Returns:
            How many vectors could not be written to disk (the first failure is logged as a warning).
        """
        failed = 0
        for key, vec in zip(keys, vectors, strict=True):
            vec = np.array(vec, dtype=np.float32)  # a copy: callers may reuse their buffer
            self._remember(namespace, key, vec)
            if disk_namespace is not None and self.directory is not None:
                try:
                    self._write(disk_namespace, key, vec, about)
                except OSError as exc:
                    failed += 1
                    self._write_error(disk_namespace, exc)
        return failed

    def clear(self) -> None:
        """Forget every vector held in memory (the disk is left alone)."""
        with self._lock:
            self._memory.clear()
            self._used = 0

    def _remember(self, namespace: str, key: str, vec: np.ndarray) -> None:
        if vec.nbytes > self.memory_bytes:
            return
        with self._lock:
            old = self._memory.pop((namespace, key), None)
            self._used += vec.nbytes - (old.nbytes if old is not None else 0)
            self._memory[(namespace, key)] = vec
            while self._used > self.memory_bytes:
                _, dropped = self._memory.popitem(last=False)
                self._used -= dropped.nbytes

    def _write_error(self, namespace: str, exc: OSError) -> None:
        if self._write_failed:
            logger.debug("embedding cache: cannot write under %s (%s)", self.directory / namespace, exc)
            return
        self._write_failed = True
        logger.warning("embedding cache: cannot write to %s (%s: %s); the vectors are returned but not kept on "
                       "disk (logged once; EncodeStats.write_errors counts them)", self.directory / namespace,
                       type(exc).__name__, exc)  # fmt: skip

    def _path(self, namespace: str, key: str) -> Path:
        return self.directory / namespace / key[:2] / f"{key}.vec"

    def _read(self, namespace: str, key: str, stats: EncodeStats) -> np.ndarray | None:
        path = self._path(namespace, key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            logger.warning("embedding cache: cannot read %s (%s); recomputing", path, exc)
            stats.corrupt += 1
            return None
        vec = decode_entry(data)
        if vec is None:
            logger.warning("embedding cache: corrupt or truncated entry %s (%d bytes); recomputing", path, len(data))
            stats.corrupt += 1
        return vec

    def _write(self, namespace: str, key: str, vec: np.ndarray, about: Mapping | None) -> None:
        path = self._path(namespace, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        if namespace not in self._described:
            info = path.parents[1] / "namespace.json"
            if not info.is_file():
                described = {**(about or {}), "format": FORMAT_VERSION}
                atomic_write(info, json.dumps(described, indent=2, sort_keys=True, default=str).encode())
            self._described.add(namespace)
        atomic_write(path, encode_entry(vec))


def encode_entry(vec: np.ndarray) -> bytes:
    """One disk entry: magic, dimension (uint32 LE), float32 values, blake2b digest of the preceding bytes."""
    body = _MAGIC + len(vec).to_bytes(4, "little") + np.ascontiguousarray(vec, dtype="<f4").tobytes()
    return body + hashlib.blake2b(body, digest_size=_DIGEST).digest()


def decode_entry(data: bytes) -> np.ndarray | None:
    """The vector of a disk entry, or None when it is truncated, corrupt or of another format."""
    if len(data) < len(_MAGIC) + 4 + _DIGEST or not data.startswith(_MAGIC):
        return None
    dim = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 4], "little")
    body_len = len(_MAGIC) + 4 + 4 * dim
    if len(data) != body_len + _DIGEST:
        return None
    if hashlib.blake2b(data[:body_len], digest_size=_DIGEST).digest() != data[body_len:]:
        return None
    return np.frombuffer(data, dtype="<f4", count=dim, offset=len(_MAGIC) + 4).astype(np.float32)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a unique temporary file and ``os.replace`` (safe with concurrent writers)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
