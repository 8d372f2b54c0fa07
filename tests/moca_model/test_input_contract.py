"""The one item input contract (README "Input items"): unknown keys, "image": [a, b], folders, videos, aliases."""

from __future__ import annotations

import numpy as np
import pytest

from moca_model import MoCaInputError
from moca_model.processing_moca import IMAGE_PLACEHOLDER, ITEM_KEYS, normalize_item

from .conftest import draw_image


@pytest.mark.parametrize(
    ("item", "key", "hint"),
    [({"imgae": "x.png"}, "imgae", "image"), ({"image": "x.png", "txt": "hi"}, "txt", "text"),
     ({"text": "a", "Images": []}, "Images", "images"), ({"text": "a", "caption": "c"}, "caption", None)],
)  # fmt: skip
def test_unknown_key_is_an_error_naming_it_and_the_allowed_ones(item, key, hint):
    with pytest.raises(MoCaInputError) as err:
        normalize_item(item, 4)
    msg = str(err.value)
    assert msg.startswith(f"item 4: unknown key {key!r}") and all(k in msg for k in ITEM_KEYS)
    assert (f"did you mean {hint!r}" in msg) if hint else "did you mean" not in msg
    assert err.value.index == 4 and err.value.detail.startswith("unknown key")


def test_image_list_equals_images_list():
    a, b = draw_image(40, 40, 1), draw_image(50, 30, 2)
    text = f"compare {IMAGE_PLACEHOLDER} and {IMAGE_PLACEHOLDER}"
    assert normalize_item({"text": text, "image": [a, b]}, 0) == normalize_item({"text": text, "images": [a, b]}, 0)
    assert normalize_item({"images": a}, 0) == normalize_item({"image": a}, 0)  # one source under "images"
    both = normalize_item({"image": a, "images": [b]}, 0)
    assert both.images == (a, b) and both.text == IMAGE_PLACEHOLDER * 2


def test_image_list_encodes_like_images(tiny_encoder):
    a, b = draw_image(40, 40, 1), draw_image(50, 30, 2)
    vecs = tiny_encoder.encode([{"text": "x", "image": [a, b]}, {"text": "x", "images": [a, b]}],
                               show_progress_bar=False)  # fmt: skip
    assert np.array_equal(vecs[0], vecs[1])


def test_bad_image_value_type_is_named():
    with pytest.raises(MoCaInputError, match=r"item 2: 'images' must be an image .* got int"):
        normalize_item({"images": 3}, 2)


def test_folder_as_image_points_to_video(tiny_encoder, tmp_path):
    (tmp_path / "frames").mkdir()
    with pytest.raises(MoCaInputError, match=r"item 1: image path is a folder.*frames.*\"video\""):
        tiny_encoder.encode(["ok", {"image": str(tmp_path / "frames")}], show_progress_bar=False)


def test_show_progress_is_an_alias_of_show_progress_bar(tiny_encoder, capsys):
    a = tiny_encoder.encode(["a", "b"], show_progress_bar=False)
    assert "encoding" not in capsys.readouterr().err
    assert np.array_equal(a, tiny_encoder.encode(["a", "b"], show_progress=False))
    assert "encoding" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="alias"):
        tiny_encoder.encode(["a"], show_progress=True, show_progress_bar=False)
