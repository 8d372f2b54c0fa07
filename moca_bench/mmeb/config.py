"""MMEBConfig: every setting of an MMEB evaluation run (``python -m moca_bench.mmeb --help`` mirrors it)."""

from __future__ import annotations

from dataclasses import dataclass

from moca_bench.metrics import TIE_RULES
from moca_bench.mmeb.data import HUB_DATASET


@dataclass
class MMEBConfig:
    """One MMEB evaluation. Only ``model`` is required; defaults follow the paper's protocol."""

    model: str
    """Checkpoint directory or hub id (e.g. ``moca-embed/MoCa-Qwen25VL-3B``)."""
    model_name: str | None = None
    """Name of the results folder ``<output_dir>/<model_name>/``; default: the checkpoint's folder name."""
    data_dir: str | None = None
    """Local copy of TIGER-Lab/MMEB-eval (``<Subset>/test-*.parquet`` + unpacked images.zip); default: the hub."""
    image_root: str | None = None
    """Folder the rows' image paths are relative to; default: found below ``data_dir`` (or the unpacked hub zip)."""
    dataset: str = HUB_DATASET
    """Hub dataset id, used when ``data_dir`` is not given."""
    dataset_revision: str | None = None
    """Hub dataset revision (pin it for comparable numbers)."""
    split: str = "test"
    """Dataset split."""
    subsets: list[str] | None = None
    """Subsets to run: names, meta-tasks (Classification, VQA, Retrieval, Grounding), IND, OOD or all."""
    max_rows: int | None = None
    """Keep only the first rows of each subset (smoke runs; scores are then not comparable)."""
    output_dir: str = "results"
    """Results root: writes ``<output_dir>/<model_name>/mmeb.json`` and ``mmeb.md``."""
    cache_dir: str | None = None
    """Embedding cache root; default ``$MOCA_CACHE_DIR`` or ``~/.cache/moca_bench``, subfolder ``mmeb``."""
    no_cache: bool = False
    """Neither read nor write cached embeddings."""
    batch_size: int = 16
    """Items per forward pass (reference: 16)."""
    chunk_size: int = 512
    """Items per encoder call; the progress bar and bad-image recovery work at this granularity."""
    num_workers: int | None = None
    """Threads preparing batches (default: 2 on CUDA, 0 on CPU)."""
    device: str | None = None
    """cuda / cpu (default: cuda when available; under torchrun each rank takes cuda:LOCAL_RANK)."""
    dtype: str | None = None
    """bfloat16 / float32 (default: bfloat16 on CUDA, float32 on CPU)."""
    attn_implementation: str | None = None
    """sdpa / eager / flash_attention_2 (default: flash_attention_2 when installed on CUDA, else sdpa)."""
    attention: str | None = None
    """bidirectional / causal text attention (default: the checkpoint's moca_config.json, else bidirectional)."""
    min_pixels: int | None = None
    """Per-image lower bound in pixels (default: the checkpoint's moca_config.json, else 256*28*28)."""
    max_pixels: int | None = None
    """Per-image upper bound in pixels (default: the checkpoint's moca_config.json, else 1024*28*28)."""
    max_length: int | None = None
    """Token limit after image expansion (default 1280, as the reference's MAX_LEN)."""
    revision: str | None = None
    """Model revision on the hub."""
    processor: str | None = None
    """Where the tokenizer comes from when the checkpoint has none (default Qwen/Qwen2.5-VL-3B-Instruct)."""
    tie_rule: str = "first"
    """Exact score ties: first (reference: lowest index, favours the ground truth), pessimistic,
    optimistic or expected. Tied rows are counted whatever the rule."""
    strict: bool = False
    """Fail on the first missing or unreadable image instead of counting and skipping its rows."""
    save_rows: bool = False
    """Also write ``rows.json``: every row's hit@1 under ``tie_rule``, for per-query statistics (bootstrap CIs)."""
    published: str | None = None
    """Published numbers to compare with; default ``<output_dir>/published/mmeb.json``, else the repository's."""
    progress: bool = True
    """Show progress bars (rank 0 only)."""

    def __post_init__(self) -> None:
        if self.attention not in (None, "bidirectional", "causal"):
            raise ValueError(f"attention must be bidirectional or causal, got {self.attention!r}")
        if self.tie_rule not in TIE_RULES:
            raise ValueError(f"tie_rule must be one of {TIE_RULES}, got {self.tie_rule!r}")
        for name in ("batch_size", "chunk_size", "max_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
