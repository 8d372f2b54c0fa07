"""MoCaMTEBEncoder under mteb 2.x, offline: mock any-to-any tasks, a local page-retrieval task with images
written here, mixed batches, and embeddings identical to MoCaEncoder on the same formatted items."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

mteb = pytest.importorskip("mteb", minversion="2.0")

from datasets import Dataset, Image  # noqa: E402
from mteb.abstasks.retrieval import AbsTaskRetrieval  # noqa: E402
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData  # noqa: E402
from mteb.abstasks.task_metadata import TaskMetadata  # noqa: E402
from mteb.mocks.mock_tasks.retrieval import MockAny2AnyRetrievalI2TTask, MockAny2AnyRetrievalT2ITask  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from moca_bench.mteb_models import CHECKPOINTS_ENV, MOCA_3B_META, MoCaMTEBEncoder  # noqa: E402
from moca_bench.prompts import MTEB_IMAGE_INSTRUCTION, VIDORE_DOCUMENT_PROMPT  # noqa: E402


@pytest.fixture(scope="module")
def mteb_model(tiny_dir):
    """``mteb.get_model(<tiny dir>)`` once ``$MOCA_MTEB_CHECKPOINTS`` lists it, resolved through our entry point.

    The variable is read when the entry point's module is imported; here it is re-imported with the
    variable set and the hook loads the group again, exactly as at interpreter start (the slow CLI test
    below does it in a fresh process). A recorder wraps ``MoCaEncoder.encode``.
    """
    import importlib
    import os
    from importlib.metadata import entry_points

    import moca_plugins._hook as hook
    from mteb.models.model_implementations import MODEL_REGISTRY

    (ep,) = [e for e in entry_points(group="mteb.models") if e.name == "moca"]
    assert ep.value == "moca_plugins.mteb:MODEL_METAS"
    os.environ[CHECKPOINTS_ENV] = os.pathsep.join([str(tiny_dir), f"tiny-org/tiny-moca={tiny_dir}"])
    try:
        importlib.reload(importlib.import_module(ep.module))
        hook._loaded.discard("mteb.models.model_implementations")
        hook.load_plugins("mteb.models.model_implementations")
        model = mteb.get_model(str(tiny_dir), device="cpu")
        alias = mteb.get_model_meta("tiny-org/tiny-moca")
    finally:
        del os.environ[CHECKPOINTS_ENV]
        importlib.reload(importlib.import_module(ep.module))
        for name in (str(tiny_dir), str(tiny_dir.resolve()), "tiny-org/tiny-moca"):
            MODEL_REGISTRY.pop(name, None)
    calls = []
    inner = model.encoder.encode

    def recording(items, **kwargs):
        out = inner(items, **kwargs)
        calls.append({"items": list(items), "kwargs": kwargs, "out": out})
        return out

    model.encoder.encode = recording
    model.calls = calls
    model.alias = alias
    return model


def test_get_model_resolves_a_local_checkpoint_through_the_entry_point(mteb_model, tiny_dir):
    assert type(mteb_model) is MoCaMTEBEncoder
    assert mteb_model.mteb_model_meta.name == str(tiny_dir)
    assert mteb_model.mteb_model_meta.embed_dim == mteb_model.encoder.dim == 64
    assert mteb_model.alias.loader is MoCaMTEBEncoder
    assert mteb_model.alias.loader_kwargs == {"checkpoint": str(tiny_dir.resolve())}


def test_loader_honours_the_checkpoint_attention_and_the_attention_kwarg(tiny_dir, tmp_path):
    import shutil

    from moca_model import moca_config

    causal = tmp_path / "causal"
    shutil.copytree(tiny_dir, causal)
    moca_config.update(causal, attention="causal")
    assert MoCaMTEBEncoder("local/causal", checkpoint=str(causal), device="cpu").model.bidirectional is False
    forced = MoCaMTEBEncoder("local/causal", checkpoint=str(causal), device="cpu", attention="bidirectional")
    assert forced.model.bidirectional is True
    assert MoCaMTEBEncoder("local/tiny", checkpoint=str(tiny_dir), device="cpu").model.bidirectional is True


def _as_pil(item):
    """The same item with its image decoded, as a user of MoCaEncoder would pass it."""
    if isinstance(item, dict) and isinstance(item.get("image"), bytes):
        return {**item, "image": PILImage.open(io.BytesIO(item["image"]))}
    return item


def run(model, tasks, **encode_kwargs):
    model.calls.clear()
    result = mteb.evaluate(model, tasks, cache=None, show_progress_bar=False, encode_kwargs=encode_kwargs)
    return {r.task_name: r for r in result.task_results}


def test_mock_any2any_tasks_and_identity_with_moca_encoder(mteb_model, tiny_encoder):
    assert isinstance(mteb_model, MoCaMTEBEncoder)
    results = run(mteb_model, [MockAny2AnyRetrievalT2ITask(), MockAny2AnyRetrievalI2TTask()], batch_size=3)
    assert set(results) == {"MockAny2AnyRetrievalT2I", "MockAny2AnyRetrievalI2T"}
    for r in results.values():
        assert 0.0 <= r.get_score() <= 1.0
    texts = {"This is a positive sentence", "This is another positive sentence"}
    seen = {"text": 0, "image": 0}
    for call in mteb_model.calls:
        assert call["kwargs"]["batch_size"] == 3 and call["kwargs"]["show_progress"] is True
        for item in call["items"]:
            if isinstance(item, str):  # queries (T2I) and captions (I2T): raw text, no task prompt
                assert item in texts
                seen["text"] += 1
            else:  # images, undecoded, with the MMEB image prompt
                assert item["text"] == f"\n{MTEB_IMAGE_INSTRUCTION}\n" and isinstance(item["image"], bytes)
                seen["image"] += 1
        direct = tiny_encoder.encode([_as_pil(i) for i in call["items"]], batch_size=3, show_progress=False)
        assert call["out"].dtype == np.float32
        np.testing.assert_array_equal(call["out"], direct)
    assert seen == {"text": 4, "image": 4}


class LocalPageRetrieval(AbsTaskRetrieval):
    """A ViDoRe-style task (DocumentUnderstanding, t2i) whose pages are PNG files written by the test."""

    metadata = TaskMetadata(
        name="LocalPageRetrieval",
        description="Pages written by the test; queries are their captions.",
        reference="https://example.org/local",
        dataset={"path": "local", "revision": "local"},
        type="DocumentUnderstanding",
        category="t2i",
        modalities=["text", "image"],
        eval_splits=["test"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_5",
        date=("2025-01-01", "2025-01-02"),
        domains=[],
        task_subtypes=[],
        license="mit",
        annotations_creators="derived",
        dialect=[],
        sample_creation="created",
        bibtex_citation="",
        prompt={"query": "Find a screenshot that relevant to the user's question."},
    )
    page_dir = None

    def load_data(self, num_proc=None, **kwargs):
        rng = np.random.default_rng(1)
        paths = []
        for i in range(6):
            path = self.page_dir / f"page{i}.png"
            size = (56 + 8 * i, 84 - 4 * i, 3)
            PILImage.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(path)
            paths.append(str(path))
        corpus = Dataset.from_dict({"id": [f"d{i}" for i in range(6)], "image": paths}).cast_column("image", Image())
        queries = Dataset.from_dict({"id": [f"q{i}" for i in range(4)], "text": [f"page number {i}" for i in range(4)]})
        split = RetrievalSplitData(
            corpus=corpus, queries=queries, relevant_docs={f"q{i}": {f"d{i}": 1} for i in range(4)}, top_ranked=None
        )
        self.dataset = {"default": {"test": split}}
        self.data_loaded = True


def test_local_page_task_matches_scores_from_moca_encoder(mteb_model, tiny_encoder, tmp_path):
    LocalPageRetrieval.page_dir = tmp_path
    score = run(mteb_model, [LocalPageRetrieval()], batch_size=4)["LocalPageRetrieval"].scores["test"][0]
    queries = [c["items"] for c in mteb_model.calls if all(isinstance(i, str) for i in c["items"])]
    pages = [c["items"] for c in mteb_model.calls if not isinstance(c["items"][0], str)]
    assert queries == [[f"page number {i}" for i in range(4)]]  # raw queries: the task prompt is not used
    assert [p["text"] for p in pages[0]] == [VIDORE_DOCUMENT_PROMPT] * 6
    assert pages[0][0]["image"] == str(tmp_path / "page0.png")  # read from disk batch by batch, not preloaded
    q = tiny_encoder.encode(queries[0], batch_size=4, show_progress=False)
    pages_direct = [{"text": VIDORE_DOCUMENT_PROMPT, "image": str(tmp_path / f"page{i}.png")} for i in range(6)]
    d = tiny_encoder.encode(pages_direct, show_progress=False)
    hits = (q @ d.T).argmax(1) == np.arange(4)
    assert score["precision_at_1"] == pytest.approx(hits.mean())


def test_mixed_batches_and_the_generic_dataloader_path(mteb_model, tiny_encoder):
    from torch.utils.data import DataLoader

    rng = np.random.default_rng(2)
    image = PILImage.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    rows = [{"text": "plain text"}, {"image": image}, {"text": "what is shown?", "image": image}]
    meta = MockAny2AnyRetrievalT2ITask.metadata
    # a loader over plain rows (no datasets.Dataset): the batches themselves are read
    loader = DataLoader(rows, batch_size=1, collate_fn=lambda b: {k: [r.get(k) for r in b] for k in ("text", "image")})
    got = mteb_model.encode(
        loader, task_metadata=meta, hf_split="test", hf_subset="default", prompt_type=None, batch_size=2
    )
    want = tiny_encoder.encode(
        [
            "plain text",
            {"text": f"\n{MTEB_IMAGE_INSTRUCTION}\n", "image": image},
            {"text": "\nRepresent the given image with related text information: what is shown?\n", "image": image},
        ],
        batch_size=2,
        show_progress=False,
    )
    assert got.shape == (3, tiny_encoder.dim) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert mteb_model.calls[-1]["kwargs"]["batch_size"] == 2


def test_published_names_resolve_to_ours():
    for name, dim in [("moca-embed/MoCa-Qwen25VL-3B", 2048), ("moca-embed/MoCa-Qwen25VL-7B", 3584)]:
        meta = mteb.get_model_meta(name)
        assert meta.loader is MoCaMTEBEncoder and meta.embed_dim == dim
        assert meta.similarity_fn_name.value == "cosine" and set(meta.modalities) == {"image", "text"}
        assert meta.citation and "VidoreDocVQARetrieval" in meta.training_datasets
    assert mteb.get_model_meta("moca-embed/MoCa-Qwen25VL-3B") is MOCA_3B_META  # replaces mteb's built-in


@pytest.mark.slow
def test_mteb_cli_mock_run_resolves_a_local_checkpoint(tiny_dir, tmp_path):
    """``mteb mock-run -m <dir>`` in a fresh process: .pth hook -> entry point -> all image and text mock tasks."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    mteb_cli = Path(sys.executable).with_name("mteb")
    env = {**os.environ, CHECKPOINTS_ENV: str(tiny_dir), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(mteb_cli), "mock-run", "-m", str(tiny_dir), "--device", "cpu"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "passed all expected checks" in out
    assert re.search(r"✓ \((\d+)/\1\)\s*\|\s*image", out), out[-1500:]  # every image mock task passed


def test_loader_honours_the_checkpoint_pooling_and_the_pooling_kwarg(tiny_dir, tmp_path):
    import shutil

    from moca_model import moca_config

    last = tmp_path / "last"
    shutil.copytree(tiny_dir, last)
    moca_config.update(last, pooling="last")
    assert MoCaMTEBEncoder("local/last", checkpoint=str(last), device="cpu").model.pooling == "last"
    forced = MoCaMTEBEncoder("local/last", checkpoint=str(last), device="cpu", pooling="mean")
    assert forced.model.pooling == "mean"


def test_a_dropped_adapter_stops_its_device_workers(tiny_dir, wait_gone):
    import gc

    model = MoCaMTEBEncoder("local/tiny", checkpoint=str(tiny_dir), devices="cpu,cpu")
    pids = [p.pid for p in model.encoder.pool._procs]
    del model  # what happens when mteb.evaluate returns and the caller lets go of the model
    gc.collect()
    assert wait_gone(pids, 30) == [], "the adapter's device workers outlived it"
