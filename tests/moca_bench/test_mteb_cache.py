"""The mteb adapter with the encoder's cache: a ViDoRe-v3-shaped task (one corpus, six languages) encodes its
pages once, scores do not change, the log says what came from the cache, and the settings reach the encoder."""

from __future__ import annotations

import logging

import numpy as np
import pytest

mteb = pytest.importorskip("mteb", minversion="2.0")

from mteb.types import PromptType  # noqa: E402

from benchmarks.cache_mteb import LANGUAGES, evaluate, make_task  # noqa: E402
from moca_bench.mteb_models import CACHE_ENV, DEVICES_ENV, MoCaMTEBEncoder  # noqa: E402

N_PAGES, N_QUERIES = 5, 3


@pytest.fixture(scope="module")
def pages():
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (80, 60 + 7 * i, 3), dtype=np.uint8)) for i in range(N_PAGES)]


def test_pages_shared_by_six_languages_are_encoded_once(tiny_dir, pages, caplog):
    cold = MoCaMTEBEncoder(str(tiny_dir), device="cpu")
    cold.encoder.cache = None
    warm = MoCaMTEBEncoder(str(tiny_dir), device="cpu")
    scores_cold, _, calls_cold = evaluate(cold, make_task(pages, N_QUERIES))
    with caplog.at_level(logging.INFO, logger="moca_bench.mteb_models"):
        scores_warm, _, calls_warm = evaluate(warm, make_task(pages, N_QUERIES))
    docs_cold = [c for c in calls_cold if c[0] == "document"]
    docs_warm = [c for c in calls_warm if c[0] == "document"]
    assert len(docs_cold) == len(docs_warm) == len(LANGUAGES)
    assert sum(c[2] for c in docs_cold) == len(LANGUAGES) * N_PAGES  # 6x the corpus
    assert sum(c[2] for c in docs_warm) == N_PAGES  # 1x the corpus
    assert scores_warm == pytest.approx(scores_cold, abs=1e-9)
    assert f"{N_PAGES} from cache ({N_PAGES} memory, 0 disk), 0 encoded" in caplog.text


def test_query_and_document_of_the_same_text_are_not_shared(tiny_dir):
    model = MoCaMTEBEncoder(str(tiny_dir), device="cpu")
    task = mteb.get_task("MSCOCOT2IRetrieval").metadata  # queries get the task's prompt, documents do not
    batch = [{"text": ["a red square on a white page"]}]
    for side in (PromptType.query, PromptType.document):
        model.encode(batch, task_metadata=task, hf_split="test", hf_subset="default", prompt_type=side)
        assert model.encoder.last_stats.encoded == 1 and model.encoder.last_stats.cached == 0
    model.encode(batch, task_metadata=task, hf_split="test", hf_subset="default", prompt_type=PromptType.query)
    assert model.encoder.last_stats.memory_hits == 1


def test_cache_dir_from_the_environment_persists_across_instances(tiny_dir, tmp_path, monkeypatch, pages):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    task = make_task(pages, N_QUERIES)
    first = MoCaMTEBEncoder(str(tiny_dir), device="cpu")
    a, _, _ = evaluate(first, task)
    second = MoCaMTEBEncoder(str(tiny_dir), device="cpu")
    b, _, calls = evaluate(second, make_task(pages, N_QUERIES))
    assert sum(c[2] for c in calls) == 0  # nothing encoded: queries and pages all from disk
    assert second.encoder.total_stats.disk_hits == N_PAGES + N_QUERIES * len(LANGUAGES)
    assert a == b and any((tmp_path / "embeddings").rglob("*.vec"))


def test_devices_reach_the_encoder(tiny_dir, monkeypatch):
    from moca_model import MoCaEncoder

    seen = {}
    real = MoCaEncoder.from_pretrained.__func__

    def spy(cls, path, **kwargs):
        seen.update(kwargs)
        return real(cls, path, **{**kwargs, "devices": None})

    monkeypatch.setattr(MoCaEncoder, "from_pretrained", classmethod(spy))
    monkeypatch.setenv(DEVICES_ENV, "cuda:0,cuda:1")
    MoCaMTEBEncoder(str(tiny_dir), device="cpu")
    assert seen["devices"] == "cuda:0,cuda:1"
    MoCaMTEBEncoder(str(tiny_dir), device="cpu", devices=["cpu", "cpu"])
    assert seen["devices"] == ["cpu", "cpu"]  # the argument wins over the environment


def test_log_lines_follow_mteb_run_verbosity(tiny_dir):
    """``mteb run`` (default -v 2) sets the "mteb" logger to INFO; the adapter's cache lines then show too."""
    ours, theirs = logging.getLogger("moca_bench"), logging.getLogger("mteb")
    saved = ours.level, theirs.level
    try:
        ours.setLevel(logging.NOTSET)
        theirs.setLevel(logging.INFO)
        MoCaMTEBEncoder(str(tiny_dir), device="cpu")
        assert ours.level == logging.INFO
        ours.setLevel(logging.ERROR)  # a level the user chose is kept
        MoCaMTEBEncoder(str(tiny_dir), device="cpu")
        assert ours.level == logging.ERROR
    finally:
        ours.setLevel(saved[0])
        theirs.setLevel(saved[1])
