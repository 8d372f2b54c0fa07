"""MoCaVidoreRetriever in-process on the tiny checkpoint: settings, formatting, scores and bad inputs."""

from __future__ import annotations

import io
import logging
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("vidore_benchmark")

from PIL import Image, ImageDraw  # noqa: E402

from moca_bench.prompts import VIDORE_DOCUMENT_PROMPT  # noqa: E402
from moca_bench.vidore import MoCaVidoreConfig, MoCaVidoreRetriever  # noqa: E402
from moca_model import MoCaInputError, MoCaLoadError  # noqa: E402

pytestmark = pytest.mark.vidore


def page(seed: int, w: int = 90, h: int = 120) -> Image.Image:
    img = Image.new("RGB", (w, h), (255, 255, 255))
    ImageDraw.Draw(img).rectangle([w // 4, h // 4, w * 3 // 4, h // 2], fill=(seed * 60 % 256, 30, 200))
    return img


@pytest.fixture(scope="module")
def retriever(tiny_dir):
    """Without the encoder's cache, so that comparing two calls compares two computations."""
    r = MoCaVidoreRetriever(str(tiny_dir), num_workers=0)
    r.encoder.cache = None
    return r


def test_registered_under_both_names_by_the_hook():
    from vidore_benchmark.retrievers.registry_utils import VISION_RETRIEVER_REGISTRY

    assert VISION_RETRIEVER_REGISTRY["moca"] is MoCaVidoreRetriever
    assert VISION_RETRIEVER_REGISTRY["moca-qwen25"] is MoCaVidoreRetriever


def test_config_precedence_argument_then_environment_then_default():
    env = {"MOCA_MAX_PIXELS": "3136", "MOCA_DTYPE": "bfloat16", "MOCA_DOCUMENT_PROMPT": "", "MOCA_SCORE_BLOCK_MB": "8"}
    cfg = MoCaVidoreConfig.from_env(env, dtype="float32", max_pixels=None)
    assert cfg.dtype == "float32"  # argument beats environment
    assert cfg.max_pixels == 3136 and cfg.score_block_mb == 8.0  # environment, parsed to the field's type
    assert cfg.document_prompt == ""  # an empty variable is a value, not "unset"
    assert cfg.query_prompt == "" and cfg.min_pixels is None  # defaults
    assert MoCaVidoreConfig.from_env({}).document_prompt == VIDORE_DOCUMENT_PROMPT
    assert MoCaVidoreConfig.from_env({"MOCA_DEVICE": "auto"}).resolved_device() is None


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"MOCA_MIN_PIXELS": "lots"}, "MOCA_MIN_PIXELS='lots' is not a valid int"),
        ({"MOCA_DTYPE": "fp8"}, "dtype must be one of"),
        ({"MOCA_ATTN_IMPLEMENTATION": "flash"}, "attn_implementation must be one of"),
        ({"MOCA_ATTENTION": "sideways"}, "attention must be one of"),
        ({"MOCA_MAX_LENGTH": "0"}, "max_length must be >= 1"),
        ({"MOCA_SCORE_BLOCK_MB": "-1"}, "score_block_mb must be > 0"),
    ],
)
def test_bad_settings_name_the_variable_or_field(env, match):
    with pytest.raises(ValueError, match=match):
        MoCaVidoreConfig.from_env(env)


def test_environment_reaches_the_encoder(tiny_dir, monkeypatch):
    monkeypatch.setenv("MOCA_MAX_PIXELS", str(16 * 28 * 28))
    monkeypatch.setenv("MOCA_QUERY_PROMPT", "Query: ")
    monkeypatch.setenv("MOCA_ATTN_IMPLEMENTATION", "eager")
    r = MoCaVidoreRetriever(str(tiny_dir), num_workers=0, unknown_option=1)
    r.encoder.cache = None  # the comparison below must compute again
    assert r.encoder.processor.max_pixels == 16 * 28 * 28
    assert r.encoder.model.config._attn_implementation == "eager"
    q = r.forward_queries(["hello"], batch_size=1)
    assert torch.allclose(q[0], torch.from_numpy(r.encoder.encode(["Query: hello"], show_progress=False)[0]))


def test_attention_comes_from_the_checkpoint_or_moca_attention(tiny_dir, tmp_path, monkeypatch):
    from moca_model import moca_config

    assert MoCaVidoreRetriever(str(tiny_dir), num_workers=0).encoder.model.bidirectional is True
    monkeypatch.setenv("MOCA_ATTENTION", "causal")
    assert MoCaVidoreRetriever(str(tiny_dir), num_workers=0).encoder.model.bidirectional is False
    monkeypatch.delenv("MOCA_ATTENTION")
    causal = tmp_path / "causal"
    shutil.copytree(tiny_dir, causal)
    moca_config.update(causal, attention="causal")
    assert MoCaVidoreRetriever(str(causal), num_workers=0).encoder.model.bidirectional is False


def test_embeddings_are_the_encoders_on_the_documented_items(retriever):
    queries = ["what is the revenue?", "blue square", "what is the revenue?"]
    pages = [page(1), page(2, 200, 60)]
    q = retriever.forward_queries(queries, batch_size=2)
    p = retriever.forward_passages(pages, batch_size=2)
    assert q.dtype == p.dtype == torch.float32 and q.shape == (3, retriever.encoder.dim) and p.shape[0] == 2
    enc = retriever.encoder
    np.testing.assert_allclose(q.numpy(), enc.encode(queries, show_progress=False), atol=1e-6)
    items = [{"image": im, "text": VIDORE_DOCUMENT_PROMPT} for im in pages]
    np.testing.assert_allclose(p.numpy(), enc.encode(items, show_progress=False), atol=1e-6)
    assert torch.allclose(p.norm(dim=1), torch.ones(2), atol=1e-5)


def test_a_rerun_with_a_cache_dir_encodes_no_page(tiny_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MOCA_CACHE_DIR", str(tmp_path))
    pages = [page(i) for i in range(4)]
    first = MoCaVidoreRetriever(str(tiny_dir), num_workers=0).forward_passages(pages, batch_size=2)
    again = MoCaVidoreRetriever(str(tiny_dir), num_workers=0)
    with caplog.at_level(logging.INFO, logger="moca_bench.vidore"):
        second = again.forward_passages(pages, batch_size=2)
    assert again.encoder.last_stats.encoded == 0 and again.encoder.last_stats.disk_hits == 4
    assert "pages: 4 inputs, 4 unique, 4 from cache (0 memory, 4 disk), 0 encoded" in caplog.text
    assert torch.equal(first, second)


def test_batch_sizes_are_passed_through_uncapped(retriever, monkeypatch):
    seen = []
    real = retriever.encoder.encode

    def spy(items, **kw):
        seen.append((kw["batch_size"], kw["num_workers"]))
        return real(items, **kw)

    monkeypatch.setattr(retriever.encoder, "encode", spy)
    retriever.forward_passages([page(i) for i in range(3)], batch_size=64)
    retriever.forward_queries(["a"], batch_size=33)
    assert seen == [(64, None), (33, None)]  # no min(batch, 8); vidore's num_workers=0 -> encoder default


def test_get_scores_is_fp32_cpu_and_equals_numpy(retriever, tmp_path):
    q = retriever.forward_queries(["one", "two", "three"], batch_size=4)
    p = retriever.forward_passages([page(i) for i in range(5)], batch_size=4)
    retriever.config.scores_dir = str(tmp_path)
    try:
        scores = retriever.get_scores(list(q), list(p), batch_size=4)
    finally:
        retriever.config.scores_dir = None
    assert scores.device.type == "cpu" and scores.dtype == torch.float32 and scores.shape == (3, 5)
    expected = q.numpy().astype(np.float64) @ p.numpy().astype(np.float64).T
    np.testing.assert_allclose(scores.numpy(), expected, atol=1e-6)
    (dump,) = tmp_path.glob("scores-*.npy")
    assert np.array_equal(np.load(dump, allow_pickle=False), scores.numpy())


def test_blank_query_is_encoded_with_a_warning_and_none_is_an_error(retriever, caplog):
    with caplog.at_level(logging.WARNING, logger="moca_bench.vidore"):
        q = retriever.forward_queries(["fine", "", "  "], batch_size=4)
    assert "2 blank queries" in caplog.text and q.shape[0] == 3 and torch.isfinite(q).all()
    with pytest.raises(MoCaInputError, match="query 1: expected a string, got NoneType"):
        retriever.forward_queries(["fine", None], batch_size=4)


def truncated_png() -> bytes:
    buf = io.BytesIO()
    page(3).save(buf, format="PNG")
    return buf.getvalue()[:200]


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (b"not an image", "page at corpus row 3: cannot read image"),
        ("/no/such/page.png", "page at corpus row 3: image file not found"),
        ({"bytes": None, "path": "/no/such/page.png"}, "page at corpus row 3: image file not found"),
        (truncated_png(), "page at corpus row 3: .*(corrupt|truncated|cannot read)"),
        (None, "page at corpus row 3: no image"),
        ({"bytes": None, "path": None}, "page at corpus row 3: no image"),
    ],
)
def test_unreadable_page_names_its_corpus_row(retriever, bad, match):
    retriever.get_scores([torch.ones(4)], [torch.ones(4)])  # a finished dataset resets the row count
    retriever.forward_passages([page(1), page(2)], batch_size=2)
    with pytest.raises(MoCaInputError, match=match):
        retriever.forward_passages([page(4), bad], batch_size=2)


def test_undecoded_datasets_pages_are_accepted(retriever):
    buf = io.BytesIO()
    page(5).save(buf, format="PNG")
    a = retriever.forward_passages([{"bytes": buf.getvalue(), "path": None}], batch_size=1)
    b = retriever.forward_passages([Image.open(io.BytesIO(buf.getvalue()))], batch_size=1)
    assert torch.allclose(a, b, atol=1e-6)


def test_missing_model_path_is_named(tmp_path):
    missing = tmp_path / "nope" / "checkpoint"
    with pytest.raises(MoCaLoadError, match=str(missing)):
        MoCaVidoreRetriever(str(missing))


def test_vidore_evaluator_runs_in_process(retriever):
    import datasets
    from vidore_benchmark.evaluation.vidore_evaluators import ViDoReEvaluatorBEIR

    ds = {
        "corpus": datasets.Dataset.from_dict({"corpus-id": [0, 1, 2], "image": [page(0), page(1), page(2)]}),
        "queries": datasets.Dataset.from_dict({"query-id": [0, 1], "query": ["first", "second"]}),
        "qrels": datasets.Dataset.from_dict({"query-id": [0, 1], "corpus-id": [0, 2], "score": [1, 1]}),
    }
    metrics = ViDoReEvaluatorBEIR(retriever).evaluate_dataset(ds, batch_query=2, batch_passage=2, batch_score=2)
    assert 0.0 <= metrics["ndcg_at_5"] <= 1.0 and metrics["recall_at_3"] == 1.0


def test_pooling_comes_from_the_checkpoint_or_moca_pooling(tiny_dir, tmp_path, monkeypatch):
    from moca_model import moca_config

    assert MoCaVidoreRetriever(str(tiny_dir), num_workers=0).encoder.model.pooling == "mean"
    monkeypatch.setenv("MOCA_POOLING", "last")
    assert MoCaVidoreRetriever(str(tiny_dir), num_workers=0).encoder.model.pooling == "last"
    monkeypatch.delenv("MOCA_POOLING")
    last = tmp_path / "last"
    shutil.copytree(tiny_dir, last)
    moca_config.update(last, pooling="last")
    assert MoCaVidoreRetriever(str(last), num_workers=0).encoder.model.pooling == "last"


def test_close_stops_the_device_workers(tiny_dir, monkeypatch, wait_gone):
    monkeypatch.setenv("MOCA_DEVICES", "cpu,cpu")
    r = MoCaVidoreRetriever(str(tiny_dir), num_workers=0)
    pids = [p.pid for p in r.encoder.pool._procs]
    assert r.forward_queries(["a query"], batch_size=1).shape == (1, r.encoder.dim)
    r.close()
    assert wait_gone(pids, 30) == [], "the retriever's device workers outlived close()"
