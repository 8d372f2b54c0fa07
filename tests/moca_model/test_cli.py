import json
import subprocess
import sys

import numpy as np
import pytest

from moca_model.embed import main as embed_main
from moca_model.errors import MoCaError

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


def _run_embed(capsys, model, jsonl, out, *extra) -> tuple[int, str]:
    rc = embed_main(["--model", str(model), "--input", str(jsonl), "--output", str(out), "--no-progress", *extra])
    return rc, capsys.readouterr().err


def test_embed_cli_bad_json_is_one_line_naming_the_line(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('"ok"\n\n{not json\n')
    rc, err = _run_embed(capsys, "no-such-model", tmp_path / "bad.jsonl", tmp_path / "v.npy")
    assert rc == 1 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'bad.jsonl'}:3: invalid JSON (Expecting property name enclosed in double quotes, column 2)"
    ]
    assert not (tmp_path / "v.npy").exists()


def test_embed_cli_unknown_key_fails_before_loading_the_model(tmp_path, capsys):
    (tmp_path / "items.jsonl").write_text('"a"\n{"imgae": "x.png"}\n')
    rc, err = _run_embed(capsys, "no-such-model", tmp_path / "items.jsonl", tmp_path / "v.npy")
    assert rc == 1 and "Traceback" not in err and "model path not found" not in err
    assert "items.jsonl:2: unknown key 'imgae' (did you mean 'image'?); an item's keys are text, image" in err


def test_embed_cli_empty_input_is_an_error(tiny_dir, tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    rc, err = _run_embed(capsys, tiny_dir, tmp_path / "empty.jsonl", tmp_path / "v.npy")
    assert rc == 1 and "empty.jsonl: no items" in err and not (tmp_path / "v.npy").exists()


def test_embed_cli_encode_errors_name_the_line_not_the_index(tiny_dir, tmp_path, capsys):
    (tmp_path / "frames").mkdir()
    (tmp_path / "items.jsonl").write_text('"a"\n\n{"image": "frames", "text": "x"}\n')
    rc, err = _run_embed(capsys, tiny_dir, tmp_path / "items.jsonl", tmp_path / "v.npy")
    assert rc == 1 and "Traceback" not in err
    assert "items.jsonl:3: image path is a folder, not an image file" in err and 'goes under "video"' in err


def test_embed_cli_debug_raises_with_the_traceback(tmp_path):
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(MoCaError, match="bad.jsonl:1: invalid JSON"):
        embed_main(["--model", "m", "--input", str(tmp_path / "bad.jsonl"), "--output", "v.npy", "--debug"])


def test_embed_cli_resolves_video_and_image_lists_against_the_jsonl_folder(tiny_dir, tiny_encoder, tmp_path,
                                                                          monkeypatch):  # fmt: skip
    data = tmp_path / "data"
    (data / "clip").mkdir(parents=True)
    for i in range(4):
        draw_image(56, 56, i).save(data / "clip" / f"{i:03d}.png")
    draw_image(40, 40, 7).save(data / "a.png")
    items = [{"video": "clip", "text": " a clip"}, {"image": ["a.png", "clip/000.png"], "text": "two"}]
    (data / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    monkeypatch.chdir(tmp_path)  # paths are relative to the file, not to the working directory
    assert embed_main(["--model", str(tiny_dir), "--input", "data/items.jsonl", "--output", "v.npy",
                       "--no-progress"]) == 0  # fmt: skip
    expected = tiny_encoder.encode(
        [{"video": str(data / "clip"), "text": " a clip"}, {"images": [data / "a.png", data / "clip/000.png"],
                                                            "text": "two"}], show_progress_bar=False)  # fmt: skip
    assert np.abs(np.load(tmp_path / "v.npy") - expected).max() < 1e-6


def test_embed_cli_subprocess_has_no_traceback(tmp_path):
    (tmp_path / "items.jsonl").write_text('{"image": "a.png", "txt": "hi"}\n')
    proc = subprocess.run([sys.executable, "-m", "moca_model.embed", "--model", "m", "--input", "items.jsonl",
                           "--output", "v.npy"], cwd=tmp_path, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: items.jsonl:1: unknown key 'txt' (did you mean 'text'?); an item's keys are text, image, images, "
        "video, num_frames"
    ]


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


def test_tiny_and_export_cli_errors_are_one_line(tmp_path, capsys):
    from moca_model.export_st import main as export_main
    from moca_model.tiny import main as tiny_main

    (tmp_path / "file").write_text("x")
    assert tiny_main([str(tmp_path / "file")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: File exists: {str(tmp_path / 'file')!r}"
    assert export_main([str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    missing = f"error: model path not found: {str(tmp_path / 'nowhere')!r} is not a directory (nor a hub id 'org/name')"
    assert len(lines) == 1 and (lines[0] == missing or "transformers>=5.2" in lines[0])  # .venv: the stack check
