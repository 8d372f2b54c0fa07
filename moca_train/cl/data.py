"""Contrastive training data: the MMEB-train / MoCa-CL-Pairs / mmE5-synthetic row schema.

A row has ``qry``, ``qry_image_path``, ``pos_text``, ``pos_image_path``, ``neg_text`` and
``neg_image_path`` (the two negative fields are parallel lists). Readers: JSONL, JSON, parquet,
``datasets.save_to_disk`` directories and (cached, offline) hub datasets. Generic JSONL may omit the
image and negative fields. Texts keep MMEB's ``<|image_1|>`` placeholders; the processor rewrites them.

Fixes relative to the reference loader (moca-method.md §4.2-4.3, §7 item 19):

- negatives are real lists; a dataset that stores stringified lists is parsed with ``json`` or
  ``ast.literal_eval`` (literals only), never ``eval``;
- rows with fewer than ``num_negatives`` negatives follow ``few_negatives``: ``repeat`` repeats the
  last one they have, as the reference does (``src/dataset.py:182-183``; rows with none are dropped),
  ``drop`` drops them; every rank then sees the same fixed K, so gathering never breaks;
- image paths are resolved against ``image_dir``; with ``drop_missing_images`` a row whose query or
  positive image is missing is dropped and a missing negative image drops that negative; all counted;
- an empty negative text next to an image is filled by the reference's rule (``src/dataset.py:118-123``):
  with the positive's text (the target instruction) when all negative texts of the row are identical
  (typically all empty: image-only negatives), otherwise with a random non-empty negative text of the
  same row, drawn from a generator seeded by (``data.seed``, task, row) so every run and rank agree;
- ``max_rows`` takes a seeded random subset, not the first N rows.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moca_model.errors import MoCaError

if TYPE_CHECKING:
    from moca_train.cl.config import CLDataConfig, CLDatasetConfig

logger = logging.getLogger(__name__)

Side = tuple[str, "str | None"]  # (text, absolute image path or None)


@dataclass(frozen=True)
class CLExample:
    """One training example; ids are content hashes used for false-negative masking."""

    query: Side
    pos: Side
    negs: tuple[Side, ...]
    pos_id: int
    neg_ids: tuple[int, ...]


@dataclass
class CLTask:
    """The examples of one source (one task for same-task batching)."""

    name: str
    examples: list[CLExample]


@dataclass
class CLData:
    """All tasks plus the counts of what loading dropped or repaired."""

    tasks: list[CLTask]
    stats: Counter = field(default_factory=Counter)

    def sizes(self) -> list[int]:
        """Examples per task, in task order."""
        return [len(t.examples) for t in self.tasks]


def content_id(side: Side) -> int:
    """Stable 63-bit id of (text, image path): equal content, equal id, on every rank and run."""
    digest = hashlib.blake2b(f"{side[0]}\x00{side[1] or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def parse_list(value: Any, *, name: str = "value") -> list:
    """A list field as a list: lists/arrays pass, None/'' is empty, stringified lists are parsed safely.

    Raises:
        ValueError: a string that is not a JSON or Python literal list.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if not text.startswith("["):
            return [value]  # a single item stored as a plain string
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            try:
                parsed = ast.literal_eval(text)  # literals only; never eval()
            except (ValueError, SyntaxError) as exc:
                raise ValueError(f"{name}: cannot parse list {text[:80]!r}") from exc
        if not isinstance(parsed, (list, tuple)):
            raise ValueError(f"{name}: expected a list, got {type(parsed).__name__}")
        return list(parsed)
    return list(value)


def read_rows(spec: CLDatasetConfig) -> list[dict]:
    """All rows of one source as dicts (see module docstring for the accepted formats)."""
    path = Path(spec.path)
    if path.is_file() and path.suffix == ".jsonl":
        with path.open() as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.is_file() and path.suffix == ".json":
        data = json.loads(path.read_text())
        return data if isinstance(data, list) else data[spec.split]
    if path.is_file() and path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        ds = ds[spec.split] if isinstance(ds, datasets.DatasetDict) else ds
    else:
        ds = datasets.load_dataset(spec.path, spec.subset, split=spec.split)
    return list(ds)


def subsample(n: int, max_rows: int | None, *, seed: int, name: str) -> np.ndarray:
    """Indices of a seeded random subset of ``max_rows`` of ``n`` rows (all rows, in order, if None)."""
    if max_rows is None or max_rows >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(n, size=max_rows, replace=False))


class _Resolver:
    """Resolves image paths against ``image_dir`` and remembers which exist."""

    def __init__(self, image_dir: Path, check: bool):
        self.image_dir, self.check = image_dir, check
        self._exists: dict[str, bool] = {}

    def __call__(self, value: Any) -> tuple[str | None, bool]:
        """``(absolute path or None, ok)``; ok is False for a missing file when checking."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return None, True
        path = str(self.image_dir / str(value))
        if self.check and path not in self._exists:
            self._exists[path] = Path(path).is_file()
        return path, (not self.check) or self._exists[path]


def fill_negative_text(texts: list[str], pos_text: str, rng: np.random.Generator) -> str:
    """The text of a negative whose own text is empty (the reference's rule, ``src/dataset.py:118-123``).

    Args:
        texts: all negative texts of the row (not only the ones kept).
        pos_text: the positive's text.
        rng: the row's generator.

    Returns:
        ``pos_text`` when all of ``texts`` are identical (e.g. all empty), else a random non-empty one of them.
    """
    if len(set(texts)) <= 1:
        return pos_text
    candidates = [t for t in texts if t]
    return candidates[int(rng.integers(len(candidates)))]


def row_to_example(
    row: dict, *, resolve: _Resolver, num_negatives: int, few: str, stats: Counter, rng: np.random.Generator
) -> CLExample | None:
    """Turn one raw row into a :class:`CLExample`, or None when it must be dropped (counted in ``stats``).

    ``rng`` (seeded per row) picks the text of a negative whose own text is empty (:func:`fill_negative_text`).
    """
    q_img, q_ok = resolve(row.get("qry_image_path"))
    p_img, p_ok = resolve(row.get("pos_image_path"))
    if not (q_ok and p_ok):
        stats["dropped_missing_image"] += 1
        return None
    query, pos = (row.get("qry") or "", q_img), (row.get("pos_text") or "", p_img)
    if not (query[0] or q_img) or not (pos[0] or p_img):
        stats["dropped_empty"] += 1
        return None
    texts = [str(t or "") for t in parse_list(row.get("neg_text"), name="neg_text")]
    images = parse_list(row.get("neg_image_path"), name="neg_image_path")
    negs: list[Side] = []
    for k in range(max(len(texts), len(images))):
        if len(negs) == num_negatives:
            break
        text = texts[k] if k < len(texts) else ""
        image, ok = resolve(images[k] if k < len(images) else None)
        if not ok:
            stats["negatives_missing_image"] += 1
            continue
        if not text and image is None:
            continue
        negs.append((text or fill_negative_text(texts, pos[0], rng), image))
    if len(negs) < num_negatives:
        if few == "drop" or not negs:
            stats["dropped_few_negatives"] += 1
            return None
        stats["repeated_negatives"] += 1
        negs += [negs[-1]] * (num_negatives - len(negs))
    return CLExample(query, pos, tuple(negs), content_id(pos), tuple(content_id(n) for n in negs))


def load_task(spec: CLDatasetConfig, cfg: CLDataConfig, stats: Counter) -> CLTask:
    """Read, subsample and convert one source."""
    name = spec.name or Path(spec.path).stem
    rows = read_rows(spec)
    keep = subsample(len(rows), spec.max_rows, seed=cfg.seed, name=name)
    path = Path(spec.path)
    image_dir = Path(spec.image_dir) if spec.image_dir else (path.parent if path.is_file() else path)
    resolve = _Resolver(image_dir, cfg.drop_missing_images)
    before = Counter(stats)
    examples = []
    task_seed = zlib.crc32(name.encode())
    for i in keep:
        rng = np.random.default_rng([cfg.seed, task_seed, int(i)])  # per row: independent of order and subset
        ex = row_to_example(rows[i], resolve=resolve, num_negatives=cfg.num_negatives, few=cfg.few_negatives,
                            stats=stats, rng=rng)  # fmt: skip
        if ex is not None:
            examples.append(ex)
    delta = dict(stats - before)
    logger.info("CL task %s: %d of %d rows (subsampled from %d)%s", name, len(examples), len(keep), len(rows),
                f"; {delta}" if delta else "")  # fmt: skip
    stats["rows"] += len(keep)
    return CLTask(name, examples)


def load_cl_data(cfg: CLDataConfig) -> CLData:
    """Load every source of ``cfg``.

    Raises:
        MoCaError: a source ends up with no usable rows (the CLI prints it as one line).
    """
    stats: Counter = Counter()
    tasks = [load_task(spec, cfg, stats) for spec in cfg.datasets]
    empty = [t.name for t in tasks if not t.examples]
    if empty:
        raise MoCaError(f"data.datasets: no usable rows in {empty} (counts: {dict(stats)})")
    return CLData(tasks, stats)
