"""Encode one rank's share of a subset's unique pairs, turning unreadable images into counted bad pairs.

Every pair is first checked cheaply: its image header is opened (no pixel decoding) to estimate its
token count, which also orders the shard longest-first so chunks hold similar lengths. Images that
fail only when decoded (truncated data) raise :class:`moca_model.MoCaInputError` inside the encoder; its
``item i`` index is mapped back to the pair, which is marked bad, and the chunk is re-run without it.
``strict`` turns the first bad pair into an error instead.

Bad pairs come back as NaN rows plus a status code, so they travel through the float ``all_gather``. Pairs
longer than the encoder's ``max_length`` (text cut at the end, or an image dropped whole) are flagged, so
the report counts them: nothing is cut silently.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import numpy as np

from moca_bench.mmeb.data import MMEBDataError, SubsetData  # or a v2 TaskData: same interface

logger = logging.getLogger(__name__)

OK, MISSING, UNREADABLE, REJECTED = 0, 1, 2, 3
STATUS_NAMES = {MISSING: "missing image", UNREADABLE: "unreadable image", REJECTED: "rejected by the encoder"}
# (a video input counts as "missing image" when a frame or its whole frame folder is missing)
_ITEM_INDEX = re.compile(r"^item (\d+):")


@dataclass
class ShardResult:
    """Vectors and status of one rank's pairs. Shapes: n pairs, D dim."""

    embeddings: np.ndarray
    """(n, D) float32; NaN rows for bad pairs."""
    status: np.ndarray
    """(n,) int: OK, MISSING, UNREADABLE or REJECTED."""
    truncated: np.ndarray
    """(n,) bool: longer than the encoder's ``max_length`` tokens, so cut."""
    encoded: int = 0
    """Pairs encoded, each counted once (work lost to a retry after a bad image is not counted)."""
    seconds: float = 0.0


def _status_of(subset: SubsetData, index: int) -> int:
    path = subset.image_path(index)
    return MISSING if path is not None and not path.is_file() else UNREADABLE if path is not None else REJECTED


def _bad(subset: SubsetData, index: int, message: str, strict: bool) -> int:
    status = _status_of(subset, index)
    message = _ITEM_INDEX.sub("", message).strip()  # the encoder's index is local to one call
    pair = subset.pairs[index]
    if strict:
        raise MMEBDataError(
            f"{subset.name}: pair {index} (image {subset.describe(index)!r}, text {pair.text[:60]!r}): {message} "
            "(drop --strict to count and skip such rows)"
        )
    logger.warning("%s: skipping pair %d (%s): %s", subset.name, index, STATUS_NAMES[status], message)
    return status


def encode_shard(
    encoder,
    subset: SubsetData,
    indices: np.ndarray,
    *,
    batch_size: int = 16,
    chunk_size: int = 512,
    num_workers: int | None = None,
    strict: bool = False,
    progress=None,
) -> ShardResult:
    """Encode the pairs ``indices`` of ``subset``.

    Args:
        encoder: a :class:`moca_model.MoCaEncoder` (or anything with ``processor``, ``dim`` and ``encode``).
        subset: the subset.
        indices: (n,) pair indices of this rank's shard.
        batch_size: items per forward pass.
        chunk_size: items per encoder call.
        num_workers: encoder's batch-preparation threads.
        strict: raise on the first bad pair.
        progress: optional tqdm bar, advanced by pairs done.

    Returns:
        The shard's vectors and status, in ``indices`` order.

    Raises:
        MMEBDataError: a bad pair under ``strict``.
    """
    from moca_model import MoCaInputError
    from moca_model.processing_moca import normalize_item

    start = time.perf_counter()
    n = len(indices)
    emb = np.full((n, encoder.dim), np.nan, dtype=np.float32)
    status = np.zeros(n, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    for pos, idx in enumerate(indices):
        try:
            lengths[pos] = encoder.processor.estimate_length(normalize_item(subset.item(int(idx)), pos), pos)
        except MoCaInputError as exc:
            status[pos] = _bad(subset, int(idx), str(exc), strict)
    if progress is not None:
        progress.update(int((status != OK).sum()))
    todo = [p for p in np.argsort(-lengths, kind="stable").tolist() if status[p] == OK]
    encoded = 0
    for s in range(0, len(todo), chunk_size):
        chunk = todo[s : s + chunk_size]
        while chunk:
            items = [subset.item(int(indices[p])) for p in chunk]
            try:
                emb[chunk] = encoder.encode(items, batch_size=batch_size, show_progress=False, num_workers=num_workers)
                break
            except MoCaInputError as exc:  # decoding failed after the header check: drop that pair, retry
                match = _ITEM_INDEX.match(str(exc))
                if match is None:
                    raise
                p = chunk.pop(int(match.group(1)))
                status[p] = _bad(subset, int(indices[p]), str(exc), strict)
                if progress is not None:
                    progress.update(1)
        encoded += len(chunk)
        if progress is not None:
            progress.update(len(chunk))
    limit = encoder.processor.max_length
    truncated = (lengths > limit) & (status == OK) if limit else np.zeros(n, dtype=bool)
    return ShardResult(emb, status, truncated, encoded, time.perf_counter() - start)
