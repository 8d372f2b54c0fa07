"""MMEB-V2's 78 scored tasks (image 36, video 18, visual documents 24): sources, parsers, meta-tasks.

Read from TIGER-AI-Lab/VLM2Vec @ 6e1e1d4 (``experiments/public/eval/{image,video,visdoc}.yaml``,
``src/constant/dataset_hf_path.py``, ``experiments/report_score_v2.py``), as summarised in the project's
``mmeb-v2.md`` spec. Names are the reference's report keys; the two page-level visual-document sets are
reported as ``*-page-fixed`` (the leaderboard's names since the 2025-11-03 fix; ``ViDoSeek-page`` and
``MMLongBench-page`` are accepted as aliases). Meta-task and modality means are plain means over datasets;
overall is the plain mean over all 78 (leaderboard).

Media roots are relative to the unpacked ``TIGER-Lab/MMEB-V2`` repository. Where VLM2Vec's public YAML and
Qwen's reproduction config disagree, both are listed and the first folder that exists is used (Qwen's,
which reproduces the leaderboard, first); see ``docs/mmeb.md`` for overriding them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from moca_model.console import did_you_mean
from moca_model.errors import MoCaConfigError

MODALITIES = ("image", "video", "visdoc")
METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}
IMAGE_REPO = "ziyjiang/MMEB_Test_Instruct"


@dataclass(frozen=True)
class V2Task:
    """One MMEB-V2 task as the reference harness runs it."""

    name: str
    """Report key (``K700``, ``ViDoSeek-page-fixed``, ...)."""
    modality: str
    """image, video or visdoc."""
    meta: str
    """Meta-task within the modality (image CLS/QA/RET/VG, video CLS/QA/RET/MRET, visdoc VDRv1/VDRv2/VR/OOD)."""
    parser: str
    """Row parser (the reference's ``dataset_parser``)."""
    repo: str
    """Hub dataset id of the rows (or BEIR queries/qrels/corpus)."""
    config: str | None = None
    """Hub config (image tasks: the task name)."""
    split: str = "test"
    """Split."""
    eval_type: str = "local"
    """local: rank each row's own candidates; global: rank the whole de-duplicated pool."""
    media: tuple[str, ...] = ()
    """Candidate media folders under the MMEB-V2 root, first existing wins."""
    first_rows: int | None = None
    """The reference keeps only the first rows (SSv2: 1,000)."""
    lang: str | None = None
    """Query language filter (English-only ViDoRe-v2 variants)."""
    scored: bool = True
    """Part of the 78 (False: extra tasks the reference YAML lists but does not score)."""
    queries: int = 0
    """Published query count (score JSONs' ``num_data``), for the cost model and the report."""
    candidates: int = 0
    """Published candidates per query (local) or pool size (global), where known."""

    @property
    def metric(self) -> str:
        """Main metric: hit@1 (image, video) or linear nDCG@5 (visdoc)."""
        return METRIC[self.modality]


def _image(meta: str, parser: str, names: str, cands: dict[str, int] | int = 1000) -> list[V2Task]:
    out = []
    for n in names.split():
        c = cands.get(n, 1000) if isinstance(cands, dict) else cands
        out.append(V2Task(n, "image", meta, parser, IMAGE_REPO, n, media=("image-tasks",), queries=1000, candidates=c))
    return out


_CLS_CANDS = {"ImageNet-1K": 1000, "N24News": 24, "HatefulMemes": 2, "VOC2007": 20, "SUN397": 397, "Place365": 365,
              "ImageNet-A": 1000, "ImageNet-R": 200, "ObjectNet": 313, "Country211": 211}  # fmt: skip
_IMAGE = (
    _image("CLS", "image_cls", "ImageNet-1K N24News HatefulMemes VOC2007 SUN397 Place365 ImageNet-A ImageNet-R "
           "ObjectNet Country211", _CLS_CANDS)
    + _image("QA", "image_qa", "OK-VQA A-OKVQA DocVQA InfographicsVQA ChartQA Visual7W ScienceQA VizWiz GQA TextVQA")
    + _image("RET", "image_t2i", "VisDial")
    + _image("RET", "image_i2i_vg", "CIRR")
    + _image("RET", "image_t2i", "VisualNews_t2i")
    + _image("RET", "image_i2t", "VisualNews_i2t")
    + _image("RET", "image_t2i", "MSCOCO_t2i")
    + _image("RET", "image_i2t", "MSCOCO_i2t")
    + _image("RET", "image_i2i_vg", "NIGHTS")
    + _image("RET", "image_t2i", "WebQA")
    + _image("RET", "image_i2i_vg", "FashionIQ")
    + _image("RET", "image_t2i", "Wiki-SS-NQ")
    + _image("RET", "image_i2i_vg", "OVEN")
    + _image("RET", "image_t2i", "EDIS")
    + _image("VG", "image_i2i_vg", "MSCOCO RefCOCO RefCOCO-Matching Visual7W-Pointing")
)  # fmt: skip


def _frames(*rel: str) -> tuple[str, ...]:
    return tuple(f"video-tasks/frames/{r}" for r in rel)


def _ret(name: str, parser: str, repo: str, q: int, *, config=None, split="test", folder=None) -> V2Task:
    folder = folder or name
    media = _frames(f"video_ret/data/ziyan/video_retrieval/{folder}/frames", f"video_ret/{folder}")
    return V2Task(name, "video", "RET", parser, repo, config, split, "global", media, queries=q, candidates=q)


_VIDEO = [
    V2Task("K700", "video", "CLS", "video_cls", "VLM2Vec/Kinetics-700", eval_type="global",
           media=_frames("video_cls/K700"), queries=1000, candidates=700),
    V2Task("SmthSmthV2", "video", "CLS", "ssv2", "VLM2Vec/SmthSmthV2", media=_frames("video_cls/SSv2"),
           first_rows=1000, queries=1000, candidates=174),
    V2Task("HMDB51", "video", "CLS", "video_cls", "VLM2Vec/HMDB51", eval_type="global",
           media=_frames("video_cls/HMDB51"), queries=1000, candidates=51),
    V2Task("UCF101", "video", "CLS", "video_cls", "VLM2Vec/UCF101", eval_type="global",
           media=_frames("video_cls/UCF101"), queries=1000, candidates=101),
    V2Task("Breakfast", "video", "CLS", "video_cls", "VLM2Vec/Breakfast", eval_type="global",
           media=_frames("video_cls/Breakfast"), queries=433, candidates=10),
    V2Task("MVBench", "video", "QA", "mvbench", "VLM2Vec/MVBench", split="train", media=_frames("video_qa/MVBench"),
           queries=4000, candidates=4),
    V2Task("Video-MME", "video", "QA", "videomme", "VLM2Vec/Video-MME", media=_frames("video_qa/Video-MME"),
           queries=2700, candidates=4),
    V2Task("NExTQA", "video", "QA", "nextqa", "VLM2Vec/NExTQA", "MC", media=_frames("video_qa/NExTQA"),
           queries=8564, candidates=5),
    V2Task("EgoSchema", "video", "QA", "egoschema", "VLM2Vec/EgoSchema", "Subset",
           media=_frames("video_qa/egoschema", "video_qa/EgoSchema"), queries=500, candidates=5),
    V2Task("ActivityNetQA", "video", "QA", "activitynetqa", "VLM2Vec/ActivityNetQA",
           media=_frames("video_qa/ActivityNetQA"), queries=1000, candidates=2),
    _ret("DiDeMo", "didemo", "VLM2Vec/DiDeMo", 1004),
    _ret("MSR-VTT", "msrvtt", "VLM2Vec/MSR-VTT", 1000, config="test_1k"),
    _ret("MSVD", "msvd", "VLM2Vec/MSVD", 670),
    _ret("VATEX", "vatex", "VLM2Vec/VATEX", 4478),
    _ret("YouCook2", "youcook2", "lmms-lab/YouCook2", 3179, split="val"),  # reference: HF version issue with VLM2Vec's
    V2Task("QVHighlight", "video", "MRET", "moment", "VLM2Vec/QVHighlight", media=_frames("video_mret/QVHighlight"),
           queries=1083, candidates=10),
    V2Task("Charades-STA", "video", "MRET", "moment", "VLM2Vec/Charades-STA",
           media=_frames("video_mret/Charades-STA", "video_mret/Charades_STA"), queries=727, candidates=10),
    V2Task("MomentSeeker", "video", "MRET", "momentseeker", "VLM2Vec/MomentSeeker",
           media=_frames("video_mret/MomentSeeker"), queries=1602, candidates=10),
]  # fmt: skip


def _doc(name, meta, repo, q, *, folder=None, parser="vidore", split="test", lang=None, scored=True, corpus=0):
    folder = folder or name
    media = (f"visdoc-tasks/images/{folder}", f"visdoc-tasks/{folder}")
    return V2Task(name, "visdoc", meta, parser, repo, None, split, "global", media, None, lang, scored, q, corpus)


def _vdr1(short: str, repo: str, q: int, corpus: int = 0) -> V2Task:
    return _doc(f"ViDoRe_{short}", "VDRv1", f"vidore/{repo}", q, corpus=corpus)


def _vr(short: str, q: int) -> V2Task:
    return _doc(f"VisRAG_{short}", "VR", f"openbmb/VisRAG-Ret-Test-{short}", q, parser="visrag", split="train")


# Corpus sizes: dataset cards (tabfquad 70, shiftproject 1000, biomedical 1016, ViDoSeek 5349), the paper (MMLongBench
# 6492), else mteb 2.26's descriptive statistics of its copies of the same ViDoRe sets (num_samples minus queries, per
# language); VisRAG and the two page sets are not published (0 = unknown).
_VISDOC = [
    _vdr1("arxivqa", "arxivqa_test_subsampled_beir", 500, 500),
    _vdr1("docvqa", "docvqa_test_subsampled_beir", 451, 500),
    _vdr1("infovqa", "infovqa_test_subsampled_beir", 494, 500),
    _vdr1("tabfquad", "tabfquad_test_subsampled_beir", 280, 70),
    _vdr1("tatdqa", "tatdqa_test_beir", 1646, 277),
    _vdr1("shiftproject", "shiftproject_test_beir", 100, 1000),
    *(_vdr1(f"syntheticDocQA_{d}", f"syntheticDocQA_{d}_test_beir", 100, n)
      for d, n in (("artificial_intelligence", 968), ("energy", 977), ("government_reports", 972),
                   ("healthcare_industry", 965))),
    _doc("ViDoRe_esg_reports_human_labeled_v2", "VDRv2", "vidore/esg_reports_human_labeled_v2", 52,
         folder="esg_reports_human_labeled_v2", corpus=1538),
    _doc("ViDoRe_biomedical_lectures_v2_multilingual", "VDRv2", "vidore/biomedical_lectures_v2", 640,
         folder="biomedical_lectures_v2_multilingual", corpus=1016),
    _doc("ViDoRe_economics_reports_v2_multilingual", "VDRv2", "vidore/economics_reports_v2", 232,
         folder="economics_reports_v2_multilingual", corpus=452),
    _doc("ViDoRe_esg_reports_v2_multilingual", "VDRv2", "vidore/esg_reports_v2", 228,
         folder="esg_reports_v2_multilingual", corpus=1538),
    _vr("ArxivQA", 816), _vr("ChartQA", 63), _vr("MP-DocVQA", 591), _vr("SlideVQA", 556), _vr("InfoVQA", 718),
    _vr("PlotQA", 863),
    _doc("ViDoSeek-page-fixed", "OOD", "VLM2Vec/ViDoSeek-page-fixed", 1142, folder="ViDoSeek-page"),
    _doc("ViDoSeek-doc", "OOD", "VLM2Vec/ViDoSeek", 1142, corpus=5349),
    _doc("MMLongBench-page-fixed", "OOD", "VLM2Vec/MMLongBench-page-fixed", 838, folder="MMLongBench-page"),
    _doc("MMLongBench-doc", "OOD", "VLM2Vec/MMLongBench-doc", 838, corpus=6492),
    # In the reference YAML but not among the 78 scored (report_score_v2.py): English-only ViDoRe-v2 queries.
    *(_doc(f"ViDoRe_{d}_v2", "VDRv2", f"vidore/{d}_v2", 0, folder=f"{d}_v2", lang="english", scored=False)
      for d in ("biomedical_lectures", "economics_reports", "esg_reports")),
]  # fmt: skip

TASKS: dict[str, V2Task] = {t.name: t for t in (*_IMAGE, *_VIDEO, *_VISDOC)}
SCORED: tuple[str, ...] = tuple(n for n, t in TASKS.items() if t.scored)
ALIASES = {"ViDoSeek-page": "ViDoSeek-page-fixed", "MMLongBench-page": "MMLongBench-page-fixed",
           "Kinetics-700": "K700"}  # fmt: skip


def meta_tasks(modality: str) -> dict[str, tuple[str, ...]]:
    """Scored tasks of a modality grouped by meta-task, in report order."""
    out: dict[str, list[str]] = {}
    for name in SCORED:
        if TASKS[name].modality == modality:
            out.setdefault(TASKS[name].meta, []).append(name)
    return {m: tuple(v) for m, v in out.items()}


def resolve_tasks(names: Iterable[str] | None) -> list[str]:
    """Expand a selection into task names in benchmark order.

    Args:
        names: task names (aliases accepted), modalities (``image``, ``video``, ``visdoc``), meta-tasks
            (``image-CLS``, ``video-MRET``, ``visdoc-OOD``; an unqualified name such as ``CLS`` selects it
            in every modality), or ``all``; None means the 78 scored tasks. Case-insensitive. The three
            English-only ViDoRe-v2 tasks are selected by name only.

    Returns:
        Selected task names, in benchmark order, without duplicates.

    Raises:
        MoCaConfigError: an unknown name (a ``ValueError``; the message suggests a near miss and lists the
            valid selectors).
    """
    if names is None:
        return list(SCORED)
    lookup: dict[str, set[str]] = {n.lower(): {n} for n in TASKS}
    lookup.update({a.lower(): {t} for a, t in ALIASES.items()})
    lookup["all"] = set(SCORED)
    for modality in MODALITIES:
        lookup[modality] = {n for n in SCORED if TASKS[n].modality == modality}
        for meta, tasks in meta_tasks(modality).items():
            lookup[f"{modality}-{meta}".lower()] = set(tasks)
            lookup.setdefault(meta.lower(), set()).update(tasks)
    chosen: set[str] = set()
    for name in names:
        if name.lower() not in lookup:
            metas = sorted({f"{t.modality}-{t.meta}" for t in TASKS.values()})
            hint = did_you_mean(name, [*TASKS, *ALIASES, *metas])
            raise MoCaConfigError(
                f"--subsets: unknown MMEB-V2 task {name!r}{f' ({hint})' if hint else ''}; use a task name, a modality "
                f"({', '.join(MODALITIES)}), a meta-task ({', '.join(metas)}) or all"
            )
        chosen |= lookup[name.lower()]
    return [n for n in TASKS if n in chosen]
