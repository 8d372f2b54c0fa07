"""Interleaved CPT corpora: sources, records, and the one-off length-statistics pass.

A record is ``{"text": str with <|vision_start|><|image_pad|><|vision_end|> placeholders, "images":
[path | bytes | {"bytes", "path"} | PIL image, ...]}`` (the layout of the ``moca-embed/*`` CPT sets,
moca-method.md §3.2). Sources are JSONL, parquet, a ``save_to_disk`` folder or a hub dataset. A
streamed source (too large to download, e.g. DocMatix) is sub-selected while streaming: the first
``num_samples`` rows of a seeded shuffle buffer are written once to a local Arrow cache (§7 item 13),
so training always reads a random-access table.

Length statistics (text tokens, post-resize image tokens, image count per row) are computed once and
cached under a key that includes the source fingerprint, the tokenizer and the resize settings (the
reference keys on the dataset name only and counts raw-size image tokens, §7 item 12). Image sizes
come from headers; pixels are not decoded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from moca_model.images import MoCaInputError
from moca_model.processing_moca import IMAGE_PLACEHOLDER

if TYPE_CHECKING:
    import datasets

    from moca_model import MoCaProcessor
    from moca_train.cpt.config import CPTSourceConfig

logger = logging.getLogger(__name__)

STATS_VERSION = 1  # bump when the statistics' definition changes
STATS_COLUMNS = ("text_tokens", "image_tokens", "n_images")
IMAGE_COST = 4  # one image token ~ four text tokens of compute (reference dataloader.py:18)
MARKER_COST = 2  # <|vision_start|> + <|vision_end|> per image


def _file_format(path: str) -> str | None:
    suffix = path.rsplit(".", 1)[-1].lower() if "." in Path(path).name else ""
    return {"jsonl": "json", "json": "json", "parquet": "parquet"}.get(suffix)


def _load(spec: CPTSourceConfig):
    import datasets

    path = Path(spec.path)
    if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()):
        ds = datasets.load_from_disk(str(path))
        return ds[spec.split] if isinstance(ds, datasets.DatasetDict) else ds
    fmt = _file_format(spec.path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if _file_format(str(p)))
        if not files:
            raise FileNotFoundError(f"no .jsonl/.json/.parquet files under {spec.path!r}")
        fmt, data_files = _file_format(str(files[0])), [str(p) for p in files]
    else:
        data_files = spec.path
    if fmt is not None:
        return datasets.load_dataset(fmt, data_files=data_files, split="train", streaming=spec.streaming)
    return datasets.load_dataset(spec.path, spec.name, split=spec.split, streaming=spec.streaming)


def _undecoded(ds):
    """Cast image features to ``decode=False`` so rows carry bytes/paths and sizes come from headers."""
    from datasets import Image

    features = getattr(ds, "features", None)
    if not features:
        return ds
    changed = features.copy()
    for col, feat in features.items():
        if isinstance(feat, Image):
            changed[col] = Image(decode=False)
        elif isinstance(getattr(feat, "feature", None), Image):
            changed[col] = type(feat)(Image(decode=False))
    return ds.cast(changed) if changed != features else ds


def open_source(spec: CPTSourceConfig, *, seed: int, cache_dir: str | Path):
    """A random-access ``datasets.Dataset`` for ``spec`` (streamed sources are materialised once).

    Args:
        spec: the source.
        seed: seed of the random subset (``num_samples``) and of the streaming shuffle buffer.
        cache_dir: where materialised streams are written.

    Returns:
        A map-style dataset whose image columns are not decoded.
    """
    import datasets

    ds = _load(spec)
    if spec.streaming:
        if not spec.num_samples:
            raise ValueError(f"source {spec.path!r}: streaming needs num_samples (rows to sub-select)")
        stream = _undecoded(ds).shuffle(seed=seed, buffer_size=10_000).take(spec.num_samples)
        key = hashlib.sha256(json.dumps([asdict(spec), seed]).encode()).hexdigest()[:16]
        logger.info("materialising %d streamed rows of %s (key %s)", spec.num_samples, spec.path, key)
        ds = datasets.Dataset.from_generator(
            _iterate, gen_kwargs={"stream": stream}, features=stream.features, cache_dir=str(cache_dir), fingerprint=key
        )
    elif spec.num_samples and spec.num_samples < len(ds):
        rows = np.sort(np.random.default_rng(seed).choice(len(ds), spec.num_samples, replace=False))
        ds = ds.select(rows.tolist())
    return _undecoded(ds)


def _iterate(stream):
    yield from stream


def base_dir(spec: CPTSourceConfig) -> Path:
    """Folder that relative image paths of this source are resolved against."""
    if spec.image_root:
        return Path(spec.image_root)
    path = Path(spec.path)
    return path if path.is_dir() else path.parent


def record_from_row(row: dict, spec: CPTSourceConfig) -> dict:
    """``{"text", "images"}`` with each image as a path (resolved), bytes or PIL image."""
    images = []
    for img in row.get(spec.images_column) or []:
        if isinstance(img, dict):
            img = img.get("bytes") or img.get("path")
        if isinstance(img, str) and not Path(img).is_absolute():
            img = str(base_dir(spec) / img)
        images.append(img)
    return {"text": row.get(spec.text_column) or "", "images": images}


def _fingerprint(ds, spec: CPTSourceConfig, seed: int) -> str:
    return json.dumps([getattr(ds, "_fingerprint", None), asdict(spec), seed, len(ds)])


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the tokenizer's full definition (vocab, merges, added tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()


def stats_cache_key(ds, spec: CPTSourceConfig, processor: MoCaProcessor, *, seed: int) -> str:
    """Cache key: source fingerprint + tokenizer + resize settings + statistics version."""
    ip = processor.image_processor
    parts = {
        "source": _fingerprint(ds, spec, seed),
        "tokenizer": tokenizer_fingerprint(processor.tokenizer),
        "resize": [processor.min_pixels, processor.max_pixels, ip.patch_size, ip.merge_size],
        "version": STATS_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _image_tokens(src, processor: MoCaProcessor, index: int) -> int:
    try:
        return processor.num_image_tokens(*processor.fitted_size(src, index))
    except MoCaInputError as exc:  # unreadable images become text-only rows at load time; count the minimum
        logger.warning("%s", exc)
        return processor.min_pixels // processor.factor**2


def batch_stats(records: list[dict], processor: MoCaProcessor, *, start: int = 0) -> np.ndarray:
    """Statistics of a list of records; text of the whole list goes through the tokenizer in one call.

    Args:
        records: ``{"text", "images"}`` dicts.
        processor: tokenizer and resize settings.
        start: global index of the first record (for warnings).

    Returns:
        (len(records), 3) int64: text tokens without placeholders, post-resize image tokens, images.
    """
    pieces = [r["text"].split(IMAGE_PLACEHOLDER) for r in records]
    flat = [p for ps in pieces for p in ps]
    lengths = [len(ids) for ids in processor.tokenizer(flat, add_special_tokens=False)["input_ids"]] if flat else []
    out = np.zeros((len(records), len(STATS_COLUMNS)), dtype=np.int64)
    pos = 0
    for i, (record, ps) in enumerate(zip(records, pieces)):
        out[i, 0] = sum(lengths[pos : pos + len(ps)])
        pos += len(ps)
        out[i, 1] = sum(_image_tokens(src, processor, start + i) for src in record["images"])
        out[i, 2] = len(record["images"])
    return out


def length_stats(
    ds, spec: CPTSourceConfig, processor: MoCaProcessor, *, seed: int, cache_dir: str | Path, batch_size: int = 1000
) -> np.ndarray:
    """Per-row statistics, computed once and cached as ``{cache_dir}/stats-{key}.npy``.

    Returns:
        (R, 3) int64 array with columns :data:`STATS_COLUMNS`.
    """
    path = Path(cache_dir) / f"stats-{stats_cache_key(ds, spec, processor, seed=seed)}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    parts = []
    with tqdm(total=len(ds), desc=f"length stats {spec.path}", mininterval=5) as bar:
        for start in range(0, len(ds), batch_size):
            columns = ds[start : start + batch_size]  # dict of columns
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
            parts.append(batch_stats([record_from_row(r, spec) for r in rows], processor, start=start))
            bar.update(len(rows))
    stats = np.concatenate(parts) if parts else np.zeros((0, len(STATS_COLUMNS)), dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, stats, allow_pickle=False)
    tmp.replace(path)
    return stats


def costs_from_stats(stats: np.ndarray, *, max_length: int) -> np.ndarray:
    """Compute cost per row: text + 4 * image tokens + 2 * images, clipped at ``max_length``. (R,) int64."""
    text, image, n = stats[:, 0], stats[:, 1], stats[:, 2]
    return np.minimum(text + IMAGE_COST * image + MARKER_COST * n, max_length)


class CPTCorpus:
    """Several sources behind one global row index, with per-row costs.

    Args:
        specs: the sources, in order.
        processor: tokenizer + resize settings used for the statistics.
        seed: sub-selection seed.
        cache_dir: statistics and materialised streams.
        max_length: cost clip (the training max length).
    """

    def __init__(
        self, specs: list[CPTSourceConfig], processor: MoCaProcessor, *, seed: int, cache_dir, max_length: int
    ):
        self.specs = list(specs)
        self.datasets: list[datasets.Dataset] = [open_source(s, seed=seed, cache_dir=cache_dir) for s in self.specs]
        stats = [length_stats(d, s, processor, seed=seed, cache_dir=cache_dir) for d, s in zip(self.datasets, specs)]
        self.stats = np.concatenate(stats) if stats else np.zeros((0, len(STATS_COLUMNS)), dtype=np.int64)
        self.costs = costs_from_stats(self.stats, max_length=max_length)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def record(self, index: int) -> dict:
        """The ``{"text", "images"}`` record at a global row index."""
        src = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return record_from_row(self.datasets[src][int(index - self.offsets[src])], self.specs[src])
