"""The video part of the MMEB-V2 sample (:mod:`moca_bench.mmeb.v2.synthetic`): rows and frame folders.

Frame folders use both layouts the reference's configs name (VLM2Vec's ``video_ret/<DS>`` for MSR-VTT,
Qwen's ``video_ret/data/ziyan/video_retrieval/<DS>/frames`` for the others; ``video_qa/egoschema``), frame
names in both extractor styles (``frame_%d.jpg``, ``%04d.jpeg``) and counts from 3 to 12.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SAMPLE_TASKS_VIDEO = ("HMDB51", "SmthSmthV2", "MSR-VTT", "MSVD", "DiDeMo", "YouCook2", "VATEX", "QVHighlight",
                      "Charades-STA", "MomentSeeker", "Video-MME", "NExTQA", "EgoSchema", "MVBench",
                      "ActivityNetQA")  # fmt: skip
_QWEN_RET = "video_ret/data/ziyan/video_retrieval/{}/frames"


def write_frames(folder: Path, n: int, rng: np.random.Generator, *, style: str = "frame_{}.jpg") -> None:
    """``n`` small random JPEG frames named by ``style`` (1-based for ``frame_``, 0-based otherwise)."""
    from moca_bench.mmeb.v2.synthetic import write_image

    first = 1 if style.startswith("frame_") else 0
    for i in range(first, first + n):
        write_image(folder / style.format(i), rng, size=(32, 24))


def _frames_root(root: Path) -> Path:
    return root / "data" / "video-tasks" / "frames"


def _cls_and_ret(root: Path, rng) -> None:
    from moca_bench.mmeb.v2.parse_video import class_labels
    from moca_bench.mmeb.v2.synthetic import write_table

    fr = _frames_root(root)
    labels = class_labels("HMDB51")
    write_table(root, "VLM2Vec/HMDB51", None, "test",
                [{"video_id": f"h{r}", "pos_text": labels[i]} for r, i in enumerate((0, 5, 0))])  # fmt: skip
    for r, n in enumerate((12, 9, 5)):
        write_frames(fr / "video_cls" / "HMDB51" / f"h{r}", n, rng)
    ssv2 = ["Pushing something", "Pulling something", "Holding something", "Opening something"]
    write_table(root, "VLM2Vec/SmthSmthV2", None, "test",
                [{"video_id": 100 + r, "pos_text": ssv2[r], "neg_text": ssv2[::-1]} for r in range(3)])  # fmt: skip
    for r in range(3):
        write_frames(fr / "video_cls" / "SSv2" / str(100 + r), 10, rng, style="{:04d}.jpeg")
    ret = {  # task: (repo, config, split, rows, folder names, frame root)
        "MSR-VTT": ("VLM2Vec/MSR-VTT", "test_1k", "test",
                    [{"video_id": f"v{r}", "video": f"video{r}.mp4", "caption": f"a caption {r}"} for r in range(3)],
                    ["v0", "v1", "v2"], "video_ret/MSR-VTT"),
        "MSVD": ("VLM2Vec/MSVD", None, "test",
                 [{"video_id": f"m{r}", "video": f"m{r}.avi", "caption": [f"summary {r}", "other"]} for r in range(2)],
                 ["m0", "m1"], _QWEN_RET.format("MSVD")),
        "DiDeMo": ("VLM2Vec/DiDeMo", None, "test",
                   [{"video": f"videos/d{r}.mp4", "caption": f"scene {r}"} for r in range(2)], ["d0", "d1"],
                   _QWEN_RET.format("DiDeMo")),
        "YouCook2": ("lmms-lab/YouCook2", None, "val",
                     [{"id": f"y{r}", "video_path": f"val/y{r}.mp4", "sentence": f"stir {r}"} for r in range(2)],
                     ["y0", "y1"], _QWEN_RET.format("YouCook2")),
        "VATEX": ("VLM2Vec/VATEX", None, "test",
                  [{"videoID": f"x{r}", "enCap": [f"described {r}", "second"]} for r in range(2)], ["x0", "x1"],
                  _QWEN_RET.format("VATEX")),
    }  # fmt: skip
    for name, (repo, config, split, rows, folders, rel) in ret.items():
        write_table(root, repo, config, split, rows)
        for k, folder in enumerate(folders):
            write_frames(fr / rel / folder, 3 if (name, k) == ("MSR-VTT", 2) else 11, rng)  # v2: a short clip


def _moments(root: Path, rng) -> None:
    from moca_bench.mmeb.v2.synthetic import write_image, write_table

    fr = _frames_root(root) / "video_mret"
    for name, folder, videos in (("QVHighlight", "QVHighlight", ("vid0", "vid1")), ("Charades-STA", "Charades-STA",
                                                                                    ("c0",))):  # fmt: skip
        write_table(root, f"VLM2Vec/{name}", None, "test",
                    [{"query": f"a moment {v}", "video_path": f"raw/{v}.mp4"} for v in videos])  # fmt: skip
        for v in videos:  # natural order negative_2 < negative_10; the positive is not first
            for clip, n in (("query", 12), ("negative_10", 8), ("negative_2", 8), ("positive_0", 4)):
                write_frames(fr / folder / v / clip, n, rng)
    ms = fr / "MomentSeeker"
    clip = {"pos/a.mp4": 5, "pos/b.mp4": 3, "neg/c.mp4": 4, "neg/d.mp4": 6, "pos/e.mp4": 2, "clips/q0.mp4": 9}
    for path, n in clip.items():
        write_frames(ms / "video_frames" / path.replace("/", "_").split(".mp4")[0], n, rng)
    write_image(ms / "query_img1.jpg", rng)

    def entries(*paths):
        return [{"output_path": p} for p in paths]

    write_table(root, "VLM2Vec/MomentSeeker", None, "test", [
        {"query": "two positives", "input_frames": "clips/q0.mp4", "positive_frames": entries("pos/a.mp4", "pos/b.mp4"),
         "negative_frames": entries("neg/c.mp4", "neg/d.mp4")},
        {"query": "an image query", "input_frames": "img1.jpg", "positive_frames": entries("pos/e.mp4"),
         "negative_frames": entries("neg/c.mp4")},
        {"query": "a text query", "input_frames": "", "positive_frames": entries("pos/a.mp4"),
         "negative_frames": entries("neg/d.mp4", "pos/e.mp4")},
    ])  # fmt: skip


def _qa(root: Path, rng) -> None:
    from moca_bench.mmeb.v2.synthetic import write_table

    fr = _frames_root(root) / "video_qa"
    opts = [["A. Apples.", "B. Bananas.", "C. Cherries", "D. Dates."], ["A. one", "B. two", "C. three", "D. four"]]
    write_table(root, "VLM2Vec/Video-MME", None, "test", [
        {"question": f"what fruit {r}?", "videoID": f"vm{r}", "options": opts[r], "answer": "BD"[r],
         "question_id": f"{r}-1", "domain": "d", "sub_category": "s"} for r in range(2)])  # fmt: skip
    write_table(root, "VLM2Vec/NExTQA", "MC", "test", [
        {"video": 4000 + r, "question": f"why {r}", "answer": (r + 2) % 5, "qid": r, "type": "CW",
         **{f"a{i}": f"answer {i} of {r}" for i in range(5)}} for r in range(2)])  # fmt: skip
    write_table(root, "VLM2Vec/EgoSchema", "Subset", "test", [
        {"video_idx": f"e{r}", "question": f"what does c do {r}?", "answer": str(r + 1), "question_idx": r,
         "option": ["A. cooks.", "Bcleans", "C. reads", "D. sleeps", "E. walks"]} for r in range(2)])  # fmt: skip
    for subset, answers in (("episodic_reasoning", ["yes", "maybe"]), ("action_sequence", ["left"])):
        write_table(root, "VLM2Vec/MVBench", subset, "train", [
            {"question": f"{subset} {k}?", "video": f"{subset[:3]}{k}.mp4", "candidates": ["yes", "no", "left"],
             "answer": a} for k, a in enumerate(answers)])  # fmt: skip  ("maybe": not a candidate)
        for k in range(len(answers)):
            write_frames(fr / "MVBench" / subset / f"{subset[:3]}{k}.mp4", 8, rng, style="{:04d}.jpeg")
    write_table(root, "VLM2Vec/ActivityNetQA", None, "test", [
        {"video_name": f"an{r}", "question": f"is it sunny {r}", "answer": "yes" if r else "no", "question_id": r}
        for r in range(2)])  # fmt: skip
    for folder in ("Video-MME/vm0", "Video-MME/vm1", "NExTQA/4000", "NExTQA/4001", "egoschema/e0", "egoschema/e1",
                   "ActivityNetQA/v_an0", "ActivityNetQA/v_an1"):  # fmt: skip
        write_frames(fr / folder, 10, rng, style="{:04d}.jpeg")


def write_video_tasks(root: Path, rng: np.random.Generator) -> None:
    """Write the rows and frame folders of :data:`SAMPLE_TASKS_VIDEO` under ``root`` (hub/ and data/)."""
    _cls_and_ret(root, rng)
    _moments(root, rng)
    _qa(root, rng)
