"""Configuration of ``python -m moca_train.cl``: contrastive data, loss and the stage config.

Composes the shared :class:`~moca_train.config.ModelConfig` and :class:`~moca_train.config.TrainConfig`
with this stage's data and loss sections (field docstrings are the ``--help`` text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from moca_train.config import ModelConfig, TrainConfig, _check


@dataclass
class CLDatasetConfig:
    """One contrastive training source (one task for same-task batching)."""

    name: str = ""
    """Task name (used for same-task batching and logs)."""
    path: str = ""
    """A ``.jsonl`` / ``.json`` / ``.parquet`` file, a ``datasets.save_to_disk`` directory, or a hub dataset id."""
    subset: str | None = None
    """Hub dataset configuration (e.g. ``ImageNet_1K`` of MMEB-train); ignored for files."""
    split: str = "train"
    """Split to read (hub datasets and ``save_to_disk`` dataset dicts)."""
    image_dir: str = ""
    """Directory that relative image paths are resolved against ('' = relative to the data file)."""
    max_rows: int | None = None
    """Random subsample of this many rows (with ``data.seed``); None keeps all (reference: first 50K)."""

    def __post_init__(self) -> None:
        _check(bool(self.path), "data.datasets[].path", "is required")
        _check(self.max_rows is None or self.max_rows > 0, "data.datasets[].max_rows", "must be > 0 or null")


@dataclass
class CLDataConfig:
    """Contrastive data: sources, hard negatives, batching."""

    datasets: list[CLDatasetConfig] = field(default_factory=list)
    """Training sources; each is one task."""
    num_negatives: int = 2
    """Hard negatives per query (paper and script: 2); 0 trains on in-batch negatives only."""
    few_negatives: Literal["repeat", "drop"] = "repeat"
    """Rows with fewer than ``num_negatives``: ``repeat`` repeats their last one (reference behaviour; rows
    with none are dropped), ``drop`` drops them. Dropped rows are counted in the log."""
    global_batch_size: int = 2048
    """Queries per optimizer step over all ranks (paper: 2048). Must be divisible by the number of ranks."""
    same_task_batches: bool = True
    """All ranks draw each global batch from one task (paper §2.3); False mixes tasks at random."""
    seed: int = 0
    """Seed for subsampling, batch order and the choice of text for negatives whose own text is empty."""
    num_workers: int = 0
    """DataLoader worker processes that read images and tokenise ahead of the GPU."""
    drop_missing_images: bool = True
    """Check image files while loading and skip rows whose images are missing (counted). Unreadable files
    found later are replaced by another row of the same task (counted), never fatal."""

    def __post_init__(self) -> None:
        _check(self.num_negatives >= 0, "data.num_negatives", f"must be >= 0, got {self.num_negatives}")
        _check(self.few_negatives in ("repeat", "drop"), "data.few_negatives", "must be 'repeat' or 'drop'")
        _check(self.global_batch_size >= 2, "data.global_batch_size", f"must be >= 2, got {self.global_batch_size}")
        _check(self.num_workers >= 0, "data.num_workers", f"must be >= 0, got {self.num_workers}")

    def local_batch_size(self, world_size: int) -> int:
        """Queries each rank processes per step.

        Raises:
            ValueError: ``global_batch_size`` is not divisible by ``world_size``.
        """
        _check(
            self.global_batch_size % world_size == 0,
            "data.global_batch_size",
            f"{self.global_batch_size} is not divisible by the {world_size} ranks",
        )
        return self.global_batch_size // world_size


@dataclass
class CLLossConfig:
    """InfoNCE and gradient caching."""

    temperature: float = 0.03
    """Softmax temperature (paper and script: 0.03)."""
    other_negatives: bool = True
    """Score each query against every query's hard negatives (paper Eq. 3) rather than only its own (released code)."""
    mask_false_negatives: bool = False
    """Mask candidates whose content equals the query's positive (duplicate labels, padding duplicates).
    An addition: neither the paper nor the reference code masks them, so it is off by default."""
    gradcache: bool = True
    """Gradient caching: a global batch of any size in bounded memory, same gradients as one big batch."""
    chunk_size: int = 32
    """Rows per forward pass when ``gradcache`` is on (memory knob; has no effect on the gradients)."""

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "loss.temperature", f"must be > 0, got {self.temperature}")
        _check(self.chunk_size >= 1, "loss.chunk_size", f"must be >= 1, got {self.chunk_size}")


@dataclass
class CLConfig:
    """``python -m moca_train.cl``: contrastive fine-tuning (moca-method.md §4)."""

    model: ModelConfig
    """Starting weights and runtime options."""
    data: CLDataConfig
    """Training data."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, logging, checkpoints."""
    loss: CLLossConfig = field(default_factory=CLLossConfig)
    """Contrastive loss."""

    def __post_init__(self) -> None:
        _check(bool(self.data.datasets), "data.datasets", "must list at least one dataset")
        # One step = one contrastive batch; accumulating separate batches would not add in-batch negatives.
        _check(self.train.grad_accum_steps == 1, "train.grad_accum_steps", "must be 1 for CL (use loss.gradcache)")
