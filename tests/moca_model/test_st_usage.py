"""What sentence-transformers users do with an exported MoCa folder: quantize, search, batch, re-save.

.venv-mteb only (sentence-transformers 6.2); skips in .venv.
"""

from __future__ import annotations

import numpy as np
import pytest

from .conftest import draw_image, st_export_ready

pytestmark = pytest.mark.skipif(not st_export_ready(), reason="needs sentence-transformers>=6.2, transformers>=5.2")


@pytest.fixture(scope="module")
def folder(tiny_dir, tmp_path_factory):
    from moca_model.export_st import export_checkpoint

    return export_checkpoint(tiny_dir, tmp_path_factory.mktemp("st") / "tiny-st")


@pytest.fixture(scope="module")
def model(folder):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def corpus():
    """Pages (images) and queries (text)."""
    pages = [draw_image(100 + 17 * i, 140 - 9 * i, i) for i in range(8)]
    queries = ["revenue table", "a red square", "the annual report of 2021", "blue chart", "x"]
    return queries, pages


@pytest.mark.parametrize(
    ("precision", "dtype", "width"),
    [("float32", np.float32, 64), ("int8", np.int8, 64), ("uint8", np.uint8, 64), ("binary", np.int8, 8),
     ("ubinary", np.uint8, 8)],
)  # fmt: skip
def test_quantized_outputs(model, corpus, precision, dtype, width):
    from sentence_transformers.util import quantize_embeddings

    queries, pages = corpus
    floats = model.encode_document(pages)
    got = model.encode_document(pages, precision=precision)
    assert got.dtype == dtype and got.shape == (len(pages), width)  # binary: 64 dims packed into 8 bytes
    np.testing.assert_array_equal(got, quantize_embeddings(floats, precision))
    if precision == "ubinary":
        np.testing.assert_array_equal(np.unpackbits(got, axis=1), (floats > 0).astype(np.uint8))
    if precision == "int8":  # per-dimension ranges from the batch: the extremes map to -128 and 127
        assert got.min(0).tolist() == [-128] * width and got.max(0).max() == 127


def test_semantic_search_ranks_like_moca_cosine(model, corpus, tiny_encoder):
    from sentence_transformers import util

    from moca_model.prompts import VIDORE_DOCUMENT_PROMPT

    queries, pages = corpus
    q = tiny_encoder.encode(queries, show_progress=False)
    d = tiny_encoder.encode([{"image": p, "text": VIDORE_DOCUMENT_PROMPT} for p in pages], show_progress=False)
    cosine = q @ d.T
    hits = util.semantic_search(model.encode_query(queries), model.encode_document(pages), top_k=len(pages))
    for row, found in zip(cosine, hits):
        assert [h["corpus_id"] for h in found] == np.argsort(-row, kind="stable").tolist()
        np.testing.assert_allclose([h["score"] for h in found], np.sort(row)[::-1], atol=1e-5)


def test_similarity_is_moca_cosine(model, corpus, tiny_encoder):
    queries, pages = corpus
    scores = model.similarity(model.encode_query(queries), model.encode_document(pages))
    q = tiny_encoder.encode(queries, show_progress=False)
    d = tiny_encoder.encode([{"image": p, "text": "\nRepresent the given document image."} for p in pages])
    np.testing.assert_allclose(scores.numpy(), q @ d.T, atol=1e-5)
    assert model.similarity_fn_name == "cosine"


def test_batch_size_and_progress_bar(model, corpus, capsys):
    queries, pages = corpus
    seen = []
    text_model = model[0].model.language_model  # sentence-transformers calls the top model's forward directly
    hook = text_model.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[0]),
                                                with_kwargs=True)  # fmt: skip
    try:
        model.encode(queries + pages, batch_size=3, show_progress_bar=True)
    finally:
        hook.remove()
    assert seen == [3, 3, 3, 3, 1]
    assert "Batches" in capsys.readouterr().err
    model.encode(queries, batch_size=3, show_progress_bar=False)
    assert "Batches" not in capsys.readouterr().err


def test_resaving_with_sentence_transformers_loses_the_pil_processor(model, corpus, tmp_path):
    """The documented hazard: ST does not save processor_kwargs, so a re-saved copy resizes with torchvision."""
    from sentence_transformers import SentenceTransformer

    model.save(str(tmp_path / "resaved"))
    again = SentenceTransformer(str(tmp_path / "resaved"), device="cpu", local_files_only=True)
    assert type(again[0].processor.image_processor).__name__ == "Qwen2VLImageProcessor"  # torchvision
    _, pages = corpus
    np.testing.assert_allclose(again.encode(["same text"]), model.encode(["same text"]), atol=1e-6)
    assert np.abs(again.encode(pages) - model.encode(pages)).max() > 1e-5  # images move


def test_readme_example_runs(folder, tmp_path, monkeypatch):
    """The README's six lines, verbatim except the model folder, retrieve pages for a query."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Use with sentence-transformers", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) == 6
    for i in (1, 2, 3):
        draw_image(120 + 30 * i, 160, i).save(tmp_path / f"page{i}.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    code = re.sub(r'"(runs/)?moca-3b-st"', lambda _: repr(str(folder)), code)  # the README writes it under runs/
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    hits = namespace["util"].semantic_search(namespace["query"], namespace["pages"], top_k=2)[0]
    assert len(hits) == 2 and {h["corpus_id"] for h in hits} <= {0, 1, 2}
    assert namespace["pages"].shape == (3, 64)
