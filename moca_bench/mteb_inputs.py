"""What an mteb ``encode`` call hands over: the task (as :class:`moca_bench.prompts.MTEBTask`) and the columns.

Kept apart from the encoder so the prompt table (``python -m moca_bench.mteb_layouts``) and the tests can
walk every mteb task without loading a model.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from moca_bench.prompts import MTEBTask, is_page_task

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata

UNSUPPORTED_MODALITIES = ("audio", "video")


def task_view(metadata: TaskMetadata) -> MTEBTask:
    """The fields of an mteb task's metadata the prompt rules read; ``page`` resolved from mteb's registry."""
    page = is_page_task(
        metadata.name,
        metadata.type,
        category=metadata.category,
        adapted_from=metadata.adapted_from,
        lookup=_registered,
    )
    return MTEBTask(metadata.name, metadata.type, metadata.category, metadata.prompt, page=page)


@cache
def _registered(name: str) -> tuple[str | None, str | None, tuple[str, ...]] | None:
    """(type, category, adapted_from) of a task mteb knows, or None."""
    import mteb

    try:
        meta = mteb.get_task(name).metadata
    except KeyError:
        return None
    return meta.type, meta.category, tuple(meta.adapted_from or ())


def input_columns(inputs) -> tuple[list[str | None], list[Any]]:
    """The ``text`` and ``image`` of every input of an mteb DataLoader, in order.

    When the loader reads a ``datasets.Dataset`` in order, images are taken undecoded (bytes or path),
    so that ``MoCaEncoder`` decodes each only when its batch is prepared (memory stays bounded for
    large page corpora; ``moca_model.images`` applies EXIF orientation as ``datasets`` would). Otherwise
    the batches are iterated and images come as the loader gives them.

    Returns:
        ``(texts, images)``, each of length N; a missing value is ``None``.

    Raises:
        ValueError: the inputs carry audio or video, which this encoder does not read.
    """
    import datasets
    from torch.utils.data import SequentialSampler

    ds = getattr(inputs, "dataset", None)
    if isinstance(ds, datasets.Dataset):
        _check_modalities(ds.column_names)
    fast = isinstance(ds, datasets.Dataset) and isinstance(getattr(inputs, "sampler", None), SequentialSampler)
    if fast and "image" in ds.column_names:
        fast = isinstance(ds.features["image"], datasets.Image)
    if fast:
        n = len(ds)
        texts = list(ds["text"]) if "text" in ds.column_names else [None] * n
        images: list[Any] = [None] * n
        if "image" in ds.column_names:
            raw = ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))["image"]
            images = [None if r is None else (r["bytes"] if r["bytes"] is not None else r["path"]) for r in raw]
        return texts, images
    texts, images = [], []
    for batch in inputs:
        _check_modalities(batch)
        n = len(next(iter(batch.values())))
        texts.extend(batch.get("text", [None] * n))
        images.extend(batch.get("image", [None] * n))
    return texts, images


def _check_modalities(columns) -> None:
    found = [m for m in UNSUPPORTED_MODALITIES if m in columns]
    if found:
        raise ValueError(f"MoCa reads text and images; these inputs carry {' and '.join(found)}, which it cannot read")
