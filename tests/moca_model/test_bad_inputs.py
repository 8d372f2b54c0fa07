"""Every kind of bad input gives a sensible embedding or a MoCaInputError that names the item's index."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

from moca_model import MoCaInputError

from .conftest import draw_image


def _png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _encode_ok(encoder, item):
    out = encoder.encode(["a normal query", item], show_progress=False)
    assert out.shape == (2, encoder.dim) and np.isfinite(out).all()
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    return out[1]


@pytest.mark.parametrize("mode", ["CMYK", "RGBA", "LA", "P", "L", "1", "I;16", "I", "F"])
def test_every_pil_mode_is_converted(tiny_encoder, mode):
    base = draw_image(64, 48)
    if mode == "I;16":
        arr = np.asarray(base.convert("L"), dtype="<u2") * 200
        img = Image.frombytes("I;16", base.size, arr.tobytes())
    elif mode in ("I", "F"):
        img = base.convert("L").convert(mode)
    else:
        img = base.convert(mode)
    assert img.mode == mode
    _encode_ok(tiny_encoder, img)


def test_sixteen_bit_image_keeps_its_content(tiny_encoder):
    arr = np.zeros((48, 64), dtype=np.uint16)
    arr[10:30, 10:40] = 4000  # would all clip to white with a plain convert("RGB")
    dark = _encode_ok(tiny_encoder, Image.frombytes("I;16", (64, 48), arr.astype("<u2").tobytes()))
    white = _encode_ok(tiny_encoder, Image.new("RGB", (64, 48), (255, 255, 255)))
    assert np.abs(dark - white).max() > 1e-3


@pytest.mark.parametrize("size", [(1, 1), (20000, 20), (20, 20000), (5, 400)])
def test_tiny_and_extreme_aspect_images(tiny_encoder, size, caplog):
    with caplog.at_level(logging.WARNING):
        _encode_ok(tiny_encoder, Image.new("RGB", size, (10, 200, 30)))
    if max(size) / max(min(size), 28) > 200:
        assert "item 1" in caplog.text and "aspect ratio" in caplog.text


def test_bytes_and_path_sources_match_pil(tiny_encoder, tmp_path):
    img = draw_image(80, 60)
    (tmp_path / "x.png").write_bytes(_png_bytes(img))
    sources = [img, _png_bytes(img), str(tmp_path / "x.png"), tmp_path / "x.png"]
    vecs = tiny_encoder.encode([{"image": s} for s in sources], show_progress=False)
    assert np.abs(vecs - vecs[0]).max() < 1e-6


def test_corrupt_bytes_name_the_item(tiny_encoder):
    with pytest.raises(MoCaInputError, match="item 2"):
        tiny_encoder.encode(["ok", "ok too", {"image": b"not an image at all"}], show_progress=False)


def test_truncated_jpeg_names_the_item(tiny_encoder):
    data = _png_bytes(draw_image(300, 200), "JPEG")
    with pytest.raises(MoCaInputError, match="item 1.*(corrupt|truncated|cannot read)"):
        tiny_encoder.encode(["ok", {"image": data[: len(data) // 2]}], show_progress=False)


def test_missing_path_names_item_and_path(tiny_encoder, tmp_path):
    with pytest.raises(MoCaInputError, match=r"item 1: image file not found: .*nope\.png"):
        tiny_encoder.encode(["ok", {"text": "x", "image": str(tmp_path / "nope.png")}], show_progress=False)


def test_unsupported_item_type_names_the_item(tiny_encoder):
    with pytest.raises(MoCaInputError, match="item 1: unsupported type int"):
        tiny_encoder.encode(["ok", 42], show_progress=False)


def test_empty_text_gets_a_logged_fallback(tiny_encoder, caplog):
    with caplog.at_level(logging.WARNING):
        vec = _encode_ok(tiny_encoder, "")
    assert "item 1: empty text" in caplog.text
    assert np.isfinite(vec).all()


def test_hundred_thousand_characters_are_truncated(tiny_encoder):
    text = "lorem ipsum dolor sit amet " * 3800  # ~100k characters
    assert len(text) > 100_000
    a = _encode_ok(tiny_encoder, text)
    b = _encode_ok(tiny_encoder, text[:50_000])  # same first max_length tokens -> same embedding
    assert np.abs(a - b).max() < 1e-6


def test_empty_input_list(tiny_encoder):
    assert tiny_encoder.encode([], show_progress=False).shape == (0, tiny_encoder.dim)
