"""MMEB-V2 rows -> :class:`TaskData`: unique encoder inputs, the named candidate pool, rows and their labels.

Two identities, as in the reference (``base_eval_dataset.generate_cand_dataset``, ``eval.py``):
- a **candidate** is identified by its *name* (t2i: the image path alone; grounding: ``path:caption``;
  classification / QA / i2t: the text; video retrieval: the video id; documents: the corpus id). The pool
  holds every row's candidates, then the corpus, de-duplicated by name; the first occurrence's text and
  media win. Labels are names, so a repeated ground-truth name is a hit wherever it ranks.
- an **input** (what the encoder sees) is identified by its content: the reference text, the image path,
  the frame paths. Each unique input is encoded once per task (queries included).

``local`` tasks rank each row's own candidate list (duplicates kept, in the row's order); ``global`` tasks
rank the whole pool (in pool order). Rows the reference would crash on (a visual-document query without a
positive qrel: ``KeyError``) are dropped and counted.

Shapes: U unique inputs, R rows, N pool names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from moca_bench.mmeb.v2.tasks import V2Task

FORMAT_VERSION = 2  # bump when a parser's output changes; 2: empty frame folders read as text only


@dataclass(frozen=True)
class Input:
    """One encoder input as the reference builds it."""

    text: str
    """Reference text (bare ``<|image_pad|>`` / ``<|video_pad|>`` tokens; see :mod:`moca_bench.mmeb.v2.text`)."""
    image: str = ""
    """Image file, or ""."""
    frames: tuple[str, ...] = ()
    """Video frames in temporal order (already sampled)."""
    video: str = ""
    """Frame folder of a video input ("" when the input has no video)."""


@dataclass
class TaskData:
    """One task as index arrays over its unique inputs (shapes in the module docstring)."""

    task: V2Task
    pairs: list[Input]
    """(U,) unique inputs, queries first."""
    queries: np.ndarray
    """(R,) input of each row's query."""
    pool: np.ndarray
    """(N,) input of each pool name."""
    names: list[Hashable]
    """(N,) candidate names, first-seen order."""
    row_cands: list[np.ndarray] | None
    """local tasks: per row, pool indices of its candidates (row order, duplicates kept); None for global."""
    label_names: list[list[Hashable]]
    """Per row, relevant names in the reference's order (they need not be in the pool)."""
    label_grades: list[list[float]]
    """Per row, the grade of each relevant name (1.0 without graded qrels)."""
    graded: bool = False
    dropped: list[str] = field(default_factory=list)
    """Rows left out, with the reason (e.g. no positive qrel)."""
    notes: list[str] = field(default_factory=list)
    """Other departures from the full task (e.g. MVBench configs missing from a local copy)."""

    @property
    def name(self) -> str:
        """Task name."""
        return self.task.name

    @property
    def n_rows(self) -> int:
        """Rows kept R (dropped rows not included)."""
        return len(self.queries)

    def item(self, index: int) -> dict:
        """Encoder input for input ``index`` (see :meth:`moca_model.MoCaEncoder.encode`), as the reference reads it.

        - a video whose frame folder exists but holds no frame is read as text only (the reference's collator
          drops an empty frame list); a missing folder stays a video without frames, a bad input;
        - a damaged frame is dropped and the video kept (:func:`moca_model.video.decode_frames`, as the
          reference's image processor skips a frame it cannot convert).
        """
        from moca_bench.mmeb.v2.text import model_text
        from moca_model.video import Video

        x = self.pairs[index]
        out: dict = {"text": model_text(x.text)}
        if x.image:
            out["image"] = x.image
        if x.video and (x.frames or not Path(x.video).is_dir()):
            out["video"] = Video(x.frames, source=x.video)
        return out

    def text_only_videos(self) -> int:
        """Video inputs read as text only because their frame folder holds no frame (see :meth:`item`)."""
        return sum(1 for x in self.pairs if x.video and not x.frames and Path(x.video).is_dir())

    def image_path(self, index: int) -> Path | None:
        """The media file whose absence makes input ``index`` bad (first missing frame), or its main file."""
        x = self.pairs[index]
        if x.image:
            return Path(x.image)
        if not x.video:
            return None
        missing = [Path(f) for f in x.frames if not Path(f).is_file()]
        return missing[0] if missing else Path(x.frames[0]) if x.frames else Path(x.video)

    def describe(self, index: int) -> str:
        """The input's media for messages: image path or frame folder ("" for text)."""
        x = self.pairs[index]
        return x.image or x.video

    def content_hash(self) -> str:
        """Hash of the unique inputs (text, media paths and file sizes): a cache entry is valid only for these."""
        h = hashlib.sha256(f"v2-{FORMAT_VERSION}\0{self.name}\0".encode())
        for x in self.pairs:
            media = [x.image] if x.image else list(x.frames)
            h.update(json.dumps([x.text, x.video, [(m, _size(m)) for m in media]]).encode() + b"\0")
        return h.hexdigest()


def _size(path: str) -> int:
    try:
        return Path(path).stat().st_size
    except OSError:
        return -1


class TaskBuilder:
    """Accumulates rows and corpus entries, de-duplicating inputs by content and candidates by name."""

    def __init__(self, task: V2Task):
        self.task = task
        self._inputs: dict[Input, int] = {}
        self._names: dict[Hashable, int] = {}
        self._pool: list[int] = []
        self._rows: list[tuple[int, list[Hashable], list[Hashable], list[float]]] = []
        self._cands: list[tuple[Hashable, Input]] = []  # rows' candidates, in row order
        self._corpus: list[tuple[Hashable, Input]] = []
        self.graded = False
        self.dropped: list[str] = []

    def _input(self, x: Input) -> int:
        return self._inputs.setdefault(x, len(self._inputs))

    def add_row(self, query: Input, cands: list[tuple[Hashable, Input]], labels: list[Hashable],
                grades: list[float] | None = None) -> None:  # fmt: skip
        """One row: its query, its candidates as (name, input), its relevant names (and their grades)."""
        self._rows.append((self._input(query), [n for n, _ in cands], list(labels),
                           [1.0] * len(labels) if grades is None else [float(g) for g in grades]))  # fmt: skip
        self.graded |= grades is not None
        self._cands.extend(cands)

    def add_corpus(self, name: Hashable, x: Input) -> None:
        """A pool entry that is no row's candidate (added after all rows' candidates)."""
        self._corpus.append((name, x))

    def drop(self, reason: str) -> None:
        """Count a row the reference could not build."""
        self.dropped.append(reason)

    def build(self) -> TaskData:
        """The task's :class:`TaskData` (queries first among the inputs, then the pool in first-seen order)."""
        for name, x in [*self._cands, *self._corpus]:
            if name not in self._names:
                self._names[name] = len(self._pool)
                self._pool.append(self._input(x))
        local = self.task.eval_type == "local"
        row_cands = [np.asarray([self._names[n] for n in c], dtype=np.int64) for _, c, _, _ in self._rows]
        return TaskData(
            task=self.task, pairs=list(self._inputs), queries=np.asarray([r[0] for r in self._rows], dtype=np.int64),
            pool=np.asarray(self._pool, dtype=np.int64), names=list(self._names),
            row_cands=row_cands if local else None, label_names=[r[2] for r in self._rows],
            label_grades=[r[3] for r in self._rows], graded=self.graded, dropped=list(self.dropped),
        )  # fmt: skip
