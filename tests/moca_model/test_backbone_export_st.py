"""``python -m moca_model.export_st`` on every backbone, with mean and last-token pooling (.venv-mteb only).

The export itself reloads the folder with stock sentence-transformers and compares text, image and image +
text probes with MoCaEncoder (<= 1e-5); these tests add the folder's modules and a mixed batch of their own.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from moca_model import moca_config

from .conftest import draw_image, st_export_ready

pytestmark = pytest.mark.skipif(not st_export_ready(), reason="needs sentence-transformers>=6.2, transformers>=5.2")
CASES = [
    ("qwen3_vl", "causal", "last"),  # the VLM2Vec / Qwen3-VL-Embedding style baseline
    ("qwen2_vl", "bidirectional", "mean"),  # MoCa's recipe on Qwen2-VL
    pytest.param("qwen3_vl", "bidirectional", "mean", marks=pytest.mark.slow),
    pytest.param("qwen2_5_vl", "bidirectional", "last", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("backbone", "attention", "pooling"), CASES)
def test_export_every_backbone_and_pooling(tiny_backbone_dirs, tmp_path, backbone, attention, pooling):
    from sentence_transformers import SentenceTransformer

    from moca_model import MoCaEncoder
    from moca_model.export_st import export_checkpoint

    src = tmp_path / "src"
    shutil.copytree(tiny_backbone_dirs(backbone), src)
    moca_config.update(src, attention=attention, pooling=pooling)
    out = export_checkpoint(src, tmp_path / "st", license="apache-2.0")  # raises unless it reproduces MoCaEncoder
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode"] == {
        "mean": "mean", "last": "lasttoken"}[pooling]  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == backbone and config["text_config"]["is_causal"] is (attention == "causal")
    assert f"- {backbone}" in (out / "README.md").read_text()
    model = SentenceTransformer(str(out), device="cpu", local_files_only=True)
    assert type(model[0].model).__name__ == {"qwen2_vl": "Qwen2VLModel", "qwen2_5_vl": "Qwen2_5_VLModel",
                                             "qwen3_vl": "Qwen3VLModel"}[backbone]  # fmt: skip
    items = ["a short query", "what is the total revenue of the company in 2021?", draw_image(90, 60, 1),
             {"image": draw_image(130, 70, 2), "text": "\nRepresent the given image."}]  # fmt: skip
    ours = MoCaEncoder.from_pretrained(src, device="cpu", cache_memory_mb=0).encode(items, show_progress=False)
    st = model.encode(items, batch_size=4, convert_to_numpy=True)
    assert np.abs(ours - st).max() <= 1e-5
