"""Every harness route on Qwen2-VL and Qwen3-VL tiny checkpoints (Qwen2.5-VL's are the other route tests).

Qwen3-VL runs as a causal last-token model (``moca_config.json``: ``attention: causal``, ``pooling: last``,
the VLM2Vec / Qwen3-VL-Embedding style) and Qwen2-VL as MoCa (bidirectional, mean), so each route is also
checked to honour the checkpoint's attention and pooling: its numbers must equal MoCaEncoder's on the same
checkpoint, which reads them from the same file.

- vidore-benchmark: ``vidore-benchmark evaluate-retriever --model-class moca`` (subprocess; .venv only);
- MTEB: ``mteb run -m <dir>`` (subprocess; .venv-mteb only) and the in-process encoder on a local page task;
- MMEB v1 and v2, v2's video tasks included (Qwen3-VL writes its timestamps).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from moca_model import MoCaEncoder, moca_config

ROUTE_MODELS = {"qwen2_vl": ("bidirectional", "mean"), "qwen3_vl": ("causal", "last")}


@pytest.fixture(scope="module")
def checkpoints(tiny_backbone_dirs, tmp_path_factory):
    """Per backbone: a copy of its tiny checkpoint recording the attention and pooling of ROUTE_MODELS."""
    root = tmp_path_factory.mktemp("routes")
    out = {}
    for backbone, (attention, pooling) in ROUTE_MODELS.items():
        out[backbone] = shutil.copytree(tiny_backbone_dirs(backbone), root / backbone)
        moca_config.update(out[backbone], attention=attention, pooling=pooling)
    return out


@pytest.fixture(scope="module")
def encoders(checkpoints):
    return {b: MoCaEncoder.from_pretrained(p, device="cpu", cache_memory_mb=0) for b, p in checkpoints.items()}


def test_encoders_read_attention_pooling_and_backbone(encoders):
    for backbone, (attention, pooling) in ROUTE_MODELS.items():
        model = encoders[backbone].model
        assert (model.backbone, model.attention, model.pooling) == (backbone, attention, pooling)


# ----------------------------------------------------------------------------------------------- vidore


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(ROUTE_MODELS))
def test_vidore_cli_on_every_backbone(checkpoints, encoders, tmp_path, backbone):
    pytest.importorskip("vidore_benchmark")
    from .test_vidore_cli import (
        BEIR_QRELS,
        BEIR_QUERIES,
        cli_env,
        evaluate_args,
        expected_metrics,
        metrics_of,
        numpy_scores,
        page,
        png,
        vidore_results,
        write_beir,
    )

    pages = [png(page(i, 80 + 20 * i, 100 + 10 * (i % 3))) for i in range(6)]
    beir = write_beir(tmp_path / "beir", pages, BEIR_QUERIES, BEIR_QRELS)
    ckpt = checkpoints[backbone]
    cmd = [str(Path(sys.executable).parent / "vidore-benchmark"), *evaluate_args("moca", ckpt, "beir", tmp_path / "out",
                                                                                 dataset=beir)]  # fmt: skip
    env = cli_env(tmp_path, MOCA_SCORES_DIR=str(tmp_path / "scores"))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    scores = np.load(tmp_path / "scores" / "scores-000.npy", allow_pickle=False)
    expected = numpy_scores(encoders[backbone], BEIR_QUERIES, pages)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    qrels = {str(q): {} for q, _, _ in BEIR_QRELS}
    for q, d, s in BEIR_QRELS:
        qrels[str(q)][str(d)] = s
    want = expected_metrics(qrels, vidore_results([str(i) for i in range(len(BEIR_QUERIES))],
                                                  [str(i) for i in range(len(pages))], expected))  # fmt: skip
    metrics = metrics_of(tmp_path / "out", "moca", ckpt)[str(beir)]
    assert {k: metrics[k] for k in want} == pytest.approx(want, abs=1.5e-5)


@pytest.mark.parametrize("backbone", list(ROUTE_MODELS))
def test_vidore_retriever_in_process(checkpoints, encoders, backbone):
    pytest.importorskip("vidore_benchmark")
    from PIL import Image

    from moca_bench.prompts import VIDORE_DOCUMENT_PROMPT
    from moca_bench.vidore import MoCaVidoreRetriever

    retriever = MoCaVidoreRetriever(str(checkpoints[backbone]), num_workers=0)
    assert (retriever.encoder.model.attention, retriever.encoder.model.pooling) == ROUTE_MODELS[backbone]
    pages = [Image.new("RGB", (90 + 10 * i, 120), (40 * i, 90, 200)) for i in range(3)]
    queries = ["a blue page", "the red one"]
    q = retriever.forward_queries(queries, batch_size=2)
    p = retriever.forward_passages(pages, batch_size=2)
    scores = np.asarray(retriever.get_scores(q, p), dtype=np.float64)
    enc = encoders[backbone]
    want = enc.encode(queries, show_progress=False) @ enc.encode(
        [{"image": x, "text": VIDORE_DOCUMENT_PROMPT} for x in pages], show_progress=False).T  # fmt: skip
    np.testing.assert_allclose(scores, want, atol=1e-5)


# ----------------------------------------------------------------------------------------------- MTEB


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(ROUTE_MODELS))
def test_mteb_run_with_a_local_checkpoint(checkpoints, tmp_path, backbone):
    """``mteb run -m <dir>`` in a fresh process, on a text and an image mock task, through the entry point."""
    pytest.importorskip("mteb", minversion="2")
    from moca_bench.mteb_models import CHECKPOINTS_ENV

    ckpt = str(checkpoints[backbone])
    env = {**os.environ, CHECKPOINTS_ENV: ckpt, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cli = Path(sys.executable).with_name("mteb")
    proc = subprocess.run(
        [str(cli), "mock-run", "-m", ckpt, "--device", "cpu"], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "passed all expected checks" in out


@pytest.mark.parametrize("backbone", list(ROUTE_MODELS))
def test_mteb_encoder_in_process(checkpoints, encoders, backbone):
    pytest.importorskip("mteb", minversion="2")
    from moca_bench.mteb_models import MoCaMTEBEncoder

    model = MoCaMTEBEncoder(f"local/{backbone}", checkpoint=str(checkpoints[backbone]), device="cpu")
    assert (model.model.attention, model.model.pooling, model.model.backbone) == (*ROUTE_MODELS[backbone], backbone)
    texts = ["a red circle", "the total revenue of 2021"]
    direct = encoders[backbone].encode(texts, show_progress=False)
    got = model.encoder.encode(texts, show_progress=False)
    np.testing.assert_allclose(got, direct, atol=1e-6)


# ----------------------------------------------------------------------------------------------- MMEB


@pytest.fixture(scope="module")
def mmeb_v1(tmp_path_factory):
    from moca_bench.mmeb.synthetic import write_sample

    return write_sample(tmp_path_factory.mktemp("mmeb") / "data")


@pytest.mark.parametrize("backbone", list(ROUTE_MODELS))
def test_mmeb_v1_on_every_backbone(checkpoints, encoders, mmeb_v1, tmp_path, backbone):
    from safetensors.numpy import load_file

    from moca_bench.mmeb import run
    from moca_bench.mmeb.config import MMEBConfig
    from moca_bench.mmeb.synthetic import SAMPLE_SUBSETS

    cfg = MMEBConfig(model=str(checkpoints[backbone]), data_dir=str(mmeb_v1), device="cpu", progress=False,
                     subsets=list(SAMPLE_SUBSETS)[:3], output_dir=str(tmp_path / "out"),
                     cache_dir=str(tmp_path / "cache"), model_name=backbone)  # fmt: skip
    report = run(cfg)
    assert all(d["score"] is not None for d in report["datasets"].values())
    assert report["model"]["settings"]["pooling"] == ROUTE_MODELS[backbone][1]
    name = next(iter(report["datasets"]))
    cached = next((tmp_path / "cache" / report["model"]["cache_key"]).glob(f"*{name}*.safetensors"))
    assert np.isfinite(load_file(str(cached))["embeddings"]).all()


@pytest.fixture(scope="module")
def mmeb_v2(tmp_path_factory):
    from moca_bench.mmeb.v2.synthetic import write_v2_sample

    return write_v2_sample(tmp_path_factory.mktemp("mmeb_v2"))


@pytest.mark.parametrize("backbone", list(ROUTE_MODELS))
def test_mmeb_v2_with_video_on_every_backbone(checkpoints, encoders, mmeb_v2, tmp_path, backbone):
    """The v2 CLI over image, video and visual-document tasks; videos reach the model as videos (Qwen3-VL:
    with a timestamp per temporal patch), and the cached vectors are MoCaEncoder's."""  # noqa: D205
    from safetensors.numpy import load_file

    from moca_bench.mmeb.cli import main
    from moca_bench.mmeb.v2.data import TableSource, media_dir
    from moca_bench.mmeb.v2.parse import ParseOptions, parse_task
    from moca_bench.mmeb.v2.tasks import TASKS
    from moca_model.processing_moca import normalize_item

    names = ["OK-VQA", "MSR-VTT", "MomentSeeker", "ViDoSeek-doc"]
    argv = ["--benchmark", "v2", "--model", str(checkpoints[backbone]), "--data-dir", str(mmeb_v2 / "hub"),
            "--image-root", str(mmeb_v2 / "data"), "--device", "cpu", "--no-progress", "--model-name", backbone,
            "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--subsets", *names]
    assert main(argv) == 0
    report = json.loads((tmp_path / "out" / backbone / "mmeb_v2.json").read_text())
    assert set(report["datasets"]) == set(names)
    assert all(d["score"] is not None and d["bad_rows"] == 0 for d in report["datasets"].values())
    task = TASKS["MomentSeeker"]
    data = parse_task(task, TableSource(mmeb_v2 / "hub"), media_dir(task, mmeb_v2 / "data", {}), ParseOptions())
    cached = load_file(str(tmp_path / "cache" / report["model"]["cache_key"] / "v2__MomentSeeker.safetensors"))
    enc = encoders[backbone]
    direct = enc.encode([data.item(i) for i in range(len(data.pairs))], show_progress=False)
    np.testing.assert_allclose(cached["embeddings"], direct, atol=1e-5)
    video = next(i for i, x in enumerate(data.pairs) if x.video and len(x.frames) > 1)
    tokens = enc.processor.process(normalize_item(data.item(video), 0), 0)
    assert tokens.video_grid_thw is not None
    text = enc.processor.tokenizer.decode(tokens.input_ids)
    assert ("seconds>" in text) is (backbone == "qwen3_vl")
