"""MoCaEncoder: the one batch loop that users, the harness adapters and the MMEB runner share.

An ``encode`` call:
1. normalises the items and keys each by content (:func:`item_key`); identical items count once;
2. takes what the cache already holds (:mod:`moca_model.cache`: in memory always, on disk with
   ``cache_dir``), so an input is encoded once across calls and tasks;
3. estimates the token counts of the rest from image headers, sorts them longest-first and cuts
   batches of similar length (:func:`length_batches`: little padding);
4. runs the batches here, or on a pool of device workers (``devices=``, :mod:`moca_model.parallel`),
   stores each batch's vectors in the cache as soon as it is done (a crash at 99% keeps 99%; a cache
   write that fails is logged and counted, and the vectors are still returned), and returns all vectors
   in the caller's order.
Images are decoded only when their batch is prepared, and at most ``num_workers + 2`` prepared batches
exist at a time, so memory stays bounded however large the call (:func:`moca_model.batching.prefetched`).
``last_stats`` says what the call did (cache hits, items and batches encoded, items truncated).

Cache identity (:mod:`moca_model.identity`): every call fingerprints the weights (about 25 to 40 ms of
CPU for the 3B model, once per call, not per batch); vectors are kept in memory under the weights as they
are now, and on disk under the checkpoint's fingerprint only while the weights are still those loaded
from it. Once they differ (a
training step, ``p.data`` writes, ``load_state_dict``, new ``Parameter`` objects), this encoder never reads
or writes the disk cache again.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from moca_model.batching import length_batches, prefetched
from moca_model.cache import DEFAULT_MEMORY_MB, EmbeddingCache, EncodeStats, checkpoint_fingerprint
from moca_model.identity import WeightsFingerprint, weights_fingerprint
from moca_model.images import MoCaInputError
from moca_model.loading import default_attn_implementation, load_model, load_processor, resolve_checkpoint
from moca_model.parallel import DevicePool, parse_devices
from moca_model.processing_moca import Item, MoCaProcessor, item_key, normalize_item

logger = logging.getLogger(__name__)

CACHE_SUBDIR = "embeddings"  # <cache_dir>/embeddings/<namespace>/...; the MMEB runner uses <cache_dir>/mmeb


class MoCaEncoder:
    r"""Encode text, images and interleaved inputs into unit-norm MoCa embeddings.

    Args:
        model: a ``MoCaModel`` (None when ``pool`` runs the model).
        processor: the :class:`MoCaProcessor`.
        device: where ``model`` runs (default: its parameters' device; with a pool, its first device).
        cache: an :class:`EmbeddingCache`; None gives a memory-only one (1 GiB); False disables caching.
        pool: a :class:`moca_model.parallel.DevicePool` that runs the batches instead of ``model``.
        checkpoint: fingerprint of the checkpoint files ``model``'s weights were loaded from
            (:func:`moca_model.cache.checkpoint_fingerprint`; ``from_pretrained`` sets it). Without it the
            disk cache is not used: vectors are kept in memory only.

    Example:
        >>> enc = MoCaEncoder.from_pretrained("moca-embed/MoCa-Qwen25VL-3B")  # doctest: +SKIP
        >>> vecs = enc.encode(["a query", {"image": "page.png", "text": "\\nRepresent the given document image."}])
    """

    def __init__(
        self, model, processor: MoCaProcessor, *, device=None, cache=None, pool: DevicePool | None = None,
        checkpoint: str | None = None,
    ):  # fmt: skip
        if model is None and pool is None:
            raise ValueError("MoCaEncoder needs a model or a device pool")
        self.model = model.eval() if model is not None else None
        self.processor = processor
        self.pool = pool
        if device is None:
            device = next(model.parameters()).device if model is not None else pool.devices[0]
        self.device = torch.device(device)
        self.cache = EmbeddingCache() if cache is None else (cache or None)
        self.checkpoint = checkpoint
        self._instance = uuid.uuid4().hex  # identity of a pool whose checkpoint is unknown
        self._loaded = self.weights_fingerprint()  # the weights the checkpoint fingerprint describes
        self._weights_changed = False
        self.last_stats = EncodeStats()
        self.total_stats = EncodeStats()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        max_length: int | None = None,
        revision: str | None = None,
        processor_name_or_path: str | Path | None = None,
        devices: str | Sequence[str] | None = None,
        cache_dir: str | Path | None = None,
        cache_memory_mb: float = DEFAULT_MEMORY_MB,
        worker_threads: int | None = None,
        video_min_pixels: int | None = None,
        video_max_pixels: int | None = None,
        attention: str | None = None,
        pooling: str | None = None,
    ) -> MoCaEncoder:
        """Load model and processor from a local directory or a hub id.

        Args:
            name_or_path: checkpoint directory or hub id (e.g. ``moca-embed/MoCa-Qwen25VL-3B``).
            device: default CUDA when available, else CPU (ignored with ``devices``).
            dtype: default bfloat16 on CUDA, float32 on CPU.
            attn_implementation: default flash_attention_2 on CUDA when installed, else sdpa.
            min_pixels: per-image lower bound in pixels (default 256 * 28²).
            max_pixels: per-image upper bound in pixels (default 1024 * 28²).
            max_length: token limit after image expansion (default 1280; 0: no limit).
            revision: hub revision.
            processor_name_or_path: where the tokenizer comes from when the checkpoint has none
                (default: the checkpoint, then ``Qwen/Qwen2.5-VL-3B-Instruct``, as the reference does).
            devices: encode on several devices, one spawned worker process each: a list
                (``["cuda:0", "cuda:1"]``, ``["cpu", "cpu"]``), a comma-separated string, or ``"all"``
                (every GPU). A single device runs in this process, as ``device`` would.
            cache_dir: persistent embedding cache root (vectors go to ``<cache_dir>/embeddings``).
            cache_memory_mb: in-memory cache bound in MiB (0: none).
            worker_threads: torch threads per device worker (default: the CPUs divided among them).
            video_min_pixels: per-frame lower bound for videos (default 128 * 28²).
            video_max_pixels: per-frame upper bound for videos (default 256 * 28²).
            attention: ``bidirectional`` or ``causal``; default the checkpoint's ``moca_config.json``
                (bidirectional when it records none, as every released MoCa checkpoint).
            pooling: ``mean`` or ``last`` (the last real token); default the checkpoint's
                ``moca_config.json`` (mean when it records none).

        Returns:
            A ready encoder.
        """
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        path = resolve_checkpoint(name_or_path, revision=revision)
        pixels = {"min_pixels": min_pixels, "max_pixels": max_pixels, "max_length": max_length,
                  "video_min_pixels": video_min_pixels, "video_max_pixels": video_max_pixels}  # fmt: skip
        processor, proc_dir = load_processor(path, processor_name_or_path, attention=attention, **pixels)
        directory = None if cache_dir is None else Path(cache_dir).expanduser() / CACHE_SUBDIR
        cache = EmbeddingCache(memory_mb=cache_memory_mb, directory=directory)
        checkpoint = checkpoint_fingerprint(path, proc_dir)
        worker_devices = parse_devices(devices)
        if worker_devices and len(worker_devices) == 1:  # one device: no worker process needed
            device, worker_devices = worker_devices[0], None
        if worker_devices:
            load = {"dtype": dtype, "attn_implementation": attn_implementation, "processor_name_or_path": proc_dir,
                    "attention": attention, "pooling": pooling, **pixels}  # fmt: skip
            factory = functools.partial(_worker_encoder, str(path), load)
            pool = DevicePool(factory, worker_devices, threads=worker_threads)
            return cls(None, processor, cache=cache, pool=pool, checkpoint=checkpoint)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
        impl = attn_implementation or default_attn_implementation(device)
        model = load_model(
            path, device=device, dtype=dtype, attn_implementation=impl, attention=attention, pooling=pooling
        )
        logger.info("loaded %s (%s, %s, %s attention, %s pooling) on %s", name_or_path, impl, dtype, model.attention,
                    model.pooling, device)  # fmt: skip
        return cls(model, processor, device=device, cache=cache, checkpoint=checkpoint)

    @property
    def dim(self) -> int:
        """Embedding dimension (the LLM hidden size: 2048 for 3B, 3584 for 7B)."""
        return self.pool.info["dim"] if self.model is None else self.model.config.text_config.hidden_size

    def vector_settings(self) -> dict:
        """Everything besides the weights that changes the vectors (part of every cache key)."""
        if self.model is None:
            return dict(self.pool.info["settings"])
        return vector_settings(self.model, self.processor)

    def weights_fingerprint(self) -> WeightsFingerprint | None:
        """The weights as they are now (:mod:`moca_model.identity`).

        None with a device pool: its workers load the checkpoint, and nothing here can change their weights.
        """
        return None if self.model is None else weights_fingerprint(self.model)

    def identity(self) -> dict:
        """What the disk namespace hashes: checkpoint fingerprint, weights content at load, settings."""
        weights = self.pool.info["weights"] if self.model is None else self._loaded.content
        return {"checkpoint": self.checkpoint, "weights": weights, "settings": self.vector_settings()}

    def encode(
        self,
        items: Sequence,
        *,
        batch_size: int = 16,
        show_progress_bar: bool | None = None,
        desc: str = "encoding",
        num_workers: int | None = None,
        show_progress: bool | None = None,
    ) -> np.ndarray:
        """Encode items into unit-norm float32 vectors.

        Args:
            items: each a ``str``, a ``PIL.Image.Image``, or a mapping ``{"text": str | None,
                "image": PIL | path | bytes | None}``; interleaved input is ``{"text": "... <|vision_start|>
                <|image_pad|><|vision_end|> ...", "images": [...]}`` (``"image": [...]`` is the same); a video
                is ``{"text": ..., "video": frame folder | [frames] | Video}`` (a folder is sampled to
                ``num_frames``, default 8, as the MMEB-V2 reference does; see :mod:`moca_model.video`). Any
                other key is an error (:func:`moca_model.processing_moca.normalize_item`, README "Input items").
            batch_size: items per forward pass.
            show_progress_bar: tqdm progress bar (default True; sentence-transformers' name).
            desc: progress-bar label.
            num_workers: threads that decode and patchify the next batches while the model runs
                (default 2 on CUDA, 1 on CPU; 0 prepares batches inline). With ``devices``, each worker
                prepares its next batch in one thread, or inline when this is 0.
            show_progress: the earlier name of ``show_progress_bar`` (kept as an alias).

        Returns:
            (N, D) float32 array in the caller's order.

        Raises:
            MoCaInputError: an item that cannot be encoded; the message names its index.
            moca_model.parallel.MoCaWorkerError: a device worker died (no partial result; the batches that
                finished are in the cache).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if None not in (show_progress, show_progress_bar) and show_progress != show_progress_bar:
            raise ValueError("show_progress is an alias of show_progress_bar: give one of them")
        show_progress = next((v for v in (show_progress_bar, show_progress) if v is not None), True)
        start = time.perf_counter()
        stats = EncodeStats(inputs=len(items))
        if len(items) == 0:
            self._record(stats, start)
            return np.zeros((0, self.dim), dtype=np.float32)
        normalized = [normalize_item(x, i) for i, x in enumerate(items)]
        first: dict[str, int] = {}  # content key -> unique id
        originals: list[int] = []  # unique id -> caller index of its first occurrence
        inverse = np.empty(len(items), dtype=np.int64)
        for i, item in enumerate(normalized):
            inverse[i] = first.setdefault(item_key(item, i), len(originals))
            if inverse[i] == len(originals):
                originals.append(i)
        keys = list(first)
        stats.unique = len(keys)
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        namespaces = self._namespaces()
        todo = self._from_cache(keys, out, stats, namespaces)
        if todo:
            entries = [(originals[u], normalized[originals[u]]) for u in todo]
            lengths = [self.processor.estimate_length(item, index) for index, item in entries]
            limit = self.processor.max_length
            stats.truncated = sum(n > limit for n in lengths) if limit else 0
            order = sorted(range(len(todo)), key=lambda k: -lengths[k])
            batches = [[todo[k] for k in b] for b in length_batches(order, lengths, batch_size)]
            bar = tqdm(total=len(todo), desc=desc, unit="item", disable=not show_progress)
            results = self._run(batches, normalized, originals, num_workers)
            try:
                for ids, vectors in results:  # each batch reaches the cache as soon as it is done
                    out[ids] = vectors
                    stats.encoded += len(ids)
                    stats.batches += 1
                    if self.cache is not None:
                        stats.write_errors += self.cache.store(namespaces[0], [keys[u] for u in ids], vectors,
                                                               disk_namespace=namespaces[1], about=namespaces[2])
                    bar.update(len(ids))
            finally:
                results.close()  # a failed call releases the device pool at once
                bar.close()
            if stats.truncated:
                logger.warning("%d of %d inputs were longer than max_length=%d tokens and were cut (text at the end; "
                               "an image or video whose tokens would be cut is dropped whole)", stats.truncated,
                               len(todo), limit)  # fmt: skip
        self._record(stats, start)
        return out[inverse]

    def _namespaces(self) -> tuple[str, str | None, dict | None]:
        """(memory namespace, disk namespace or None, what the disk namespace hashes) for this call."""
        if self.cache is None:
            return "", None, None
        identity = self.identity()
        current = self.weights_fingerprint()
        if current is not None and current.state != self._loaded.state and not self._weights_changed:
            self._weights_changed = True
            logger.warning("the model's weights changed since this encoder was created (in place or replaced): its "
                           "vectors are kept in memory only; the disk cache is never read or written again")
        if current is not None:  # the weights as they are now, and where they live: no two models share
            memory = {**identity, "weights": current.state}
        else:  # a device pool: its workers' weights are the checkpoint's
            memory = {**identity, "instance": None if self.checkpoint else self._instance}
        disk = self.cache.directory is not None and self.checkpoint is not None and not self._weights_changed
        return (self.cache.namespace(memory), self.cache.namespace(identity) if disk else None,
                identity if disk else None)  # fmt: skip

    def _from_cache(self, keys: list[str], out: np.ndarray, stats: EncodeStats, namespaces) -> list[int]:
        """Fill ``out`` with cached vectors; returns the unique ids still to encode."""
        if self.cache is None:
            return list(range(len(keys)))
        found, hits = self.cache.lookup(namespaces[0], keys, disk_namespace=namespaces[1])
        for u, vec in found.items():
            out[u] = vec
        stats.add(hits)
        return [u for u in range(len(keys)) if u not in found]

    def _record(self, stats: EncodeStats, start: float) -> None:
        stats.seconds = time.perf_counter() - start
        self.last_stats = stats
        self.total_stats.add(stats)
        logger.debug("encode: %s in %.2f s", stats.summary(), stats.seconds)

    def _run(self, batches, normalized, originals, num_workers) -> Iterable[tuple[list[int], np.ndarray]]:
        """(unique ids, vectors) per batch, here or on the device pool."""
        entries = [[(originals[u], normalized[originals[u]]) for u in b] for b in batches]
        if self.pool is not None:
            for b, vectors in self.pool.run(entries, inline=num_workers == 0):
                yield batches[b], vectors
            return
        workers = num_workers if num_workers is not None else (2 if self.device.type == "cuda" else 1)
        for b, inputs in prefetched(entries, self.prepare_batch, workers):
            yield batches[b], self.forward_batch(inputs)

    def prepare_batch(self, entries: Sequence[tuple[int, Item]]) -> dict[str, torch.Tensor]:
        """Tokenize, decode and patchify ``(caller index, item)`` pairs into one padded batch."""
        return self.processor.collate([self.processor.process(item, index) for index, item in entries])

    @torch.inference_mode()
    def forward_batch(self, inputs: dict[str, torch.Tensor]) -> np.ndarray:
        """(B, D) float32 unit vectors of a prepared batch."""
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        return self.model(**inputs).embeddings.float().cpu().numpy()

    def close(self) -> None:
        """Stop the device workers, if any (the encoder cannot encode afterwards)."""
        if self.pool is not None:
            self.pool.close()

    def __enter__(self) -> MoCaEncoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def vector_settings(model, processor: MoCaProcessor) -> dict:
    """Everything besides the weights that changes a model's vectors (part of every cache identity)."""
    ip, proc = processor.image_processor, processor
    return {
        "backbone": model.backbone, "dtype": str(next(model.parameters()).dtype),
        "attn_implementation": model.attn_implementation,
        "bidirectional": bool(model.bidirectional), "pooling": model.pooling,
        "min_pixels": proc.min_pixels, "max_pixels": proc.max_pixels, "max_length": proc.max_length,
        "video_min_pixels": proc.video_min_pixels, "video_max_pixels": proc.video_max_pixels,
        "image": [ip.patch_size, ip.temporal_patch_size, ip.merge_size, list(ip.image_mean), list(ip.image_std)],
    }  # fmt: skip


def _worker_encoder(path: str, load: dict, device: str) -> MoCaEncoder:
    """What each device worker builds (module-level so that spawn can pickle it)."""
    return MoCaEncoder.from_pretrained(path, device=device, cache_memory_mb=0, **load)


__all__ = ["EncodeStats", "MoCaEncoder", "MoCaInputError", "item_key"]
