"""Per-subset embedding cache: safetensors files keyed by the model's identity and the subset's content.

Layout: ``<cache_dir>/<key>/<Subset>.safetensors`` with tensors ``embeddings`` (U, D) float32 (NaN rows
for bad pairs), ``bad`` (U,) uint8 and ``truncated`` (U,) uint8, plus string metadata (content hash,
bad-pair reasons). ``<cache_dir>/<key>/fingerprint.json`` records what went into the key, for humans.

Why these keys (moca-method.md §7 item 22: the reference keyed vectors by output folder only, so a
second model silently reused the first model's embeddings):
- the model ``key`` follows the one identity rule of every embedding cache here (:mod:`moca_model.identity`):
  it is the encoder's own disk namespace (:meth:`moca_model.cache.EmbeddingCache.namespace`) of the
  checkpoint fingerprint (every file of the checkpoint folder and of the tokenizer folder: size, mtime and
  content; whole files up to 32 MiB, for larger ones the safetensors header plus evenly spaced samples),
  a fingerprint of the weights *as they are in memory when the run starts* (so an encoder whose weights were
  changed in place never reads or writes the checkpoint's files), and every setting that changes the
  vectors (:func:`moca_model.encode.vector_settings`: dtype, attention kernel and mode, pooling, pixel bounds,
  max length);
- each file carries the hash of the subset's unique (text, image path, image size) pairs, so other
  data, a ``--max-rows`` sample or a replaced image is re-encoded instead of reused.

Why task files and not the encoder's per-vector cache: a task file also keeps which inputs were bad (and
why) and which were truncated, it is checked by its header alone on a rerun (the per-vector cache would
hash every image and frame of every task again: tens of GB of frames for MMEB-V2), and a run is resumed
task by task as before.

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
from moca_model.cache import EmbeddingCache as VectorCache
from moca_model.cache import atomic_write, checkpoint_fingerprint

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the runner's input formatting changes the vectors; 2: truncation flags stored


def model_key(encoder, model_dir: Path, processor: str | None = None) -> tuple[str, dict]:
    """The cache key of ``encoder``'s vectors: the encoder cache's disk namespace rule (module docstring).

    Args:
        encoder: a :class:`moca_model.MoCaEncoder`, or anything with ``model`` and ``processor``.
        model_dir: the resolved local checkpoint folder the model was loaded from.
        processor: the tokenizer source given at load time (None: the checkpoint's, else the default).

    Returns:
        ``(key, identity)``: a 24-hex-digit key and the JSON-able identity it hashes.
    """
    from moca_model.encode import vector_settings
    from moca_model.identity import weights_fingerprint
    from moca_model.loading import processor_source

    checkpoint = getattr(encoder, "checkpoint", None)
    if checkpoint is None:  # a wrapper around an encoder, or an encoder built by hand
        checkpoint = checkpoint_fingerprint(model_dir, processor_source(model_dir, processor))
    identity = {"checkpoint": checkpoint, "weights": weights_fingerprint(encoder.model).content,
                "settings": vector_settings(encoder.model, encoder.processor)}  # fmt: skip
    return VectorCache.namespace(identity), identity


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

    def load(self, subset: str, chash: str) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray] | None:
        """Cached ``(embeddings (U, D) float32, bad (U,) bool, reasons {index: str}, truncated (U,) bool)``, or None."""
        if not self.contains(subset, chash):
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(self.path(subset)), framework="numpy") as f:
                meta = f.metadata()
                emb, bad = f.get_tensor("embeddings"), f.get_tensor("bad").astype(bool)
                truncated = f.get_tensor("truncated").astype(bool)
            reasons = {int(k): v for k, v in json.loads(meta.get("bad_reasons", "{}")).items()}
        except Exception as exc:  # a damaged file is a miss, never a crash
            logger.warning("%s: unreadable cache file %s (%s); re-encoding", subset, self.path(subset), exc)
            return None
        return emb, bad, reasons, truncated

    def save(
        self, subset: str, chash: str, embeddings: np.ndarray, bad: np.ndarray, reasons: Mapping[int, str],
        truncated: np.ndarray | None = None,
    ) -> None:  # fmt: skip
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
            "truncated": np.asarray(np.zeros(len(bad)) if truncated is None else truncated, dtype=np.uint8),
        }
        meta = {
            "content_hash": chash,
            "model_key": self.key,
            "bad_reasons": json.dumps({str(k): v for k, v in reasons.items()}),
        }
        atomic_write(path, save(tensors, metadata=meta))
