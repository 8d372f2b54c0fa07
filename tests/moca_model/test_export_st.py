"""python -m moca_model.export_st: the folder loads with stock sentence-transformers and gives MoCa's numbers.

Runs in .venv-mteb (sentence-transformers 6.2, transformers 5.x); skips in .venv (sentence-transformers 3.4,
transformers 4.57), where test_export_refuses_an_old_stack checks the error instead.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import draw_image, st_export_ready

PH = "<|vision_start|><|image_pad|><|vision_end|>"


needs_st = pytest.mark.skipif(not st_export_ready(), reason="needs sentence-transformers>=6.2, transformers>=5.2")


@pytest.fixture(scope="module")
def exported(tiny_dir, tiny_legacy_dir, tmp_path_factory):
    """Folders exported from the current and the legacy layout (same weights)."""
    from moca_model.export_st import export_checkpoint

    root = tmp_path_factory.mktemp("st")
    return {layout: export_checkpoint(src, root / layout, license="apache-2.0")
            for layout, src in (("current", tiny_dir), ("legacy", tiny_legacy_dir))}  # fmt: skip


def _load(folder, **kwargs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True, **kwargs)


def _inputs():
    """sentence-transformers inputs: text, image, image + text (either key order), interleaved, long ones."""
    long_text = " ".join(f"word{i}" for i in range(700))  # over the tiny checkpoint's 512-token limit
    return [
        "what is the revenue in 2021?",
        "x",
        draw_image(60, 40, 1),
        draw_image(200, 280, 2),
        {"image": draw_image(120, 120, 4), "text": "\nRepresent the given image."},
        {"text": "question first in the dict", "image": draw_image(90, 50, 6)},
        {"text": f"compare {PH} with {PH} please", "image": [draw_image(56, 56, 5), draw_image(90, 50, 6)]},
        long_text,
        {"image": draw_image(224, 224, 3), "text": long_text},
        "",
    ]


@needs_st
@pytest.mark.parametrize("layout", ["current", "legacy"])
def test_parity_with_moca_encoder(exported, tiny_encoder, layout):
    from moca_model.st.verify import as_moca_item

    model = _load(exported[layout])
    items = _inputs()
    ref = tiny_encoder.encode([as_moca_item(x, None) for x in items], show_progress=False)
    np.testing.assert_allclose(model.encode(items, batch_size=4), ref, atol=1e-5, rtol=0)
    for one, want in zip(items, ref):  # alone (no padding) as well as in padded, mixed batches
        np.testing.assert_allclose(model.encode([one])[0], want, atol=1e-5, rtol=0)


@needs_st
@pytest.mark.parametrize("prompt_name", ["document", "image", "image_question", "image_text", "query"])
def test_prompts_lay_out_like_moca(exported, tiny_encoder, prompt_name):
    from moca_model.st.layout import image_prompts
    from moca_model.st.verify import as_moca_item

    model = _load(exported["current"])
    items = ["a caption", draw_image(150, 100, 9), {"image": draw_image(80, 80, 8), "text": "what colour?"}]
    prompt = model.prompts[prompt_name]
    only = image_prompts(model.prompts)
    ref = tiny_encoder.encode([as_moca_item(x, prompt, only) for x in items], show_progress=False)
    np.testing.assert_allclose(model.encode(items, prompt_name=prompt_name), ref, atol=1e-5, rtol=0)
    if prompt_name == "document":  # the ViDoRe page layout, spelled out
        page = tiny_encoder.encode([{"image": items[1], "text": "\nRepresent the given document image."}])
        np.testing.assert_allclose(model.encode_document([items[1]]), page, atol=1e-5, rtol=0)


@needs_st
def test_custom_prompt_with_text_slot(exported, tiny_encoder):
    model = _load(exported["current"])
    prompt = "Find me an everyday image that matches the given caption: {text}\n"
    got = model.encode(["a red circle"], prompt=prompt)
    want = tiny_encoder.encode(["Find me an everyday image that matches the given caption: a red circle\n"])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@needs_st
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bidirectional_on_every_backend(exported, tiny_encoder, attn):
    import copy

    from moca_model.encode import MoCaEncoder

    model = _load(exported["current"], model_kwargs={"attn_implementation": attn})
    assert model[0].model.config._attn_implementation == attn
    items = ["a longer query about the revenue of 2021", "short", draw_image(120, 90, 1)]
    bidirectional = tiny_encoder.encode(items, show_progress=False)
    np.testing.assert_allclose(model.encode(items), bidirectional, atol=1e-5, rtol=0)
    causal_model = copy.deepcopy(tiny_encoder.model)
    causal_model.set_bidirectional(False)
    causal = MoCaEncoder(causal_model, tiny_encoder.processor).encode(items, show_progress=False)
    assert np.abs(model.encode(items) - causal).max() > 1e-3  # the export is not silently causal


@needs_st
def test_causal_checkpoint_stays_causal(tiny_encoder, tmp_path):
    import copy

    from moca_model.encode import MoCaEncoder
    from moca_model.export_st import export_encoder

    causal_model = copy.deepcopy(tiny_encoder.model)
    causal_model.set_bidirectional(False)
    encoder = MoCaEncoder(causal_model, tiny_encoder.processor)
    folder = export_encoder(encoder, tmp_path / "causal", source="tiny (causal)")
    assert json.loads((folder / "config.json").read_text())["text_config"]["is_causal"] is True
    items = ["a longer query about the revenue of 2021", "short", draw_image(120, 90, 1)]
    np.testing.assert_allclose(_load(folder).encode(items), encoder.encode(items), atol=1e-5, rtol=0)
    assert "causal (as trained)" in (folder / "README.md").read_text()


@needs_st
def test_folder_is_stock_sentence_transformers(exported, tiny_dir):
    folder = exported["current"]
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert all(m["type"].startswith("sentence_transformers.") for m in modules)
    assert not list(folder.rglob("*.py")) and not list(folder.glob(".*"))  # no code, no leftovers
    assert not list(folder.parent.glob(".*partial"))
    st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert st_config["requirements"]["transformers"]["specifier"] == ">=5.2,<6"
    assert st_config["similarity_fn_name"] == "cosine"
    model = _load(folder)  # no trust_remote_code anywhere
    assert type(model[0].processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert model.max_seq_length == 512 and model[0].tokenizer.padding_side == "right"
    card = (folder / "README.md").read_text()
    assert str(tiny_dir) in card and "license: apache-2.0" in card
    assert all(f"`{name}`" in card for name in model.prompts)
    assert "Represent the given document image." in card


@needs_st
def test_exported_folder_is_also_a_moca_checkpoint(exported, tiny_encoder):
    from moca_model.encode import MoCaEncoder

    again = MoCaEncoder.from_pretrained(exported["legacy"], device="cpu")
    items = ["a query", draw_image(70, 70, 2)]
    np.testing.assert_allclose(again.encode(items), tiny_encoder.encode(items), atol=1e-6, rtol=0)


@needs_st
def test_image_repairs_are_opt_in(exported, tiny_encoder):
    """transformers resizes a 20 px image directly; moca_model.images.to_rgb applies MoCa's stretch first."""
    from moca_model.images import to_rgb

    model = _load(exported["current"])
    small = draw_image(20, 20, 4)
    want = tiny_encoder.encode([small], show_progress=False)
    assert np.abs(model.encode([small]) - want).max() > 1e-4  # documented difference (card, docs)
    np.testing.assert_allclose(model.encode([to_rgb(small, 0)]), want, atol=1e-5, rtol=0)


@needs_st
def test_refuses_existing_folder_and_keeps_nothing_on_failure(tiny_dir, tmp_path, monkeypatch):
    from moca_model import export_st
    from moca_model.st import verify as st_verify

    (tmp_path / "taken").mkdir()
    with pytest.raises(export_st.ExportError, match="exists"):
        export_st.export_checkpoint(tiny_dir, tmp_path / "taken")
    real = st_verify.reference
    monkeypatch.setattr(st_verify, "reference", lambda enc, prompts: [r + 1e-3 for r in real(enc, prompts)])
    with pytest.raises(export_st.ExportError, match="differ from MoCaEncoder"):
        export_st.export_checkpoint(tiny_dir, tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@needs_st
def test_cli(tiny_dir, tmp_path, tiny_encoder):
    from moca_model.export_st import main

    out = tmp_path / "cli"
    assert main([str(tiny_dir), str(out), "--prompt", "caption=A caption: {text}\\n", "--no-verify"]) == 0
    model = _load(out)
    assert model.prompts["caption"] == "A caption: {text}\n"
    want = tiny_encoder.encode(["A caption: red\n"])
    np.testing.assert_allclose(model.encode(["red"], prompt_name="caption"), want, atol=1e-5, rtol=0)
    assert main([str(tiny_dir), str(out)]) == 1  # exists
    with pytest.raises(SystemExit):
        main([str(tiny_dir), str(tmp_path / "x"), "--prompt", "no-equals-sign"])


@pytest.mark.skipif(st_export_ready(), reason="checks the error on the old stack (.venv)")
def test_export_refuses_an_old_stack(tiny_dir, tmp_path):
    from moca_model.export_st import ExportError, check_environment, main

    with pytest.raises(ExportError, match="sentence-transformers>=6.2|transformers>=5.2"):
        check_environment()
    assert main([str(tiny_dir), str(tmp_path / "out")]) == 1 and not (tmp_path / "out").exists()


# --- issue 24: image rules stated next to the exactness claim, text passages, MMEB placeholders --------------------


def _card_recipe(folder):
    """The ``moca_image`` function of the folder's model card, executed as a user would copy it."""
    import re

    card = (folder / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", card, re.S) if "def moca_image" in b]
    assert blocks, "the model card does not say how to prepare images like MoCaEncoder"
    namespace: dict = {}
    exec(blocks[0].split("\npages = ")[0], namespace)  # noqa: S102 (our own card's snippet)
    return namespace["moca_image"]


def _unusual_images(tmp_path):
    """(name, PIL image, path of the same file or None) for the image kinds where the two routes part."""
    import io

    from PIL import Image

    from moca_model.images import EXIF_ORIENTATION

    base = draw_image(120, 80, 1)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    buf = io.BytesIO()
    base.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    (tmp_path / "rotated.jpg").write_bytes(buf.getvalue())
    rgba = np.asarray(draw_image(100, 90, 2).convert("RGBA")).copy()
    rgba[..., 3] = np.linspace(0, 255, 100).astype(np.uint8)[None, :]
    rgba = Image.fromarray(rgba, mode="RGBA")
    palette = draw_image(100, 90, 3).convert("P")
    palette.info["transparency"] = palette.getpixel((50, 30))  # the rectangle's colour is the transparent one
    return [("exif", Image.open(io.BytesIO(buf.getvalue())), tmp_path / "rotated.jpg"), ("rgba", rgba, None),
            ("la", rgba.convert("LA"), None), ("palette", palette, None), ("small", draw_image(20, 20, 4), None)]


@needs_st
def test_unusual_images_part_as_documented_and_the_card_recipe_restores_parity(exported, tiny_encoder, tmp_path):
    model = _load(exported["current"])
    moca_image = _card_recipe(exported["current"])
    for name, image, path in _unusual_images(tmp_path):
        want = tiny_encoder.encode([image], show_progress=False)
        assert np.abs(model.encode([image]) - want).max() > 1e-3, name  # stated in the card and the docs
        np.testing.assert_allclose(model.encode([moca_image(image)]), want, atol=1e-5, rtol=0, err_msg=name)
        if path is not None:  # a file is read upright by both routes
            np.testing.assert_allclose(model.encode([str(path)]), tiny_encoder.encode([{"image": path}]),
                                       atol=1e-5, rtol=0, err_msg=name)  # fmt: skip
    card = (exported["current"] / "README.md").read_text()
    assert "EXIF orientation" in card and "Transparency" in card and "Sides under 28 px" in card


@needs_st
def test_encode_document_reads_text_passages_as_raw_text(exported, tiny_encoder):
    model = _load(exported["current"])
    passages = ["Revenue grew by 12% in 2021.", "The board approved the dividend."]
    got = model.encode_document(passages)
    off = float(np.abs(got - tiny_encoder.encode(passages, show_progress=False)).max())
    assert off <= 1e-5, f"the page prompt was glued onto text passages (off by {off:.3f})"
    pages = [draw_image(150, 100, 9)]
    page = tiny_encoder.encode([{"image": pages[0], "text": "\nRepresent the given document image."}])
    np.testing.assert_allclose(model.encode_document(pages), page, atol=1e-5, rtol=0)  # pages keep the prompt
    for name in ("image", "image_question", "image_text"):
        np.testing.assert_allclose(model.encode(passages, prompt_name=name), tiny_encoder.encode(passages),
                                   atol=1e-5, rtol=0, err_msg=name)  # fmt: skip


@needs_st
def test_mmeb_placeholders_are_rewritten_like_moca_encoder(exported, tiny_encoder):
    model = _load(exported["current"])
    a, b = draw_image(80, 80, 8), draw_image(90, 50, 6)
    items = [
        {"text": "<|image_1|>\nRepresent the given image with the following question: what colour?", "image": a},
        {"text": "compare <|image_1|> with <|image_2|>", "image": [a, b]},
    ]
    want = tiny_encoder.encode([{"text": x["text"], "images": x["image"] if isinstance(x["image"], list)
                                 else [x["image"]]} for x in items], show_progress=False)  # fmt: skip
    got = model.encode(items)
    off = float(np.abs(got - want).max())
    assert off <= 1e-5, f"<|image_N|> stayed literal text (off by {off:.3f})"
