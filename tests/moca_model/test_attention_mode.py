"""A checkpoint's attention mode is explicit: recorded in moca_config.json on save, honoured on load."""

import json

import numpy as np
import pytest
import torch

from moca_model import MoCaEncoder, MoCaLoadError, moca_config


def _causal_copy(tiny_dir, out):
    """Save the tiny model switched to causal attention (what a base-model stage writes)."""
    enc = MoCaEncoder.from_pretrained(tiny_dir, device="cpu")
    enc.model.set_attention("causal")
    enc.model.save_pretrained(out, safe_serialization=True)
    enc.processor.save_pretrained(out)  # after the model: must keep the recorded attention
    return out


def _first_token_moves(model, processor) -> bool:
    ids = torch.tensor([processor.tokenizer("a red circle on the left")["input_ids"]])
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 7) % 400
    with torch.no_grad():
        a = model(ids).last_hidden_state[0, 0]
        b = model(changed).last_hidden_state[0, 0]
    return bool((a - b).abs().max() > 1e-4)


def test_save_records_attention_and_keeps_processing_keys(tiny_dir, tmp_path):
    out = _causal_copy(tiny_dir, tmp_path / "causal")
    cfg = json.loads((out / moca_config.FILE).read_text())
    assert cfg["attention"] == "causal"
    assert cfg["max_length"] == 512 and cfg["min_pixels"] == 4 * 28 * 28  # the processor's keys are kept too
    assert moca_config.attention(out) == "causal"
    assert moca_config.attention(tiny_dir) == "bidirectional"  # absent = bidirectional (released checkpoints)


def test_loading_honours_the_checkpoint_and_the_override(tiny_dir, tmp_path):
    out = _causal_copy(tiny_dir, tmp_path / "causal")
    causal = MoCaEncoder.from_pretrained(out, device="cpu")
    assert causal.model.bidirectional is False and causal.model.attention == "causal"
    assert not _first_token_moves(causal.model, causal.processor)
    forced = MoCaEncoder.from_pretrained(out, device="cpu", attention="bidirectional")
    assert forced.model.bidirectional is True and _first_token_moves(forced.model, forced.processor)
    released = MoCaEncoder.from_pretrained(tiny_dir, device="cpu", attention="causal")
    assert released.model.bidirectional is False
    items = ["a short query", "another one"]
    a = causal.encode(items, show_progress=False)
    b = released.encode(items, show_progress=False)
    assert np.array_equal(a, b)  # same weights, same mode: the mode comes from the file or the argument alike


def test_processor_ignores_the_attention_key(tiny_dir, tmp_path):
    from moca_model import MoCaProcessor

    out = _causal_copy(tiny_dir, tmp_path / "causal")
    moca_config.update(out, future_key={"x": 1})  # unknown keys are ignored too
    proc = MoCaProcessor.from_pretrained(out)
    assert (proc.min_pixels, proc.max_pixels, proc.max_length) == (4 * 28 * 28, 64 * 28 * 28, 512)


def test_unknown_attention_is_an_error_naming_the_file(tiny_dir, tmp_path):
    out = _causal_copy(tiny_dir, tmp_path / "bad")
    moca_config.update(out, attention="sideways")
    with pytest.raises(MoCaLoadError, match=r"moca_config.json: attention must be one of"):
        MoCaEncoder.from_pretrained(out, device="cpu")
    with pytest.raises(MoCaLoadError, match="attention must be one of"):
        MoCaEncoder.from_pretrained(tiny_dir, device="cpu", attention="sideways")


def test_embed_cli_attention_flag(tiny_dir, tmp_path, monkeypatch):
    from moca_model import embed

    (tmp_path / "items.jsonl").write_text('"a red circle"\n"a blue square"\n')
    seen = {}
    real = MoCaEncoder.from_pretrained

    def spy(*args, **kwargs):
        enc = real(*args, **kwargs)
        seen["bidirectional"] = enc.model.bidirectional
        return enc

    monkeypatch.setattr(MoCaEncoder, "from_pretrained", spy)
    argv = ["--model", str(tiny_dir), "--input", str(tmp_path / "items.jsonl"), "--output", str(tmp_path / "v.npy"),
            "--no-progress", "--attention", "causal"]  # fmt: skip
    assert embed.main(argv) == 0
    assert seen["bidirectional"] is False and np.load(tmp_path / "v.npy").shape[0] == 2
    with pytest.raises(SystemExit):
        embed.main([*argv[:-1], "sideways"])
