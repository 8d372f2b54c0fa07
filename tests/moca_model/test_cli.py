import json
import subprocess
import sys

import numpy as np

from moca_model.embed import main as embed_main

from .conftest import draw_image


def test_embed_cli_writes_vectors_and_similarity(tiny_dir, tiny_encoder, tmp_path, capsys):
    draw_image(90, 60, 1).save(tmp_path / "a.png")
    lines = ['"a red square"', json.dumps({"text": "\nRepresent the given image.", "image": "a.png"}), '"a red square"']
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "v.npy"
    rc = embed_main(
        [
            "--model",
            str(tiny_dir),
            "--input",
            str(tmp_path / "items.jsonl"),
            "--output",
            str(out),
            "--similarity",
            "--no-progress",
        ]
    )
    assert rc == 0
    vecs = np.load(out)
    assert vecs.shape == (3, tiny_encoder.dim) and np.array_equal(vecs[0], vecs[2])
    expected = tiny_encoder.encode(
        ["a red square", {"text": "\nRepresent the given image.", "image": tmp_path / "a.png"}], show_progress=False
    )
    assert np.abs(vecs[:2] - expected).max() < 1e-6
    printed = capsys.readouterr().out
    assert "1.000" in printed and len(printed.strip().splitlines()) == 4


def test_tiny_cli_writes_both_layouts(tmp_path):
    for layout in ("legacy", "current"):
        subprocess.run(
            [sys.executable, "-m", "moca_model.tiny", str(tmp_path / layout), "--layout", layout],
            check=True,
            capture_output=True,
        )
        names = {p.name for p in (tmp_path / layout).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= names


def test_embed_cli_rejects_bad_jsonl(tiny_dir, tmp_path):
    (tmp_path / "bad.jsonl").write_text('"ok"\n{not json\n')
    try:
        embed_main(
            ["--model", str(tiny_dir), "--input", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "v.npy")]
        )
    except ValueError as exc:
        assert "bad.jsonl:2" in str(exc)
    else:
        raise AssertionError("expected a ValueError naming the line")


def test_embed_cli_cache_dir_from_the_environment(tiny_dir, tmp_path, monkeypatch, caplog):
    import logging

    draw_image(70, 50, 2).save(tmp_path / "b.png")
    (tmp_path / "items.jsonl").write_text('"first"\n' + json.dumps({"text": "x", "image": "b.png"}) + "\n")
    monkeypatch.setenv("MOCA_CACHE_DIR", str(tmp_path / "cache"))
    args = ["--model", str(tiny_dir), "--input", str(tmp_path / "items.jsonl"), "--no-progress"]
    assert embed_main([*args, "--output", str(tmp_path / "1.npy")]) == 0
    with caplog.at_level(logging.INFO, logger="moca_model.embed"):
        assert embed_main([*args, "--output", str(tmp_path / "2.npy")]) == 0
    assert "2 from cache (0 memory, 2 disk), 0 encoded" in caplog.text
    assert np.array_equal(np.load(tmp_path / "1.npy"), np.load(tmp_path / "2.npy"))
