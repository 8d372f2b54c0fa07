"""MMEBConfig: every setting of an MMEB evaluation run (``python -m moca_bench.mmeb --help`` mirrors it).

One config for both benchmark versions; fields marked "v2" only matter with ``benchmark="v2"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from moca_bench.metrics import TIE_RULES
from moca_bench.mmeb.data import HUB_DATASET
from moca_model.moca_config import check_attention, check_pooling

BENCHMARKS = ("v1", "v2")
SHORT_CLIPS = ("as-saved", "pad")  # moca_model.video.SHORT_CLIP_RULES (not imported: this module stays torch-free)
GRADE_ORDERS = ("correct", "reference")


@dataclass
class MMEBConfig:
    """One MMEB evaluation. Only ``model`` is required; defaults follow the paper's protocol."""

    model: str
    """Checkpoint directory or hub id (e.g. ``moca-embed/MoCa-Qwen25VL-3B``)."""
    benchmark: str = "v1"
    """v1: MMEB (36 image subsets of TIGER-Lab/MMEB-eval, the MoCa paper's protocol); v2: MMEB-V2 (78 tasks:
    image 36, video 18, visual documents 24) with the VLM2Vec harness's semantics."""
    model_name: str | None = None
    """Name of the results folder ``<output_dir>/<model_name>/``; default: the checkpoint's folder name."""
    data_dir: str | None = None
    """v1: local copy of TIGER-Lab/MMEB-eval (``<Subset>/test-*.parquet`` + unpacked images.zip). v2: a folder of
    local hub copies, ``<data_dir>/<owner>/<name>/`` per dataset repository. Default: the hub."""
    image_root: str | None = None
    """v1: folder the rows' image paths are relative to (default: found below ``data_dir``). v2: the unpacked
    TIGER-Lab/MMEB-V2 repository holding ``image-tasks/`` and ``visdoc-tasks/`` (default: ``frame_root``, else
    ``<data_dir>/TIGER-Lab/MMEB-V2``, else downloaded)."""
    frame_root: str | None = None
    """v2: the unpacked TIGER-Lab/MMEB-V2 repository holding ``video-tasks/frames/`` (default: ``image_root``)."""
    media_paths: list[str] | None = None
    """v2: ``TASK=DIR`` overrides of a task's media folder (relative DIRs are under the image / frame root)."""
    dataset: str = HUB_DATASET
    """Hub dataset id, used when ``data_dir`` is not given."""
    dataset_revision: str | None = None
    """v1: hub dataset revision (pin it for comparable numbers). v2: revision of TIGER-Lab/MMEB-V2's media."""
    dataset_pins: list[str] | None = None
    """v2: ``REPO=REVISION`` pins for the tables read from the hub (the reference pins nothing)."""
    split: str = "test"
    """v1: dataset split (v2 tasks have their own, as the reference's)."""
    subsets: list[str] | None = None
    """v1: names, meta-tasks (Classification, VQA, Retrieval, Grounding), IND, OOD or all. v2: task names,
    modalities (image, video, visdoc), meta-tasks (image-CLS, video-MRET, visdoc-OOD, or CLS for all
    modalities) or all."""
    num_frames: int = 8
    """v2: frames sampled per video (reference: 8; the Qwen3-VL-Embedding leaderboard entry uses 64)."""
    short_clips: str = "as-saved"
    """v2: a clip with fewer saved frames than num_frames: as-saved (reference at 6e1e1d4) or pad (repeat the
    last frame, later VLM2Vec main)."""
    grade_order: str = "correct"
    """v2: graded nDCG label/grade mapping: correct, or reference (its list(set(labels)) permutation); both
    values are reported."""
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
    pooling: str | None = None
    """mean / last (real token) pooling (default: the checkpoint's moca_config.json, else mean)."""
    min_pixels: int | None = None
    """Per-image lower bound in pixels (default: the checkpoint's moca_config.json, else 256*28*28)."""
    max_pixels: int | None = None
    """Per-image upper bound in pixels (default: the checkpoint's moca_config.json, else 1024*28*28)."""
    max_length: int | None = None
    """Token limit after image expansion; inputs it cuts are counted per task. Default: v1 1280 (the checkpoint's
    moca_config.json, else MoCa's eval.py MAX_LEN); v2 none, as the VLM2Vec harness (its max_len is None).
    0 means none."""
    video_min_pixels: int | None = None
    """v2: per-frame lower bound for videos (default: the checkpoint's moca_config.json, else 128*28*28)."""
    video_max_pixels: int | None = None
    """v2: per-frame upper bound for videos (default: the checkpoint's moca_config.json, else 256*28*28)."""
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
    """Published numbers to compare with; default ``<output_dir>/published/mmeb.json`` (v2: ``mmeb_v2.json``),
    else the repository's."""
    progress: bool = True
    """Show progress bars (rank 0 only)."""

    def __post_init__(self) -> None:
        if self.attention is not None:
            check_attention(self.attention)
        if self.pooling is not None:
            check_pooling(self.pooling)
        if self.tie_rule not in TIE_RULES:
            raise ValueError(f"tie_rule must be one of {TIE_RULES}, got {self.tie_rule!r}")
        for name, allowed in (("benchmark", BENCHMARKS), ("short_clips", SHORT_CLIPS), ("grade_order", GRADE_ORDERS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("media_paths", "dataset_pins"):
            bad = [v for v in getattr(self, name) or [] if "=" not in v]
            if bad:
                raise ValueError(f"{name} entries must look like KEY=VALUE, got {bad}")
        for name in ("batch_size", "chunk_size", "max_rows", "num_frames"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
