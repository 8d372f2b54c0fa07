"""A plain-torch stand-in for the ``flash_attn`` package, so transformers' flash-attention-2 code path runs on CPU.

Test and dry-run use only (the encoder never imports this module). :func:`flash_attn_standin` puts a fake
``flash_attn`` (and ``flash_attn.bert_padding``) into ``sys.modules`` and makes transformers believe
flash-attn 2 is installed and usable on this device, on both supported lines:

- 4.57: every ``is_flash_attn_2_available`` transformers imported by name (``modeling_utils``,
  ``modeling_flash_attention_utils``, ``utils``, ...) and ``is_flash_attn_greater_or_equal_2_10``;
- 5.x: the same, plus ``FLASH_ATTENTION_COMPATIBILITY_MATRIX[2]`` (its availability check and its
  supported devices, which gain ``cpu``) and ``is_flash_attn_greater_or_equal``;
- both: the lazily imported kernels cached in ``modeling_flash_attention_utils`` are reset, so the next
  flash call imports the stand-in; and reset again (the originals restored) on exit.

Then ``attn_implementation="flash_attention_2"`` runs transformers' own code: ``_upad_input`` (unpadding
from the 2-D mask), the varlen dispatch with ``cu_seqlens``, the position-id packed-sequence detection,
the vision tower's ``cu_seqlens`` windows, only the kernel is ours.

The kernels follow flash-attn 2.8's documented contract (``flash_attn_interface.py``):

- ``q``: (B, Sq, Hq, D) or, varlen, (total_q, Hq, D); ``k``/``v`` with Hk heads, Hq a multiple of Hk
  (query head h reads key head ``h // (Hq // Hk)``);
- ``causal``: aligned to the bottom-right corner of the attention matrix when Sq != Sk: query i sees key
  j iff ``j <= i + Sk - Sq``; a query row that sees no key outputs 0;
- ``window_size=(left, right)``: query i sees key j iff ``i + Sk - Sq - left <= j <= i + Sk - Sq + right``
  (-1 = unbounded); ``causal`` sets ``right = 0``;
- ``softcap > 0``: scores become ``softcap * tanh(scores / softcap)`` before the softmax;
- ``softmax_scale``: default ``D ** -0.5``;
- varlen: sequence b is rows ``cu_seqlens[b]:cu_seqlens[b + 1]``; ``cu_seqlens_*`` must be int32 and
  ``max_seqlen_*`` at least the longest sequence (the real kernel would read out of bounds or skip rows
  otherwise), both checked.

Scores, softmax and the weighted sum are computed in float32 and cast back to ``q.dtype`` (the real kernel
accumulates in fp32 too; unlike it, the stand-in also accepts fp32 inputs). ``dropout_p`` must be 0 (the
models here have no attention dropout); ``alibi_slopes`` and ``block_table`` are refused.

Sabotage modes (``mode=``), which the tests use to prove that the parity checks can fail:
``"force_causal"`` ignores ``causal=False``; ``"ignore_cu_seqlens"`` attends across the whole packed batch.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from typing import Literal

import torch

Mode = Literal["exact", "force_causal", "ignore_cu_seqlens"]
FAKE_VERSION = "2.8.3"  # the flash-attn release whose interface this stand-in follows
_state: dict = {"mode": "exact", "calls": []}
_MISSING = object()


def _attend(q, k, v, *, scale, causal, window_size, softcap) -> torch.Tensor:
    """One sequence. q (Sq, Hq, D), k/v (Sk, Hk, D) -> (Sq, Hq, D) in q's dtype."""
    sq, hq, d = q.shape
    sk, hk = k.shape[0], k.shape[1]
    if hq % hk:
        raise ValueError(f"number of query heads {hq} is not a multiple of key/value heads {hk}")
    if _state["mode"] == "force_causal":
        causal = True
    kf = k.float().repeat_interleave(hq // hk, dim=1)  # (Sk, Hq, D)
    vf = v.float().repeat_interleave(hq // hk, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), kf) * (d**-0.5 if scale is None else scale)  # (Hq, Sq, Sk)
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    left, right = window_size
    if causal:
        right = 0
    i = torch.arange(sq, device=q.device)[:, None] + (sk - sq)  # bottom-right aligned diagonal
    j = torch.arange(sk, device=q.device)[None, :]
    keep = torch.ones((sq, sk), dtype=torch.bool, device=q.device)
    if right >= 0:
        keep &= j <= i + right
    if left >= 0:
        keep &= j >= i - left
    scores = scores.masked_fill(~keep, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows without a visible key -> 0, as the kernel
    return torch.einsum("hqk,khd->qhd", probs, vf).to(q.dtype)


def _check_common(dropout_p, alibi_slopes) -> None:
    if dropout_p:
        raise NotImplementedError("the flash_attn stand-in has no dropout (dropout_p must be 0)")
    if alibi_slopes is not None:
        raise NotImplementedError("the flash_attn stand-in has no ALiBi")


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
) -> torch.Tensor:
    """flash-attn's dense kernel: q (B, Sq, Hq, D), k/v (B, Sk, Hk, D) -> (B, Sq, Hq, D)."""
    _check_common(dropout_p, alibi_slopes)
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"batch sizes differ: q {q.shape[0]}, k {k.shape[0]}")
    _state["calls"].append({"kernel": "dense", "causal": causal, "seqlens": [q.shape[1]] * q.shape[0]})
    kw = {"scale": softmax_scale, "causal": causal, "window_size": window_size, "softcap": softcap}
    if _state["mode"] == "ignore_cu_seqlens":  # one sequence over the whole batch: samples see each other
        return _attend(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), **kw).view_as(q)
    return torch.stack([_attend(q[b], k[b], v[b], **kw) for b in range(q.shape[0])])


def _check_cu_seqlens(cu: torch.Tensor, max_seqlen, total: int, name: str) -> list[int]:
    if cu.dtype != torch.int32:
        raise TypeError(f"cu_seqlens_{name} must be int32 (flash-attn refuses {cu.dtype})")
    bounds = cu.tolist()
    if bounds[0] != 0 or bounds[-1] != total or any(b < a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens_{name} {bounds} is not a 0-based cumulative length ending at {total}")
    longest = max((b - a for a, b in zip(bounds, bounds[1:])), default=0)
    if int(max_seqlen) < longest:
        raise ValueError(f"max_seqlen_{name}={int(max_seqlen)} is shorter than the longest sequence ({longest})")
    return bounds


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: float | None = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: torch.Tensor | None = None,
    deterministic: bool = False,
    return_attn_probs: bool = False,
    block_table: torch.Tensor | None = None,
) -> torch.Tensor:
    """flash-attn's varlen kernel: q (total_q, Hq, D), k/v (total_k, Hk, D) -> (total_q, Hq, D)."""
    _check_common(dropout_p, alibi_slopes)
    if block_table is not None:
        raise NotImplementedError("the flash_attn stand-in has no paged KV cache")
    bq = _check_cu_seqlens(cu_seqlens_q, max_seqlen_q, q.shape[0], "q")
    bk = _check_cu_seqlens(cu_seqlens_k, max_seqlen_k, k.shape[0], "k")
    if len(bq) != len(bk):
        raise ValueError(f"cu_seqlens_q has {len(bq) - 1} sequences, cu_seqlens_k {len(bk) - 1}")
    _state["calls"].append({"kernel": "varlen", "causal": causal, "seqlens": [b - a for a, b in zip(bq, bq[1:])]})
    if _state["mode"] == "ignore_cu_seqlens":
        bq, bk = [0, q.shape[0]], [0, k.shape[0]]
    out = q.new_zeros(q.shape)
    for (q0, q1), (k0, k1) in zip(zip(bq, bq[1:]), zip(bk, bk[1:])):
        if q1 > q0:
            out[q0:q1] = _attend(q[q0:q1], k[k0:k1], v[k0:k1], scale=softmax_scale, causal=causal,
                                 window_size=window_size, softcap=softcap)  # fmt: skip
    return out


def flash_attn_with_kvcache(*args, **kwargs):
    """Imported by transformers 5.x for paged decoding, which encoders never run."""
    raise NotImplementedError("the flash_attn stand-in has no KV-cache kernel")


# flash_attn.bert_padding, as flash-attn 2.8 defines it (4.57 and 5.x import pad_input / unpad_input).
def index_first_axis(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``tensor`` (N, ...) rows at ``indices``."""
    return tensor.reshape(tensor.shape[0], -1)[indices].reshape(-1, *tensor.shape[1:])


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor, unused_mask: torch.Tensor | None = None):
    """(B, S, ...) + (B, S) mask -> (hidden (nnz, ...), indices, cu_seqlens int32, max_seqlen, seqused)."""
    all_masks = attention_mask + unused_mask if unused_mask is not None else attention_mask
    seqlens = all_masks.sum(dim=-1, dtype=torch.int32)
    used = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    cu = torch.nn.functional.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    rows = index_first_axis(hidden_states.reshape(-1, *hidden_states.shape[2:]), indices)
    return rows, indices, cu, int(seqlens.max().item()), used


def pad_input(hidden_states: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """(nnz, ...) rows back into (batch, seqlen, ...), zeros elsewhere."""
    out = hidden_states.new_zeros((batch * seqlen, *hidden_states.shape[1:]))
    out[indices] = hidden_states
    return out.view(batch, seqlen, *hidden_states.shape[1:])


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=name == "flash_attn")
    mod.__dict__.update(attrs)
    return mod


class _Patches:
    """setattr / setitem with undo, in reverse order (a dependency-free ``pytest.MonkeyPatch``)."""

    def __init__(self) -> None:
        self._undo: list = []

    def setattr(self, obj, name: str, value) -> None:
        self._undo.append((setattr, delattr, obj, name, getattr(obj, name, _MISSING)))
        setattr(obj, name, value)

    def setitem(self, mapping, key, value) -> None:
        self._undo.append((mapping.__setitem__, mapping.__delitem__, mapping, key, mapping.get(key, _MISSING)))
        mapping[key] = value

    def undo(self) -> None:
        while self._undo:
            put, remove, obj, key, old = self._undo.pop()
            if old is _MISSING:
                remove(obj, key) if remove is delattr else remove(key)
            else:
                put(obj, key, old) if put is setattr else put(key, old)


def _true(*args, **kwargs) -> bool:
    return True


@contextlib.contextmanager
def flash_attn_standin(mode: Mode = "exact") -> Iterator[list[dict]]:
    """Within the block, ``flash_attn`` is this stand-in and transformers treats flash-attn 2 as available.

    Args:
        mode: ``exact``, or a sabotage mode (``force_causal``, ``ignore_cu_seqlens``) for negative controls.

    Yields:
        The log of kernel calls, one dict per call: ``kernel`` (``dense`` | ``varlen``), ``causal`` (as
        requested by transformers) and ``seqlens`` (the query length of every sequence).
    """
    import transformers
    import transformers.modeling_flash_attention_utils as fa_utils
    import transformers.modeling_utils  # noqa: F401  (holds its own reference to the availability check)

    if "flash_attn" in sys.modules and not getattr(sys.modules["flash_attn"], "_moca_standin", False):
        raise RuntimeError("the real flash_attn is imported: refusing to shadow it with the stand-in")
    padding = _module("flash_attn.bert_padding", index_first_axis=index_first_axis, pad_input=pad_input,
                      unpad_input=unpad_input)  # fmt: skip
    fake = _module("flash_attn", __version__=FAKE_VERSION, _moca_standin=True, flash_attn_func=flash_attn_func,
                   flash_attn_varlen_func=flash_attn_varlen_func, flash_attn_with_kvcache=flash_attn_with_kvcache,
                   bert_padding=padding)  # fmt: skip
    p = _Patches()
    p.setitem(sys.modules, "flash_attn", fake)
    p.setitem(sys.modules, "flash_attn.bert_padding", padding)
    p.setitem(_state, "mode", mode)
    p.setitem(_state, "calls", [])
    checks = {"is_flash_attn_2_available", "is_flash_attn_greater_or_equal_2_10", "is_flash_attn_greater_or_equal"}
    import_utils = importlib.import_module("transformers.utils.import_utils")
    originals = {getattr(import_utils, name) for name in checks if hasattr(import_utils, name)}
    for mod in [m for name, m in list(sys.modules.items()) if name.startswith("transformers") and m is not None]:
        for name in checks:
            if getattr(mod, name, None) in originals:  # every module that imported a check by name
                p.setattr(mod, name, _true)
    matrix = getattr(fa_utils, "FLASH_ATTENTION_COMPATIBILITY_MATRIX", None)  # 5.x
    if matrix is not None:
        entry = dict(matrix[2])
        entry["general_availability_check"] = _true
        entry["supported_devices"] = (*entry["supported_devices"], (_true, "cpu"))
        p.setitem(matrix, 2, entry)
    # kernels cached by lazy_import_flash_attention (4.57: _flash_fn ...; 5.x also _loaded_implementation)
    for name in ("_flash_fn", "_flash_varlen_fn", "_flash_with_kvcache_fn", "_pad_fn", "_unpad_fn",
                 "_process_flash_kwargs_fn", "_process_with_kvcache_kwargs_fn", "_loaded_implementation"):  # fmt: skip
        if hasattr(fa_utils, name):
            p.setattr(fa_utils, name, None)
    flash_integration = importlib.import_module("transformers.integrations.flash_attention")
    p.setattr(flash_integration, "_use_top_left_mask", False)  # flash-attn >= 2.1: bottom-right causal mask
    del transformers
    try:
        yield _state["calls"]
    finally:
        p.undo()
