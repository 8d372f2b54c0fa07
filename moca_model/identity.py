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
:data:`SAMPLES_PER_TENSOR` fixed, evenly spread positions (with a jitter, so rows and columns are not
aligned). A write through ``.data`` that changes a fraction ``f`` of a large tensor's values at random
positions goes unnoticed with probability ``(1 - f) ** 256`` (1% of the values: 7.6%; 5%: 2e-6); a training
step, a merged adapter or a reload of other weights changes nearly every value and is always caught. The cost
for the 3B architecture (824 tensors, 3.75 B values) is measured by ``python -m benchmarks.weights_identity``
(``results/benchmarks/weights_identity.json``): a few milliseconds per ``encode`` call.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache

WHOLE_TENSOR = 4096  # tensors with at most this many values are read whole
SAMPLES_PER_TENSOR = 256  # values sampled from each larger tensor
_JITTER = 0.6180339887498949  # golden ratio: the sampled positions do not line up with rows or columns


@dataclass(frozen=True)
class WeightsFingerprint:
    """Digests of a model's weights (see the module docstring)."""

    content: str
    """Names, shapes, dtypes and sampled values: equal in any process holding the same weights."""
    state: str
    """``content`` plus each tensor's storage address, device and in-place version counter."""


@lru_cache(maxsize=256)
def _positions(numel: int) -> tuple[int, ...]:
    stride = numel / SAMPLES_PER_TENSOR
    jitter = [(i + 1) * _JITTER % 1.0 for i in range(SAMPLES_PER_TENSOR)]
    return tuple(min(numel - 1, int((i + j) * stride)) for i, j in enumerate(jitter))


def _version(tensor) -> int:
    try:
        return int(tensor._version)
    except RuntimeError:  # an inference-mode tensor has no version counter
        return -1


def weights_fingerprint(module) -> WeightsFingerprint:
    """Fingerprint every parameter and buffer of ``module`` (a ``torch.nn.Module``).

    One small gather per tensor on the tensor's own device and one transfer per (device, dtype), so the cost
    does not grow with the tensors' sizes.
    """
    import torch

    described, where = [], []
    groups: dict[tuple[str, torch.dtype], list[torch.Tensor]] = {}
    indices: dict[tuple[int, torch.device], torch.Tensor] = {}
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            t = tensor.detach()
            described.append((name, list(t.shape), str(t.dtype)))
            where.append((t.data_ptr(), str(t.device), _version(tensor)))
            n = t.numel()
            if n == 0 or t.device.type == "meta":
                continue
            if n <= WHOLE_TENSOR:
                values = t.reshape(-1)
            else:
                index = indices.get((n, t.device))
                if index is None:
                    index = indices[(n, t.device)] = torch.tensor(_positions(n), dtype=torch.long, device=t.device)
                values = torch.take(t, index)
            groups.setdefault((str(t.device), t.dtype), []).append(values)
        content = hashlib.blake2b(json.dumps(described).encode(), digest_size=16)
        for key in sorted(groups, key=str):
            raw = torch.cat(groups[key]).contiguous().view(torch.uint8)  # the bits, so NaNs and -0.0 count too
            content.update(str(key).encode())
            content.update(raw.cpu().numpy().tobytes())
    content_hex = content.hexdigest()
    state = hashlib.blake2b(content_hex.encode() + json.dumps(where).encode(), digest_size=16).hexdigest()
    return WeightsFingerprint(content=content_hex, state=state)


def identity_key(identity: dict) -> str:
    """The 24-hex-digit key of an identity dict (a cache namespace)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
