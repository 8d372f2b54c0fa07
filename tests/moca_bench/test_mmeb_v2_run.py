"""MMEB-V2 end to end on the generated fixture (issue 15): scores, counts, cache, resume, bad media."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moca_bench.mmeb import run
from moca_bench.mmeb.cli import main
from moca_bench.mmeb.config import MMEBConfig
from moca_bench.mmeb.data import MMEBDataError
from moca_bench.mmeb.v2.synthetic import SAMPLE_TASKS_IMAGE, SAMPLE_TASKS_VISDOC, write_v2_sample
from moca_bench.mmeb.v2.synthetic_video import SAMPLE_TASKS_VIDEO

from . import v2_expected as ex

ALL = (*SAMPLE_TASKS_IMAGE, *SAMPLE_TASKS_VIDEO, *SAMPLE_TASKS_VISDOC)
_IMAGE_PARSER = {"ImageNet-1K": "cls", "OK-VQA": "qa", "MSCOCO_i2t": "i2t", "MSCOCO_t2i": "t2i", "VisDial": "t2i",
                 "WebQA": "t2i", "RefCOCO-Matching": "vg", "MSCOCO": "vg"}  # fmt: skip
_GLOBAL = {"HMDB51", "MSR-VTT", "MSVD", "DiDeMo", "YouCook2", "VATEX", *SAMPLE_TASKS_VISDOC}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return write_v2_sample(tmp_path_factory.mktemp("mmeb_v2"))


def _cfg(tiny_dir, sample, tmp, **kw) -> MMEBConfig:
    kw = {"subsets": list(ALL), "output_dir": str(tmp / "out"), "cache_dir": str(tmp / "cache"), "model_name": "m",
          "image_root": str(sample / "data"), **kw}  # fmt: skip
    return MMEBConfig(model=str(tiny_dir), benchmark="v2", data_dir=str(sample / "hub"), device="cpu", progress=False,
                      **kw)  # fmt: skip


@pytest.fixture(scope="module")
def hashed(tiny_dir, tiny_encoder, sample, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v2run")
    enc = ex.HashEncoder(tiny_encoder)
    return run(_cfg(tiny_dir, sample, tmp), encoder=enc), enc, tmp


def _rows(name: str, sample, tmp, *, n=8, pad=False):
    if name in SAMPLE_TASKS_IMAGE:
        return ex.image_task(sample, name, _IMAGE_PARSER[name])
    if name in SAMPLE_TASKS_VIDEO:
        return ex.video_task(sample, name, n, pad)
    return ex.visdoc_task(sample, name, tmp / "cache" / "mmeb-v2-pages")


def _expected(name: str, sample, tmp, *, n=8, pad=False, grade_order="correct") -> float:
    rows, corpus = _rows(name, sample, tmp, n=n, pad=pad)
    metric = "ndcg@5" if name in SAMPLE_TASKS_VISDOC else "hit@1"
    return ex.score(rows, corpus, local=name not in _GLOBAL, metric=metric, grade_order=grade_order)


@pytest.mark.parametrize("name", ALL)
def test_scores_equal_an_independent_computation(hashed, sample, name):
    from safetensors.numpy import load_file

    report, _, tmp = hashed
    d = report["datasets"][name]
    assert d["score"] == pytest.approx(_expected(name, sample, tmp), abs=1e-9)
    if "score_reference_grade_order" in d:
        assert d["score_reference_grade_order"] == pytest.approx(
            _expected(name, sample, tmp, grade_order="reference"), abs=1e-9)  # fmt: skip
    # exactly the inputs the spec implies were encoded (every text byte, image and frame list included):
    # the queries plus each candidate name's first occurrence
    rows, corpus = _rows(name, sample, tmp)
    pool: dict = {}
    for cand, vec in [c for _, cands, _, _ in rows for c in cands] + corpus:
        pool.setdefault(cand, vec)
    expected = {tuple(np.round(v, 6)) for v in [q for q, *_ in rows] + list(pool.values())}
    cached = load_file(str(tmp / "cache" / report["model"]["cache_key"] / f"v2__{name}.safetensors"))["embeddings"]
    assert {tuple(np.round(v, 6)) for v in cached} == expected
    assert (d["unique_items"], d["bad_rows"]) == (len(expected), 0)


def test_semantics_the_fixture_pins(hashed):
    d = hashed[0]["datasets"]
    assert d["ImageNet-1K"]["pool_size"] == 4  # "cat" is two rows' ground truth: one name, encoded once
    assert d["WebQA"]["pool_size"] == 5 and d["RefCOCO-Matching"]["pool_size"] == 12  # path vs path:caption
    assert d["HMDB51"]["pool_size"] == 51 > d["HMDB51"]["rows"]  # every class label, not only the rows'
    esg = d["ViDoRe_esg_reports_human_labeled_v2"]
    assert (esg["rows"], esg["scored_rows"], esg["dropped_rows"]) == (3, 2, 1)  # query 12 has no positive qrel
    assert esg["grade_order_rows_differ"] == 1 and d["ViDoSeek-doc"]["grade_order_rows_differ"] >= 1
    assert esg["score_reference_grade_order"] != esg["score_correct_grade_order"]
    assert d["ViDoRe_shiftproject"]["grade_order_rows_differ"] == 0  # binary qrels: the bug is a no-op
    assert d["ViDoRe_biomedical_lectures_v2"]["rows"] == 2 and not d["ViDoRe_biomedical_lectures_v2"]["scored_in_v2"]
    assert len(d["MVBench"]["notes"]) == 18  # two of the 20 configs in the fixture, the others noted
    graded = hashed[0]["graded_ndcg_grade_order"]
    assert set(graded) == set(SAMPLE_TASKS_VISDOC)


def test_each_unique_input_is_encoded_once(hashed):
    report, enc, _ = hashed
    for name, d in report["datasets"].items():
        assert d["encoded_items"] == d["unique_items"], name
    assert sum(enc.calls) == report["totals"]["unique_items"] == report["totals"]["encoded_items"]
    # the reference encodes every query plus each pool name once; equal content is encoded once here
    assert report["totals"]["unique_items"] <= report["totals"]["reference_forward_passes"]


def test_aggregates_are_plain_means_and_flag_partial_runs(hashed):
    report = hashed[0]
    scores = {n: d["score"] for n, d in report["datasets"].items() if d["scored_in_v2"]}
    video = [v for n, v in scores.items() if n in SAMPLE_TASKS_VIDEO]
    agg = report["aggregates"]
    assert agg["modalities"]["video"]["score"] == pytest.approx(sum(video) / len(video))
    assert agg["overall"]["score"] == pytest.approx(sum(scores.values()) / len(scores))
    assert agg["overall"]["complete"] is False and agg["overall"]["n_expected"] == 78
    assert agg["meta_tasks"]["video-MRET"]["complete"] is True
    md = (hashed[2] / "out" / "m" / "mmeb_v2.md").read_text()
    assert "VLM2Vec-V2-2B" in md and "(extra)" in md and "(28/78)" in md


def test_short_clips_as_saved_or_padded(tiny_dir, tiny_encoder, sample, tmp_path):
    cfg = _cfg(tiny_dir, sample, tmp_path, subsets=["MSR-VTT", "MomentSeeker"], short_clips="pad", num_frames=4)
    report = run(cfg, encoder=ex.HashEncoder(tiny_encoder))
    assert report["datasets"]["MSR-VTT"]["score"] == pytest.approx(
        _expected("MSR-VTT", sample, tmp_path, n=4, pad=True), abs=1e-9)  # fmt: skip
    from moca_bench.mmeb.v2.data import TableSource, media_dir
    from moca_bench.mmeb.v2.parse import ParseOptions, parse_task
    from moca_bench.mmeb.v2.tasks import TASKS

    for rule, count in (("as-saved", 3), ("pad", 8)):  # video v2 saved 3 frames; 8 requested
        task = TASKS["MSR-VTT"]
        data = parse_task(task, TableSource(sample / "hub"), media_dir(task, sample / "data", {}),
                          ParseOptions(short_clips=rule))  # fmt: skip
        short = next(x for x in data.pairs if x.video.endswith("v2"))
        assert len(short.frames) == count and short.frames[-1].endswith("frame_3.jpg")


def test_killed_run_resumes_without_reencoding_finished_tasks(tiny_dir, tiny_encoder, sample, hashed, tmp_path):
    names = ["ImageNet-1K", "SmthSmthV2", "MSR-VTT", "ViDoSeek-doc"]
    killed = ex.HashEncoder(tiny_encoder, kill_on_call=3)  # one encoder call per task here: dies in the third
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_dir, sample, tmp_path, subsets=names), encoder=killed)
    again = ex.HashEncoder(tiny_encoder)
    report = run(_cfg(tiny_dir, sample, tmp_path, subsets=names), encoder=again)
    d = report["datasets"]
    assert [d[n]["cache_hit"] for n in names] == [True, True, False, False]
    assert sum(again.calls) == d["MSR-VTT"]["unique_items"] + d["ViDoSeek-doc"]["unique_items"]
    assert {n: d[n]["score"] for n in names} == {n: hashed[0]["datasets"][n]["score"] for n in names}
    third = ex.HashEncoder(tiny_encoder)
    run(_cfg(tiny_dir, sample, tmp_path, subsets=names, num_frames=4), encoder=third)
    assert sum(third.calls) == sum(d[n]["unique_items"] for n in ("SmthSmthV2", "MSR-VTT"))  # frames changed only


def test_bad_media_are_counted_and_skipped_or_fatal(tiny_dir, tiny_encoder, tmp_path):
    data = write_v2_sample(tmp_path / "bad", bad_media=True)
    cfg = _cfg(tiny_dir, data, tmp_path, subsets=["OK-VQA", "MSR-VTT"], no_cache=True)
    d = run(cfg, encoder=ex.HashEncoder(tiny_encoder))["datasets"]
    assert (d["OK-VQA"]["bad_items"], d["OK-VQA"]["bad_rows"], d["OK-VQA"]["scored_rows"]) == (1, 1, 2)
    assert d["MSR-VTT"]["bad_items"] == 1 and d["MSR-VTT"]["bad_rows"] == 1  # its video is v1's only label
    assert d["MSR-VTT"]["bad_examples"][0].startswith("missing image") and "v1" in d["MSR-VTT"]["bad_examples"][0]
    with pytest.raises(MMEBDataError, match="strict"):
        run(_cfg(tiny_dir, data, tmp_path, subsets=["MSR-VTT"], no_cache=True, strict=True),
            encoder=ex.HashEncoder(tiny_encoder))  # fmt: skip


def test_missing_media_folder_names_the_override(tiny_dir, tiny_encoder, sample, tmp_path):
    with pytest.raises(MMEBDataError, match="--media-path HMDB51=DIR"):
        run(_cfg(tiny_dir, sample, tmp_path, subsets=["HMDB51"], image_root=str(tmp_path)),
            encoder=ex.HashEncoder(tiny_encoder))  # fmt: skip
    moved = f"HMDB51={sample / 'data' / 'video-tasks' / 'frames' / 'video_cls' / 'HMDB51'}"
    report = run(_cfg(tiny_dir, sample, tmp_path, subsets=["HMDB51"], image_root=str(tmp_path), media_paths=[moved]),
                 encoder=ex.HashEncoder(tiny_encoder))  # fmt: skip
    assert report["datasets"]["HMDB51"]["score"] == pytest.approx(_expected("HMDB51", sample, tmp_path), abs=1e-9)


def test_cli_runs_all_three_families_with_the_tiny_model(tiny_dir, tiny_encoder, sample, tmp_path):
    """The acceptance command, offline on CPU, with the real (tiny) model: videos go in as videos."""
    from safetensors.numpy import load_file

    from moca_bench.mmeb.v2.data import TableSource, media_dir
    from moca_bench.mmeb.v2.parse import ParseOptions, parse_task
    from moca_bench.mmeb.v2.tasks import TASKS

    names = ["OK-VQA", "WebQA", "MSR-VTT", "MomentSeeker", "Video-MME", "ViDoSeek-doc", "VisRAG_PlotQA"]
    argv = ["--benchmark", "v2", "--model", str(tiny_dir), "--data-dir", str(sample / "hub"), "--image-root",
            str(sample / "data"), "--device", "cpu", "--no-progress", "--model-name", "tiny", "--output-dir",
            str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--subsets", *names]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / "tiny" / "mmeb_v2.json").read_text())
    assert set(report["datasets"]) == set(names)
    assert all(d["score"] is not None and d["bad_rows"] == 0 for d in report["datasets"].values())
    task = TASKS["MomentSeeker"]
    data = parse_task(task, TableSource(sample / "hub"), media_dir(task, sample / "data", {}), ParseOptions())
    cached = load_file(str(tmp_path / "cache" / report["model"]["cache_key"] / "v2__MomentSeeker.safetensors"))
    direct = tiny_encoder.encode([data.item(i) for i in range(len(data.pairs))], show_progress=False)
    np.testing.assert_allclose(cached["embeddings"], direct, atol=1e-5)
    assert any(x.video and len(x.frames) > 1 for x in data.pairs)
    proc = tiny_encoder.processor
    from moca_model.processing_moca import normalize_item

    video_item = next(i for i, x in enumerate(data.pairs) if x.video)
    enc = proc.process(normalize_item(data.item(video_item), 0), 0)
    assert enc.video_grid_thw is not None and enc.pixel_values is None  # frames as one video, not as images


# --- issue 24: truncation, frame folders, graded headline ----------------------------------------------------------


def test_v2_never_truncates_by_default_and_counts_what_a_limit_cuts(tiny_dir, sample, tmp_path):
    """The reference never truncates (max_len None); a given --max-length cuts, and every cut is counted."""
    report = run(_cfg(tiny_dir, sample, tmp_path, subsets=["OK-VQA"], no_cache=True))  # the runner loads the model
    assert report["settings"]["max_length"] is None and report["model"]["settings"]["max_length"] is None
    assert report["totals"]["truncated_items"] == report["datasets"]["OK-VQA"]["truncated_rows"] == 0
    cut = run(_cfg(tiny_dir, sample, tmp_path, subsets=["OK-VQA"], no_cache=True, max_length=20,
                   output_dir=str(tmp_path / "cut")))  # fmt: skip
    d = cut["datasets"]["OK-VQA"]
    assert d["truncated_items"] >= d["rows"] == d["truncated_rows"] > 0  # every query (image + question) is cut
    assert d["bad_items"] == 0 and cut["settings"]["max_length"] == 20
    assert f"{d['truncated_items']} inputs cut at max_length=20" in (tmp_path / "cut" / "m" / "mmeb_v2.md").read_text()


def test_empty_frame_folders_read_as_text_and_damaged_frames_are_dropped(tiny_dir, tiny_encoder, tmp_path):
    """As the reference: an empty frame list is encoded as text only; a frame that cannot be decoded is dropped."""
    data = write_v2_sample(tmp_path / "frames")
    videos = data / "data" / "video-tasks" / "frames" / "video_ret" / "MSR-VTT"
    for frame in (videos / "v1").iterdir():
        frame.unlink()  # an existing but empty frame folder
    first = sorted((videos / "v0").iterdir())[0]  # the first frame is always sampled
    jpeg = first.read_bytes()
    first.write_bytes(jpeg[: jpeg.index(b"\xff\xda") + 20])  # the header reads (up to start of scan), pixels cut
    d = run(_cfg(tiny_dir, data, tmp_path, subsets=["MSR-VTT"], no_cache=True), encoder=tiny_encoder)["datasets"]
    m = d["MSR-VTT"]
    assert (m["bad_items"], m["bad_rows"], m["text_only_videos"]) == (0, 0, 1), m["bad_examples"]
    assert m["scored_rows"] == m["rows"] == 3


def test_graded_tasks_show_the_reference_order_beside_the_correct_one(hashed):
    from moca_bench.mmeb.report import _fmt

    report, _, tmp = hashed
    lines = (tmp / "out" / "m" / "mmeb_v2.md").read_text().splitlines()
    for name in ("ViDoRe_esg_reports_human_labeled_v2", "ViDoSeek-doc"):
        d = report["datasets"][name]
        row = next(line for line in lines if line.startswith(f"| {name} "))
        assert f"{_fmt(d['score'])} (reference grade order {_fmt(d['score_reference_grade_order'])})" in row
    other = report["aggregates_reference_grade_order"]
    assert other["modalities"]["visdoc"]["score"] != report["aggregates"]["modalities"]["visdoc"]["score"]
    row = next(line for line in lines if line.startswith("| **visdoc** "))
    assert f"(reference grade order {_fmt(other['modalities']['visdoc']['score'])})" in row
