"""The only code that changes how the Qwen vision towers attend: one kernel call per chunk length, not per chunk.

Supported: transformers >= 4.54, < 6 (older lines are left stock; see "Versions").

Why. The vision towers split their token sequence into chunks that must not see each other: Qwen2.5-VL's
windows (8x8 patches, smaller at the right and bottom edges) in 28 of its 32 blocks, and every frame
(an image, or one temporal slice of a video) in the other 4 blocks and in every block of Qwen2-VL and
Qwen3-VL. ``cu_seqlens`` marks the chunk boundaries. flash-attention-2 takes them in one varlen call; every
other backend runs ``for chunk in chunks: attention(chunk)`` ("Other implementations: Process each chunk
separately" in the upstream modeling files). A 1,024-token page is 64 windows, so the 3B tower makes
1,796 SDPA calls per page, each tens of microseconds of launch and Python on a GPU for a 64-token
matrix: that overhead, not arithmetic, bounds pages/s wherever flash-attn is not installed (SDPA on AMD,
new GPU generations, torch builds without a wheel). On CPU a window's arithmetic costs about as much as
the call, so the gain there is smaller (results/benchmarks/SUMMARY.md).

What changes. On ``sdpa`` and ``eager`` only, :class:`BatchedChunkAttention` replaces the attention
module's forward: q/k/v and the rotary embedding are computed as upstream does (same functions, same
order), the chunks are grouped by length, each group is stacked into one batch ``(G, heads, L, head_dim)``
and handed to the *same* upstream attention function (``ALL_ATTENTION_FUNCTIONS["sdpa"]`` or the module's
``eager_attention_forward``) once, and the outputs are put back in token order before the same output
projection. Calls per block: the number of distinct chunk lengths (at most 4 window shapes per image size;
one per image size in the full-attention blocks), not the number of chunks. The grouping (a token
permutation and its inverse) is computed once per ``cu_seqlens`` tensor, i.e. twice per tower forward,
and reused by every block. flash-attention (any ``*flash*``), flex attention, anything else, and
``torch.compile`` / ``torch.jit`` tracing take the unchanged upstream forward.

Why grouping and not one call with a block-diagonal mask (what transformers <= 4.53 did): the mask costs
``N^2`` memory and work for an ``N``-token batch (16 pages: 65k tokens, a 4 GiB boolean mask) and keeps
SDPA off its flash kernel; ``benchmarks/vision_attention.py`` measures both (results/benchmarks/SUMMARY.md).

Exactness. Each chunk still attends over exactly its own tokens with the same kernel, so results equal
the stock loop to float rounding (tests: <= 1e-6 in fp32 over many image sizes, edge windows, videos
and mixed batches, on both transformers lines; CPT/CL losses and gradients <= 1e-5 relative).

Switch. On by default. ``MoCaModel.batched_vision_attention = False`` (or :func:`set_batched` on any
vision tower) restores the stock classes; the environment variable ``MOCA_BATCHED_VISION_ATTENTION=0``
sets the default, which reaches models built inside harnesses and device-pool workers.

Other towers. :func:`set_batched` swaps the class of every attention module listed in ``UPSTREAM``:
Qwen2.5-VL (windows + frames), Qwen2-VL and Qwen3-VL (frames: a batch of video frames or same-size images
becomes one call). Their forwards are line for line the same (qkv -> rotary -> per-chunk loop -> proj) on
both lines; ``MoCaMixin`` (every backbone's MoCa model) calls it through ``batched_vision_attention``, and
any other wrapper only calls ``set_batched(model.visual, True)``. Adding a tower with the same forward is
one entry in ``UPSTREAM`` plus an exactness test.

Versions. The per-chunk loop exists since transformers 4.54 (4.52 built a block-diagonal mask per backend
class, 4.53 one 4-D mask in the tower: one call either way), so :func:`set_batched` is a no-op below 4.54
and above 5.x. Idempotent: swapping to the class a module already has changes nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass

import torch
import transformers

logger = logging.getLogger(__name__)

ENV_VAR = "MOCA_BATCHED_VISION_ATTENTION"
MIN_VERSION = (4, 54)  # the first line with the per-chunk loop
MAX_MAJOR = 5
BATCHED_IMPLEMENTATIONS = ("sdpa", "eager")
# (module, class) of the upstream vision attention modules whose forward is qkv -> rotary -> chunks -> proj
UPSTREAM = frozenset(
    {
        ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLVisionAttention"),
        ("transformers.models.qwen2_vl.modeling_qwen2_vl", "VisionAttention"),
        ("transformers.models.qwen3_vl.modeling_qwen3_vl", "Qwen3VLVisionAttention"),
    }
)
_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on", "")


def supported(version: str | None = None) -> bool:
    """Whether this transformers version has the per-chunk loop this module replaces (4.54 <= v < 6)."""
    major, minor = (int(p) for p in (version or transformers.__version__).split(".")[:2])
    return (major, minor) >= MIN_VERSION and major <= MAX_MAJOR


def enabled_by_default() -> bool:
    """The default of the switch: on unless ``MOCA_BATCHED_VISION_ATTENTION`` is 0/false/no/off.

    Raises:
        ValueError: the variable holds something else.
    """
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value not in _FALSE + _TRUE:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: use 1 (batched vision attention, default) or 0 (stock)")
    return value not in _FALSE


@dataclass(frozen=True)
class ChunkPlan:
    """How the chunks of one ``cu_seqlens`` are batched.

    Attributes:
        groups: ``(count, length)`` per distinct chunk length, in the order the permuted tokens hold them.
        perm: (N,) token order that puts each group's chunks next to each other; None when it is the identity.
        inverse: (N,) the inverse permutation (None with ``perm``).
    """

    groups: tuple[tuple[int, int], ...]
    perm: torch.Tensor | None
    inverse: torch.Tensor | None

    @property
    def tokens(self) -> int:
        """N, the number of tokens the chunks cover."""
        return sum(count * length for count, length in self.groups)


def build_plan(cu_seqlens: torch.Tensor) -> ChunkPlan:
    """Group the chunks of ``cu_seqlens`` by length (first occurrence order; chunks keep their order).

    Args:
        cu_seqlens: (C + 1,) cumulative chunk boundaries starting at 0 (empty chunks allowed).

    Returns:
        The :class:`ChunkPlan`; its tensors live on ``cu_seqlens.device``.
    """
    bounds = cu_seqlens.tolist()
    starts: dict[int, list[int]] = {}
    for begin, end in zip(bounds[:-1], bounds[1:]):
        if end > begin:
            starts.setdefault(end - begin, []).append(begin)
    groups = tuple((len(s), length) for length, s in starts.items())
    if len(groups) <= 1:  # chunks are consecutive: one group is already in token order
        return ChunkPlan(groups, None, None)
    perm = torch.cat([(torch.tensor(s)[:, None] + torch.arange(length)).reshape(-1) for length, s in starts.items()])
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(perm.numel())
    device = cu_seqlens.device
    return ChunkPlan(groups, perm.to(device), inverse.to(device))


class _PlanCache:
    """The plans of the last few ``cu_seqlens`` tensors, matched by identity.

    A vision tower passes the same two tensors (windows, frames) to all its blocks, so each plan is built
    once per forward. Entries hold a reference to their tensor, so an id is never reused while cached;
    upstream never writes ``cu_seqlens`` in place.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self._entries: list[tuple[torch.Tensor, ChunkPlan]] = []
        self._lock = threading.Lock()

    def get(self, cu_seqlens: torch.Tensor) -> ChunkPlan:
        with self._lock:
            for tensor, plan in self._entries:
                if tensor is cu_seqlens:
                    return plan
        plan = build_plan(cu_seqlens)
        with self._lock:
            self._entries = [(cu_seqlens, plan), *self._entries[: self.size - 1]]
        return plan

    def clear(self) -> None:
        with self._lock:
            self._entries = []


PLANS = _PlanCache()


def attend_chunks(module, query, key, value, cu_seqlens, attention_interface, **kwargs) -> torch.Tensor:
    """Attention within each chunk of ``cu_seqlens``, one ``attention_interface`` call per chunk length.

    Args:
        module: the attention module (read for ``scaling``; passed to the interface as upstream does).
        query: (N, H, Dh) after the rotary embedding.
        key: (N, H, Dh) after the rotary embedding.
        value: (N, H, Dh).
        cu_seqlens: (C + 1,) chunk boundaries over the N tokens.
        attention_interface: upstream's attention function, ``f(module, q, k, v, attention_mask, ...)``
            on (B, H, L, Dh) returning ((B, L, H, Dh), weights).
        **kwargs: the rest of upstream's call (``dropout``, extra model kwargs).

    Returns:
        (N, H, Dh) attention output in token order.
    """
    plan = PLANS.get(cu_seqlens)
    n, heads, dim = query.shape
    if plan.tokens != n:
        raise ValueError(f"cu_seqlens covers {plan.tokens} tokens, the vision attention got {n}")
    if plan.perm is not None:
        query, key, value = (t.index_select(0, plan.perm) for t in (query, key, value))
    outputs, start = [], 0
    for count, length in plan.groups:
        end = start + count * length
        q, k, v = (t[start:end].reshape(count, length, heads, dim).transpose(1, 2) for t in (query, key, value))
        out, _ = attention_interface(
            module, q, k, v, attention_mask=None, scaling=module.scaling, is_causal=False, **kwargs
        )  # (count, length, H, Dh)
        outputs.append(out.reshape(count * length, heads, dim))
        start = end
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return out if plan.inverse is None else out.index_select(0, plan.inverse)


class BatchedChunkAttention:
    """Mixin placed before an upstream vision attention class (see :func:`batched_class`)."""

    def forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Upstream's forward with the per-chunk loop replaced by :func:`attend_chunks`.

        Args:
            hidden_states: (N, C) tokens of all images/frames, chunk after chunk.
            cu_seqlens: (C + 1,) chunk boundaries.
            *args: positional extras, which no upstream caller passes (they take the stock forward).
            **kwargs: as upstream: ``position_embeddings`` = (cos, sin), each (N, Dh); 4.x also
                ``rotary_pos_emb``, 5.x ``max_seqlen``, both unused off flash.

        Returns:
            (N, C) the attention block's output.
        """
        upstream = super().forward
        position_embeddings = kwargs.get("position_embeddings")
        if (
            args
            or position_embeddings is None
            or self.config._attn_implementation not in BATCHED_IMPLEMENTATIONS
            or torch.compiler.is_compiling()
            or torch.jit.is_tracing()
        ):
            return upstream(hidden_states, cu_seqlens, *args, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("position_embeddings", "rotary_pos_emb", "max_seqlen")}
        source = sys.modules[self._upstream_class.__module__]
        seq_length = hidden_states.shape[0]
        query, key, value = (
            self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        )
        cos, sin = position_embeddings
        query, key = source.apply_rotary_pos_emb_vision(query, key, cos, sin)
        if self.config._attn_implementation == "eager":
            interface = source.eager_attention_forward
        else:
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

            interface = ALL_ATTENTION_FUNCTIONS["sdpa"]
        dropout = 0.0 if not self.training else self.attention_dropout
        out = attend_chunks(self, query, key, value, cu_seqlens, interface, dropout=dropout, **kwargs)
        return self.proj(out.reshape(seq_length, -1).contiguous())


_CLASSES: dict[type, type] = {}


def batched_class(upstream: type) -> type:
    """The batched subclass of an upstream attention class (created once; importable by name for pickle)."""
    if upstream not in _CLASSES:
        name = f"Batched{upstream.__name__}"
        cls = type(name, (BatchedChunkAttention, upstream), {"__module__": __name__, "_upstream_class": upstream})
        cls.__qualname__ = name
        globals()[name] = cls
        _CLASSES[upstream] = cls
    return _CLASSES[upstream]


def _upstream_of(module: torch.nn.Module) -> type | None:
    """The upstream class of a stock or batched attention module, else None.

    None also for classes that wrappers derive from them (FSDP2's ``fully_shard`` swaps in its own subclass:
    never undo that).
    """
    cls = type(module)
    if cls in _CLASSES.values():
        return cls._upstream_class
    return cls if (cls.__module__, cls.__name__) in UPSTREAM else None


def set_batched(vision_tower: torch.nn.Module, enabled: bool) -> int:
    """Swap every supported attention module of ``vision_tower`` to the batched class, or back (idempotent).

    Args:
        vision_tower: e.g. ``Qwen2_5_VLModel.visual`` (any module; its submodules are searched).
        enabled: True for the batched path, False for the stock class.

    Returns:
        The number of attention modules that now run the batched path (0 when disabling, and when the
        installed transformers is outside :func:`supported`: the tower stays stock).
    """
    if enabled and not supported():
        logger.debug("transformers %s: vision attention left stock", transformers.__version__)
        enabled = False
    count = 0
    for module in vision_tower.modules():
        upstream = _upstream_of(module)
        if upstream is None:
            continue
        module.__class__ = batched_class(upstream) if enabled else upstream
        count += int(enabled)
    return count


def is_batched(vision_tower: torch.nn.Module) -> bool:
    """Whether any attention module of ``vision_tower`` runs the batched path."""
    return any(isinstance(m, BatchedChunkAttention) for m in vision_tower.modules())
