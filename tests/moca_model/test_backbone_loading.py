"""Backbone as data: read from moca_config.json or model_type, recorded on save, bad values refused clearly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from moca_model import MoCaEncoder, MoCaLoadError, backbones, moca_config
from moca_model.compat import TRANSFORMERS_MAJOR, config_dict_for_this_line


def _copy(src, dst, **edits):
    shutil.copytree(src, dst)
    data = moca_config.read(dst)
    for key, value in edits.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    (dst / moca_config.FILE).write_text(json.dumps(data))
    return dst


def _set_model_type(path, model_type):
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = model_type
    (path / "config.json").write_text(json.dumps(cfg))


def test_a_checkpoint_without_backbone_or_pooling_loads_as_before(tiny_dir, tmp_path):
    """No ``backbone``/``pooling`` in moca_config.json (every released checkpoint): Qwen2.5-VL, mean, same vectors."""
    bare = _copy(tiny_dir, tmp_path / "bare", backbone=None, pooling=None)
    assert "backbone" not in moca_config.read(bare) and moca_config.backbone(bare) == "qwen2_5_vl"
    (bare / moca_config.FILE).unlink()  # not even a moca_config.json
    enc = MoCaEncoder.from_pretrained(bare, device="cpu", cache_memory_mb=0)
    assert type(enc.model).__name__ == "MoCaModel" and enc.model.pooling == "mean" and enc.model.bidirectional
    ref = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", cache_memory_mb=0)
    items = ["a red circle", "the blue square at the top of the page"]
    assert np.array_equal(enc.encode(items, show_progress=False), ref.encode(items, show_progress=False))


@pytest.mark.parametrize("backbone", backbones.BACKBONES)
def test_backbone_is_read_from_model_type_and_recorded_on_save(tiny_backbone_dirs, tmp_path, backbone):
    path = _copy(tiny_backbone_dirs(backbone), tmp_path / "ckpt", backbone=None)
    enc = MoCaEncoder.from_pretrained(path, device="cpu", cache_memory_mb=0)
    assert enc.model.backbone == backbone and enc.processor.backbone == backbone
    assert isinstance(enc.model, backbones.model_class(backbone))
    enc.model.save_pretrained(tmp_path / "saved")
    assert moca_config.read(tmp_path / "saved")["backbone"] == backbone
    assert enc.vector_settings()["backbone"] == backbone


def test_unsupported_model_type_names_it_and_the_supported_ones(tiny_dir, tmp_path):
    path = _copy(tiny_dir, tmp_path / "llava", backbone=None)
    _set_model_type(path, "llava_next")
    with pytest.raises(MoCaLoadError) as err:
        MoCaEncoder.from_pretrained(path, device="cpu")
    message = str(err.value)
    assert "'llava_next'" in message and all(b in message for b in backbones.BACKBONES)


def test_linear_attention_hybrids_are_refused_for_bidirectional_with_the_reason(tiny_dir, tmp_path):
    path = _copy(tiny_dir, tmp_path / "q35", backbone=None)
    _set_model_type(path, "qwen3_5")
    with pytest.raises(MoCaLoadError, match=r"'qwen3_5'.*bidirectional.*linear-attention.*no bidirectional form"):
        MoCaEncoder.from_pretrained(path, device="cpu")
    with pytest.raises(MoCaLoadError, match=r"'qwen3_5'.*not supported yet.*causal last-token.*docs/backbones.md"):
        MoCaEncoder.from_pretrained(path, device="cpu", attention="causal", pooling="last")


def test_bad_recorded_backbone_and_mismatch_are_errors(tiny_dir, tmp_path):
    path = _copy(tiny_dir, tmp_path / "bad", backbone="qwen4_vl")
    with pytest.raises(MoCaLoadError, match=r"moca_config.json: backbone must be one of .*'qwen4_vl'"):
        MoCaEncoder.from_pretrained(path, device="cpu")
    from moca_model.loading import load_model

    with pytest.raises(MoCaLoadError, match="is a qwen2_5_vl checkpoint, not qwen3_vl"):
        load_model(tiny_dir, device=__import__("torch").device("cpu"), dtype=None, attn_implementation="sdpa",
                   backbone="qwen3_vl")  # fmt: skip


def test_qwen2_vl_in_the_released_layout_loads_the_same_weights(tmp_path):
    """Qwen2-VL checkpoints on the hub use the legacy key layout, like Qwen2.5-VL's."""
    from moca_model.tiny import write_tiny_checkpoint

    legacy = write_tiny_checkpoint(tmp_path / "legacy", backbone="qwen2_vl", layout="legacy")
    current = write_tiny_checkpoint(tmp_path / "current", backbone="qwen2_vl")
    a, b = (MoCaEncoder.from_pretrained(p, device="cpu", cache_memory_mb=0) for p in (legacy, current))
    assert np.array_equal(a.encode(["a red circle"], show_progress=False), b.encode(["a red circle"],
                                                                                    show_progress=False))
    with pytest.raises(ValueError, match="legacy"):
        write_tiny_checkpoint(tmp_path / "q3", backbone="qwen3_vl", layout="legacy")


def test_tiny_cli_writes_every_backbone(tmp_path):
    from moca_model.tiny import main

    for backbone in backbones.BACKBONES:
        assert main([str(tmp_path / backbone), "--backbone", backbone, "--hidden", "32", "--layers", "1"]) == 0
        assert moca_config.backbone(tmp_path / backbone) == backbone
        assert json.loads((tmp_path / backbone / "config.json").read_text())["model_type"] == backbone
    with pytest.raises(SystemExit):
        main([str(tmp_path / "x"), "--backbone", "qwen3_5"])


def test_a_qwen3_config_written_by_transformers_5_parses_on_either_line():
    """5.x writes ``rope_parameters``; 4.x reads ``rope_scaling`` and fails on the other form without help."""
    from transformers import Qwen3VLConfig

    text = {"hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
            "num_hidden_layers": 1, "intermediate_size": 64, "vocab_size": 64,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [2, 1, 1],
                                "mrope_interleaved": True}}  # fmt: skip
    data = {"model_type": "qwen3_vl", "text_config": text, "vision_config": {"depth": 1, "out_hidden_size": 32}}
    fixed = config_dict_for_this_line(data)
    cfg = Qwen3VLConfig.from_dict(fixed)
    if TRANSFORMERS_MAJOR >= 5:
        assert fixed is data
    else:
        assert cfg.text_config.rope_scaling["mrope_section"] == [2, 1, 1] and cfg.text_config.rope_theta == 5e6
        assert config_dict_for_this_line(fixed) == fixed  # idempotent
