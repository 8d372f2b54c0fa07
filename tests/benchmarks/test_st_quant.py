"""benchmarks.st_quant's scoring of the precision variants, on fixed embeddings (no model)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sentence_transformers.util.quantization", reason="sentence-transformers >= 5 (.venv-mteb)")


class FakeModel:
    """encode_query / encode_document over fixed unit vectors, with sentence-transformers' quantization."""

    def __init__(self, q: np.ndarray, d: np.ndarray):
        self.q, self.d = q, d

    def _out(self, x, precision):
        from sentence_transformers.util import quantize_embeddings

        return x if precision == "float32" else quantize_embeddings(x, precision)

    def encode_query(self, queries, precision="float32"):
        return self._out(self.q, precision)

    def encode_document(self, pages, precision="float32"):
        return self._out(self.d, precision)


def test_variant_scores():
    from benchmarks.st_quant import variant_scores

    rng = np.random.default_rng(0)
    q, d = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (rng.normal(size=(5, 16)), rng.normal(size=(7, 16))))
    s = variant_scores(FakeModel(q.astype(np.float32), d.astype(np.float32)), [""] * 5, [None] * 7)
    np.testing.assert_allclose(s["float32"], q @ d.T, atol=1e-6)
    hamming = ((q[:, None, :] > 0) != (d[None, :, :] > 0)).sum(-1)
    np.testing.assert_array_equal(s["binary"], -hamming)
    np.testing.assert_allclose(s["binary_docs_float_query"], q @ (d > 0).T, atol=1e-6)
    # dequantized int8 pages are within one quantization step of the floats in every dimension
    step = (d.max(0) - d.min(0)) / 255
    assert np.abs(s["int8_docs_float_query"] - q @ d.T).max() <= (np.abs(q) @ step).max() + 1e-6
    for name in ("int8", "int8_per_call"):
        assert s[name].shape == (5, 7) and np.all(s[name] == np.round(s[name]))  # integer inner products
