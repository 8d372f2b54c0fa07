"""The demo: the generated world is readable by every consumer, and the reduced pipeline learns.

``test_world_*`` are fast (a few seconds, a tiny world). ``test_smoke_pipeline`` runs the whole reduced
pipeline (world -> causal base -> CPT and the causal-LM control -> CL arms a_last, b, c, b_plus through the
real CLIs -> MMEB + ViDoRe + CL validation + MTEB) and takes about 3-4 minutes on two cores, so it is
marked slow.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")  # the page font; not in the mteb environment
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from demo import world as demo_world  # noqa: E402

TINY = demo_world.WorldConfig(
    cl_pairs={task: 6 for task in demo_world.CL_TASKS},
    corpus_shape_records=6,
    corpus_scene_records=3,
    corpus_digit_records=4,
    corpus_page_records=2,
    eval_queries=8,
    retrieval_pools=2,
    grounding_queries=10,
    page_pools=2,
    eval_digits=20,
    cl_digits=20,
    grounding_candidates=8,
)
PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    return out, demo_world.build_world(TINY, out, show_progress=False)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "world.json"):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_world_is_a_function_of_the_seed(tiny_world, tmp_path):
    out, _ = tiny_world
    again = demo_world.build_world(TINY, tmp_path / "again", show_progress=False)
    assert _digest(tmp_path / "again" / "cl") == _digest(out / "cl")
    assert _digest(tmp_path / "again" / "cpt") == _digest(out / "cpt")
    assert _digest(tmp_path / "again" / "base") == _digest(out / "base")
    other = demo_world.build_world(replace(TINY, seed=1), tmp_path / "other", show_progress=False)
    assert _digest(tmp_path / "other" / "cl") != _digest(out / "cl")
    assert again["mmeb_subsets"] == other["mmeb_subsets"]


@pytest.mark.parametrize("corpus", ["base", "cpt"])
def test_world_unlabelled_records_match_their_images(tiny_world, corpus):
    out, manifest = tiny_world
    records = [json.loads(line) for line in (out / manifest[corpus]["path"]).read_text().splitlines()]
    assert len(records) == manifest[corpus]["records"] > 0
    with_images = [r for r in records if r["images"]]
    assert with_images and len(with_images) < len(records)  # interleaved records plus text-only documents
    for r in records:
        assert r["text"].count(PLACEHOLDER) == len(r["images"])
        assert all((out / corpus / p).is_file() for p in r["images"])


def test_world_unlabelled_images_are_disjoint_from_cl_and_evaluation(tiny_world):
    import pyarrow.parquet as pq

    out, _ = tiny_world

    def contents(folder: Path) -> set[str]:
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}

    base, cpt, cl, mmeb = (contents(out / f) for f in ("base", "cpt", "cl", "mmeb"))
    pages = {hashlib.sha256(r["image"]["bytes"]).hexdigest() for pool in (out / "vidore").iterdir()
             for r in pq.read_table(pool / "corpus").to_pylist()}  # fmt: skip
    assert base and cpt and cl and mmeb and pages
    for unlabelled in (base, cpt):
        assert not unlabelled & cl and not unlabelled & mmeb and not unlabelled & pages
    assert not base & cpt  # CPT brings data the base model has not seen


def test_world_eval_sizes_follow_the_config(tiny_world):
    _, manifest = tiny_world
    rows = {s: v["rows"] for s, v in manifest["mmeb_subsets"].items()}
    assert rows["DigitsCls"] == rows["CountVQA"] == TINY.eval_queries
    assert rows["Shapes_t2i"] == rows["Shapes_i2t"] == 32 * TINY.retrieval_pools  # the held-out combinations
    assert rows["ShapeGrounding"] == TINY.grounding_queries
    assert manifest["vidore"]["queries"] == TINY.page_pools * 16 * len(demo_world.eval_page_queries("json"))


def test_world_cl_rows_load_in_the_trainer(tiny_world):
    pytest.importorskip("accelerate")
    from moca_train.cl.config import CLDataConfig, CLDatasetConfig
    from moca_train.cl.data import load_cl_data

    out, manifest = tiny_world
    specs = [CLDatasetConfig(name=t, path=str(out / s["path"])) for t, s in manifest["cl_tasks"].items()]
    data = load_cl_data(CLDataConfig(datasets=specs, num_negatives=2, global_batch_size=4))
    assert [t.name for t in data.tasks] == list(demo_world.CL_TASKS)
    assert all(len(t.examples) == 6 for t in data.tasks)  # nothing dropped: every image exists
    assert data.stats.get("dropped_missing_image", 0) == 0


def test_world_mmeb_layout_reads_in_the_runner(tiny_world):
    from moca_bench.mmeb.data import build_subset, find_image_root, read_local_rows

    out, manifest = tiny_world
    data_dir = out / "mmeb"
    for subset, spec in manifest["mmeb_subsets"].items():
        rows = read_local_rows(data_dir, subset)
        assert len(rows) == spec["rows"] > 0
        paths = [r["qry_img_path"] for r in rows] + [p for r in rows for p in r["tgt_img_path"]]
        root = find_image_root(data_dir, paths)
        assert all((root / p).is_file() for p in paths if p)
        data = build_subset(subset, rows, image_root=root)
        assert (data.candidates[:, 0] >= 0).all()
        for r in rows:  # the ground truth sits at index 0 and is not repeated among the distractors
            gt = (r["tgt_text"][0], r["tgt_img_path"][0])
            assert gt not in list(zip(r["tgt_text"][1:], r["tgt_img_path"][1:], strict=True))


def test_world_vidore_beir_layout_loads(tiny_world, tmp_path):
    datasets = pytest.importorskip("datasets")
    out, manifest = tiny_world
    assert sorted(p.name for p in (out / "vidore").iterdir()) == ["demo_pages_00", "demo_pages_01"]
    path = str(out / manifest["vidore"]["path"] / demo_world.pool_name(1))
    # A private cache: datasets keys local folders by name and patterns, not content (see demo/run.py).
    corpus, queries, qrels = (datasets.load_dataset(path, name, split="test", cache_dir=str(tmp_path / "hf"))
                              for name in ("corpus", "queries", "qrels"))  # fmt: skip
    assert len(corpus) == manifest["vidore"]["pages"] and corpus[0]["image"].size == (168, 168)
    assert len(queries) * manifest["vidore"]["pools"] == manifest["vidore"]["queries"] and len(queries) == len(qrels)
    assert set(qrels["corpus-id"]) == set(corpus["corpus-id"])


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.vidore
def test_smoke_pipeline(tmp_path):
    """The reduced demo end to end: every results file, the arms' attention, and CL beats the bare base."""
    pytest.importorskip("accelerate")
    pytest.importorskip("vidore_benchmark")
    import yaml

    from demo import run as demo_run
    from moca_model import moca_config

    mteb_python = ROOT / ".venv-mteb" / "bin" / "python"  # the MTEB stage runs where mteb 2.x lives
    mteb_python = mteb_python if mteb_python.is_file() else None
    preset = demo_run.PRESETS["smoke"]
    work = tmp_path / "work"
    payload = demo_run.run(preset, work=work, results_dir=tmp_path / "results", jobs=2, show_progress=False,
                           mteb_python=mteb_python)  # fmt: skip
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert (tmp_path / "results" / "demo.png").stat().st_size > 10_000
    arms = {"base", "a_last", "b", "c", "b_plus"}
    seed = results["per_seed"]["0"]
    assert set(seed["scores"]["MMEB overall"]) == arms
    assert set(seed["differences"]) == {"c-b", "c-a_last", "c-b_plus", "b-a_last", "b_plus-b"}
    for row in seed["scores"].values():
        for ci in row.values():
            assert ci["lo"] <= ci["score"] <= ci["hi"] and 0.0 <= ci["lo"] and ci["hi"] <= 100.0
    from demo.plan import model_name, recipe_lr

    runs = work / "s0" / "runs"
    name = {arm: model_name(arm, recipe_lr()) for arm in ("a_last", "b", "c", "b_plus")}  # the recipe's CL LR
    expected = {"base": ("causal", "mean"), f"cl_{name['a_last']}": ("causal", "last"),
                f"cl_{name['b']}": ("bidirectional", "mean"), f"cl_{name['c']}": ("bidirectional", "mean"),
                f"cl_{name['b_plus']}": ("bidirectional", "mean"), "cpt_mlm_mae": ("bidirectional", "mean"),
                "cpt_clm": ("causal", "mean")}  # fmt: skip
    for run, (attention, pooling) in expected.items():
        (ckpt,) = (runs / run).glob("checkpoint-*")
        assert moca_config.attention(ckpt) == attention, run
        assert moca_config.pooling(ckpt) == pooling, run
        assert yaml.safe_load((ckpt / "run_config.yaml").read_text())["model"]["attention"] == attention, run
    settings = json.loads((work / "s0" / "evals" / "mmeb" / name["a_last"] / "mmeb.json").read_text())["model"]
    assert settings["settings"]["bidirectional"] is False  # the evaluation honoured the arm's recorded attention
    diag = seed["diagnostics"]
    assert diag["cpt_clm"]["tokens"] == diag["cpt_mlm_mae"]["tokens"] > 0  # the control's token budget is CPT's
    assert 0 < diag["cl_b"]["weight_drift"] < 10 and 0 <= diag["cl_b"]["val_mean"] <= 100
    digits = {m: seed["subsets"]["subset DigitsCls"][m]["score"] for m in arms}
    assert min(digits[m] for m in arms - {"base"}) >= digits["base"] + 15, digits
    if mteb_python is not None:
        assert set(results["mteb_check"]["a_last"]) >= {"DemoShapesT2I", "DemoPages"}
    cost = results["cost"]
    assert cost["idle_wall_estimate"] > 0 and all(cost["per_job"].values())
    assert cost["jobs_run_here"] == cost["jobs_total"] == len(cost["per_job"])
    assert results["provenance"]["protocol_sha256"] and results["provenance"]["commits"]
    assert results["work_dir"] == "work" and '"/' not in (tmp_path / "results" / "results.json").read_text()
    assert payload["per_seed"]["0"]["scores"] == seed["scores"]
    again = demo_run.run(preset, work=work, results_dir=tmp_path / "again", jobs=2, show_progress=False,
                         mteb_python=mteb_python)  # fmt: skip
    assert again["cost"]["jobs_run_here"] == 0  # every stage resumed: the report says so, not a 5 s "wall"
    assert again["per_seed"]["0"]["scores"] == seed["scores"]


def test_a_job_running_in_another_invocation_is_awaited_not_rerun(tmp_path):
    import fcntl
    import threading

    from demo.jobs import Job, run_jobs

    out = tmp_path / "out"
    code = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('ran here')"
    job = Job("shared", [sys.executable, "-c", code, str(out)], tmp_path / "shared.log", done=out.is_file)
    after = Job("after", [sys.executable, "-c", "pass"], tmp_path / "after.log", deps=("shared",))
    lock = (tmp_path / "shared.log.lock").open("a")
    fcntl.flock(lock, fcntl.LOCK_EX)  # "another invocation" is running the job
    worker = threading.Thread(target=run_jobs, args=([job, after],), kwargs={"show_progress": False})
    worker.start()
    worker.join(timeout=2.0)
    assert worker.is_alive() and not out.exists()  # waiting, not starting it a second time
    out.write_text("done elsewhere")
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()
    worker.join(timeout=60)
    assert not worker.is_alive() and out.read_text() == "done elsewhere" and job.skipped and not after.skipped


def test_a_skipped_job_does_not_let_later_jobs_jump_the_queue(tmp_path):
    from demo.jobs import Job, run_jobs

    order = tmp_path / "order"

    def appender(name: str, deps=(), done=None) -> Job:
        code = (f"import pathlib; p = pathlib.Path({str(order)!r}); "
                f"p.write_text((p.read_text() if p.exists() else '') + {name!r})")
        return Job(name, [sys.executable, "-c", code], tmp_path / f"{name}.log", deps=deps, done=done)

    # "cpt" waits on "base", which is already done: it must start before "later" (next in the list)
    jobs = [appender("base", done=lambda: True), appender("cpt", ("base",)), appender("later")]
    run_jobs(jobs, max_parallel=1, show_progress=False)
    assert order.read_text() == "cptlater"


def test_results_go_to_an_ignored_folder_unless_asked(monkeypatch, tmp_path):
    from demo import run as demo_run

    seen = {}
    monkeypatch.setattr(demo_run, "run", lambda preset, **kw: seen.update(kw))
    assert demo_run.main(["--no-mteb"]) == 0
    work, results = seen["work"], seen["results_dir"]
    assert work == (ROOT / "demo_out").resolve() and results == work / "results" / "demo"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(results / "results.json")], cwd=ROOT)
    assert ignored.returncode == 0  # make demo never writes a tracked file
    demo_run.main(["--preset", "study", "--results-dir", str(tmp_path / "r")])
    assert seen["results_dir"] == tmp_path / "r"


def test_committed_results_hold_no_absolute_path():
    import gzip

    folder = ROOT / "results" / "demo"
    files = [p for p in folder.rglob("*") if p.suffix in (".json", ".md") or p.name.endswith(".json.gz")]
    assert files
    for path in files:
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for marker in ('"/', " /work/", " /tmp/", " /home/", "/root/"):
            assert marker not in text, f"{path.name} holds an absolute path ({marker!r})"


def test_jobs_respect_dependencies_skips_and_failures(tmp_path):
    from demo.jobs import Job, JobFailedError, run_jobs

    def writer(name: str, deps: tuple[str, ...] = (), done=None) -> Job:
        code = f"import pathlib; pathlib.Path({str(tmp_path / name)!r}).write_text('x')"
        return Job(name, [sys.executable, "-c", code], tmp_path / f"{name}.log", deps=deps, done=done)

    (tmp_path / "a").write_text("existing")
    jobs = [writer("a", done=(tmp_path / "a").is_file), writer("b", ("a",)), writer("c", ("a", "b"))]
    run_jobs(jobs, max_parallel=2, show_progress=False)
    assert (tmp_path / "a").read_text() == "existing"  # skipped: its outputs existed
    assert jobs[0].skipped and (tmp_path / "c").is_file() and not jobs[2].skipped
    bad = Job("bad", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], tmp_path / "bad.log")
    with pytest.raises(JobFailedError, match=r"(?s)bad failed \(exit 3\).*boom"):
        run_jobs([bad], show_progress=False)


def test_training_code_changes_ignore_only_the_overridden_cl_learning_rate(tmp_path):
    """Writing the selected LR into the CL recipe changes no run (every CL command passes it); any other
    change to the training code, in that file or elsewhere, is reported."""
    from demo.provenance import training_code_changes

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout.strip()

    recipe = tmp_path / "configs" / "cl" / "demo.yaml"
    recipe.parent.mkdir(parents=True)
    (tmp_path / "moca_train").mkdir()
    (tmp_path / "moca_train" / "engine.py").write_text("STEP = 1\n")
    recipe.write_text("train:\n  learning_rate: 1.0e-3\n  warmup_ratio: 0.1\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    first = git("rev-parse", "HEAD")

    def commit(path: Path, text: str) -> str:
        path.write_text(text)
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "next")
        return git("rev-parse", "HEAD")

    lr = commit(recipe, "train:\n  learning_rate: 1.0e-4\n  warmup_ratio: 0.1\n")
    assert training_code_changes(first, lr, root=tmp_path) == []
    assert training_code_changes(first, lr + "+dirty", root=tmp_path) == []
    warmup = commit(recipe, "train:\n  learning_rate: 1.0e-4\n  warmup_ratio: 0.2\n")
    assert training_code_changes(first, warmup, root=tmp_path) == ["configs/cl/demo.yaml"]
    engine = commit(tmp_path / "moca_train" / "engine.py", "STEP = 2\n")
    assert training_code_changes(lr, engine, root=tmp_path) == ["configs/cl/demo.yaml", "moca_train/engine.py"]
    assert training_code_changes(first, "0" * 40, root=tmp_path) is None
