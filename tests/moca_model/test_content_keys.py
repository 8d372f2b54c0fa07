"""De-duplication keys hash what the model sees: images whose pixels differ after EXIF orientation and RGB
conversion never share a key (so never share a vector); the same file as path and bytes may share one."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from moca_model.images import EXIF_ORIENTATION, fitted_size, image_key, to_rgb
from moca_model.processing_moca import item_key, normalize_item

from .conftest import draw_image

TOL = 1e-5


def _bytes(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def palette_pair() -> tuple[Image.Image, Image.Image]:
    """Two ``P`` images with the same indices and different palettes (a recoloured chart)."""
    indices = np.zeros((48, 64), dtype=np.uint8)
    indices[10:30, 8:40] = 1
    indices[32:44, 20:60] = 2
    a, b = Image.fromarray(indices, mode="P"), Image.fromarray(indices, mode="P")
    a.putpalette([255, 255, 255, 200, 30, 30, 20, 20, 180] + [0] * 759)
    b.putpalette([255, 255, 255, 30, 160, 40, 240, 200, 10] + [0] * 759)
    assert a.tobytes() == b.tobytes()  # what the old key hashed
    return a, b


def transparency_pair() -> tuple[Image.Image, Image.Image]:
    """Two RGBA images that look the same composited but hide different colours under alpha 0."""
    arr = np.full((48, 64, 4), 255, dtype=np.uint8)
    arr[:, :32, 3] = 0  # left half transparent
    other = arr.copy()
    arr[:, :32, :3] = (250, 0, 0)
    other[:, :32, :3] = (0, 0, 250)
    return Image.fromarray(arr, mode="RGBA"), Image.fromarray(other, mode="RGBA")


def exif_pair() -> tuple[bytes, bytes]:
    """The same JPEG pixels, once plain and once tagged 'rotate 90° clockwise' (orientation 6)."""
    img = draw_image(80, 48, seed=3)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return _bytes(img, "JPEG", quality=95), _bytes(img, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_is_applied_to_pixels_and_size_estimates():
    plain, rotated = exif_pair()
    up, turned = Image.open(io.BytesIO(plain)), Image.open(io.BytesIO(rotated))
    assert fitted_size(up) == (48, 80) and fitted_size(turned) == (80, 48)  # header only, before decoding
    assert to_rgb(turned, 0).size == (48, 80)
    np.testing.assert_array_equal(
        np.asarray(to_rgb(turned, 0)), np.asarray(to_rgb(up, 0).transpose(Image.Transpose.ROTATE_270))
    )


@pytest.mark.parametrize("pair", [palette_pair, transparency_pair], ids=["palette", "transparency"])
def test_pixel_differences_give_different_keys(pair):
    a, b = pair()
    assert image_key(a) != image_key(b)
    assert image_key(a) == image_key(a.copy())
    assert image_key(_bytes(a)) != image_key(_bytes(b))


def test_exif_pair_keys_differ_in_every_form(tmp_path):
    plain, rotated = exif_pair()
    assert image_key(plain) != image_key(rotated)
    pil_plain, pil_rotated = Image.open(io.BytesIO(plain)), Image.open(io.BytesIO(rotated))
    assert pil_plain.tobytes() == pil_rotated.tobytes()  # the raw buffers are equal: the old key collided
    assert image_key(pil_plain) != image_key(pil_rotated)


def test_same_file_as_path_and_bytes_shares_a_key_and_pixels_are_keyed_after_conversion(tmp_path):
    data = _bytes(draw_image(40, 30))
    (tmp_path / "a.png").write_bytes(data)
    assert image_key(tmp_path / "a.png") == image_key(str(tmp_path / "a.png")) == image_key(data)
    rgb = draw_image(40, 30)
    assert image_key(rgb) == image_key(rgb.convert("RGBA"))  # alpha 255 everywhere: same pixels, same key
    assert image_key(rgb) != image_key(rgb.convert("L"))
    assert image_key([rgb, rgb.convert("L")]) != image_key([rgb.convert("L"), rgb])  # frame order counts


def test_item_key_covers_text_and_every_image():
    a, b = palette_pair()
    keys = {
        item_key(normalize_item(x, 0))
        for x in ({"text": "x", "image": a}, {"text": "x", "image": b}, {"text": "y", "image": a}, "x", "y")
    }
    assert len(keys) == 5


@pytest.mark.parametrize("form", ["pil", "bytes", "path"])
@pytest.mark.parametrize("pair", ["palette", "transparency", "exif"])
def test_each_image_of_a_colliding_pair_gets_its_own_vector(tiny_encoder, tmp_path, pair, form):
    if pair == "exif":
        raw = exif_pair()
        imgs = [Image.open(io.BytesIO(r)) for r in raw]
    else:
        imgs = list(palette_pair() if pair == "palette" else transparency_pair())
        raw = tuple(_bytes(i) for i in imgs)
    if form == "pil":
        sources = imgs
    elif form == "bytes":
        sources = list(raw)
    else:
        sources = []
        for k, r in enumerate(raw):
            (tmp_path / f"{k}.img").write_bytes(r)
            sources.append(tmp_path / f"{k}.img")
    items = [{"text": "\nRepresent the given image.", "image": s} for s in sources]
    together = tiny_encoder.encode(items, show_progress=False)
    alone = np.stack([tiny_encoder.encode([x], show_progress=False)[0] for x in items])
    np.testing.assert_allclose(together, alone, atol=TOL, rtol=0)
    assert np.abs(together[0] - together[1]).max() > 100 * TOL  # distinct pixels, distinct vectors
