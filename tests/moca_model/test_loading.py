import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from moca_model import MoCaEncoder, MoCaLoadError


def test_legacy_and_current_layouts_give_identical_embeddings(tiny_dir, tiny_legacy_dir, mixed_items):
    keys_legacy = load_file(tiny_legacy_dir / "model.safetensors").keys()
    assert any(k.startswith("model.layers.") for k in keys_legacy) and "lm_head.weight" in keys_legacy
    a = MoCaEncoder.from_pretrained(tiny_dir, device="cpu").encode(mixed_items, show_progress=False)
    b = MoCaEncoder.from_pretrained(tiny_legacy_dir, device="cpu").encode(mixed_items, show_progress=False)
    assert np.array_equal(a, b)


def test_legacy_config_is_flat_like_the_release(tiny_legacy_dir):
    cfg = json.loads((tiny_legacy_dir / "config.json").read_text())
    assert "text_config" not in cfg and cfg["hidden_size"] == 64 and cfg["model_type"] == "qwen2_5_vl"


@pytest.mark.parametrize("layout", ["tiny_dir", "tiny_legacy_dir"])
def test_save_pretrained_round_trip(layout, request, tmp_path, mixed_items):
    # transformers 5 saves with the reverse of the key mapping a model was loaded with: the saved
    # checkpoint must still load, to the same embeddings, whatever the source layout
    enc = MoCaEncoder.from_pretrained(request.getfixturevalue(layout), device="cpu")
    enc.model.save_pretrained(tmp_path, safe_serialization=True)
    enc.processor.save_pretrained(tmp_path)
    again = MoCaEncoder.from_pretrained(tmp_path, device="cpu")
    a = enc.encode(mixed_items[:6], show_progress=False)
    assert np.array_equal(a, again.encode(mixed_items[:6], show_progress=False))


def test_base_model_layout_and_cpt_heads_are_accepted(tiny_dir, tmp_path, mixed_items):
    state = load_file(tiny_dir / "model.safetensors")
    state = {k.removeprefix("model."): v for k, v in state.items() if k != "lm_head.weight"}
    state["mae_proj.weight"] = torch.zeros(4, 4)  # a CPT checkpoint carries its heads
    shutil.copytree(tiny_dir, tmp_path / "ck")
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    a = MoCaEncoder.from_pretrained(tiny_dir, device="cpu").encode(mixed_items[:4], show_progress=False)
    b = MoCaEncoder.from_pretrained(tmp_path / "ck", device="cpu").encode(mixed_items[:4], show_progress=False)
    assert np.array_equal(a, b)


def test_missing_weight_is_an_error_not_random_init(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir, tmp_path / "ck")
    state = load_file(tiny_dir / "model.safetensors")
    del state["model.language_model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(MoCaLoadError, match="missing|layers.1.mlp.up_proj"):
        MoCaEncoder.from_pretrained(tmp_path / "ck", device="cpu")


def test_unknown_layout_is_caught(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir, tmp_path / "ck")
    state = {f"backbone.{k}": v for k, v in load_file(tiny_dir / "model.safetensors").items()}
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(MoCaLoadError):
        MoCaEncoder.from_pretrained(tmp_path / "ck", device="cpu")


def test_pickled_weights_are_refused(tiny_dir, tmp_path):
    shutil.copytree(tiny_dir, tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").rename(tmp_path / "ck" / "pytorch_model.bin")
    with pytest.raises(MoCaLoadError, match="safetensors"):
        MoCaEncoder.from_pretrained(tmp_path / "ck", device="cpu")


def test_nonexistent_path_names_the_path(tmp_path):
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(MoCaLoadError, match="such-model"):
        MoCaEncoder.from_pretrained(missing, device="cpu")


def test_hub_id_offline_gives_clear_error():
    with pytest.raises(MoCaLoadError, match="moca-embed/does-not-exist"):
        MoCaEncoder.from_pretrained("moca-embed/does-not-exist", device="cpu")


def test_checkpoint_without_tokenizer_uses_processor_path(tiny_dir, tmp_path, mixed_items):
    (tmp_path / "weights").mkdir()
    for name in ("config.json", "model.safetensors", "moca_config.json"):
        shutil.copy(tiny_dir / name, tmp_path / "weights" / name)
    enc = MoCaEncoder.from_pretrained(tmp_path / "weights", device="cpu", processor_name_or_path=tiny_dir)
    ref = MoCaEncoder.from_pretrained(tiny_dir, device="cpu")
    assert np.array_equal(
        enc.encode(mixed_items[:4], show_progress=False), ref.encode(mixed_items[:4], show_progress=False)
    )
    with pytest.raises(MoCaLoadError, match="Qwen/Qwen2.5-VL-3B-Instruct"):  # the reference's default, offline
        MoCaEncoder.from_pretrained(tmp_path / "weights", device="cpu")


def test_state_dict_saved_from_a_wrapper_with_encoder_prefix(tiny_legacy_dir, tmp_path, mixed_items):
    shutil.copytree(tiny_legacy_dir, tmp_path / "ck")
    state = {f"encoder.{k}": v for k, v in load_file(tiny_legacy_dir / "model.safetensors").items()}
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    a = MoCaEncoder.from_pretrained(tiny_legacy_dir, device="cpu").encode(mixed_items[:4], show_progress=False)
    b = MoCaEncoder.from_pretrained(tmp_path / "ck", device="cpu").encode(mixed_items[:4], show_progress=False)
    assert np.array_equal(a, b)
