"""An independent re-computation of MMEB-V2 scores on the generated fixture, written from the spec (mmeb-v2.md §2-§4).

It shares no parsing or scoring code with ``moca_bench.mmeb``: it reads the fixture's parquet and folders
itself, writes every prompt from the spec's table, samples frames with integer arithmetic, and ranks
with plain Python. Embeddings come from :func:`content_vec`, a hash of what the encoder is given, so the
runner (driven by :class:`HashEncoder`) and this module see the same vectors for the same inputs.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

DIM = 16
IMG, VID = "<|image_pad|>", "<|video_pad|>"
QA = ("Given a video and a question, select the most accurate answer from the provided candidates. "
      "Return only the exact text of your chosen answer. Question: ")  # fmt: skip


def _file_digest(path) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()


def content_vec(text: str, image: str = "", frames: tuple = ()) -> np.ndarray:
    """A unit vector that depends only on the text the model sees and the media bytes."""
    h = hashlib.sha256(text.encode())
    if image:
        h.update(b"I" + _file_digest(image))
    for f in frames:
        h.update(b"F" + _file_digest(f))
    v = np.random.default_rng(int.from_bytes(h.digest()[:8], "little")).standard_normal(DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


class HashEncoder:
    """Stands in for MoCaEncoder: content-hash vectors, the tiny encoder's processor for length checks."""

    def __init__(self, inner, *, kill_on_call: int | None = None):
        self.processor, self.model, self.device, self.dim = inner.processor, inner.model, inner.device, DIM
        self.calls: list[int] = []
        self.kill_on_call = kill_on_call

    def encode(self, items, **kwargs):
        self.calls.append(len(items))
        if self.kill_on_call == len(self.calls):
            raise KeyboardInterrupt("simulated kill")
        vecs = []
        for it in items:
            video = it.get("video")
            vecs.append(content_vec(it["text"], it.get("image", ""), tuple(video.frames) if video is not None else ()))
        return np.stack(vecs)


def model(text: str) -> str:
    """MoCa's placeholders for the reference's bare pad tokens."""
    return (text.replace(IMG, "<|vision_start|><|image_pad|><|vision_end|>")
            .replace(VID, "<|vision_start|><|video_pad|><|vision_end|>"))  # fmt: skip


def vec(text: str, image="", frames=()) -> np.ndarray:
    return content_vec(model(text), str(image) if image else "", tuple(str(f) for f in frames))


def rows(root: Path, repo: str, config: str | None, split: str = "test") -> list[dict]:
    return pq.read_table(root / "hub" / repo / (config or "default") / f"{split}-00000-of-00001.parquet").to_pylist()


def frames(folder: Path, n: int | None = 8, pad: bool = False) -> list[Path]:
    if not folder.is_dir():
        return []
    key = lambda p: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]  # noqa: E731
    fs = sorted((p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")), key=key)
    if n is None or len(fs) < n:
        return fs + [fs[-1]] * (n - len(fs)) if pad and fs and n else fs
    return [fs[i * (len(fs) - 1) // (n - 1)] for i in range(n)]


# --- per-family expectations: (query vec, [(name, vec)], labels, grades); corpus [(name, vec)] ---------------


def image_task(root: Path, name: str, parser: str):
    img = root / "data" / "image-tasks"
    out = []
    for r in rows(root, "ziyjiang/MMEB_Test_Instruct", name):
        inst = r["qry_inst"].replace("<|image_1|>", "")
        if parser == "t2i":
            q = vec(r["qry_inst"].replace("<|image_1|>", IMG) + " " + r["qry_text"] + "\n" + "\n" * (name == "VisDial"))
        else:
            if parser in ("qa", "vg"):
                inst = "\n" + inst.strip()
            text = IMG + " " + inst + (" " + r["qry_text"] if r["qry_text"] else "")
            q = vec(text.replace(" \n", "\n") + "\n", img / r["qry_img_path"])
        tt, ti = r["tgt_text"], r["tgt_img_path"]
        if parser in ("cls", "qa", "i2t"):
            out.append((q, [(t, vec(t)) for t in tt], [tt[0]], [1]))
            continue
        tinst = r["tgt_inst"].replace("<|image_1|>", "")
        if tt[0].strip():
            texts = [(IMG + " " + tinst + " " + c).replace(" \n", "\n") + "\n" for c in tt]
        else:
            texts = [(IMG + " " + tinst).replace(" \n", "\n") + ("\n" if parser == "t2i" else "")] * len(ti)
        names = list(ti) if parser == "t2i" else [p + ":" + c.strip('"') for p, c in zip(ti, tt)]
        out.append((q, [(n, vec(t, img / p)) for n, t, p in zip(names, texts, ti)], [names[0]], [1]))
    return out, []


def video_task(root: Path, name: str, n: int = 8, pad: bool = False):
    from moca_bench.mmeb.v2.parse_video import class_labels  # the label list is data, not logic

    fr = root / "data" / "video-tasks" / "frames"
    target = VID + " Understand the content of the provided video."
    out, corpus = [], []
    if name in ("HMDB51", "SmthSmthV2"):
        inst = {"HMDB51": "What actions or objects interactions are the person in the video doing?",
                "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?"}
        folder = fr / "video_cls" / ("SSv2" if name == "SmthSmthV2" else name)
        for r in rows(root, f"VLM2Vec/{name}", None):
            q = vec(VID + " " + inst[name], frames=frames(folder / str(r["video_id"]), n, pad))
            cands = r["neg_text"] if name == "SmthSmthV2" else [r["pos_text"]]
            out.append((q, [(c, vec(c)) for c in cands], [r["pos_text"]], [1]))
        corpus = [(lab, vec(lab)) for lab in class_labels(name)] if name == "HMDB51" else []
        return out, corpus
    ret = {"MSR-VTT": ("VLM2Vec/MSR-VTT", "test_1k", "test", "Find a video that contains the following visual content:",
                       lambda r: (r["video_id"], r["caption"]), "video_ret/MSR-VTT"),
           "MSVD": ("VLM2Vec/MSVD", None, "test", "Find the video snippet that corresponds to the given summary:",
                    lambda r: (r["video_id"], r["caption"][0]), "video_ret/data/ziyan/video_retrieval/MSVD/frames"),
           "DiDeMo": ("VLM2Vec/DiDeMo", None, "test", "Find a video that includes the following described scenes:",
                      lambda r: (r["video"].rsplit("/", 1)[-1][: -len(".mp4")], r["caption"]),
                      "video_ret/data/ziyan/video_retrieval/DiDeMo/frames"),
           "YouCook2": ("lmms-lab/YouCook2", None, "val",
                        "Find a video that demonstrates the following action while making a recipe:",
                        lambda r: (r["id"], r["sentence"]), "video_ret/data/ziyan/video_retrieval/YouCook2/frames"),
           "VATEX": ("VLM2Vec/VATEX", None, "test", "Select a video that fits the description provided:",
                     lambda r: (r["videoID"], r["enCap"][0]), "video_ret/data/ziyan/video_retrieval/VATEX/frames")}
    if name in ret:
        repo, config, split, inst, fields, rel = ret[name]
        for r in rows(root, repo, config, split):
            vid, cap = fields(r)
            out.append((vec(inst + " " + cap), [(vid, vec(target, frames=frames(fr / rel / vid, n, pad)))], [vid], [1]))
        return out, []
    if name in ("QVHighlight", "Charades-STA"):
        for r in rows(root, f"VLM2Vec/{name}", None):
            base = fr / "video_mret" / name / r["video_path"].rsplit("/", 1)[-1][: -len(".mp4")]
            q = vec(VID + " Find the clip that corresponds to the described scene in the given video: " + r["query"],
                    frames=frames(base / "query", n, pad))
            clips = sorted((d for d in base.iterdir() if d.is_dir() and d.name != "query"),
                           key=lambda d: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", d.name)])
            pos = [str(d) for d in clips if d.name.startswith("positive")][-1]
            out.append((q, [(str(d), vec(target, frames=frames(d, n, pad))) for d in clips], [pos], [1]))
        return out, []
    if name == "MomentSeeker":
        ms = fr / "video_mret" / "MomentSeeker"
        clip_target = VID + " Understand the content of the provided video clip."
        for r in rows(root, "VLM2Vec/MomentSeeker", None):
            given, query = r["input_frames"], r["query"]
            if given.endswith(".mp4"):
                q = vec(VID + " Find the clip that corresponds to the given sentence and video segment: " + query,
                        frames=frames(ms / "video_frames" / given[:-4].replace("/", "_"), None))
            elif given.endswith(".jpg"):
                q = vec(IMG + " Select the video clip that aligns with the given text and image: " + query,
                        ms / f"query_{given}")
            else:
                q = vec("Find the clip that corresponds to the given text: " + query)
            names = [str(ms / "video_frames" / e["output_path"][:-4].replace("/", "_"))
                     for e in r["positive_frames"] + r["negative_frames"]]  # fmt: skip
            cands = [(c, vec(clip_target, frames=frames(Path(c), None))) for c in names]
            out.append((q, cands, names[: len(r["positive_frames"])], [1] * len(r["positive_frames"])))
        return out, []
    qa = fr / "video_qa"
    if name == "MVBench":
        for subset in ("episodic_reasoning", "action_sequence"):  # the reference's config order
            for r in rows(root, "VLM2Vec/MVBench", subset, "train"):
                opts = [f"({'ABC'[i]}) {c}" for i, c in enumerate(r["candidates"])]
                q = vec(f"{VID} {QA} {r['question']}\nOptions:\n" + "\n".join(opts),
                        frames=frames(qa / name / subset / r["video"], n, pad))
                k = r["candidates"].index(r["answer"]) if r["answer"] in r["candidates"] else -1
                out.append((q, [(o, vec(o)) for o in opts], [f"({chr(ord('A') + k)}) {r['answer']}"], [1]))
        return out, []
    strip = lambda o: o[o.find(". "):].strip(". ")  # noqa: E731
    for r in rows(root, f"VLM2Vec/{name}", {"NExTQA": "MC", "EgoSchema": "Subset"}.get(name)):
        if name == "Video-MME":
            opts = r["options"]
            q = vec(f"{VID} {QA} " + r["question"] + "\n" + "\n".join(opts),
                    frames=frames(qa / name / r["videoID"], n, pad))
            out.append((q, [(o, vec(strip(o))) for o in opts], [opts["ABCD".index(r["answer"])]], [1]))
        elif name == "EgoSchema":
            opts = r["option"]
            q = vec(f"{VID} {QA} " + r["question"] + " ".join(opts),
                    frames=frames(qa / "egoschema" / r["video_idx"], n, pad))
            out.append((q, [(o, vec(strip(o))) for o in opts], [opts[int(r["answer"])]], [1]))
        elif name == "NExTQA":
            opts = [r[f"a{i}"] for i in range(5)]
            listed = "\n".join(f"({'ABCDE'[i]}) {o}" for i, o in enumerate(opts))
            text = f"{VID} {QA} {r['question']}\nOptions:\n" + listed
            q = vec(text, frames=frames(qa / name / str(r["video"]), n, pad))
            out.append((q, [(o, vec(o)) for o in opts], [opts[r["answer"]]], [1]))
        elif name == "ActivityNetQA":
            q = vec(f"{VID} {QA} " + r["question"] + "? (A) yes; (B) no.",
                    frames=frames(qa / name / f"v_{r['video_name']}", n, pad))
            out.append((q, [(o, vec(o)) for o in ("yes", "no")], [r["answer"]], [1]))
    return out, []


def visdoc_task(root: Path, name: str, page_cache: Path):
    spec = {"ViDoRe_esg_reports_human_labeled_v2": ("vidore/esg_reports_human_labeled_v2", "test",
                                                    "images/esg_reports_human_labeled_v2", None),
            "ViDoRe_shiftproject": ("vidore/shiftproject_test_beir", "test", None, None),
            "VisRAG_PlotQA": ("openbmb/VisRAG-Ret-Test-PlotQA", "train", "VisRAG_PlotQA", None),
            "ViDoSeek-doc": ("VLM2Vec/ViDoSeek", "test", "images/ViDoSeek-doc", None),
            "ViDoRe_biomedical_lectures_v2_multilingual": ("vidore/biomedical_lectures_v2", "test",
                                                           "images/biomedical_lectures_v2_multilingual", None),
            "ViDoRe_biomedical_lectures_v2": ("vidore/biomedical_lectures_v2", "test", None, "english")}
    repo, split, folder, lang = spec[name]
    pages = root / "data" / "visdoc-tasks" / folder if folder else page_cache / name

    def page(cid):
        if name.startswith("VisRAG"):
            base, ext = cid.rsplit(".", 1)
            fname = base[:50] + "_" + hashlib.md5(cid.encode()).hexdigest()[:8] + "." + ext
        else:
            fname = f"{cid}.png"
        return vec(IMG + " Understand the content of the provided document image.", pages / fname)

    rel: dict = {}
    for r in rows(root, repo, "qrels", split):
        if r["score"] > 0:
            rel.setdefault(r["query-id"], {})
            rel[r["query-id"]][r["corpus-id"]] = max(rel[r["query-id"]].get(r["corpus-id"], 0), r["score"])
    out = []
    for q in rows(root, repo, "queries", split):
        if (lang is None or q["language"] == lang) and q["query-id"] in rel:
            docs = rel[q["query-id"]]
            out.append((vec("Find a document image that matches the given query: " + q["query"]),
                        [(c, page(c)) for c in docs], list(docs), list(docs.values())))
    return out, [(r["corpus-id"], page(r["corpus-id"])) for r in rows(root, repo, "corpus", split)]


def score(rows_, corpus, *, local: bool, metric: str, grade_order: str = "correct") -> float:
    """Plain-Python hit@1 / nDCG@5 with the lowest column winning exact ties."""
    pool = {}
    for _, cands, _, _ in rows_:
        for n, v in cands:
            pool.setdefault(n, v)
    for n, v in corpus:
        pool.setdefault(n, v)
    vals = []
    for q, cands, labels, grades in rows_:
        ranked = [(n, pool[n]) for n, _ in cands] if local else list(pool.items())  # names keep their first vector
        sims = [float(np.dot(q.astype(np.float64), v.astype(np.float64))) for _, v in ranked]
        order = sorted(range(len(ranked)), key=lambda j: (-sims[j], j))
        if metric == "hit@1":
            vals.append(float(ranked[order[0]][0] in labels))
            continue
        keys = list(set(labels)) if grade_order == "reference" else labels
        grade = dict(zip(keys, grades))
        dcg = sum(grade.get(ranked[j][0], 0) / math.log2(i + 2) for i, j in enumerate(order[:5]))
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(grades, reverse=True)[:5]))
        vals.append(dcg / idcg)
    return 100.0 * sum(vals) / len(vals)
