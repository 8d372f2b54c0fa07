"""Per-subset embedding cache: safetensors files keyed by a model fingerprint and the subset's content.

Layout: ``<cache_dir>/<key>/<Subset>.safetensors`` with tensors ``embeddings`` (U, D) float32 (NaN rows
for bad pairs) and ``bad`` (U,) uint8, plus string metadata (content hash, bad-pair reasons).
``<cache_dir>/<key>/fingerprint.json`` records what went into the key, for humans.

Why these keys (moca-method.md §7 item 22: the reference keyed vectors by output folder only, so a
second model silently reused the first model's embeddings):
- the model ``key`` hashes every file of the checkpoint folder (size, mtime and content: whole files up
  to 32 MiB; for larger ones the safetensors header plus evenly spaced samples, which any fine-tuning
  step changes) together with everything that changes the vectors: dtype, attention kernel, pixel
  bounds, max length, the encoder's version and this runner's formatting version;
- each file carries the hash of the subset's unique (text, image path, image size) pairs, so other
  data, a ``--max-rows`` sample or a replaced image is re-encoded instead of reused.

Files are written to a temporary name and moved into place with ``os.replace``: a run killed at any
moment leaves either a complete file or none, so the rerun re-encodes only unfinished subsets.
Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from moca_bench.mmeb.data import SubsetData
from moca_model.cache import atomic_write, checkpoint_files

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the runner's input formatting changes the vectors
def model_fingerprint(model_dir: Path, settings: Mapping) -> tuple[str, dict]:
    """Key identifying a model's vectors: checkpoint files plus the settings that change them.

    Args:
        model_dir: the resolved local checkpoint folder.
        settings: JSON-able values (dtype, attention kernel, pixel bounds, max length, ...).

    Returns:
        ``(key, inputs)``: a 20-hex-digit key and the JSON-able description it hashes.
    """
    inputs = {"files": checkpoint_files(model_dir), "settings": dict(settings), "format_version": FORMAT_VERSION}
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return key, inputs


def content_hash(subset: SubsetData) -> str:
    """Hash of a subset's unique pairs (text, image path, image file size or -1 when missing)."""
    h = hashlib.sha256(f"{FORMAT_VERSION}\0{subset.name}\0".encode())
    for i, pair in enumerate(subset.pairs):
        path = subset.image_path(i)
        try:
            size = path.stat().st_size if path is not None else 0
        except OSError:
            size = -1
        h.update(json.dumps([pair.text, pair.image, size]).encode())
        h.update(b"\0")
    return h.hexdigest()


class EmbeddingCache:
    """Read and write one model's per-subset embeddings; a no-op when ``root`` is None."""

    def __init__(self, root: Path | None, key: str, inputs: Mapping):
        self.dir = None if root is None else Path(root) / key
        self.key = key
        self._inputs = dict(inputs)

    def path(self, subset: str) -> Path | None:
        """File holding ``subset``'s vectors (None when caching is off)."""
        return None if self.dir is None else self.dir / f"{subset}.safetensors"

    def contains(self, subset: str, chash: str) -> bool:
        """Whether a complete, matching file exists (reads the header only)."""
        path = self.path(subset)
        if path is None or not path.is_file():
            return False
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
        except Exception:  # a damaged file is a miss
            return False
        return meta.get("content_hash") == chash and meta.get("model_key") == self.key

    def load(self, subset: str, chash: str) -> tuple[np.ndarray, np.ndarray, dict] | None:
        """Cached ``(embeddings (U, D) float32, bad (U,) bool, reasons {index: str})``, or None on a miss."""
        if not self.contains(subset, chash):
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(self.path(subset)), framework="numpy") as f:
                meta = f.metadata()
                emb, bad = f.get_tensor("embeddings"), f.get_tensor("bad").astype(bool)
            reasons = {int(k): v for k, v in json.loads(meta.get("bad_reasons", "{}")).items()}
        except Exception as exc:  # a damaged file is a miss, never a crash
            logger.warning("%s: unreadable cache file %s (%s); re-encoding", subset, self.path(subset), exc)
            return None
        return emb, bad, reasons

    def save(
        self, subset: str, chash: str, embeddings: np.ndarray, bad: np.ndarray, reasons: Mapping[int, str]
    ) -> None:
        """Write ``subset``'s vectors atomically (temporary file + ``os.replace``)."""
        path = self.path(subset)
        if path is None:
            return
        from safetensors.numpy import save

        self.dir.mkdir(parents=True, exist_ok=True)
        fingerprint = self.dir / "fingerprint.json"
        if not fingerprint.is_file():
            atomic_write(fingerprint, json.dumps(self._inputs, indent=2, sort_keys=True, default=str).encode())
        tensors = {
            "embeddings": np.ascontiguousarray(embeddings, dtype=np.float32),
            "bad": np.asarray(bad, dtype=np.uint8),
        }
        meta = {
            "content_hash": chash,
            "model_key": self.key,
            "bad_reasons": json.dumps({str(k): v for k, v in reasons.items()}),
        }
        atomic_write(path, save(tensors, metadata=meta))
