"""What a cached vector is the vector *of*: the model's weights as they are now, and the settings.

One identity rule for every embedding cache (the encoder's, :mod:`moca_model.cache`, and the MMEB runner's
task files, :mod:`moca_bench.mmeb.cache`):

- **checkpoint**: the fingerprint of the checkpoint files the weights were loaded from
  (:func:`moca_model.cache.checkpoint_fingerprint`); None when the model did not come from files;
- **weights**: :func:`weights_fingerprint` of the model in memory. Its ``content`` part (names, shapes,
  dtypes and sampled values of every parameter and buffer) is the same in every process that holds the same
  weights; its ``state`` part adds where each tensor lives (``data_ptr``, device) and its in-place version
  counter, so it changes when a tensor is replaced (``load_state_dict(assign=True)``, a new ``Parameter``,
  ``p.data = ...``) or written through itself (an optimizer step, ``p.add_()`` under ``no_grad``), and
  its sampled values change when a write through ``p.data`` touches them;
- **settings**: everything besides the weights that changes vectors (:func:`moca_model.encode.vector_settings`).

A vector goes to disk only under (checkpoint, weights content at load, settings), and only while the
weights' ``state`` still equals the one taken at load; in memory it is kept under the current ``state``,
so two models never share an entry and a changed model never meets its old vectors.

Sampling: tensors of up to :data:`WHOLE_TENSOR` values are read whole; larger ones at
:data:`SAMPLES_PER_TENSOR` evenly spread positions (an odd step, so that the samples walk across a matrix's
columns instead of staying in one). A write through ``.data`` that changes a fraction ``f`` of a large
tensor's values at random positions goes unnoticed with probability ``(1 - f) ** 256`` (1% of the values:
7.6%; 5%: 2e-6); a training step, a merged adapter or a reload of other weights changes nearly every value
and is always caught.

Cost, once per ``encode`` call, for the 3B architecture (862 tensors, 3.75 B values, 0.86 M of them read):
27.6 ms of CPU in bfloat16, 38.6 ms in float32 (one thread; ``python -m benchmarks.weights_identity``,
``results/benchmarks/weights_identity.json``); on a GPU the reads stay on the device and one small
transfer per dtype comes back (not measured here: no GPU). Skipped when caching is off.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

WHOLE_TENSOR = 4096  # tensors with at most this many values are read whole
SAMPLES_PER_TENSOR = 256  # values sampled from each larger tensor


@dataclass(frozen=True)
class WeightsFingerprint:
    """Digests of a model's weights (see the module docstring)."""

    content: str
    """Names, shapes, dtypes and sampled values: equal in any process holding the same weights."""
    state: str
    """``content`` plus each tensor's storage address, device and in-place version counter."""


def _stride(numel: int) -> int:
    """Step between sampled values: :data:`SAMPLES_PER_TENSOR` spread over the tensor.

    Odd, so that the samples walk across the columns of a matrix whose row length is a power of two.
    """
    return max(1, (numel - 1) // SAMPLES_PER_TENSOR) | 1


def _version(tensor) -> int:
    try:
        return int(tensor._version)
    except RuntimeError:  # an inference-mode tensor has no version counter
        return -1


def weights_fingerprint(module) -> WeightsFingerprint:
    """Fingerprint every parameter and buffer of ``module`` (a ``torch.nn.Module``).

    One strided view per tensor, one concatenation and one transfer per (device, dtype): the cost does not grow
    with the tensors' sizes. ``content`` does not depend on the devices the tensors are on (workers of a device
    pool and a model split over GPUs agree with one process).
    """
    import torch

    described, where = [], []
    groups: dict[tuple[str, torch.dtype], list[tuple[int, torch.Tensor]]] = {}
    with torch.no_grad():
        for i, (name, tensor) in enumerate([*module.named_parameters(), *module.named_buffers()]):
            t = tensor.detach()
            described.append((name, tuple(t.shape), t.dtype))
            where.append((t.data_ptr(), str(t.device), _version(tensor)))
            n = t.numel()
            if n == 0 or t.device.type == "meta":
                continue
            if n <= WHOLE_TENSOR:
                flat = t.reshape(-1)
            elif t.is_contiguous():  # a strided view: torch.cat below gathers every tensor's samples in one call
                flat = t.view(-1)[:: _stride(n)][:SAMPLES_PER_TENSOR]
            else:  # the same positions, in the tensor's logical order, without copying it
                index = torch.arange(0, n, _stride(n), device=t.device)[:SAMPLES_PER_TENSOR]
                flat = torch.take(t, index)
            groups.setdefault((str(t.device), t.dtype), []).append((i, flat))
        values: list[tuple[int, bytes]] = []  # (tensor index, its values' bits), whatever device held it
        for members in groups.values():
            raw = torch.cat([flat for _, flat in members]).view(torch.uint8).cpu().numpy().tobytes()
            size, start = members[0][1].element_size(), 0
            for i, flat in members:
                values.append((i, raw[start : start + flat.numel() * size]))
                start += flat.numel() * size
        content = hashlib.blake2b(repr(described).encode(), digest_size=16)
        for _, bits in sorted(values, key=lambda v: v[0]):  # the bits, so NaNs and -0.0 count too
            content.update(bits)
    content_hex = content.hexdigest()
    state = hashlib.blake2b((content_hex + repr(where)).encode(), digest_size=16).hexdigest()
    return WeightsFingerprint(content=content_hex, state=state)


def identity_key(identity: dict) -> str:
    """The 24-hex-digit key of an identity dict (a cache namespace)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
