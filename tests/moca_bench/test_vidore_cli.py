"""The stock ``vidore-benchmark`` CLI with ``--model-class moca``, run as a subprocess, offline, on local data.

Every CLI start costs ~8 s of imports, so the default runs start together in one module fixture:
beir twice (determinism), qa through the ``moca-qwen25`` alias and ``--collection-name``, and the stock
CLI in a copy of this environment without our package. Bad-input CLI runs are marked slow; their
in-process counterparts are in test_vidore.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("vidore_benchmark")
datasets = pytest.importorskip("datasets")
pytrec_eval = pytest.importorskip("pytrec_eval")

from PIL import Image, ImageDraw  # noqa: E402

from moca_bench.prompts import VIDORE_DOCUMENT_PROMPT  # noqa: E402

pytestmark = pytest.mark.vidore

BIN = Path(sys.executable).parent
K_VALUES = (1, 3, 5, 10)
BEIR_QUERIES = ["revenue in 2021", "a blue square", "", "energy report table", "biomedical lecture"]
BEIR_QRELS = [(0, 0, 1), (1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 4, 1), (4, 5, 2)]
QA_ROWS = [("what colour is the circle", 0), ("the lazy dog", 1), ("annual report", 2), ("tables and figures", 2)]


def page(seed: int, w: int, h: int) -> Image.Image:
    """A deterministic page with two coloured shapes (so pages embed differently)."""
    img = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.rectangle([w // 5, h // 5, w * (2 + seed % 3) // 5, h * (3 + seed % 2) // 5], fill=(seed * 70 % 256, 90, 40))
    d.ellipse([w // 2, h // 2, w - 5, h - 5], fill=(seed * 20 % 256, 0, 255 - seed * 50 % 256))
    return img


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_beir(root: Path, pages: list[bytes], queries: list[str], qrels: list[tuple[int, int, int]]) -> Path:
    """vidore's BEIR layout: corpus/queries/qrels parquet files plus a README.md listing the configs."""
    img = datasets.Features({"corpus-id": datasets.Value("int64"), "image": datasets.Image()})
    parts = {
        "corpus": datasets.Dataset.from_dict(
            {"corpus-id": list(range(len(pages))), "image": [{"bytes": b, "path": None} for b in pages]}, features=img
        ),
        "queries": datasets.Dataset.from_dict({"query-id": list(range(len(queries))), "query": queries}),
        "qrels": datasets.Dataset.from_dict(
            {k: [r[i] for r in qrels] for i, k in enumerate(("query-id", "corpus-id", "score"))}
        ),
    }
    for name, ds in parts.items():
        (root / name).mkdir(parents=True)
        ds.to_parquet(root / name / "test-00000-of-00001.parquet")
    configs = "".join(f"- config_name: {n}\n  data_files:\n  - split: test\n    path: {n}/test-*\n" for n in parts)
    (root / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    return root


def write_qa(root: Path, pages: list[bytes], rows: list[tuple[str, int]]) -> Path:
    """vidore's QA layout: data/test-00000-of-00001.parquet with query, image, image_filename."""
    features = datasets.Features(
        {"query": datasets.Value("string"), "image": datasets.Image(), "image_filename": datasets.Value("string")}
    )
    ds = datasets.Dataset.from_dict(
        {
            "query": [q for q, _ in rows],
            "image": [{"bytes": pages[p], "path": None} for _, p in rows],
            "image_filename": [f"page_{p}.png" for _, p in rows],
        },
        features=features,
    )
    (root / "data").mkdir(parents=True)
    ds.to_parquet(root / "data" / "test-00000-of-00001.parquet")
    return root


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCA_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["HF_DATASETS_CACHE"] = str(tmp / "hf-cache")  # local parquet is converted to Arrow there
    env.update(_TYPER_STANDARD_TRACEBACK="1", COLUMNS="1000")  # unwrapped errors, so messages can be matched
    env.update(extra)
    return env


def evaluate_args(model_class: str, model: Path | None, fmt: str, out: Path, *, dataset=None, collection=None):
    args = ["evaluate-retriever", "--model-class", model_class, "--dataset-format", fmt, "--split", "test"]
    args += ["--model-name", str(model)] if model else []
    args += ["--dataset-name", str(dataset)] if dataset else ["--collection-name", str(collection)]
    return args + ["--batch-query", "8", "--batch-passage", "8", "--output-dir", str(out)]


def filtered_venv(dest: Path) -> Path:
    """A venv holding every package of this one except ours (dist-info, editable path, hook), as symlinks."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    lib = dest / "lib" / site.parent.name / "site-packages"
    lib.mkdir(parents=True)
    for entry in site.iterdir():
        if "moca" not in entry.name.lower():
            (lib / entry.name).symlink_to(entry)
    (dest / "bin").mkdir()
    (dest / "bin" / "python").symlink_to(Path(sys._base_executable).resolve())
    (dest / "pyvenv.cfg").write_text(
        f"home = {Path(sys._base_executable).parent}\ninclude-system-site-packages = false\n"
    )
    return dest / "bin" / "python"


WITHOUT_US = """
import importlib.util, sys
from importlib.metadata import entry_points
assert importlib.util.find_spec("moca_bench") is None and importlib.util.find_spec("moca_plugins") is None
assert not list(entry_points(group="vidore_benchmark.retrievers"))
from vidore_benchmark.cli.main import app
from vidore_benchmark.retrievers.registry_utils import VISION_RETRIEVER_REGISTRY
assert "moca" not in VISION_RETRIEVER_REGISTRY and "dummy_vision_retriever" in VISION_RETRIEVER_REGISTRY
sys.argv = ["vidore-benchmark", *sys.argv[1:]]
app()
"""


@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    """Write the data, start every default CLI run at once, wait for all of them."""
    tmp = tmp_path_factory.mktemp("vidore_cli")
    pages = [png(page(i, 80 + 20 * i, 100 + 10 * (i % 3))) for i in range(6)]
    beir = write_beir(tmp / "beir", pages, BEIR_QUERIES, BEIR_QRELS)
    qa = write_qa(tmp / "coll" / "qa_tiny", pages, QA_ROWS)
    cli = str(BIN / "vidore-benchmark")
    specs = {
        f"beir{i}": (
            [cli, *evaluate_args("moca", tiny_dir, "beir", tmp / f"out-beir{i}", dataset=beir)],
            cli_env(tmp, MOCA_SCORES_DIR=str(tmp / f"scores-beir{i}")),
        )
        for i in (1, 2)
    }
    specs["qa"] = (
        [cli, *evaluate_args("moca-qwen25", tiny_dir, "qa", tmp / "out-qa", collection=tmp / "coll")],
        cli_env(tmp, MOCA_SCORES_DIR=str(tmp / "scores-qa")),
    )
    python = filtered_venv(tmp / "venv-without-moca")
    specs["without"] = (
        [
            str(python),
            "-c",
            WITHOUT_US,
            *evaluate_args("dummy_vision_retriever", None, "qa", tmp / "out-without", dataset=qa),
        ],
        cli_env(tmp),
    )
    procs = {
        name: subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, (cmd, env) in specs.items()
    }
    logs = {name: p.communicate(timeout=600)[0] for name, p in procs.items()}
    codes = {name: p.returncode for name, p in procs.items()}
    return {"tmp": tmp, "pages": pages, "beir": beir, "qa": qa, "logs": logs, "codes": codes}


def check_ok(runs, name: str) -> str:
    log = runs["logs"][name]
    assert runs["codes"][name] == 0, log[-3000:]
    return log


def metrics_of(out: Path, model_class: str, model: Path) -> dict:
    files = sorted(out.glob("*_metrics.json"))  # the merged file; per-dataset ones sit in a subfolder
    assert len(files) == 1, files
    assert files[0].name == f"{model_class}_{str(model).replace('/', '_')}_metrics.json"
    return json.loads(files[0].read_text())["metrics"]


def vidore_results(query_keys, doc_keys, scores) -> dict:
    """vidore 5.0.0's score -> results rule: first passage raw, later ones ``max(previous or 0, score)``."""
    results: dict[str, dict[str, float]] = {}
    for qi, qk in enumerate(query_keys):
        for di, dk in enumerate(doc_keys):
            s = float(scores[qi, di])
            if qk in results:
                results[qk][dk] = max(results[qk].get(dk, 0), s)
            else:
                results[qk] = {dk: s}
    return results


def expected_metrics(qrels: dict, results: dict) -> dict:
    cuts = ",".join(map(str, K_VALUES))
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cuts}", f"recall.{cuts}"}).evaluate(results)
    out = {}
    for k in K_VALUES:
        for ours, theirs in (("ndcg_at", "ndcg_cut"), ("recall_at", "recall")):
            out[f"{ours}_{k}"] = round(float(np.mean([m[f"{theirs}_{k}"] for m in per_query.values()])), 5)
    return out


def numpy_scores(encoder, queries: list[str], pages: list[bytes]) -> np.ndarray:
    """Reference: the encoder's own embeddings of the documented items, multiplied in float64."""
    q = encoder.encode(queries, batch_size=8, show_progress=False)
    items = [{"image": Image.open(io.BytesIO(b)), "text": VIDORE_DOCUMENT_PROMPT} for b in pages]
    p = encoder.encode(items, batch_size=8, show_progress=False)
    return q.astype(np.float64) @ p.astype(np.float64).T


def test_beir_run_writes_metrics_and_scores_equal_numpy(runs, tiny_dir, tiny_encoder):
    log = check_ok(runs, "beir1")
    metrics = metrics_of(runs["tmp"] / "out-beir1", "moca", tiny_dir)[str(runs["beir"])]
    scores = np.load(runs["tmp"] / "scores-beir1" / "scores-000.npy", allow_pickle=False)
    assert scores.dtype == np.float32 and scores.shape == (len(BEIR_QUERIES), len(runs["pages"]))
    expected = numpy_scores(tiny_encoder, BEIR_QUERIES, runs["pages"])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    qrels = {str(q): {} for q, _, _ in BEIR_QRELS}
    for q, d, s in BEIR_QRELS:
        qrels[str(q)][str(d)] = s
    results = vidore_results(
        [str(i) for i in range(len(BEIR_QUERIES))], [str(i) for i in range(len(runs["pages"]))], expected
    )
    want = expected_metrics(qrels, results)
    assert {k: metrics[k] for k in want} == pytest.approx(want, abs=1.5e-5)
    assert "1 blank queries" in log  # the empty query's documented fallback is announced


def test_two_runs_give_identical_metrics_and_scores(runs, tiny_dir):
    check_ok(runs, "beir1")
    check_ok(runs, "beir2")
    a = metrics_of(runs["tmp"] / "out-beir1", "moca", tiny_dir)
    b = metrics_of(runs["tmp"] / "out-beir2", "moca", tiny_dir)
    assert a == b
    sa, sb = (np.load(runs["tmp"] / f"scores-beir{i}" / "scores-000.npy") for i in (1, 2))
    assert np.array_equal(sa, sb)


def test_qa_run_through_alias_and_local_collection(runs, tiny_dir, tiny_encoder):
    check_ok(runs, "qa")
    metrics = metrics_of(runs["tmp"] / "out-qa", "moca-qwen25", tiny_dir)[str(runs["qa"])]
    assert (runs["tmp"] / "out-qa" / f"moca-qwen25_{str(tiny_dir).replace('/', '_')}").is_dir()  # per-dataset files
    queries = [q for q, _ in QA_ROWS]  # all distinct: vidore's query dedup keeps them in order
    row_pages = [runs["pages"][p] for _, p in QA_ROWS]
    scores = np.load(runs["tmp"] / "scores-qa" / "scores-000.npy")
    expected = numpy_scores(tiny_encoder, queries, row_pages)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    filenames = [f"page_{p}.png" for _, p in QA_ROWS]
    qrels = {q: {f: 1} for q, f in zip(queries, filenames)}
    want = expected_metrics(qrels, vidore_results(queries, filenames, expected))
    assert {k: metrics[k] for k in want} == pytest.approx(want, abs=1.5e-5)


def test_vidore_still_works_without_our_package(runs):
    log = check_ok(runs, "without")
    files = list((runs["tmp"] / "out-without").glob("*_metrics.json"))
    assert len(files) == 1 and "ndcg_at_5" in json.loads(files[0].read_text())["metrics"][str(runs["qa"])]
    assert "moca" not in log.lower().replace(str(runs["tmp"]).lower(), "")


def run_cli(tmp: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "vidore-benchmark"), *args], cwd=tmp, env=cli_env(tmp), capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_cli_names_a_missing_model_path(tmp_path):
    qa = write_qa(tmp_path / "qa", [png(page(0, 60, 60))], [("q", 0)])
    missing = tmp_path / "no" / "such" / "checkpoint"
    res = run_cli(tmp_path, evaluate_args("moca", missing, "qa", tmp_path / "out", dataset=qa))
    assert res.returncode != 0
    assert "MoCaLoadError" in res.stderr and str(missing) in res.stderr
    assert not list(tmp_path.glob("out/**/*_metrics.json"))


@pytest.mark.slow
def test_cli_unreadable_page_fails_before_encoding_and_writes_nothing(tmp_path, tiny_dir):
    pages = [png(page(0, 60, 60)), b"this is not an image"]
    beir = write_beir(tmp_path / "beir", pages, ["q0", "q1"], [(0, 0, 1), (1, 1, 1)])
    res = run_cli(tmp_path, evaluate_args("moca", tiny_dir, "beir", tmp_path / "out", dataset=beir))
    assert res.returncode != 0
    # vidore decodes dataset images (datasets -> PIL) before calling the retriever (see moca_bench.vidore)
    assert "UnidentifiedImageError" in res.stderr and "cannot identify image file" in res.stderr
    assert not list(tmp_path.glob("out/**/*_metrics.json"))
