"""Dot-product scoring of single-vector embeddings in bounded memory, on any device, in true fp32.

Two functions every harness adapter can share:

- :func:`score_matrix`: the full ``(n_q, n_p)`` similarity matrix, returned as a CPU float32 tensor
  (vidore-benchmark's ``get_scores`` contract);
- :func:`topk_scores`: the best ``k`` passages per query without ever holding the full matrix
  (e.g. 1M queries x 1k passages, or 1k queries x 1M passages).

Why not ``torch.stack(q) @ torch.stack(p).T`` as the reference retriever does (moca-method.md §5.2):
that copies every embedding once more, materialises every intermediate at full size, and the reference
ran it in bf16 on the CPU, whose ~3 significant digits create ranking ties. Here the inputs are read
block by block (a list of 1-D tensors, as vidore hands them over, is never stacked whole), each block is
cast to float32 and moved to ``device``, and TF32 is switched off on CUDA while scoring so results are
IEEE fp32 products. Peak extra memory is about ``block_mb`` (plus the output for :func:`score_matrix`).

Top-k order is exact and device-independent for equal scores: higher score first, then lower passage
index. NaN scores are not supported (unit-norm embeddings never produce them).

Shapes: Q queries, P passages, D embedding dim, K kept per query.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

Embeddings = torch.Tensor | np.ndarray | Sequence[torch.Tensor] | Sequence[np.ndarray]

DEFAULT_BLOCK_MB = 64.0  # device memory per scoring block: inputs + scores (+ top-k keys)
DEFAULT_QUERY_CHUNK = 4096  # queries per block unless the caller fixes it
_FP32 = 4  # bytes
_TOPK_EXTRA = 16  # bytes per score for top-k: int64 keys + the merge buffer
_LOW32 = 0xFFFFFFFF
_HIGH = 2**32
_SIGN_FLIP = 0x7FFFFFFF


class _Rows:
    """Uniform row access to a 2-D tensor / array or a sequence of 1-D rows, without a full copy."""

    def __init__(self, data: Embeddings, name: str):
        self.data = data
        if isinstance(data, (torch.Tensor, np.ndarray)):
            if data.ndim != 2:
                raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(data.shape)}")
            self.n, self.dim = int(data.shape[0]), int(data.shape[1])
        else:
            self.n = len(data)
            shapes = {tuple(row.shape) for row in data}
            if len(shapes) > 1 or (shapes and len(next(iter(shapes))) != 1):
                raise ValueError(f"{name} must be 1-D vectors of one size (single-vector embeddings), got {shapes}")
            self.dim = int(next(iter(shapes))[0]) if shapes else 0

    def block(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """Rows ``start:stop`` as a float32 tensor on ``device``: (stop - start, D)."""
        d = self.data
        if isinstance(d, torch.Tensor):
            rows = d[start:stop]
        elif isinstance(d, np.ndarray):
            rows = torch.from_numpy(np.ascontiguousarray(d[start:stop]))
        else:
            rows = torch.stack([torch.as_tensor(r) for r in d[start:stop]])
        return rows.to(device=device, dtype=torch.float32)


@contextlib.contextmanager
def _ieee_fp32(device: torch.device) -> Iterator[None]:
    """Disable TF32 matmuls for the duration (CUDA would otherwise round operands to 10 mantissa bits)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def _plan(q: _Rows, p: _Rows, block_mb: float, query_chunk: int | None, per_score: int) -> tuple[int, int]:
    """Queries and passages per block so that inputs + scores fit ``block_mb``."""
    if q.dim != p.dim and q.n and p.n:
        raise ValueError(f"query dim {q.dim} != passage dim {p.dim}")
    if block_mb <= 0:
        raise ValueError(f"block_mb must be > 0, got {block_mb}")
    budget = block_mb * 2**20
    qc = max(1, min(q.n, query_chunk or DEFAULT_QUERY_CHUNK))
    pc = int((budget - qc * q.dim * _FP32) // (p.dim * _FP32 + qc * per_score))
    return qc, max(1, min(p.n, pc))


def _blocks(q: _Rows, p: _Rows, device: torch.device, qc: int, pc: int, cache_mb: float):
    """Yield ``(q0, q1, p0, p1, scores (q1-q0, p1-p0) fp32 on device)`` in query-major order.

    Passage blocks are kept on the device across query chunks when they fit ``cache_mb``, so many
    query chunks do not re-read (and re-stack) the corpus each time.
    """
    n_query_chunks = math.ceil(q.n / qc) if q.n else 0
    cache = n_query_chunks > 1 and p.n * p.dim * _FP32 <= cache_mb * 2**20
    cached: dict[int, torch.Tensor] = {}
    for q0 in range(0, q.n, qc):
        q1 = min(q.n, q0 + qc)
        qb = q.block(q0, q1, device)  # (Qc, D)
        for p0 in range(0, p.n, pc):
            p1 = min(p.n, p0 + pc)
            pb = cached.get(p0)
            if pb is None:
                pb = p.block(p0, p1, device)  # (Pc, D)
                if cache:
                    cached[p0] = pb
            yield q0, q1, p0, p1, qb @ pb.T  # (Qc, Pc)


def score_matrix(
    queries: Embeddings,
    passages: Embeddings,
    *,
    device: torch.device | str | None = None,
    block_mb: float = DEFAULT_BLOCK_MB,
    query_chunk: int | None = None,
    cache_mb: float = 1024.0,
) -> torch.Tensor:
    """Dot products of every query with every passage, in fp32, block by block.

    Args:
        queries: (Q, D) tensor or array, or a sequence of Q tensors / arrays of shape (D,); any float dtype.
        passages: (P, D), same forms.
        device: where the products run (default CPU); e.g. the model's device.
        block_mb: device memory per block (inputs and scores of one block).
        query_chunk: queries per block (default: up to 4096, the rest of the budget goes to passages).
        cache_mb: keep the passages on ``device`` across query chunks when they fit this size.

    Returns:
        (Q, P) float32 CPU tensor; row i holds query i's scores against the passages in input order.

    Raises:
        ValueError: ragged or multi-vector inputs, or query/passage dims differ.
    """
    device = torch.device(device or "cpu")
    q, p = _Rows(queries, "queries"), _Rows(passages, "passages")
    qc, pc = _plan(q, p, block_mb, query_chunk, _FP32)
    out = torch.empty((q.n, p.n), dtype=torch.float32)  # (Q, P)
    with torch.inference_mode(), _ieee_fp32(device):
        for q0, q1, p0, p1, block in _blocks(q, p, device, qc, pc, cache_mb):
            out[q0:q1, p0:p1].copy_(block)
    return out


def _sort_keys(scores: torch.Tensor, first_index: int) -> torch.Tensor:
    """int64 keys whose order is (score desc, index asc): high 32 bits from the float, low from the index."""
    bits = scores.contiguous().view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ _SIGN_FLIP, bits).to(torch.int64)  # monotone in the float value
    index = torch.arange(first_index, first_index + scores.shape[1], device=scores.device, dtype=torch.int64)
    return ordered * _HIGH + (_LOW32 - index)  # arithmetic, not shifts: well defined for negatives


def _decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`_sort_keys`: (float32 scores, int64 passage indices)."""
    high = torch.div(keys, _HIGH, rounding_mode="floor")
    ordered = high.to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ _SIGN_FLIP, ordered)
    return bits.view(torch.float32), _LOW32 - (keys - high * _HIGH)


def topk_scores(
    queries: Embeddings,
    passages: Embeddings,
    k: int,
    *,
    device: torch.device | str | None = None,
    block_mb: float = DEFAULT_BLOCK_MB,
    query_chunk: int | None = None,
    cache_mb: float = 1024.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best passages per query, never holding more than one block of scores.

    Args:
        queries: (Q, D) tensor or array, or a sequence of (D,) rows.
        passages: (P, D), same forms. At most 2**32 - 1 passages.
        k: passages kept per query (clipped to P).
        device: where the products and the selection run (default CPU).
        block_mb: device memory per block.
        query_chunk: queries per block (default up to 4096).
        cache_mb: keep passages on ``device`` across query chunks when they fit.

    Returns:
        ``(scores, indices)``, both (Q, min(k, P)) CPU tensors (float32, int64), best first; equal
        scores are ordered by lower passage index, identically on every device.

    Raises:
        ValueError: ``k < 1``, ragged inputs, or differing dims.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    device = torch.device(device or "cpu")
    q, p = _Rows(queries, "queries"), _Rows(passages, "passages")
    if p.n > _LOW32:
        raise ValueError(f"at most {_LOW32} passages are supported, got {p.n}")
    kk = min(k, p.n)
    qc, pc = _plan(q, p, block_mb, query_chunk, _FP32 + _TOPK_EXTRA)
    values = torch.empty((q.n, kk), dtype=torch.float32)  # (Q, K)
    indices = torch.empty((q.n, kk), dtype=torch.int64)  # (Q, K)
    best: torch.Tensor | None = None  # (Qc, <=K) int64 keys of the current query chunk
    with torch.inference_mode(), _ieee_fp32(device):
        for q0, q1, p0, p1, block in _blocks(q, p, device, qc, pc, cache_mb):
            keys = _sort_keys(block, p0)  # (Qc, Pc)
            if p0 > 0 and best is not None:
                keys = torch.cat([best, keys], dim=1)
            best = keys.topk(min(kk, keys.shape[1]), dim=1, sorted=True).values  # keys are unique: exact
            if p1 == p.n:
                v, i = _decode_keys(best)
                values[q0:q1], indices[q0:q1] = v.cpu(), i.cpu()
    return values, indices


__all__ = ["DEFAULT_BLOCK_MB", "Embeddings", "score_matrix", "topk_scores"]
