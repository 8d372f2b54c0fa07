"""MMEB-V2 parsers for the 18 video tasks (classification, QA, retrieval, moment retrieval).

Each follows its reference parser (TIGER-AI-Lab/VLM2Vec @ 6e1e1d4, ``src/data/eval_dataset/``): frame folder
naming, prompt, candidate names and labels. Frames are listed and sampled by :mod:`moca_model.video`
(natural sort; ``linspace`` sampling to ``num_frames`` when enough frames were saved, else all of them;
MomentSeeker: every saved frame). Deliberate changes, each counted or documented:

- a frame folder that is missing or empty gives a video input without frames, which is counted as a bad
  input (the reference would try to extract frames from a raw video);
- moment-retrieval clip folders are visited in natural-sorted order, not ``os.listdir`` order (which is
  filesystem-dependent and fixes the reference's tie order); as in the reference, the *last* ``positive*``
  folder is the ground truth; a video without one is dropped (the reference would reuse the previous row's);
- a row whose answer cannot be located (Video-MME letter outside A-D, an index out of range) is dropped
  (the reference raises).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

from moca_bench.mmeb.v2.build import Input, TaskBuilder, TaskData
from moca_bench.mmeb.v2.parse import ParseOptions, _first
from moca_bench.mmeb.v2.tasks import V2Task
from moca_bench.mmeb.v2.text import (
    MOMENT_QUERY,
    MOMENTSEEKER_QUERY,
    MOMENTSEEKER_TARGET,
    QA_LETTERS,
    VIDEO_CLS_INSTRUCTION,
    VIDEO_RET_QUERY,
    VIDEO_TARGET,
    YES_NO,
    input_text,
    qa_query,
    qa_template,
    strip_option,
)
from moca_model.video import list_frames, natural_key, sample_frames

_LABELS_FILE = Path(__file__).with_name("labels.json")
_LABEL_KEY = {"K700": "Kinetics-700", "HMDB51": "HMDB51", "UCF101": "UCF101", "Breakfast": "Breakfast"}


@cache
def class_labels(task: str) -> tuple[str, ...]:
    """Every class name of a video-classification task (the reference's global pool)."""
    return tuple(json.loads(_LABELS_FILE.read_text(encoding="utf-8"))["labels"][_LABEL_KEY[task]])


def _video(text: str, folder: Path, num_frames: int | None, opts: ParseOptions) -> Input:
    frames = sample_frames(list_frames(folder), num_frames, short_clips=opts.short_clips)
    return Input(text, frames=tuple(str(f) for f in frames), video=str(folder))


def _ret_fields(task: str, row: Mapping) -> tuple[str, str]:
    """(video name, caption) of a retrieval row, per the reference's parser of that dataset."""
    if task == "MSR-VTT":
        return str(row["video_id"]), row["caption"]
    if task == "MSVD":
        return str(row["video_id"]), row["caption"][0]
    if task == "DiDeMo":
        return os.path.splitext(os.path.basename(row["video"]))[0], row["caption"]  # noqa: PTH119, PTH122
    if task == "YouCook2":
        return str(row["id"]), row["sentence"]
    return str(row["videoID"]), row["enCap"][0]  # VATEX


def _moment_row(b: TaskBuilder, row: Mapping, root: Path, opts: ParseOptions) -> None:
    name = os.path.splitext(os.path.basename(row["video_path"]))[0]  # noqa: PTH119, PTH122
    folder = root / name
    clips = sorted((d for d in folder.iterdir() if d.is_dir() and d.name != "query"), key=lambda d: natural_key(d.name))
    positives = [d for d in clips if d.name.startswith("positive")]
    if not positives:
        b.drop(f"video {name!r}: no positive* clip folder under {folder}")
        return
    query = _video(input_text(MOMENT_QUERY, row["query"], video=True), folder / "query", opts.num_frames, opts)
    target = input_text(VIDEO_TARGET, video=True)
    b.add_row(query, [(str(d), _video(target, d, opts.num_frames, opts)) for d in clips], [str(positives[-1])])


def _momentseeker_row(b: TaskBuilder, row: Mapping, root: Path, opts: ParseOptions) -> None:
    q, given = row["query"], row["input_frames"] or ""
    if given.endswith(".mp4"):
        clip = root / "video_frames" / given.split(".mp4")[0].replace("/", "_")
        query = _video(input_text(MOMENTSEEKER_QUERY["video"], q, video=True), clip, None, opts)
    elif given.endswith(".jpg"):
        query = Input(input_text(MOMENTSEEKER_QUERY["image"], q, image=True), image=str(root / f"query_{given}"))
    else:
        query = Input(input_text(MOMENTSEEKER_QUERY["text"], q))
    target = input_text(MOMENTSEEKER_TARGET, video=True)
    def clip(entry) -> str:
        return str(root / "video_frames" / entry["output_path"].replace("/", "_").split(".mp4")[0])

    pos, neg = [clip(e) for e in row["positive_frames"]], [clip(e) for e in row["negative_frames"]]
    b.add_row(query, [(c, _video(target, Path(c), None, opts)) for c in pos + neg], pos)  # every saved frame


def _qa_row(task: V2Task, b: TaskBuilder, row: Mapping, root: Path, opts: ParseOptions) -> None:
    p = task.parser
    if p == "videomme":
        options, folder = list(row["options"]), root / str(row["videoID"])
        text = qa_query(row["question"] + "\n" + "\n".join(options))
        if row["answer"] not in QA_LETTERS:
            b.drop(f"question {row.get('question_id')!r}: answer {row['answer']!r} is not a letter A-D")
            return
        cands, label = [(o, Input(strip_option(o))) for o in options], options[QA_LETTERS.index(row["answer"])]
    elif p == "egoschema":
        options, folder = list(row["option"]), root / str(row["video_idx"])
        text = qa_query(row["question"] + " ".join(options))  # no separator: the reference's
        cands, label = [(o, Input(strip_option(o))) for o in options], options[int(row["answer"])]
    elif p == "nextqa":
        options, folder = [row[f"a{i}"] for i in range(5)], root / str(row["video"])
        text = qa_template(qa_query(row["question"]), options, row["answer"])[0]
        cands, label = [(o, Input(o)) for o in options], options[int(row["answer"])]
    elif p == "mvbench":
        text, options, label = qa_template(qa_query(row["question"]), list(row["candidates"]), row["answer"])
        folder = root / row["subset"] / str(row["video"])
        cands = [(o, Input(o)) for o in options]
    else:  # activitynetqa
        text, folder = qa_query(row["question"] + "? (A) yes; (B) no."), root / f"v_{row['video_name']}"
        cands, label = [(o, Input(o)) for o in YES_NO], row["answer"]
    b.add_row(_video(text, folder, opts.num_frames, opts), cands, [label])


def parse_video(task: V2Task, rows: Iterable[Mapping], root: Path, opts: ParseOptions) -> TaskData:
    """Rows of one video task -> :class:`TaskData` (``root``: the task's frame folder)."""
    b, p = TaskBuilder(task), task.parser
    for row in _first(rows, opts.max_rows):
        if p in ("video_cls", "ssv2"):
            query = _video(input_text(VIDEO_CLS_INSTRUCTION[task.name], video=True), root / str(row["video_id"]),
                           opts.num_frames, opts)  # fmt: skip
            cands = list(row["neg_text"]) if p == "ssv2" else [row["pos_text"]]
            b.add_row(query, [(c, Input(c)) for c in cands], [row["pos_text"]])
        elif task.meta == "RET":
            name, caption = _ret_fields(task.name, row)
            video = _video(input_text(VIDEO_TARGET, video=True), root / name, opts.num_frames, opts)
            b.add_row(Input(input_text(VIDEO_RET_QUERY[task.name], caption)), [(name, video)], [name])
        elif p == "moment":
            _moment_row(b, row, root, opts)
        elif p == "momentseeker":
            _momentseeker_row(b, row, root, opts)
        else:
            try:
                _qa_row(task, b, row, root, opts)
            except (IndexError, ValueError) as exc:
                b.drop(f"row {row!r:.80}: {exc}")
    if p == "video_cls":
        for label in class_labels(task.name):
            b.add_corpus(label, Input(label))
    return b.build()
