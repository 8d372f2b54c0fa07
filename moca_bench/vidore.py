r"""MoCaVidoreRetriever: vidore-benchmark's ``BaseVisionRetriever`` over :class:`moca_model.MoCaEncoder`.

Registered as ``moca`` (alias ``moca-qwen25``, the reference's name) by ``plugins/moca_plugins`` through
entry points, so after installing this package the stock CLI works::

    vidore-benchmark evaluate-retriever --model-class moca --model-name moca-embed/MoCa-Qwen25VL-3B \
        --collection-name vidore/vidore-benchmark-v2 --dataset-format beir --split test

Formatting follows the reference retriever (moca-method.md §2.3): a query is the raw string (after an
optional query prompt, empty by default); a page is its image followed by "\nRepresent the given document
image.". The CLI passes only the model name, so every setting of :class:`MoCaVidoreConfig` can also be
set through an environment variable ``MOCA_<FIELD>`` (e.g. ``MOCA_MAX_PIXELS=802816``, ``MOCA_DTYPE=
float32``); explicit constructor arguments win over the environment, which wins over the defaults.
String values are used verbatim (write a newline in a prompt as ``$'\n...'`` in bash).

Behaviour worth knowing:
- ``--batch-query`` / ``--batch-passage`` are the encoder's batch sizes, as given (the reference capped
  pages at 8). ``--num-workers 0`` (vidore's default) leaves the encoder's choice of prefetch threads.
- ``get_scores`` runs on the model's device in IEEE fp32, in blocks of ``score_block_mb`` (see
  :mod:`moca_bench.scoring`), and returns a CPU float32 ``(n_queries, n_passages)`` tensor. vidore's
  ``--batch-score`` (sized for multi-vector MaxSim) is not used: block sizes follow the memory budget.
- A blank query is encoded as the query prompt alone, with a warning (an empty text then gets the
  encoder's documented fallback); ``None`` is an error. A page that cannot be decoded raises
  :class:`moca_model.MoCaInputError` naming its row in the corpus. Note that vidore decodes dataset
  images itself before the retriever sees them, so a corrupt image in a dataset fails there, in
  ``datasets``/PIL (``UnidentifiedImageError``), before any encoding.
- ``cache_dir`` (``MOCA_CACHE_DIR``) keeps every vector on disk (:mod:`moca_model.cache`): a rerun, or
  another collection that shares pages, encodes none of them again; the log says how many inputs came
  from the cache. ``devices`` (``MOCA_DEVICES=all``) encodes on every GPU, one worker process each.
- ``scores_dir`` (``MOCA_SCORES_DIR``) saves each score matrix as ``scores-NNN.npy`` (one per dataset, in
  evaluation order), for inspecting rankings or checking them against another implementation.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vidore_benchmark.retrievers.base_vision_retriever import BaseVisionRetriever

from moca_bench.prompts import VIDORE_DOCUMENT_PROMPT, VIDORE_QUERY_PROMPT
from moca_bench.scoring import DEFAULT_BLOCK_MB, score_matrix
from moca_model.moca_config import check_attention, check_pooling

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "moca-embed/MoCa-Qwen25VL-3B"
ENV_PREFIX = "MOCA_"
_DTYPES = ("float32", "bfloat16", "float16")
_ATTN = ("sdpa", "eager", "flash_attention_2")


@dataclass
class MoCaVidoreConfig:
    """Settings of :class:`MoCaVidoreRetriever`; each field is also read from ``MOCA_<FIELD>``."""

    pretrained_model_name_or_path: str = DEFAULT_MODEL
    """Checkpoint directory or hub id."""
    query_prompt: str = VIDORE_QUERY_PROMPT
    """Text put before each query (the reference uses none)."""
    document_prompt: str = VIDORE_DOCUMENT_PROMPT
    """Text after each page image."""
    min_pixels: int | None = None
    """Per-page lower bound in pixels (default: the checkpoint's moca_config.json, else 256 * 28 * 28)."""
    max_pixels: int | None = None
    """Per-page upper bound in pixels (default: the checkpoint's moca_config.json, else 1024 * 28 * 28)."""
    max_length: int | None = None
    """Token limit after image expansion (default 1280)."""
    dtype: str | None = None
    """float32, bfloat16 or float16 (default: bfloat16 on CUDA, float32 on CPU)."""
    device: str | None = None
    """torch device, or "auto" (default: CUDA when available)."""
    attn_implementation: str | None = None
    """sdpa, eager or flash_attention_2 (default: flash_attention_2 on CUDA when installed, else sdpa)."""
    attention: str | None = None
    """bidirectional or causal text attention (default: the checkpoint's moca_config.json, else bidirectional)."""
    pooling: str | None = None
    """mean or last (real token) pooling (default: the checkpoint's moca_config.json, else mean)."""
    processor_name_or_path: str | None = None
    """Where the tokenizer comes from when the checkpoint has none."""
    revision: str | None = None
    """Hub revision of the checkpoint."""
    num_workers: int | None = None
    """Threads that prepare batches ahead of the model (default: 2 on CUDA, 1 on CPU; per device worker)."""
    devices: str | None = None
    """Encode on several devices, one worker process each: "all", "cuda:0,cuda:1", "cpu,cpu" (MOCA_DEVICES)."""
    cache_dir: str | None = None
    """Persistent embedding cache root (MOCA_CACHE_DIR): a rerun encodes no page it has seen."""
    score_block_mb: float = DEFAULT_BLOCK_MB
    """Device memory per scoring block."""
    scores_dir: str | None = None
    """If set, save each score matrix there as scores-NNN.npy."""

    def __post_init__(self) -> None:
        if self.dtype not in (None, *_DTYPES):
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.attn_implementation not in (None, *_ATTN):
            raise ValueError(f"attn_implementation must be one of {_ATTN}, got {self.attn_implementation!r}")
        if self.attention is not None:
            check_attention(self.attention)
        if self.pooling is not None:
            check_pooling(self.pooling)
        for name in ("min_pixels", "max_pixels", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.score_block_mb <= 0:
            raise ValueError(f"score_block_mb must be > 0, got {self.score_block_mb}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **given: Any) -> MoCaVidoreConfig:
        """Build a config: ``given`` values that are not None, then ``MOCA_<FIELD>`` variables, then defaults.

        Raises:
            ValueError: a variable that does not parse as its field's type, or an invalid value.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            if given.get(f.name) is not None:
                values[f.name] = given[f.name]
                continue
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            kind = float if str(f.type).startswith("float") else int if str(f.type).startswith("int") else str
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)

    def resolved_device(self) -> str | None:
        """The device to load on; ``None`` lets the encoder choose."""
        return None if self.device in (None, "auto") else self.device


class MoCaVidoreRetriever(BaseVisionRetriever):
    """MoCa single-vector retriever for vidore-benchmark (see the module docstring).

    Args:
        pretrained_model_name_or_path: checkpoint directory or hub id (vidore's ``--model-name``).
        num_workers: vidore's ``--num-workers``; 0 leaves the encoder's default.
        **settings: any other :class:`MoCaVidoreConfig` field; unknown keywords are ignored with a warning.

    Raises:
        moca_model.MoCaLoadError: the checkpoint is missing (the message names the path) or unloadable.
        ValueError: an invalid setting (argument or ``MOCA_*`` variable).
    """

    def __init__(self, pretrained_model_name_or_path: str | None = None, *, num_workers: int | None = None, **settings):
        super().__init__(use_visual_embedding=True)
        from moca_model import MoCaEncoder

        known = {f.name for f in dataclasses.fields(MoCaVidoreConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            logger.warning("MoCaVidoreRetriever: ignoring unknown arguments %s", unknown)
        given = {k: v for k, v in settings.items() if k in known}
        self.config = MoCaVidoreConfig.from_env(
            pretrained_model_name_or_path=pretrained_model_name_or_path,
            num_workers=num_workers or None,  # vidore always passes 0
            **given,
        )
        c = self.config
        self.encoder = MoCaEncoder.from_pretrained(
            c.pretrained_model_name_or_path,
            device=c.resolved_device(),
            dtype=c.dtype,
            attn_implementation=c.attn_implementation,
            min_pixels=c.min_pixels,
            max_pixels=c.max_pixels,
            max_length=c.max_length,
            revision=c.revision,
            processor_name_or_path=c.processor_name_or_path,
            devices=c.devices,
            cache_dir=c.cache_dir,
            attention=c.attention,
            pooling=c.pooling,
        )
        self._pages_seen = 0  # corpus row of the next page, for error messages; reset after each dataset
        self._score_calls = 0

    def close(self) -> None:
        """Stop the encoder's device workers (``MOCA_DEVICES``), if any.

        vidore-benchmark never calls it; the workers also stop when the retriever is garbage collected and
        at interpreter exit. The retriever cannot encode afterwards.
        """
        self.encoder.close()

    def __enter__(self) -> MoCaVidoreRetriever:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _encode(self, items: list, batch_size: int, desc: str) -> torch.Tensor:
        vectors = self.encoder.encode(
            items, batch_size=batch_size, show_progress=False, desc=desc, num_workers=self.config.num_workers
        )
        logger.info("%s: %s", desc, self.encoder.last_stats.summary())
        return torch.from_numpy(vectors)

    def forward_queries(self, queries: Sequence[str], batch_size: int, **kwargs) -> torch.Tensor:
        """Encode queries as raw text after ``query_prompt``.

        Returns:
            (N, D) float32 CPU tensor, unit norm.

        Raises:
            moca_model.MoCaInputError: a query that is not a string.
        """
        from moca_model import MoCaInputError

        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise MoCaInputError(f"query {i}: expected a string, got {type(q).__name__}")
        blank = [i for i, q in enumerate(queries) if not q.strip()]
        if blank:
            logger.warning("%d blank queries (e.g. %s) are encoded as the query prompt alone", len(blank), blank[:5])
        return self._encode([self.config.query_prompt + q for q in queries], batch_size, "queries")

    def forward_passages(self, passages: Sequence[Any], batch_size: int, **kwargs) -> torch.Tensor:
        """Encode page images followed by ``document_prompt``.

        Args:
            passages: PIL images (as vidore passes them), paths, encoded bytes, or ``datasets``' undecoded
                ``{"bytes": ..., "path": ...}`` dicts.
            batch_size: pages per forward pass.
            **kwargs: ignored (vidore's protocol).

        Returns:
            (N, D) float32 CPU tensor, unit norm.

        Raises:
            moca_model.MoCaInputError: a page that cannot be read; the message names its corpus row.
        """
        from moca_model import MoCaInputError

        offset = self._pages_seen
        self._pages_seen += len(passages)
        sources = [_page_source(p) for p in passages]
        missing = [offset + i for i, src in enumerate(sources) if src is None]
        if missing:  # the encoder would read {"image": None} as a text-only item
            raise MoCaInputError(f"page at corpus row {missing[0]}: no image ({len(missing)} such pages)")
        items = [{"image": src, "text": self.config.document_prompt} for src in sources]
        try:
            return self._encode(items, batch_size, "pages")
        except MoCaInputError as exc:
            m = re.match(r"item (\d+): (.*)", str(exc), flags=re.DOTALL)
            if m is None:
                raise
            raise MoCaInputError(f"page at corpus row {offset + int(m[1])}: {m[2]}") from exc

    def get_scores(
        self,
        query_embeddings: torch.Tensor | list[torch.Tensor],
        passage_embeddings: torch.Tensor | list[torch.Tensor],
        batch_size: int | None = None,
    ) -> torch.Tensor:
        """Dot products (= cosine, the embeddings are unit norm) on the model's device, in fp32 blocks.

        Args:
            query_embeddings: (Q, D) tensor or Q tensors of shape (D,).
            passage_embeddings: (P, D) tensor or P tensors of shape (D,).
            batch_size: vidore's ``--batch-score``; not used (blocks follow ``score_block_mb``).

        Returns:
            (Q, P) float32 CPU tensor.
        """
        scores = score_matrix(
            query_embeddings, passage_embeddings, device=self.encoder.device, block_mb=self.config.score_block_mb
        )
        if self.config.scores_dir:
            _save_npy(Path(self.config.scores_dir) / f"scores-{self._score_calls:03d}.npy", scores.numpy())
        self._score_calls += 1
        self._pages_seen = 0
        return scores


def _page_source(page: Any) -> Any:
    """A page as the encoder takes it: ``datasets``' undecoded dicts become their bytes or path."""
    if isinstance(page, Mapping) and ("bytes" in page or "path" in page):
        return page.get("bytes") or page.get("path")
    return page


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Atomic ``np.save`` (temporary file, then rename); never pickles."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        np.save(f, array, allow_pickle=False)
    tmp.replace(path)


__all__ = ["DEFAULT_MODEL", "MoCaVidoreConfig", "MoCaVidoreRetriever"]

# Imported before vidore_benchmark, this module made vidore load our entry point while half-initialised
# (the hook keeps it pending); the class exists now, so let the hook finish registering it.
_retry = getattr(sys.modules.get("moca_plugins._hook"), "retry_pending", None)
if _retry is not None:
    _retry()
